"""The runner with a store: checkpoints, resume by id, decisions from other processes,
conflicts and leases."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from agentfsm import (
    Agent,
    ConfigurationError,
    ConflictError,
    MemoryStore,
    Runner,
    RunState,
    RunStatus,
    SQLiteStore,
    StoreError,
    ToolContext,
    ToolResultItem,
    UnknownRunError,
    UserMessage,
    new_run,
    open_store,
    tool,
)
from agentfsm.testing import ScriptedModel, call, say

RUNS: Counter[str] = Counter()


@tool(needs_approval=True)
def send(to: str, ctx: ToolContext) -> str:
    RUNS[ctx.idempotency_key] += 1
    return f"sent to {to}"


def agent() -> Agent:
    return Agent("mailer", "", ScriptedModel([call("send", to="ada"), say("done")]), tools=[send])


def test_a_run_is_stored_paused_and_resumed_by_id_in_another_runner(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    paused = Runner(store=store).run_sync(agent(), "mail ada", run_id="r1")
    asyncio.run(store.close())
    assert paused.status == "interrupted"
    reopened = SQLiteStore(tmp_path / "runs.db")
    asyncio.run(reopened.approve("r1", paused.interruptions[0]))
    done = Runner(store=reopened).resume_sync(agent(), "r1")
    assert done.status == "completed"
    assert done.final_output == "done"
    assert asyncio.run(reopened.load("r1")) == done.state
    asyncio.run(reopened.close())


def test_decisions_on_the_loaded_state_reach_the_store() -> None:
    store = MemoryStore()
    paused = Runner(store=store).run_sync(agent(), "go", run_id="r2")
    loaded = asyncio.run(store.load("r2"))
    done = Runner(store=store).run_sync(agent(), loaded.approve(paused.interruptions[0].call_id))
    assert done.status == "completed"
    assert asyncio.run(store.load("r2")).status is RunStatus.COMPLETED


def test_a_stale_state_cannot_fork_a_stored_run() -> None:
    store = MemoryStore()
    paused = Runner(store=store).run_sync(agent(), "go", run_id="r3")
    call_id = paused.interruptions[0].call_id
    Runner(store=store).run_sync(agent(), paused.state.approve(call_id))
    with pytest.raises(ConflictError, match="changed in the store"):
        Runner(store=store).run_sync(agent(), paused.state.reject(call_id))


def test_cancel_and_input_from_another_process_apply_at_the_next_step() -> None:
    store = MemoryStore()
    paused = Runner(store=store).run_sync(agent(), "go", run_id="r4")
    asyncio.run(store.add_input("r4", "also cc bob"))
    again = Runner(store=store).resume_sync(agent(), "r4")
    assert again.status == "interrupted"
    assert again.state.staged == (UserMessage(content="also cc bob"),)
    asyncio.run(store.cancel("r4", "changed my mind"))
    cancelled = Runner(store=store).resume_sync(agent(), "r4")
    assert cancelled.status == "cancelled"
    assert cancelled.error == "changed my mind"
    assert asyncio.run(store.inbox("r4")).ids == ()
    assert not [i for i in cancelled.items if isinstance(i, ToolResultItem)]
    assert paused.state.run_id == "r4"


def test_only_one_of_two_runners_resuming_the_same_run_advances_it() -> None:
    store = MemoryStore()
    paused = Runner(store=store).run_sync(agent(), "go", run_id="r5")
    asyncio.run(store.approve("r5", paused.interruptions[0]))

    async def both() -> list[object]:
        return await asyncio.gather(
            Runner(store=store).resume(agent(), "r5"),
            Runner(store=store).resume(agent(), "r5"),
            return_exceptions=True,
        )

    outcomes = asyncio.run(both())
    finished = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, ConflictError)]
    assert len(finished) == 1
    assert len(refused) == 1
    state = asyncio.run(store.load("r5"))
    key = next(c for c in paused.state.ledger).idempotency_key
    assert RUNS[key] == 1
    assert state.status is RunStatus.COMPLETED


def test_a_worker_runs_every_runnable_run_of_its_agent() -> None:
    store = MemoryStore()
    other = Agent("other", "", ScriptedModel([say("x")]))
    for n in range(3):
        asyncio.run(store.create(_new(agent(), f"w{n}")))
    asyncio.run(store.create(_new(other, "o1")))
    advanced = asyncio.run(Runner(store=store).work(agent(), until_idle=True))
    assert advanced == 3
    statuses = {s.run_id: s.status for s in asyncio.run(store.list())}
    assert statuses == {"w0": "interrupted", "w1": "interrupted", "w2": "interrupted", "o1": "new"}


def test_resuming_an_unknown_run_and_open_store_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(UnknownRunError, match="nope"):
        Runner(store=MemoryStore()).resume_sync(agent(), "nope")
    for dsn in (tmp_path / "x.db", f"sqlite:///{tmp_path}/y.db"):
        store = open_store(dsn)
        asyncio.run(store.close())
        assert isinstance(store, SQLiteStore)
    assert isinstance(open_store("memory:"), MemoryStore)


@pytest.mark.parametrize("dsn", ["sqlite:runs.db", "postgresql:db", "memory:x", "file:runs.db"])
def test_a_scheme_without_slashes_is_refused_not_taken_for_a_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="malformed store"):
        open_store(dsn)
    assert list(tmp_path.iterdir()) == []
    store = open_store(f"./{dsn}")
    assert isinstance(store, SQLiteStore)
    asyncio.run(store.close())


def test_a_store_opened_without_create_must_exist_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for dsn in (missing, f"sqlite:///{missing}"):
        with pytest.raises(StoreError, match="does not exist"):
            open_store(dsn, create=False)
    (tmp_path / "empty.db").touch()
    with pytest.raises(StoreError, match="not an agentfsm store"):
        open_store(tmp_path / "empty.db", create=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
    assert (tmp_path / "empty.db").stat().st_size == 0

    async def reopen() -> list[str]:
        writer = SQLiteStore(tmp_path / "runs.db")
        await writer.create(_new(agent(), "r"))
        await writer.close()
        reader = open_store(tmp_path / "runs.db", create=False)
        try:
            return [s.run_id for s in await reader.list()]
        finally:
            await reader.close()

    assert asyncio.run(reopen()) == ["r"]


def _new(a: Agent, run_id: str) -> RunState:
    from agentfsm import new_run

    return new_run(a, "go", run_id=run_id)


def test_a_worker_leaves_a_failing_run_leased_so_it_is_retried_later_not_at_once() -> None:
    from agentfsm.testing import FakeClock

    clock = FakeClock()
    store = MemoryStore(clock=clock)
    broken = Agent("mailer", "", ScriptedModel([]), tools=[send])
    asyncio.run(store.create(_new(broken, "w0")))
    runner = Runner(store=store, lease_seconds=30)
    assert asyncio.run(runner.work(broken, until_idle=True)) == 0
    assert asyncio.run(store.claim("other", lease_seconds=30)) is None, "still leased"
    clock.advance(31)
    lease = asyncio.run(store.claim("other", lease_seconds=30))
    assert lease is not None
    assert lease.run_id == "w0"


def test_the_lease_is_renewed_while_a_long_tool_runs(tmp_path: Path) -> None:
    @tool
    async def slow() -> str:
        """Take longer than a lease."""
        await asyncio.sleep(0.5)
        return "done slowly"

    slow_agent = Agent("slow", "", ScriptedModel([call("slow"), say("ok")]), tools=[slow])
    store = SQLiteStore(tmp_path / "runs.db")

    async def main() -> tuple[str, object]:
        runner = Runner(store=store, lease_seconds=0.15)
        running = asyncio.create_task(runner.run(slow_agent, "go", run_id="long"))
        await asyncio.sleep(0.3)  # two leases' worth: only renewal keeps it
        intruder = await store.claim("intruder", lease_seconds=10, run_id="long")
        result = await running
        await store.close()
        return result.status, intruder

    status, intruder = asyncio.run(main())
    assert intruder is None, "the running worker's lease was renewed"
    assert status == "completed"


def test_a_decision_posted_while_a_step_is_taken_from_the_inbox_is_not_passed_over(
    tmp_path: Path,
) -> None:
    # Ada's sticky approval is being applied; before that step is saved, Bob rejects the
    # second call. Bob was told his decision was posted, so it must take effect: the step is
    # taken again with both, and Bob's exact decision beats Ada's sticky one.
    store = SQLiteStore(tmp_path / "runs.db")
    model = ScriptedModel([[call("send", to="ada"), call("send", to="bob")], say("done")])
    mailer = Agent("mailer", "", model, tools=[send])
    paused = Runner(store=store).run_sync(mailer, "go", run_id="race")
    first, second = paused.interruptions
    asyncio.run(store.approve("race", first, always=True, by="ada"))
    save = store.save
    interleaved = []

    async def save_after_bob_posts(state: RunState, **kwargs: object) -> int:
        if kwargs.get("seen") is not None and not interleaved:
            interleaved.append(await store.reject("race", second, message="not bob", by="bob"))
        return await save(state, **kwargs)  # type: ignore[arg-type]

    store.save = save_after_bob_posts  # type: ignore[method-assign]
    done = Runner(store=store).resume_sync(mailer, "race")
    assert interleaved == [True]
    assert done.status == "completed"
    outputs = {i.call_id: i.output for i in done.state.items if isinstance(i, ToolResultItem)}
    assert outputs == {first.call_id: "sent to ada", second.call_id: "not bob"}
    assert [(r.decision.by, r.outcome) for r in done.state.audit] == [
        ("ada", "applied"),
        ("bob", "applied"),
    ]
    assert asyncio.run(store.inbox("race")).ids == ()
    asyncio.run(store.close())


def test_a_worker_parks_a_run_that_keeps_failing_and_a_person_takes_it_back(
    tmp_path: Path,
) -> None:
    from agentfsm import ModelRequest, ModelResponse, RetryPolicy

    class Down:
        calls = 0

        async def respond(self, request: ModelRequest) -> ModelResponse:
            Down.calls += 1
            raise RuntimeError("the model server is down")

    store = SQLiteStore(tmp_path / "runs.db")
    broken = Agent("a", "", Down())
    asyncio.run(store.create(new_run(broken, "hi", run_id="k1")))
    worker = Runner(store=store, retry=RetryPolicy(attempts=3, backoff=0, max_backoff=0))
    assert asyncio.run(worker.work(broken, until_idle=True)) == 0
    assert Down.calls == 3, "tried three times, then set aside"
    (summary,) = asyncio.run(store.list())
    assert summary.parked is not None and "the model server is down" in summary.parked
    assert asyncio.run(worker.work(broken, until_idle=True)) == 0
    assert Down.calls == 3, "a parked run is not retried"
    fixed = Agent("a", "", ScriptedModel([say("back")]))
    done = Runner(store=store).resume_sync(fixed, "k1")
    assert done.final_output == "back"
    (summary,) = asyncio.run(store.list())
    assert summary.parked is None
    asyncio.run(store.close())


def test_decisions_pending_when_a_run_is_cancelled_are_recorded_as_refused(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    paused = Runner(store=store).run_sync(agent(), "go", run_id="x1")
    asyncio.run(store.approve("x1", paused.interruptions[0], by="ada"))
    asyncio.run(store.cancel("x1", "customer withdrew"))
    done = Runner(store=store).resume_sync(agent(), "x1")
    assert done.status == "cancelled"
    (record,) = done.state.audit
    assert (record.decision.by, record.outcome) == ("ada", "refused")
    assert "cancelled before this decision was applied (customer withdrew)" in (record.reason or "")
    assert done.interruptions == []
    asyncio.run(store.close())


def _gated() -> tuple[Agent, dict[str, asyncio.Event], dict[str, asyncio.Event]]:
    """An agent whose tool waits, in each run, until the test opens that run's gate."""
    started: dict[str, asyncio.Event] = {}
    gates: dict[str, asyncio.Event] = {}

    @tool
    async def wait(ctx: ToolContext) -> str:
        """Wait for the gate."""
        started.setdefault(ctx.run_id, asyncio.Event()).set()
        await gates.setdefault(ctx.run_id, asyncio.Event()).wait()
        return f"passed {ctx.run_id}"

    model = ScriptedModel([call("wait"), say("done")])
    return Agent("gated", "", model, tools=[wait]), started, gates


