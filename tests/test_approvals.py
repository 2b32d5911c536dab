"""Approval semantics, scenario by scenario (see docs/approvals.md)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import pytest

from agentfsm import (
    Agent,
    ApprovalsDecided,
    Decision,
    DecisionRefused,
    Runner,
    RunState,
    RunStatus,
    ToolContext,
    ToolResultItem,
    UndecidedError,
    UnknownCallError,
    step,
    tool,
)
from agentfsm._step import DEFAULT_REJECTION, IN_DOUBT_REJECTION
from agentfsm.testing import ScriptedModel, call, say


class Tools:
    """Tools that count how often each call's body ran, keyed by idempotency key."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        runs, seen = self.runs, self.seen

        @tool
        def lookup(name: str, ctx: ToolContext) -> str:
            runs[ctx.idempotency_key] += 1
            seen.append(("lookup", {"name": name}))
            return f"{name}@example.com"

        @tool(needs_approval=True)
        def send(to: str, body: str, ctx: ToolContext) -> str:
            runs[ctx.idempotency_key] += 1
            seen.append(("send", {"to": to, "body": body}))
            return f"sent to {to}"

        @tool(needs_approval=lambda context, args: args["amount"] > 100)
        def pay(amount: int, ctx: ToolContext) -> str:
            runs[ctx.idempotency_key] += 1
            seen.append(("pay", {"amount": amount}))
            return f"paid {amount}"

        async def big(context: Any, args: dict[str, Any]) -> bool:
            return bool(args["n"] >= context["limit"])

        @tool(needs_approval=big)
        async def order(n: int, ctx: ToolContext) -> str:
            runs[ctx.idempotency_key] += 1
            seen.append(("order", {"n": n}))
            return f"ordered {n}"

        self.all = [lookup, send, pay, order]

    def agent(self, *turns: Any) -> Agent:
        return Agent("assistant", "help", ScriptedModel(list(turns)), tools=self.all)


def _result_of(state: RunState, call_id: str) -> ToolResultItem:
    found = [i for i in state.items if isinstance(i, ToolResultItem) and i.call_id == call_id]
    assert len(found) == 1, f"expected exactly one result for {call_id}, got {found}"
    return found[0]


def test_sibling_calls_without_approval_run_once_before_the_pause_and_never_again() -> None:
    tools = Tools()
    agent = tools.agent(
        [call("lookup", name="ada"), call("send", to="ada", body="hi")], say("done")
    )
    paused = Runner().run_sync(agent, "go")
    assert paused.status == "interrupted"
    assert [r.tool for r in paused.interruptions] == ["send"]
    assert [name for name, _ in tools.seen] == ["lookup"]

    resumed = RunState.from_json(paused.state.to_json()).approve("call_0_1")
    done = Runner().run_sync(agent, resumed)
    assert done.status == "completed"
    assert [name for name, _ in tools.seen] == ["lookup", "send"]
    assert set(tools.runs.values()) == {1}
    assert _result_of(done.state, "call_0_0").output == "ada@example.com"
    assert _result_of(done.state, "call_0_1").output == "sent to ada"


def test_a_decision_made_on_a_discarded_copy_is_not_lost_silently() -> None:
    # The openai-agents habit: state.approve(request), keeping the old state. The state is a
    # value, so the decision is not on it; resuming says so instead of pausing again.
    tools = Tools()
    agent = tools.agent(call("send", to="ada", body="hi"), say("done"))
    paused = Runner().run_sync(agent, "go")
    (request,) = paused.interruptions
    paused.state.approve(request)
    with pytest.raises(UndecidedError, match=r"call_0_0 \(send\).*resume that one") as caught:
        Runner().run_sync(agent, paused.state)
    assert caught.value.state == paused.state
    assert tools.seen == []
    # Both decisions take the request itself, or its call id.
    done = Runner().run_sync(agent, paused.state.approve(request))
    assert done.status == "completed"
    assert tools.seen == [("send", {"to": "ada", "body": "hi"})]
    rejected = Runner().run_sync(agent, paused.state.reject(request, message="no"))
    assert rejected.status == "completed"


def test_rejection_tells_the_model_the_callers_message_or_a_default() -> None:
    for message, expected in (("Not to Ada.", "Not to Ada."), (None, DEFAULT_REJECTION)):
        tools = Tools()
        agent = tools.agent(call("send", to="ada", body="hi"), say("ok"))
        paused = Runner().run_sync(agent, "go")
        done = Runner().run_sync(agent, paused.state.reject("call_0_0", message=message))
        assert done.status == "completed"
        assert _result_of(done.state, "call_0_0").output == expected
        assert tools.seen == []


