"""M-of-N approval and the starter rule, in the core and the store (see docs/inbox.md,
"Quorum"): a call that needs M approvals runs once, after M distinct people approved the
arguments it runs with; a repeated approver counts once; a rejection or an expiry by anyone
settles it; an edit starts the count again on the new arguments; and the person who started
a run may be barred from approving its calls, whichever way the approval is posted."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfsm import (
    Agent,
    ConfigurationError,
    Decision,
    DecisionRefused,
    MemoryStore,
    Runner,
    RunState,
    ToolContext,
    ToolDefinitionError,
    ToolResultItem,
    UndecidedError,
    new_run,
    tool,
)
from agentfsm._decisions import standing
from agentfsm._render import render_run
from agentfsm.testing import ScriptedModel, call, say

RAN: Counter[str] = Counter()


@tool(needs_approval=True, quorum=2)
def transfer(to: str, amount: int, ctx: ToolContext) -> str:
    """Move money."""
    RAN[ctx.idempotency_key] += 1
    return f"moved {amount} to {to}"


@tool(needs_approval=True, quorum=3)
def wire(to: str, amount: int, ctx: ToolContext) -> str:
    """Move a lot of money."""
    RAN[ctx.idempotency_key] += 1
    return f"wired {amount} to {to}"


@tool(needs_approval=True)
def note(text: str) -> str:
    """Write a note."""
    return "noted"


def agent(*calls: Any) -> Agent:
    turn = list(calls) or [call("transfer", to="acme", amount=900)]
    model = ScriptedModel([turn, say("done")])
    return Agent("treasurer", "You move money.", model, tools=[transfer, wire, note])


def paused(*calls: Any, **options: Any) -> RunState:
    RAN.clear()
    a = agent(*calls)
    state = new_run(a, "pay acme", run_id="q-1", **options)
    result = Runner().run_sync(a, state)
    assert result.status == "interrupted"
    return result.state


def resume(state: RunState, *calls: Any) -> RunState:
    return Runner().run_sync(agent(*calls), state).state


def result_of(state: RunState, call_id: str = "call_0_0") -> ToolResultItem:
    (found,) = [i for i in state.items if isinstance(i, ToolResultItem) and i.call_id == call_id]
    return found


# -- the rules, one by one -------------------------------------------------------------------


def test_a_call_runs_once_after_two_distinct_approvals_and_the_count_is_recorded() -> None:
    state = paused()
    (request,) = state.interruptions
    assert (request.quorum, request.approved_by) == (2, ())
    state = resume(state.approve(request, by="alice"))
    assert state.status.value == "interrupted" and not RAN
    (waiting,) = state.interruptions
    assert waiting.digest == request.digest and waiting.approved_by == ("alice",)
    assert standing(waiting) == "1 of 2 approvals (alice)"
    (counted,) = state.audit
    assert (counted.outcome, counted.decision.by, counted.reason) == (
        "counted",
        "alice",
        "1 of 2 approvals (alice)",
    )
    shown = render_run(state)
    assert "1 of 2 approvals (alice)" in shown and "counted: 1 of 2" in shown
    # The count survives the state's trip through JSON (a restart).
    state = RunState.from_json(state.to_json())
    state = resume(state.approve(waiting, by="bob"))
    assert state.status.value == "completed"
    assert list(RAN.values()) == [1]
    assert [(r.outcome, r.decision.by) for r in state.audit] == [
        ("counted", "alice"),
        ("applied", "bob"),
    ]


def test_the_same_person_approving_twice_counts_once_and_loses_nothing() -> None:
    state = paused()
    (request,) = state.interruptions
    once = state.approve(request, by="alice")
    assert once.approve(request, by="alice") is once  # posted, not applied: nothing to do
    state = resume(once)
    assert state.approve(request, by="alice") is state  # applied: nothing to do either
    with pytest.raises(UndecidedError, match="has none to apply"):
        resume(state)  # and nothing new was recorded to apply
    assert state.interruptions[0].approved_by == ("alice",)
    assert not RAN


def test_a_rejection_by_anyone_rejects_after_approvals() -> None:
    state = paused(call("wire", to="acme", amount=5))
    (request,) = state.interruptions
    state = resume(state.approve(request, by="alice").approve(request, by="bob"))
    assert state.interruptions[0].approved_by == ("alice", "bob")
    state = resume(state.reject(request, by="carol", message="not this week"))
    assert state.status.value == "completed" and not RAN
    assert result_of(state).output == "not this week"
    assert [r.outcome for r in state.audit] == ["counted", "counted", "applied"]
    # Posted in one batch, a rejection after one approval settles the call as well, and a
    # later approval is refused: the call was decided.
    state = paused()
    (request,) = state.interruptions
    state = state.approve(request, by="alice").reject(request, by="bob")
    with pytest.raises(DecisionRefused, match="already decided: rejected by bob"):
        state.approve(request, by="carol")


def test_an_expiry_settles_a_call_whatever_its_count() -> None:
    state = paused()
    (request,) = state.interruptions
    state = resume(state.approve(request, by="alice"))
    expired = Decision(call_id=request.call_id, digest=request.digest, approved=False, expired=True)
    state = resume(state.decide(expired))
    assert state.status.value == "completed" and not RAN
    assert state.audit[-1].decision.kind == "expire"


def test_an_edit_starts_the_count_again_on_the_new_arguments() -> None:
    state = paused()
    (request,) = state.interruptions
    state = resume(state.approve(request, by="alice"))
    state = resume(state.approve(request, by="bob", arguments={"to": "acme", "amount": 90}))
    (edited,) = state.interruptions
    assert edited.arguments == {"to": "acme", "amount": 90}
    assert edited.digest != request.digest and edited.approved_by == ("bob",)
    assert not RAN
    # Alice approved the old arguments: her approval is stale, and refused as such.
    with pytest.raises(DecisionRefused, match="other arguments"):
        state.approve(request, by="alice")
    # Bob cannot approve his own edit twice; Alice approving the new arguments runs them.
    assert state.approve(edited, by="bob") is state
    state = resume(state.approve(edited, by="alice"))
    assert state.status.value == "completed"
    assert list(RAN.values()) == [1]
    assert result_of(state).output == "moved 90 to acme"


def test_decisions_posted_after_an_edit_wait_for_the_new_arguments() -> None:
    state = paused()
    (request,) = state.interruptions
    state = resume(state.approve(request, by="alice"))
    state = state.approve(request, by="bob", arguments={"to": "acme", "amount": 90})
    for who in ("alice", "carol"):  # Alice's approval of the old arguments no longer counts
        with pytest.raises(DecisionRefused, match="starts again on the new arguments"):
            state.approve(request, by=who)
    # The same edit posted again is no news.
    assert state.approve(request, by="bob", arguments={"to": "acme", "amount": 90}) is state


def test_an_approval_that_names_no_one_or_is_sticky_cannot_count() -> None:
    state = paused()
    (request,) = state.interruptions
    with pytest.raises(DecisionRefused, match="must say who approves"):
        state.approve(request)
    with pytest.raises(DecisionRefused, match="for good"):
        state.approve(request, by="alice", always=True)
    # A sticky rejection still works, and settles later calls of the tool as well.
    state = resume(state.reject(request, by="alice", always=True))
    assert state.status.value == "completed"


def test_a_sticky_approval_never_stands_in_for_a_quorum() -> None:
    from agentfsm import Policy

    state = paused()
    (request,) = state.interruptions
    # A policy recorded before the tool needed a quorum (an older deployment, say).
    import msgspec

    state = msgspec.structs.replace(
        state, policies=(Policy(tool="transfer", approved=True),), decisions=()
    )
    state = resume(state.approve(request, by="alice"))
    assert state.status.value == "interrupted" and not RAN


def test_a_quorum_is_declared_with_the_tool() -> None:
    def act() -> str:
        return "x"

    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ToolDefinitionError, match="at least 1"):
            tool(needs_approval=True, quorum=bad)(act)
    with pytest.raises(ToolDefinitionError, match="needs needs_approval"):
        tool(quorum=2)(act)
    assert tool(needs_approval=True, quorum=2)(act).quorum == 2


# -- the person who started a run --------------------------------------------------------------


def test_the_starter_may_not_approve_but_may_reject() -> None:
    state = paused(started_by="alice", starter_may_approve=False)
    (request,) = state.interruptions
    assert (state.started_by, state.starter_may_approve) == ("alice", False)
    with pytest.raises(DecisionRefused, match="alice started run q-1, and may not approve"):
        state.approve(request, by="alice")
    with pytest.raises(DecisionRefused, match="must say who approves"):
        state.approve(request)
    assert "started by: alice (who may not approve its calls)" in render_run(state)
    state = resume(state.approve(request, by="bob").approve(request, by="carol"))
    assert state.status.value == "completed"
    # Rejecting is still the starter's to do.
    state = paused(started_by="alice", starter_may_approve=False)
    state = resume(state.reject(state.interruptions[0], by="alice"))
    assert state.status.value == "completed" and not RAN


def test_the_starter_rule_needs_a_starter_and_defaults_to_allowing() -> None:
    with pytest.raises(ConfigurationError, match="needs started_by"):
        new_run(agent(), "x", run_id="r", starter_may_approve=False)
    state = paused(call("note", text="hi"), started_by="alice")
    assert resume(state.approve(state.interruptions[0], by="alice")).status.value == "completed"


def test_the_store_applies_the_same_rules_to_posted_decisions() -> None:
    async def main() -> None:
        store = MemoryStore()
        a = agent()
        await store.create(
            new_run(a, "pay", run_id="s-1", started_by="alice", starter_may_approve=False)
        )
        runner = Runner(store=store)
        state = (await runner.resume(a, "s-1")).state
        (request,) = state.interruptions
        with pytest.raises(DecisionRefused, match="may not approve"):
            await store.approve("s-1", request, by="alice")
        assert await store.approve("s-1", request, by="bob") is True
        assert await store.approve("s-1", request, by="bob") is False
        state = (await runner.resume(agent(), "s-1")).state
        assert state.interruptions[0].approved_by == ("bob",)
        page = await store.waiting()
        assert page.calls[0].request.approved_by == ("bob",)
        assert await store.approve("s-1", request, by="bob") is False
        assert await store.approve("s-1", request, by="carol") is True
        state = (await runner.resume(agent(), "s-1")).state
        assert state.status.value == "completed"
        assert list(RAN.values()) == [1]

    RAN.clear()
    asyncio.run(asyncio.wait_for(main(), 30))


# -- whatever people do, in whatever order -----------------------------------------------------

PEOPLE = ["alice", "bob", "carol", "dave"]
moves = st.lists(
    st.tuples(
        st.sampled_from(PEOPLE),
        st.sampled_from(["approve", "approve", "approve", "reject", "edit", "stale"]),
        st.integers(1, 3),
        st.booleans(),  # resume after this move
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(moves=moves, quorum=st.sampled_from([("transfer", 2), ("wire", 3)]))
def test_whatever_is_decided_a_call_runs_at_most_once_and_only_on_a_full_quorum(
    moves: list[tuple[str, str, int, bool]], quorum: tuple[str, int]
) -> None:
    name, needed = quorum
    state = paused(call(name, to="acme", amount=900))
    first = state.interruptions[0]
    for person, kind, amount, then_resume in moves:
        waiting = state.interruptions
        if not waiting:
            break
        shown = waiting[0]
        digest = first.digest if kind == "stale" else shown.digest
        try:
            if kind == "reject":
                state = state.reject(shown.call_id, digest=digest, by=person)
            elif kind == "edit":
                arguments = {"to": "acme", "amount": amount}
                state = state.approve(shown.call_id, digest=digest, by=person, arguments=arguments)
            else:
                state = state.approve(shown.call_id, digest=digest, by=person)
        except DecisionRefused:
            pass
        if then_resume and state.decisions:
            state = resume(state, call(name, to="acme", amount=900))
    if state.decisions:
        state = resume(state, call(name, to="acme", amount=900))
    ran = sum(RAN.values())
    assert ran <= 1
    # Replay the audit trail: the approvals that count since the last edit.
    counted: list[str] = []
    rejected = False
    for record in state.audit:
        d = record.decision
        if record.outcome == "refused":
            continue
        if not d.approved:
            rejected = True
            continue
        if d.arguments is not None:
            counted = []
        assert d.by not in counted, "one person counted twice"
        counted.append(d.by)
    if ran:
        assert not rejected and len(counted) == needed
        assert state.audit[-1].outcome == "applied"
    else:
        assert rejected or len(counted) < needed
    assert all(r.outcome != "applied" or not r.decision.approved for r in state.audit[:-1])