async def _until(started: dict[str, asyncio.Event], run_id: str) -> None:
    await asyncio.wait_for(started.setdefault(run_id, asyncio.Event()).wait(), 10)


def _ran(state: RunState) -> list[str]:
    return [i.output for i in state.items if isinstance(i, ToolResultItem)]


def test_stop_ends_the_work_under_way_and_the_runner_can_be_started_again() -> None:
    gated, started, gates = _gated()
    store = MemoryStore()

    async def main() -> None:
        runner = Runner(store=store)
        running = asyncio.create_task(runner.run(gated, "go", run_id="a"))
        await _until(started, "a")
        runner.stop()
        gates.setdefault("a", asyncio.Event()).set()
        stopped = await running
        # After the step that was under way, saved with the tool's result.
        assert stopped.status == "running"
        assert _ran(await store.load("a")) == ["passed a"]
        # Started again after the stop: it goes to the end, with nothing run twice.
        done = await runner.resume(gated, "a")
        assert (done.status, _ran(done.state)) == ("completed", ["passed a"])
        runner.stop()  # before any work: stops nothing started later
        gates["b"] = asyncio.Event()
        gates["b"].set()
        assert (await runner.run(gated, "go", run_id="b")).status == "completed"

    asyncio.run(main())


def test_work_started_after_stop_does_not_undo_it() -> None:
    gated, started, gates = _gated()
    store = MemoryStore()

    async def main() -> None:
        runner = Runner(store=store)
        old = asyncio.create_task(runner.run(gated, "go", run_id="old"))
        await _until(started, "old")
        runner.stop()
        new = asyncio.create_task(runner.run(gated, "go", run_id="new"))
        await _until(started, "new")
        for gate in ("old", "new"):
            gates.setdefault(gate, asyncio.Event()).set()
        assert (await asyncio.wait_for(old, 10)).status == "running"
        assert (await asyncio.wait_for(new, 10)).status == "completed"

    asyncio.run(main())