def test_approve_and_reject_return_new_states_and_leave_the_old_one_unchanged() -> None:
    tools = Tools()
    paused = Runner().run_sync(tools.agent(call("send", to="ada", body="hi")), "go")
    before = paused.state.to_json()
    approved = paused.state.approve("call_0_0")
    rejected = paused.state.reject("call_0_0")
    assert paused.state.to_json() == before
    assert approved.decisions[0].approved and not rejected.decisions[0].approved
    assert approved.version == paused.state.version + 1


def test_a_decision_for_a_call_that_is_not_waiting_is_an_error() -> None:
    tools = Tools()
    paused = Runner().run_sync(tools.agent(call("send", to="ada", body="hi")), "go")
    with pytest.raises(UnknownCallError, match="call_9_9"):
        paused.state.approve("call_9_9")


def test_a_decision_counts_only_for_the_arguments_the_human_saw() -> None:
    tools = Tools()
    agent = tools.agent(call("send", to="ada", body="hi"), say("done"))
    paused = Runner().run_sync(agent, "go")
    forged = Decision(call_id="call_0_0", digest="0" * 64, approved=True)
    new, _ = step(paused.state, ApprovalsDecided(decisions=(forged,)), agent)
    assert new.status is RunStatus.INTERRUPTED
    assert [r.call_id for r in new.interruptions] == ["call_0_0"]
    assert tools.seen == []


def test_partial_decisions_run_the_decided_calls_and_keep_the_rest_waiting() -> None:
    tools = Tools()
    agent = tools.agent(
        [call("send", to="ada", body="1"), call("send", to="bob", body="2")], say("done")
    )
    paused = Runner().run_sync(agent, "go")
    assert [r.call_id for r in paused.interruptions] == ["call_0_0", "call_0_1"]
    half = Runner().run_sync(agent, paused.state.approve("call_0_1"))
    assert half.status == "interrupted"
    assert [r.call_id for r in half.interruptions] == ["call_0_0"]
    assert tools.seen == [("send", {"to": "bob", "body": "2"})]
    done = Runner().run_sync(agent, half.state.approve("call_0_0"))
    assert done.status == "completed"
    assert sorted(tools.runs.values()) == [1, 1]


def test_always_approve_covers_later_calls_of_that_tool() -> None:
    tools = Tools()
    agent = tools.agent(
        call("send", to="ada", body="1"),
        call("send", to="bob", body="2"),
        call("send", to="cy", body="3"),
        say("done"),
    )
    paused = Runner().run_sync(agent, "go")
    done = Runner().run_sync(agent, paused.state.approve("call_0_0", always=True))
    assert done.status == "completed"
    assert [args["to"] for _, args in tools.seen] == ["ada", "bob", "cy"]


def test_always_reject_rejects_later_calls_without_asking() -> None:
    tools = Tools()
    agent = tools.agent(
        call("send", to="ada", body="1"), call("send", to="bob", body="2"), say("ok")
    )
    paused = Runner().run_sync(agent, "go")
    done = Runner().run_sync(agent, paused.state.reject("call_0_0", always=True, message="never"))
    assert done.status == "completed"
    assert _result_of(done.state, "call_1_0").output == "never"
    assert tools.seen == []


def test_an_exact_decision_beats_a_sticky_one() -> None:
    tools = Tools()
    agent = tools.agent(
        [call("send", to="ada", body="1"), call("send", to="bob", body="2")], say("done")
    )
    paused = Runner().run_sync(agent, "go")
    state = paused.state.approve("call_0_0").reject("call_0_1", always=True)
    done = Runner().run_sync(agent, state)
    assert done.status == "completed"
    assert tools.seen == [("send", {"to": "ada", "body": "1"})]
    assert _result_of(done.state, "call_0_1").output == DEFAULT_REJECTION


def test_edited_arguments_are_validated_and_used() -> None:
    tools = Tools()
    agent = tools.agent(call("send", to="ada", body="hi"), say("done"))
    paused = Runner().run_sync(agent, "go")
    with pytest.raises(DecisionRefused, match=r"\$\.body"):
        paused.state.approve("call_0_0", arguments={"to": "ada", "body": object()})
    # Checked when posted, against the schema recorded with the call: no code needed.
    with pytest.raises(DecisionRefused, match=r"\$\.body: required"):
        paused.state.approve("call_0_0", arguments={"to": "ada"})
    with pytest.raises(DecisionRefused, match="must be a JSON object, not an array"):
        paused.state.approve("call_0_0", arguments=[1])  # type: ignore[arg-type]
    edited = paused.state.approve("call_0_0", arguments={"to": "ada", "body": "hello!"})
    done = Runner().run_sync(agent, edited)
    assert tools.seen == [("send", {"to": "ada", "body": "hello!"})]
    assert done.status == "completed"
    assert _result_of(done.state, "call_0_0").arguments == {"to": "ada", "body": "hello!"}
    (record,) = done.state.audit
    assert record.outcome == "applied"
    assert record.decision.kind == "edit"
    assert record.shown == {"to": "ada", "body": "hi"}


