"""The store conformance suite: the behaviour every store must have.

Subclass ``StoreConformance`` in a test module, name the subclass ``Test...`` and override
``make_store``; pytest then runs every check against your store::

    class TestMyStore(StoreConformance):
        async def make_store(self, clock):
            return MyStore(..., clock=clock)

``clock`` is a callable returning the time; the lease checks move it forward instead of
sleeping, so a store must measure leases with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .. import _codec
from .._agents import Agent
from .._errors import (
    ConfigurationError,
    ConflictError,
    DecisionRefused,
    LeaseLost,
    UnknownCallError,
    UnknownRunError,
    UnknownVersionError,
)
from .._events import Started
from .._items import UserMessage
from .._outcomes import Starter
from .._runner import Runner
from .._state import ForkOrigin, RunState
from .._step import new_run, step
from .._tools import ToolContext, tool
from ..stores._base import CancelMessage, Changed, ChangeFeed, Lease, RetryPolicy, Store
from ._clock import FakeClock
from ._scripted import ScriptedModel, call, handoff, say
from ._session_suite import SessionConformance, _chat

__all__ = ["FakeClock", "StoreConformance"]


@tool(needs_approval=True)
def _send(to: str) -> str:
    return f"sent to {to}"


@tool
def _lookup(name: str) -> str:
    return f"{name}@example.com"


def _agent(name: str = "conformance") -> Agent:
    script = ScriptedModel(
        [
            call("_lookup", name="ada"),
            [call("_lookup", name="bob"), call("_send", to="ada")],
            say("done"),
        ]
    )
    return Agent(name, "", script, tools=[_lookup, _send])


async def _states(run_id: str, agent_name: str = "conformance") -> list[RunState]:
    """Every state of a real run up to its pause for approval, in order."""
    states: list[RunState] = []
    agent = _agent(agent_name)
    first = new_run(agent, "go", run_id=run_id)
    states.append(first)
    await Runner(on_step=states.append).run(agent, first)
    return states


#: The tool bodies the fork checks saw run, in order: ``(tool, run id)``.
_RAN: list[tuple[str, str]] = []


@tool
def _charge(card: str, ctx: ToolContext) -> str:
    _RAN.append(("_charge", ctx.run_id))
    return f"charged {card}"


@tool(idempotent=True)
def _fetch(key: str, ctx: ToolContext) -> str:
    _RAN.append(("_fetch", ctx.run_id))
    return f"value of {key}"


@tool(needs_approval=True)
def _ship(to: str, ctx: ToolContext) -> str:
    _RAN.append(("_ship", ctx.run_id))
    return f"shipped to {to}"


def _shop(*turns: Any) -> Agent:
    """A shop agent: a non-idempotent charge that needs no approval, an idempotent fetch,
    and a shipment that needs approval."""
    script = turns or (
        [call("_charge", card="4242"), call("_fetch", key="stock")],
        call("_ship", to="ada"),
        say("done"),
    )
    return Agent("shop", "", ScriptedModel(list(script)), tools=[_charge, _fetch, _ship])


#: One model turn of a random run: calls that run at once, calls that wait for a decision,
#: several at once, a handoff, or the final answer.
_TURNS = st.one_of(
    st.builds(lambda n: call("_lookup", name=n), st.text(min_size=1, max_size=8)),
    st.builds(lambda to: call("_send", to=to), st.text(max_size=8)),
    st.lists(
        st.sampled_from([call("_lookup", name="x"), call("_send", to="bob")]),
        min_size=2,
        max_size=3,
    ),
    st.just(handoff("other")),
    st.builds(say, st.text(max_size=12)),
)


def _scripted_agents(script: list[Any]) -> Agent:
    model = ScriptedModel([*script, say("the end")])
    first = Agent("first", "", model, tools=[_lookup, _send])
    other = Agent("other", "", model, tools=[_lookup, _send], handoffs=[first])
    first.handoffs.append(other)
    return first


class StoreConformance(SessionConformance):
    """Checks every store must pass. Override ``make_store``."""

    async def make_store(self, clock: Callable[[], float]) -> Store:
        raise NotImplementedError("override make_store(clock) to return your store")

    def _run(self, check: Callable[[Store, FakeClock], Awaitable[None]]) -> None:
        async def main() -> None:
            clock = FakeClock()
            store = await self.make_store(clock)
            try:
                await check(store, clock)
            finally:
                await store.close()

        asyncio.run(main())

    # -- runs ------------------------------------------------------------------------------

    def test_a_created_run_loads_back_equal(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            states = await _states("r1")
            await store.create(states[0])
            assert await store.load("r1") == states[0]
            try:
                await store.create(states[0])
            except ConflictError:
                pass
            else:
                raise AssertionError("creating a stored run twice must raise ConflictError")

        self._run(check)

    def test_loading_an_unknown_run_raises(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            await _raises(UnknownRunError, store.load("nope"))
            await _raises(UnknownRunError, store.inbox("nope"))
            await _raises(UnknownRunError, store.delete("nope"))
            states = await _states("ghost")
            await _raises(UnknownRunError, store.save(states[1]))

        self._run(check)

    def test_every_step_saved_loads_back_exactly(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            states = await _states("r2")
            await store.create(states[0])
            for previous, state in itertools.pairwise(states):
                await store.save(state, expected_version=previous.version)
                loaded = await store.load("r2")
                assert loaded == state, f"version {state.version} did not load back equal"
                assert loaded.to_json() == state.to_json()

        self._run(check)

    def test_a_stale_write_conflicts_and_changes_nothing(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            states = await _states("r3")
            await store.create(states[0])
            await store.save(states[1])
            await store.save(states[2])
            await _raises(ConflictError, store.save(states[2]))
            await _raises(ConflictError, store.save(states[1], expected_version=0))
            await _raises(ConflictError, store.save(states[3], expected_version=1))
            assert await store.load("r3") == states[2]

        self._run(check)

    def test_a_state_that_does_not_descend_from_the_stored_one_conflicts(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            states = await _states("r4")
            await store.create(states[0])
            for previous, state in itertools.pairwise(states):
                await store.save(state, expected_version=previous.version)
            shorter = states[1]
            await _raises(ConflictError, store.save(shorter, expected_version=states[-1].version))
            assert await store.load("r4") == states[-1]

        self._run(check)

    def test_list_filters_by_status_and_puts_the_latest_first(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            for run_id in ("a", "b", "c"):
                states = await _states(run_id)
                await store.create(states[0])
                clock.advance(1)
                if run_id != "b":
                    for previous, state in itertools.pairwise(states):
                        await store.save(state, expected_version=previous.version)
                        clock.advance(1)
            listed = await store.list()
            assert [s.run_id for s in listed] == ["c", "b", "a"]
            paused = await store.list(status="interrupted")
            assert [s.run_id for s in paused] == ["c", "a"]
            assert paused[0].waiting == 1
            assert paused[0].status == "interrupted"
            assert [s.run_id for s in await store.list(limit=1)] == ["c"]
            assert [s.run_id for s in await store.list(status="new")] == ["b"]

        self._run(check)

    def test_list_refuses_a_limit_below_1_as_every_store_does(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            await store.create((await _states("l1"))[0])
            bad: tuple[Any, ...] = (0, -1, 1.5, True, "2")
            for limit in bad:
                await _raises(ConfigurationError, store.list(limit=limit), "limit must be")
            assert [s.run_id for s in await store.list(limit=1)] == ["l1"]

        self._run(check)

    def test_a_deleted_run_is_gone(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            states = await _states("gone")
            await store.create(states[0])
            await store.save(states[1])
            await store.post("gone", CancelMessage(reason="x"))
            await store.delete("gone")
            await _raises(UnknownRunError, store.load("gone"))
            assert await store.list() == []
            await _raises(UnknownRunError, store.inbox("gone"))
            await store.create(states[0])
            assert await store.load("gone") == states[0]
            assert (await store.inbox("gone")).ids == ()

        self._run(check)

    # -- the inbox -------------------------------------------------------------------------

    async def _paused(self, store: Store, run_id: str) -> RunState:
        states = await _states(run_id)
        await store.create(states[0])
        for previous, state in itertools.pairwise(states):
            await store.save(state, expected_version=previous.version)
        return states[-1]

    def test_decisions_go_to_the_inbox_bound_to_the_arguments_shown(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            paused = await self._paused(store, "p1")
            (request,) = paused.interruptions
            assert await store.approve("p1", request, always=True, by="ada")
            inbox = await store.inbox("p1")
            (message,) = inbox.messages
            decision = getattr(message, "decision", None)
            assert decision is not None
            assert decision.approved and decision.always and decision.digest == request.digest
            assert decision.by == "ada" and decision.at == clock()
            assert await store.load("p1") == paused, "decisions do not change the run itself"

        self._run(check)

    def test_the_first_decision_on_a_call_wins_and_a_repeat_is_harmless(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            paused = await self._paused(store, "p1")
            (request,) = paused.interruptions
            assert await store.approve("p1", request, by="ada")
            clock.advance(5)
            # The same decision again (a double-clicked form) is a no-op.
            assert not await store.approve("p1", request.call_id, digest=request.digest, by="ada")
            # Another decision is refused, naming the first.
            await _raises(
                DecisionRefused,
                store.reject("p1", request, message="no", by="bob"),
                "already decided: approved by ada",
            )
            assert len((await store.inbox("p1")).ids) == 1

        self._run(check)

    def test_a_decision_on_other_arguments_or_no_waiting_call_is_refused(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            paused = await self._paused(store, "p1")
            (request,) = paused.interruptions
            await _raises(
                DecisionRefused,
                store.approve("p1", request.call_id, digest="0" * 64),
                "other arguments than the ones this decision was made on",
            )
            await _raises(ConfigurationError, store.approve("p1", request.call_id))
            await _raises(UnknownCallError, store.approve("p1", "call_9_9", digest="0" * 64))
            await _raises(
                DecisionRefused,
                store.approve("p1", request, arguments=[1]),  # type: ignore[arg-type]
                "must be a JSON object",
            )
            await _raises(
                DecisionRefused,
                store.approve("p1", request, arguments={"to": 42}),
                "$.to: expected string",
            )
            assert (await store.inbox("p1")).ids == ()

        self._run(check)

    def test_the_inbox_query_lists_waiting_calls_across_runs_oldest_first(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            for n, agent in enumerate(["alpha", "beta", "alpha"]):
                clock.advance(1)
                states = await _states(f"w{n}", agent)
                await store.create(states[0])
                for previous, state in itertools.pairwise(states):
                    await store.save(state, expected_version=previous.version)
            page = await store.waiting()
            assert [c.run_id for c in page.calls] == ["w0", "w1", "w2"]
            assert page.next is None
            first = page.calls[0]
            paused = await store.load("w0")
            assert first.request == paused.interruptions[0]
            assert first.request.schema is not None, "the schema to check edits against"
            assert first.since == page.calls[0].since < page.calls[1].since
            assert [c.run_id for c in (await store.waiting(agent="alpha")).calls] == ["w0", "w2"]
            assert (await store.waiting(tool="_lookup")).calls == ()
            # Pages: every call once, in order, whatever the page size.
            seen, after = [], None
            while True:
                page = await store.waiting(limit=1, after=after)
                seen += [c.run_id for c in page.calls]
                if page.next is None:
                    break
                after = page.next
            assert seen == ["w0", "w1", "w2"]
            # Posted decisions show; an applied one takes the call off the list.
            await store.approve("w1", (await store.load("w1")).interruptions[0], by="ada")
            (posted,) = [c for c in (await store.waiting()).calls if c.run_id == "w1"]
            assert [d.by for d in posted.posted] == ["ada"]
            clock.advance(1)
            done = await Runner(store=store).resume(_agent("beta"), "w1")
            assert done.status == "completed"
            assert [c.run_id for c in (await store.waiting()).calls] == ["w0", "w2"]
            await store.delete("w2")
            assert [c.run_id for c in (await store.waiting()).calls] == ["w0"]
            for bad in ({"limit": 0}, {"limit": 1001}, {"after": "nonsense"}):
                await _raises(ConfigurationError, store.waiting(**bad))

        self._run(check)

    def test_a_run_that_keeps_failing_is_retried_later_then_parked(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            await store.create(new_run("a", "go", run_id="f1"))
            retry = RetryPolicy(attempts=3, backoff=10, max_backoff=15)
            for failures, delay in ((1, 10), (2, 15)):
                lease = await store.claim("w", lease_seconds=30)
                assert lease is not None and lease.run_id == "f1"
                assert not await store.fail(lease, "ModelError: down", retry=retry)
                assert await store.claim("w") is None, f"retried before the delay ({failures})"
                clock.advance(delay - 1)
                assert await store.claim("w") is None
                clock.advance(1.5)
            lease = await store.claim("w")
            assert lease is not None
            assert await store.fail(lease, "ModelError: down", retry=retry)
            clock.advance(10_000)
            assert await store.claim("w") is None, "a parked run is not taken up"
            (summary,) = await store.list()
            assert summary.parked == "ModelError: down"
            # Resumed by id once the cause is fixed: progress clears it.
            lease = await store.claim("w", run_id="f1")
            assert lease is not None
            assert not await store.fail(
                Lease(run_id="f1", owner="old", token=0, expires_at=0), "x", retry=retry
            ), "a lost lease records nothing"
            state = await store.load("f1")
            started, _ = step(state, Started(), Agent("a", "", ScriptedModel([])))
            await store.save(started, lease=lease)
            (summary,) = await store.list()
            assert summary.parked is None

        self._run(check)

    def test_acknowledged_messages_leave_the_inbox_with_the_step_that_used_them(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            paused = await self._paused(store, "p2")
            await store.add_input("p2", "one")
            await store.add_input("p2", "two")
            inbox = await store.inbox("p2")
            left = await store.save(
                paused.approve(paused.interruptions[0].call_id), acknowledge=inbox.ids[:1]
            )
            assert left == 1
            assert (await store.inbox("p2")).ids == inbox.ids[1:]

        self._run(check)

    def test_a_finished_run_takes_no_messages(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            paused = await self._paused(store, "fin")
            await store.approve("fin", paused.interruptions[0])
            done = await Runner(store=store).resume(_agent(), "fin")
            assert done.status == "completed"
            await _raises(ConflictError, store.cancel("fin"))
            await _raises(ConflictError, store.add_input("fin", "more"))
            await _raises(UnknownRunError, store.cancel("nope"))

        self._run(check)

    def test_a_run_migrated_on_load_is_stored_whole_in_the_new_version(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            paused = await self._paused(store, "old")
            assert paused.input[0] == UserMessage(content="go")
            with _next_schema_version(_shout):
                migrated = await store.load("old")
                assert migrated.schema_version == paused.schema_version + 1
                assert migrated.input[0] == UserMessage(content="GO")
                assert "ADA@EXAMPLE.COM" in migrated.to_json()
                await store.approve("old", paused.interruptions[0])
                done = await Runner(store=store).resume(_agent(), "old")
                assert await store.load("old") == done.state, "no rows of the old version left"
                assert done.state.input[0] == UserMessage(content="GO")

        self._run(check)

    # -- leases ----------------------------------------------------------------------------

    def test_claims_take_runnable_runs_oldest_first_once_each(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            for run_id in ("old", "young"):
                await store.create(new_run(_agent(), "go", run_id=run_id))
                clock.advance(1)
            await self._paused(store, "paused")
            first = await store.claim("w1", lease_seconds=10)
            second = await store.claim("w2", lease_seconds=10)
            assert first is not None and second is not None
            assert (first.run_id, second.run_id) == ("old", "young")
            assert await store.claim("w3", lease_seconds=10) is None, "paused runs wait"
            await store.add_input("paused", "hello")
            third = await store.claim("w3", lease_seconds=10)
            assert third is not None and third.run_id == "paused"

        self._run(check)

    def test_claims_can_be_limited_to_one_starting_agent(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            await store.create(new_run(_agent("alpha"), "go", run_id="a"))
            clock.advance(1)
            await store.create(new_run(_agent("beta"), "go", run_id="b"))
            lease = await store.claim("w", lease_seconds=10, starting_agent="beta")
            assert lease is not None and lease.run_id == "b"
            assert await store.claim("w", lease_seconds=10, starting_agent="beta") is None

        self._run(check)

    def test_a_blocking_renewer_renews_from_another_thread(self) -> None:
        """``renewer()`` (optional: None means leases are renewed on the event loop) renews
        from a thread that is not the event loop's, and stops once the lease is lost."""

        async def check(store: Store, clock: FakeClock) -> None:
            renew = store.renewer()
            if renew is None:
                return
            await store.create((await _states("t1"))[0])
            lease = await store.claim("w1", lease_seconds=10, run_id="t1")
            assert lease is not None
            clock.advance(5)
            renewed = await asyncio.to_thread(renew, lease, 10)
            assert renewed.token == lease.token and renewed.expires_at > lease.expires_at
            clock.advance(9)  # past the first lease, within the renewed one
            assert await store.claim("w2", lease_seconds=10, run_id="t1") is None
            clock.advance(2)
            taken = await store.claim("w2", lease_seconds=10, run_id="t1")
            assert taken is not None
            await _raises(LeaseLost, asyncio.to_thread(renew, lease, 10))

        self._run(check)

    def test_a_worker_that_takes_a_run_over_learns_from_whom(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            await store.create((await _states("o1"))[0])
            first = await store.claim("w1", lease_seconds=10)
            assert first is not None and first.taken_from is None
            clock.advance(11)  # w1 died holding it
            second = await store.claim("w2", lease_seconds=10)
            assert second is not None and second.run_id == "o1"
            assert second.taken_from == Starter(worker="w1", lease_until=first.expires_at)

        self._run(check)

    def test_a_lease_fences_writes_until_it_expires(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            states = await _states("l1")
            await store.create(states[0])
            lease = await store.claim("w1", lease_seconds=10, run_id="l1")
            assert lease is not None
            assert await store.claim("w2", lease_seconds=10, run_id="l1") is None
            await store.save(states[1], lease=lease)
            lease = await store.renew(lease, lease_seconds=10)
            clock.advance(11)
            taken = await store.claim("w2", lease_seconds=10, run_id="l1")
            assert taken is not None and taken.token > lease.token
            # Taken over, not released: the claim says from whom, and until when it ran.
            assert taken.taken_from == Starter(worker="w1", lease_until=lease.expires_at)
            await _raises(LeaseLost, store.save(states[2], lease=lease))
            await _raises(LeaseLost, store.renew(lease))
            assert await store.load("l1") == states[1]
            await store.save(states[2], lease=taken)
            await store.release(lease)  # a lost lease: releasing it changes nothing
            assert await store.claim("w3", lease_seconds=10, run_id="l1") is None
            await store.release(taken)
            released = await store.claim("w3", lease_seconds=10, run_id="l1")
            assert released is not None and released.taken_from is None

        self._run(check)

    def test_a_runner_with_the_store_checkpoints_every_step_and_resumes_by_id(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            seen: list[RunState] = []
            runner = Runner(store=store, on_step=seen.append)
            paused = await runner.run(_agent(), "go", run_id="rr")
            assert paused.status == "interrupted"
            assert await store.load("rr") == seen[-1] == paused.state
            await store.approve("rr", paused.interruptions[0])
            done = await Runner(store=store).resume(_agent(), "rr")
            assert done.status == "completed"
            assert await store.load("rr") == done.state
            assert (await store.inbox("rr")).ids == ()

        self._run(check)

    # -- history ---------------------------------------------------------------------------

    def test_every_version_of_a_random_run_loads_back_as_the_runner_held_it(self) -> None:
        """Property: through random runs of the real Runner (tools, approvals, rejections,
        handoffs, resumes), ``load(version=k)`` equals the state the runner held at version
        k, and ``history`` lists every version with its status, in order."""
        ids = itertools.count()
        clock = FakeClock()
        with asyncio.Runner() as loop:
            store = loop.run(self.make_store(clock))

            async def one(script: list[Any], decisions: list[str]) -> None:
                run_id = f"h{next(ids)}"
                held: list[RunState] = []
                runner = Runner(store=store, on_step=held.append)
                agent = _scripted_agents(script)
                first = new_run(agent, "go", run_id=run_id, max_turns=12)
                held.append(first)
                await store.create(first)
                result = await runner.resume(agent, run_id)
                for decision in decisions:
                    if result.status != "interrupted":
                        break
                    for request in result.interruptions:
                        clock.advance(1)
                        if decision == "reject":
                            await store.reject(run_id, request, message="no")
                        else:
                            await store.approve(run_id, request, always=decision == "always")
                    result = await runner.resume(_scripted_agents(script), run_id)
                history = await store.history(run_id)
                assert [v.version for v in history] == [s.version for s in held]
                assert [v.status for v in history] == [s.status.value for s in held]
                assert [v.n_items for v in history] == [len(s.items) for s in held]
                assert history[0].event is None, "a created run was made by no event"
                assert all(v.event for v in history[1:]), "each step names its event"
                for state in held:
                    loaded = await store.load(run_id, version=state.version)
                    assert loaded == state, f"version {state.version} did not load back equal"
                    assert loaded.to_json() == state.to_json()
                assert await store.load(run_id) == held[-1]

            @settings(
                max_examples=12,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(
                script=st.lists(_TURNS, max_size=5),
                decisions=st.lists(
                    st.sampled_from(["approve", "reject", "always"]), min_size=6, max_size=6
                ),
            )
            def prop(script: list[Any], decisions: list[str]) -> None:
                loop.run(asyncio.wait_for(one(script, decisions), 60))

            try:
                prop()
            finally:
                loop.run(store.close())

    def test_history_names_the_event_of_each_step_and_when_it_was_saved(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            states = await _states("e1")
            await store.create(states[0])
            for n, state in enumerate(states[1:]):
                clock.advance(1)
                await store.save(state, event=f"Event{n}")
            history = await store.history("e1")
            steps = len(states) - 1
            assert [v.event for v in history] == [None, *(f"Event{n}" for n in range(steps))]
            assert [v.at for v in history] == [clock() - steps + n for n in range(steps + 1)]
            await _raises(UnknownRunError, store.history("nope"))
            await _raises(UnknownRunError, store.load("nope", version=0))
            await _raises(UnknownVersionError, store.load("e1", version=steps + 1), "no version")
            await store.delete("e1")
            await _raises(UnknownRunError, store.history("e1"))
            await store.create(states[0])
            assert [v.version for v in await store.history("e1")] == [0], "none left behind"
            assert await store.load("e1", version=0) == states[0]

        self._run(check)

    def test_pruning_runs_deletes_only_those_that_ended_long_enough_ago(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            runner = Runner(store=store)
            await runner.run(_chat(), "1", run_id="old", session="pruned")
            await runner.run(_agent(), "go", run_id="waits")
            assert (await store.load("waits")).status.value == "interrupted"
            clock.advance(100)
            await runner.run(_chat(), "2", run_id="young")
            assert await store.prune_runs(older_than=clock() - 50) == 1
            await _raises(UnknownRunError, store.load("old"))
            assert await store.session_runs("pruned") == [], "it left its session"
            assert (await store.load("young")).status.value == "completed"
            assert await store.prune_runs(older_than=clock() + 1) == 1
            assert [r.run_id for r in await store.list()] == ["waits"], "waiting runs stay"
            for bad in ("yesterday", None, True):
                await _raises(ConfigurationError, store.prune_runs(older_than=bad))  # type: ignore[arg-type]

        self._run(check)

    def test_prune_drops_old_versions_and_always_keeps_the_current_one(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            states = await _states("k1")
            last = len(states) - 1
            assert last >= 3
            for run_id in ("k1", "k2"):
                states = await _states(run_id)
                await store.create(states[0])
                for state in states[1:]:
                    clock.advance(10)
                    await store.save(state)
            bad: tuple[dict[str, Any], ...] = (
                {},
                {"keep_versions": 0},
                {"keep_versions": 1.5},
                {"older_than": "x"},
            )
            for options in bad:
                await _raises(ConfigurationError, store.prune(**options))
            await _raises(UnknownRunError, store.prune(keep_versions=1, run_id="nope"))
            k1 = await _states("k1")
            assert await store.prune(keep_versions=2, run_id="k1") == last - 1
            assert [v.version for v in await store.history("k1")] == [last - 1, last]
            assert len(await store.history("k2")) == last + 1, "another run is left alone"
            await _raises(UnknownVersionError, store.load("k1", version=0))
            assert await store.load("k1", version=last - 1) == k1[last - 1]
            # By age, across runs: k2's first two versions and k1's older one; never the
            # current version of a run, however old.
            cutoff = (await store.history("k2"))[2].at
            assert await store.prune(older_than=cutoff) == 3
            assert [v.version for v in await store.history("k1")] == [last]
            assert [v.version for v in await store.history("k2")] == list(range(2, last + 1))
            assert await store.prune(older_than=clock() + 1000, keep_versions=5) == last - 2
            for run_id in ("k1", "k2"):
                assert [v.version for v in await store.history(run_id)] == [last]
                assert await store.load(run_id, version=last) == await store.load(run_id)

        self._run(check)

    def test_versions_saved_before_a_schema_migration_still_load(self) -> None:
        """A run migrated on load is stored again whole in the new schema version (its item
        rows written again): the versions saved before still load, migrated."""

        async def check(store: Store, clock: FakeClock) -> None:
            paused = await self._paused(store, "mig")
            before = await store.history("mig")
            with _next_schema_version(_shout):
                await store.approve("mig", paused.interruptions[0])
                done = await Runner(store=store).resume(_agent(), "mig")
                assert done.status == "completed"
                for kept in before:
                    old = await store.load("mig", version=kept.version)
                    assert old.schema_version == done.state.schema_version
                    assert old.status.value == kept.status
                    assert len(old.items) == kept.n_items
                    assert old.input[0] == UserMessage(content="GO")
                    assert old.items == done.state.items[: kept.n_items]
                final = await store.load("mig", version=done.state.version)
                assert final == done.state

        self._run(check)

    # -- forks -----------------------------------------------------------------------------

    def test_a_fork_from_any_version_runs_no_side_effect_again_without_a_decision(self) -> None:
        """For every version of a recorded run with non-idempotent tools: the fork's
        hazards are the calls it then waits on, and resuming it runs no tool body again
        except an idempotent one in flight at that version, as after a crash."""

        async def check(store: Store, clock: FakeClock) -> None:
            runner = Runner(store=store)
            paused = await runner.run(_shop(), "buy", run_id="shop")
            await store.approve("shop", paused.interruptions[0])
            assert (await runner.resume(_shop(), "shop")).status == "completed"
            history = await store.history("shop")
            assert len(history) > 6
            for kept in history:
                _RAN.clear()
                fork_id = f"shop-fork-{kept.version}"
                plan = await store.fork_hazards("shop", version=kept.version, agents=_shop())
                forked = await store.fork(
                    "shop", version=kept.version, new_run_id=fork_id, agents=_shop()
                )
                assert forked.plan == msgspec.structs.replace(plan, run_id=fork_id)
                state = await store.load(fork_id)
                assert state == forked.state
                assert state.forked_from == ForkOrigin(run_id="shop", version=kept.version)
                assert [v.version for v in await store.history(fork_id)] == [0]
                assert {r.call_id for r in state.interruptions} == set(plan.asks)
                assert _RAN == [], "forking runs nothing"

                reruns = {h.call_id for h in plan.hazards if not h.asks}
                fresh = _shop(*[say("fork done")] * 8)  # the script is read by turn
                if state.status.value == "new":
                    continue  # a new run: it would start the script again
                result = await Runner(store=store).resume(fresh, fork_id)
                ran = [name for name, run_id in _RAN if run_id == fork_id]
                assert ran == ["_fetch"] * len(reruns), (kept.version, ran, plan)
                if plan.asks:
                    assert result.status == "interrupted", kept.version
                    assert {r.call_id for r in result.interruptions} == set(plan.asks)
                    for request in result.interruptions:
                        assert request.tool != "_fetch" or request.reason == "approval"
                        if request.call_id in {
                            h.call_id for h in plan.hazards if h.at_fork == "in_flight"
                        }:
                            assert request.reason == "in_doubt"
                            assert request.started_by is not None
                    # A person decides: then, and only then, the body runs again.
                    for request in result.interruptions:
                        await store.approve(fork_id, request)
                    _RAN.clear()
                    again = await Runner(store=store).resume(fresh, fork_id)
                    assert again.status == "completed", kept.version
                    assert sorted(name for name, _ in _RAN) == sorted(
                        r.tool for r in result.interruptions
                    )
                else:
                    assert result.status == state.status.value or result.status == "completed"

        self._run(check)

    def test_a_fork_keeps_what_was_committed_and_refuses_what_does_not_exist(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            paused = await Runner(store=store).run(_shop(), "buy", run_id="p")
            last = paused.state.version
            forked = await store.fork("p", version=last, new_run_id="p2")
            assert forked.state.items == paused.state.items, "results are part of the fork"
            assert forked.plan.hazards[0].at_fork == "waiting"
            assert forked.plan.hazards[0].idempotent is None, "no code given: not known"
            await _raises(UnknownRunError, store.fork("nope", version=0), "nope")
            await _raises(UnknownVersionError, store.fork("p", version=last + 1))
            await _raises(UnknownVersionError, store.fork_hazards("p", version=last + 1))
            await _raises(ConflictError, store.fork("p", version=0, new_run_id="p2"))
            await _raises(ConfigurationError, store.fork("p", version=0, new_run_id="p"))
            await _raises(ConfigurationError, store.fork("p", version=-1))
            await _raises(ConfigurationError, store.fork("p", version=True))
            await _raises(UnknownRunError, store.load("p3"))
            assert await store.load("p2") == forked.state, "a refused fork changes nothing"
            # Without a run id, the fork gets a fresh one.
            other = await store.fork("p", version=last)
            assert other.state.run_id not in ("p", "p2")
            assert await store.load(other.state.run_id) == other.state
            # Two people forking to one id at once: one fork is stored, the other refused.
            both = await asyncio.gather(
                store.fork("p", version=1, new_run_id="p4"),
                store.fork("p", version=last, new_run_id="p4"),
                return_exceptions=True,
            )
            stored = [f for f in both if not isinstance(f, BaseException)]
            assert len(stored) == 1, both
            assert [type(f) for f in both if isinstance(f, BaseException)] == [ConflictError]
            assert await store.load("p4") == stored[0].state

        self._run(check)

    def test_a_fork_with_new_input_starts_over_from_that_input(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            paused = await Runner(store=store).run(_shop(), "buy", run_id="q")
            forked = await store.fork(
                "q", version=paused.state.version, new_run_id="q2", input="sell"
            )
            assert forked.state.status.value == "new"
            assert forked.state.input == (UserMessage(content="sell"),)
            assert len(forked.state.items) == 0
            assert forked.plan.hazards == ()
            assert set(forked.plan.dropped_calls) >= {r.call_id for r in paused.interruptions}
            _RAN.clear()
            done = await Runner(store=store).resume(_shop(*[say("sold")] * 8), "q2")
            assert done.status == "completed"
            assert done.final_output == "sold"
            assert _RAN == []
            assert (await store.load("q")).input == (UserMessage(content="buy"),)

    # -- the change feed -------------------------------------------------------------------
    #
    # A store that cannot notify passes with the fallback: its feeds say "anything may have
    # changed" at each timeout. One that can must tell every change, and miss none.

    def test_a_change_feed_tells_of_every_change_and_misses_none(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            async with store.changes() as feed:
                if not feed.native:
                    assert (await feed.wait(0.01)).unknown, "a feed that cannot tell says so"
                    return
                states = await _states("f1")
                await store.create(states[0])
                assert "f1" in await _heard(feed), "creating a run"
                for previous, state in itertools.pairwise(states):
                    await store.save(state, expected_version=previous.version)
                assert "f1" in await _heard(feed), "saving a run"
                (request,) = states[-1].interruptions
                waiting = asyncio.ensure_future(_heard(feed))
                await asyncio.sleep(0)  # the wait is under way before the change
                await store.approve("f1", request, by="ada")
                assert "f1" in await waiting, "posting a decision"
                await store.delete("f1")
                assert "f1" in await _heard(feed), "deleting a run"

        self._run(check)

    def test_a_change_feed_of_one_run_or_of_claimable_runs_hears_only_those(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            paused = await self._paused(store, "mine")
            await self._paused(store, "other")
            async with store.changes("mine") as mine, store.changes(claimable=True) as runnable:
                if not mine.native:
                    return
                await store.cancel("other", "no")
                await store.approve("mine", paused.interruptions[0])
                heard = await _heard(mine)
                assert "mine" in heard
                assert heard.unknown or "other" not in heard.runs
                await _until(runnable, {"mine", "other"})
                # A step saved under a lease is its worker's own business: it makes no run
                # claimable.
                lease = await store.claim("w", run_id="other")
                assert lease is not None
                state = await store.load("other")
                await store.save(
                    msgspec.structs.replace(state, version=state.version + 1), lease=lease
                )
                heard = await runnable.wait(0.1)
                assert heard.unknown or "other" not in heard.runs
                # Giving back the lease of a run that is still runnable (it has a message
                # to apply) makes it claimable again.
                await store.release(lease)
                await _until(runnable, {"other"})

        self._run(check)

    def test_every_open_feed_hears_a_change_and_wake_ends_a_wait(self) -> None:
        async def check(store: Store, clock: FakeClock) -> None:
            async with contextlib.AsyncExitStack() as stack:
                feeds = [await stack.enter_async_context(store.changes()) for _ in range(5)]
                if not feeds[0].native:
                    return
                waits = [asyncio.ensure_future(feed.wait(None)) for feed in feeds[1:]]
                await asyncio.sleep(0)
                await store.create((await _states("many"))[0])
                heard = await asyncio.wait_for(asyncio.gather(*waits), 30)
                assert all("many" in h for h in heard)
                assert "many" in await _heard(feeds[0]), "told between two waits"
                # wake() ends a wait at once, from any thread.
                waiting = asyncio.ensure_future(feeds[0].wait(None))
                await asyncio.sleep(0)
                threading.Thread(target=feeds[0].wake).start()
                await asyncio.wait_for(waiting, 30)
            feed = store.changes()
            await _raises(ConfigurationError, feed.wait(0), "enter the change feed")
            async with feed:  # a feed can be entered again once left
                await store.create((await _states("again"))[0])
                assert "again" in await _heard(feed)

        self._run(check)


def _shout(document: dict[str, Any]) -> dict[str, Any]:
    """A stand-in migration that changes stored content, in the head (the input) and in
    the item rows (tool results): both in capitals."""
    for item in document["input"]:
        item["content"] = item["content"].upper()
    for item in document["items"]:
        if item.get("type") == "tool_result":
            item["output"] = item["output"].upper()
    return document


@contextlib.contextmanager
def _next_schema_version(
    migration: Callable[[dict[str, Any]], dict[str, Any]],
) -> Iterator[None]:
    """Pretend the code moved on one schema version, with ``migration`` to reach it."""
    version = _codec.SCHEMA_VERSION
    _codec.MIGRATIONS[version] = migration
    _codec.SCHEMA_VERSION = version + 1
    try:
        yield
    finally:
        _codec.SCHEMA_VERSION = version
        del _codec.MIGRATIONS[version]


async def _heard(feed: ChangeFeed) -> Changed:
    """What ``feed`` tells next, bounded: a change (or ``unknown``) it does not tell within
    30 s was missed."""
    changed = await feed.wait(30)
    assert changed, "the feed told of no change within 30 s"
    return changed


async def _until(feed: ChangeFeed, runs: set[str]) -> None:
    """Wait until ``feed`` has told of a change of each of ``runs`` (or of ``unknown``)."""
    left = set(runs)
    while left:
        changed = await _heard(feed)
        if changed.unknown:
            return
        left -= changed.runs


async def _raises(kind: type[BaseException], awaitable: Awaitable[Any], saying: str = "") -> None:
    message = None
    try:
        await awaitable
    except kind as exc:
        message = str(exc)
    assert message is not None, f"expected {kind.__name__}"
    assert saying in message, f"expected {kind.__name__} saying {saying!r}, got {message!r}"