def test_a_worker_stopped_and_started_again_finishes_the_runs() -> None:
    gated, started, gates = _gated()
    store = MemoryStore()
    for n in range(3):
        asyncio.run(store.create(_new(gated, f"w{n}")))

    async def main() -> None:
        runner = Runner(store=store)
        working = asyncio.create_task(runner.work(gated, poll_interval=0.01))
        await _until(started, "w0")
        runner.stop()
        gates.setdefault("w0", asyncio.Event()).set()
        assert await asyncio.wait_for(working, 10) == 1
        assert (await store.load("w0")).status is RunStatus.RUNNING
        for n in range(3):
            gates.setdefault(f"w{n}", asyncio.Event()).set()
        assert await runner.work(gated, until_idle=True) == 3

    asyncio.run(main())
    assert {s.status for s in asyncio.run(store.list())} == {"completed"}


def test_a_stop_while_the_model_answers_runs_the_calls_it_started_not_leaves_them_in_doubt() -> (
    None
):
    runner = Runner(store=MemoryStore())
    script = ScriptedModel([call("send", to="ada"), say("done")])

    class Stopping:
        async def respond(self, request: object) -> object:
            runner.stop()  # as a signal would, while the model thinks
            return await script.respond(request)  # type: ignore[arg-type]

    @tool  # no approval needed: the call starts as soon as the model asks for it
    def send(to: str) -> str:
        """Send."""
        return f"sent to {to}"

    mailer = Agent("m", "", Stopping(), tools=[send])
    stopped = runner.run_sync(mailer, "go", run_id="s")
    assert (stopped.status, _ran(stopped.state)) == ("running", ["sent to ada"])
    done = runner.resume_sync(mailer, "s")
    assert (done.status, done.interruptions, _ran(done.state)) == (
        "completed",
        [],
        ["sent to ada"],
    )