def test_a_decision_that_fails_where_it_is_applied_is_recorded_and_the_call_waits() -> None:
    # Older data, or a tool whose code changed: the edit got past the posting check, and the
    # tool refuses it. The run is not poisoned: the refusal is recorded, the call still waits.
    tools = Tools()
    agent = tools.agent(call("send", to="ada", body="hi"), say("done"))
    paused = Runner().run_sync(agent, "go")
    (request,) = paused.interruptions
    smuggled = msgspec.structs.replace(
        paused.state,
        decisions=(
            Decision(
                call_id=request.call_id,
                digest=request.digest,
                approved=True,
                arguments={"to": "ada"},
                by="old-client",
            ),
        ),
    )
    again = Runner().run_sync(agent, smuggled)
    assert again.status == "interrupted"
    assert again.interruptions == paused.interruptions
    (record,) = again.state.audit
    assert record.outcome == "refused"
    assert "body" in (record.reason or "")
    assert tools.seen == []
    done = Runner().run_sync(agent, again.state.approve(request, by="ada"))
    assert done.status == "completed"
    assert [r.outcome for r in done.state.audit] == ["refused", "applied"]


def test_approval_rules_can_be_functions_of_context_and_arguments_sync_or_async() -> None:
    tools = Tools()
    agent = tools.agent(
        [call("pay", amount=5), call("pay", amount=500), call("order", n=1), call("order", n=9)],
        say("done"),
    )
    paused = Runner().run_sync(agent, "go", context={"limit": 3})
    assert sorted(r.call_id for r in paused.interruptions) == ["call_0_1", "call_0_3"]
    assert sorted(name for name, _ in tools.seen) == ["order", "pay"]


def test_a_run_that_died_while_tools_ran_asks_a_human_about_non_idempotent_calls() -> None:
    tools = Tools()
    agent = tools.agent(call("send", to="ada", body="hi"), say("done"))
    checkpoints: list[RunState] = []
    paused = Runner().run_sync(agent, "go")
    Runner(on_step=checkpoints.append).run_sync(agent, paused.state.approve("call_0_0"))
    crashed = next(s for s in checkpoints if s.status is RunStatus.TOOLS)
    key = crashed.ledger[0].idempotency_key

    doubt = Runner().run_sync(agent, RunState.from_json(crashed.to_json()))
    assert doubt.status == "interrupted"
    assert [(r.call_id, r.reason) for r in doubt.interruptions] == [("call_0_0", "in_doubt")]
    assert tools.runs[key] == 1

    rejected = Runner().run_sync(agent, doubt.state.reject("call_0_0"))
    assert _result_of(rejected.state, "call_0_0").output == IN_DOUBT_REJECTION
    assert tools.runs[key] == 1

    rerun = Runner().run_sync(agent, doubt.state.approve("call_0_0"))
    assert rerun.status == "completed"
    assert tools.runs[key] == 2, "a human chose to run it again, with the same idempotency key"


def test_a_sticky_approval_never_settles_a_call_in_doubt() -> None:
    tools = Tools()
    agent = tools.agent(
        call("send", to="ada", body="1"), call("send", to="bob", body="2"), say("ok")
    )
    checkpoints: list[RunState] = []
    paused = Runner().run_sync(agent, "go")
    Runner(on_step=checkpoints.append).run_sync(
        agent, paused.state.approve("call_0_0", always=True)
    )
    crashed = next(s for s in checkpoints if s.status is RunStatus.TOOLS and s.turn == 2)
    doubt = Runner().run_sync(agent, crashed)
    assert [(r.call_id, r.reason) for r in doubt.interruptions] == [("call_1_0", "in_doubt")]


def test_idempotent_calls_in_doubt_are_simply_run_again() -> None:
    runs: Counter[str] = Counter()

    @tool(idempotent=True)
    def put(key: str, ctx: ToolContext) -> str:
        runs[ctx.idempotency_key] += 1
        return "stored"

    agent = Agent("a", "", ScriptedModel([call("put", key="k"), say("done")]), tools=[put])
    checkpoints: list[RunState] = []
    Runner(on_step=checkpoints.append).run_sync(agent, "go")
    crashed = next(s for s in checkpoints if s.status is RunStatus.TOOLS)
    done = Runner().run_sync(agent, RunState.from_json(crashed.to_json()))
    assert done.status == "completed"
    assert list(runs.values()) == [2]
    assert done.state.items == checkpoints[-1].items


def test_idempotency_keys_are_stable_per_call_and_distinct_between_calls() -> None:
    tools = Tools()
    agent = tools.agent([call("lookup", name="a"), call("lookup", name="b")], say("ok"))
    first = Runner().run_sync(agent, "go", run_id="run-1")
    keys = [c.idempotency_key for c in first.state.ledger] or list(tools.runs)
    assert len(set(tools.runs)) == 2
    again = Tools()
    Runner().run_sync(again.agent(*agent.model.turns), "go", run_id="run-1")
    assert set(again.runs) == set(tools.runs)
    assert keys


def test_decisions_recorded_while_tools_ran_apply_without_another_resume() -> None:
    runs: Counter[str] = Counter()

    @tool(idempotent=True)
    def fetch(ctx: ToolContext) -> str:
        runs["fetch"] += 1
        return "data"

    @tool(needs_approval=True)
    def publish(ctx: ToolContext) -> str:
        runs["publish"] += 1
        return "published"

    model = ScriptedModel([[call("fetch"), call("publish")], say("done")])
    agent = Agent("a", "", model, tools=[fetch, publish])
    checkpoints: list[RunState] = []
    Runner(on_step=checkpoints.append).run_sync(agent, "go")
    running = next(s for s in checkpoints if s.status is RunStatus.TOOLS)
    assert [r.tool for r in running.interruptions] == ["publish"]
    decided = running.approve(running.interruptions[0].call_id)
    done = Runner().run_sync(agent, decided)
    assert done.status == "completed"
    assert runs == {"fetch": 2, "publish": 1}


def test_edited_arguments_get_their_own_idempotency_key() -> None:
    tools = Tools()
    agent = tools.agent(call("send", to="ada", body="hi"), say("done"))
    paused = Runner().run_sync(agent, "go")
    original = paused.state.ledger[0].idempotency_key
    Runner().run_sync(agent, paused.state.approve("call_0_0"))
    Runner().run_sync(agent, paused.state.approve("call_0_0", arguments={"to": "bo", "body": "x"}))
    assert len(tools.runs) == 2
    assert original in tools.runs


def test_of_two_sticky_decisions_in_one_pause_the_latest_posted_wins() -> None:
    tools = Tools()
    agent = tools.agent(
        [call("send", to="ada", body="1"), call("send", to="bob", body="2")],
        call("send", to="eve", body="3"),
        say("done"),
    )
    paused = Runner().run_sync(agent, "go")
    first, second = paused.interruptions
    # Posted in the opposite order to the ledger: the reject of the first call comes last.
    state = paused.state.approve(second, always=True).reject(first, always=True, message="no")
    done = Runner().run_sync(agent, state)
    assert done.status == "completed"
    assert [p.approved for p in done.state.policies] == [False]
    assert _result_of(done.state, "call_1_0").output == "no"  # eve's: the latest policy
    assert tools.seen == [("send", {"to": "bob", "body": "2"})]


def test_a_tool_whose_arguments_changed_under_a_paused_call_checks_it_again() -> None:
    tools = Tools()
    paused = Runner().run_sync(tools.agent(call("send", to="ada", body="hi"), say("ok")), "go")
    (request,) = paused.interruptions

    @tool(needs_approval=True, name="send")
    def stricter(to: str, body: str, urgent: bool) -> str:  # a new required argument
        return "sent"

    deployed = Agent("assistant", "help", ScriptedModel([say("?"), say("ok")]), tools=[stricter])
    again = Runner().run_sync(deployed, paused.state.approve(request, by="ada"))
    assert again.status == "interrupted", "the approval is void: a person is asked again"
    (record,) = again.state.audit
    assert record.outcome == "refused"
    assert "changed since this call was shown" in (record.reason or "")
    assert "urgent" in (record.reason or "")

    @tool(needs_approval=True, name="send")
    def relaxed(to: str, body: str, cc: str = "") -> str:  # still accepts the call
        tools.seen.append(("send", {"to": to, "body": body}))
        return "sent"

    deployed = Agent("assistant", "help", ScriptedModel([say("?"), say("ok")]), tools=[relaxed])
    done = Runner().run_sync(deployed, again.state.approve(request, by="ada"))
    assert done.status == "completed"
    assert tools.seen == [("send", {"to": "ada", "body": "hi"})]
