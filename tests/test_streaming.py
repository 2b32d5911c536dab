"""The run's event stream: what ``run_streamed`` yields, its positions across pauses,
resumes in other processes and crashes, hooks that see the same sequence, and the controls
of a live run (cancel, pause, inject), in process and through the store."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from openai_server import OpenAIServer, Reply

import agentfsm
from agentfsm import (
    Agent,
    ApprovalRequested,
    HookError,
    ItemAdded,
    MemoryStore,
    ModelCallFinished,
    ModelCallStarted,
    ModelTextDelta,
    Position,
    RunEvent,
    RunFinished,
    RunHooks,
    Runner,
    RunStarted,
    RunStatus,
    RunStopped,
    SQLiteStore,
    StateSaved,
    StatusChanged,
    ToolFinished,
    ToolResultItem,
    ToolStarted,
    UserMessage,
    durable_events,
    tool,
)
from agentfsm.models import OpenAIProvider
from agentfsm.testing import ScriptedModel, call, say

ROOT = Path(__file__).resolve().parent.parent


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool(needs_approval=True)
def transfer(amount: int) -> str:
    """Move money."""
    return f"moved {amount}"


def adder(*turns: Any) -> Agent:
    return Agent("a", "", ScriptedModel(list(turns)), tools=[add, transfer])


async def collect(handle: agentfsm.RunHandle) -> tuple[list[RunEvent], agentfsm.RunResult]:
    events = [e async for e in handle.events()]
    return events, await handle.result()


def streamed(runner: Runner, agent: Agent, input: Any, **kwargs: Any) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(collect(runner.run_streamed(agent, input, **kwargs)), 30)

    return asyncio.run(main())


def kinds(events: list[RunEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def assert_increasing(events: list[RunEvent]) -> None:
    positions = [e.position for e in events]
    assert all(a < b for a, b in itertools.pairwise(positions)), positions


# -- the stream ------------------------------------------------------------------------------


def test_a_streamed_run_yields_its_events_in_order_and_its_result() -> None:
    events, result = streamed(Runner(), adder(call("add", a=1, b=2), say("3")), "go")
    assert result.status == "completed" and result.final_output == "3"
    assert kinds(events) == [
        "RunStarted",
        "ItemAdded",  # the input
        "StatusChanged",  # new -> running
        "StateSaved",
        "ModelCallStarted",
        "ModelCallFinished",
        "ItemAdded",  # the tool call
        "StatusChanged",  # running -> tools
        "StateSaved",
        "ToolStarted",
        "ToolFinished",
        "ItemAdded",  # the result
        "StatusChanged",
        "StateSaved",
        "ModelCallStarted",
        "ModelCallFinished",
        "ItemAdded",  # the answer
        "StatusChanged",
        "StateSaved",
        "RunFinished",
        "RunStopped",
    ]
    assert_increasing(events)
    assert {e.run_id for e in events} == {result.run_id}
    finished = [e for e in events if isinstance(e, ToolFinished)]
    assert finished[0].output == "3" and not finished[0].in_doubt
    assert events[-2] == RunFinished(
        run_id=result.run_id, position=events[-2].position, status="completed", output="3"
    )
    assert events[-1] == RunStopped(
        run_id=result.run_id, position=events[-1].position, status="completed"
    )
    saved = [e.version for e in events if isinstance(e, StateSaved)]
    assert saved == list(range(1, result.state.version + 1))


def test_events_are_json_ready_and_round_trip() -> None:
    events, _ = streamed(Runner(), adder(call("transfer", amount=5)), "go")
    wire = msgspec.json.encode(events)
    assert msgspec.json.decode(wire, type=list[RunEvent]) == events
    [asked] = [e for e in events if isinstance(e, ApprovalRequested)]
    assert asked.request.tool == "transfer" and asked.request.digest
    assert json.loads(wire)[0]["type"] == "run_started"
    assert Position.parse(str(asked.position)) == asked.position


def test_durable_events_are_the_same_wherever_they_are_derived() -> None:
    """Another process that sees the same two states derives the same events, at the same
    positions: consumers drop duplicates by position."""
    agent = adder(call("add", a=1, b=2), say("3"))
    first = agentfsm.new_run(agent, "go", run_id="d1")
    states: list[agentfsm.RunState] = []
    events, _ = streamed(Runner(on_step=states.append), agent, first)
    derived = [
        e
        for previous, state in zip([first, *states], states, strict=False)
        for e in durable_events(previous, state)
    ]
    assert derived == [e for e in events if e.position.epoch == 0]


def test_streaming_from_a_model_that_streams_reaches_events_as_it_arrives() -> None:
    """Over the loopback HTTP server: the first text delta is in ``events()`` while the
    server still holds back the rest of the answer (it waits for the consumer to say it got
    the first piece)."""
    hold = threading.Event()
    with OpenAIServer([Reply(text="Hello there, how are you?", piece=5, hold=hold)]) as server:
        agent = Agent("talker", "", OpenAIProvider(base_url=server.url).chat("gpt-test"))

        async def main() -> tuple[list[str], str]:
            handle = Runner().run_streamed(agent, "Talk")
            deltas: list[str] = []
            async for event in handle.events():
                if isinstance(event, ModelTextDelta):
                    deltas.append(event.text)
                    hold.set()
            return deltas, (await handle.result()).final_output

        deltas, output = asyncio.run(asyncio.wait_for(main(), 30))
        assert server.released == [True], "the first piece did not arrive before the rest"
    assert len(deltas) > 1
    assert "".join(deltas) == output == "Hello there, how are you?"


def test_hooks_see_the_same_sequence_as_the_stream() -> None:
    seen: list[RunEvent] = []
    calls: list[str] = []

    class Recorder(RunHooks):
        async def on_event(self, event: RunEvent) -> None:
            seen.append(event)
            await super().on_event(event)

        def on_tool_start(self, event: ToolStarted) -> None:
            calls.append(f"start {event.tool}")

        async def on_tool_end(self, event: ToolFinished) -> None:
            calls.append(f"end {event.tool} {event.output}")

        def on_model_start(self, event: ModelCallStarted) -> None:
            calls.append("model")

        def on_agent_start(self, agent: str, event: RunEvent) -> None:
            calls.append(f"agent {agent}")

    events, _ = streamed(Runner(hooks=Recorder()), adder(call("add", a=2, b=2), say("4")), "go")
    assert seen == events
    assert calls == ["agent a", "model", "start add", "end add 4", "model"]


def test_agent_hooks_see_what_happens_while_their_agent_runs() -> None:
    seen: list[str] = []

    class Mine(RunHooks):
        def on_model_start(self, event: ModelCallStarted) -> None:
            seen.append(event.agent)

    model = ScriptedModel([agentfsm.testing.handoff("billing"), say("paid")])
    billing = Agent("billing", "", model, hooks=Mine())
    triage = Agent("triage", "", model, handoffs=[billing])
    _, result = streamed(Runner(), triage, "pay")
    assert result.final_output == "paid"
    assert seen == ["billing"]


def test_a_hook_that_raises_stops_the_run_with_its_state_saved_and_it_resumes(
    tmp_path: Path,
) -> None:
    class Broken(RunHooks):
        def on_tool_end(self, event: ToolFinished) -> None:
            raise RuntimeError("dashboard down")

    store = SQLiteStore(tmp_path / "runs.db")
    agent = adder(call("add", a=1, b=1), say("2"))
    with pytest.raises(HookError, match="dashboard down") as caught:
        Runner(store=store, hooks=Broken()).run_sync(agent, "go", run_id="h1")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert caught.value.state is not None
    assert asyncio.run(store.load("h1")).version == caught.value.state.version
    # The tool ran and its result was reported; fixed, the run goes on from there.
    done = Runner(store=store).resume_sync(agent, "h1")
    assert done.status == "completed"
    results = [i for i in done.items if isinstance(i, ToolResultItem)]
    assert len(results) == 1
    asyncio.run(store.close())


def test_a_run_with_no_consumer_builds_no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any) -> Any:
        raise AssertionError("events built with nobody listening")

    monkeypatch.setattr(agentfsm._stream, "durable_events", forbidden)
    assert Runner().run_sync(adder(call("add", a=1, b=2), say("3")), "go").status == "completed"


# -- control of a live run -------------------------------------------------------------------

STARTED = threading.Event()
CANCELLED: list[str] = []


def _stop_waiting(call: agentfsm.Invocation) -> None:
    CANCELLED.append(call.call_id)
    RELEASE.set()


RELEASE = threading.Event()


@tool(on_cancel=_stop_waiting)
def wait_long(seconds: float) -> str:
    """A sync tool that would block for ``seconds`` unless released."""
    STARTED.set()
    RELEASE.wait(seconds)
    return "waited"


@tool(on_cancel=_stop_waiting)
async def sleep_long(seconds: float) -> str:
    STARTED.set()
    await asyncio.sleep(seconds)
    return "slept"


@pytest.mark.parametrize("name", ["wait_long", "sleep_long"])
def test_cancel_during_a_long_tool_calls_its_hook_and_ends_the_run_in_doubt(
    tmp_path: Path, name: str
) -> None:
    STARTED.clear()
    RELEASE.clear()
    CANCELLED.clear()
    store = SQLiteStore(tmp_path / "runs.db")
    agent = Agent(
        "a", "", ScriptedModel([call(name, seconds=60), say("x")]), tools=[wait_long, sleep_long]
    )

    async def main() -> tuple[list[RunEvent], agentfsm.RunResult]:
        handle = Runner(store=store).run_streamed(agent, "go", run_id="c1")
        while not STARTED.is_set():
            await asyncio.sleep(0.01)
        handle.cancel("the user left")
        return await collect(handle)

    events, result = asyncio.run(asyncio.wait_for(main(), 5))  # 60 s tool: cancelled at once
    assert result.status == "cancelled"
    assert result.error == "the user left"
    assert CANCELLED == ["call_0_0"]
    stored = asyncio.run(store.load("c1"))
    assert stored == result.state and stored.status is RunStatus.CANCELLED
    [record] = stored.ledger
    assert (record.status, record.reason) == ("started", "in_doubt")  # it may have acted
    assert not [i for i in stored.items if isinstance(i, ToolResultItem)]
    [done] = [e for e in events if isinstance(e, ToolFinished)]
    assert done.in_doubt
    assert isinstance(events[-2], RunFinished) and events[-2].status == "cancelled"
    asyncio.run(store.close())


def test_cancel_keeps_the_results_of_calls_that_finished() -> None:
    STARTED.clear()
    RELEASE.clear()
    turns = [[call("add", a=1, b=1), call("sleep_long", seconds=60)], say("x")]
    agent = Agent("a", "", ScriptedModel(turns), tools=[add, sleep_long])

    async def main() -> agentfsm.RunResult:
        handle = Runner().run_streamed(agent, "go")
        async for event in handle.events():
            if isinstance(event, ToolFinished) and event.tool == "add":
                handle.cancel()
        return await handle.result()

    result = asyncio.run(asyncio.wait_for(main(), 5))
    assert result.status == "cancelled"
    by_call = {c.call_id: c for c in result.state.ledger}
    assert by_call["call_0_0"].status == "committed"
    assert by_call["call_0_1"].reason == "in_doubt"
    [answer] = [i for i in result.items if isinstance(i, ToolResultItem)]
    assert answer.output == "2"


def test_cancel_during_a_streamed_model_answer_closes_the_connection(tmp_path: Path) -> None:
    long = Reply(text="word " * 400, piece=2, gap=0.01)
    with OpenAIServer([long]) as server:
        agent = Agent("talker", "", OpenAIProvider(base_url=server.url).chat("gpt-test"))
        store = SQLiteStore(tmp_path / "runs.db")

        async def main() -> agentfsm.RunResult:
            handle = Runner(store=store).run_streamed(agent, "Talk", run_id="m1")
            async for event in handle.events():
                if isinstance(event, ModelTextDelta):
                    handle.cancel("too long")
            return await handle.result()

        result = asyncio.run(asyncio.wait_for(main(), 10))
        assert server.first_disconnect() is not None, "the server never saw the disconnect"
    assert result.status == "cancelled"
    stored = asyncio.run(store.load("m1"))
    assert stored.status is RunStatus.CANCELLED and stored.error is not None
    assert stored.usage.requests == 0  # the abandoned answer is not counted
    asyncio.run(store.close())


def test_cancel_between_steps() -> None:
    handles: list[agentfsm.RunHandle] = []

    class CancelAfterStart(RunHooks):
        def on_status_changed(self, event: StatusChanged) -> None:
            if event.status == "running":
                handles[0].cancel("changed my mind")

    async def main() -> agentfsm.RunResult:
        runner = Runner(hooks=CancelAfterStart())
        handles.append(runner.run_streamed(adder(call("add", a=1, b=1), say("2")), "go"))
        return (await collect(handles[0]))[1]

    result = asyncio.run(asyncio.wait_for(main(), 10))
    assert result.status == "cancelled"
    assert result.error == "changed my mind"
    assert result.state.version == 2
    assert result.usage.requests == 0


def test_input_injected_while_a_tool_runs_reaches_the_next_model_call_once() -> None:
    STARTED.clear()
    RELEASE.clear()
    model = ScriptedModel([call("wait_long", seconds=30), say("noted"), say("bye")])
    agent = Agent("a", "", model, tools=[wait_long])

    async def main() -> agentfsm.RunResult:
        handle = Runner().run_streamed(agent, "go")
        while not STARTED.is_set():
            await asyncio.sleep(0.01)
        handle.inject("also check the invoice")
        RELEASE.set()
        return await collect(handle)

    _, result = asyncio.run(asyncio.wait_for(main(), 10))
    assert result.final_output == "noted"
    second = list(model.requests[1].conversation())
    assert second.count(UserMessage(content="also check the invoice")) == 1
    assert result.state.items[-2] == UserMessage(content="also check the invoice")


def test_pause_then_resume_to_completion_in_a_new_process(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db)

    async def main() -> tuple[list[RunEvent], agentfsm.RunResult]:
        handle = Runner(store=store).run_streamed(build_pausable(), "go", run_id="p1")
        handle.pause("lunch")
        return await collect(handle)

    events, paused = asyncio.run(asyncio.wait_for(main(), 10))
    asyncio.run(store.close())
    assert paused.status == "paused"
    assert any(isinstance(e, StatusChanged) and e.status == "paused" for e in events)
    later = subprocess.run(
        [sys.executable, "-c", RESUMER, str(db)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert later.returncode == 0, later.stderr
    lines = later.stdout.splitlines()
    assert lines[-1] == "completed 3"
    more = msgspec.json.decode(lines[0], type=list[RunEvent])
    assert_increasing([*events, *more])


def build_pausable() -> Agent:
    return adder(call("add", a=1, b=2), say("3"))


RESUMER = """
import asyncio, sys, msgspec
from agentfsm import Runner, SQLiteStore
from test_streaming import build_pausable

async def main():
    store = SQLiteStore(sys.argv[1])
    handle = Runner(store=store).resume_streamed(build_pausable(), "p1")
    events = [e async for e in handle.events()]
    result = await handle.result()
    await store.close()
    print(msgspec.json.encode(events).decode())
    print(result.status, result.final_output)

asyncio.run(main())
"""


def test_a_stored_run_pauses_and_unpauses_through_the_store_for_workers(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    agent = adder(call("add", a=1, b=2), say("3"))

    async def main() -> None:
        await store.create(agentfsm.new_run(agent, "go", run_id="w1"))
        await store.pause("w1", "maintenance")
        worker = Runner(store=store)
        assert await worker.work(agent, until_idle=True) == 1
        paused = await store.load("w1")
        assert paused.status is RunStatus.PAUSED
        assert [s.run_id for s in await store.list(status="paused")] == ["w1"]
        assert await worker.work(agent, until_idle=True) == 0, "a paused run waits"
        await store.add_input("w1", "and then stop")
        assert await worker.work(agent, until_idle=True) == 1
        still = await store.load("w1")
        assert still.status is RunStatus.PAUSED
        assert still.items[-1] == UserMessage(content="and then stop")
        await store.unpause("w1")
        assert await worker.work(agent, until_idle=True) == 1
        assert (await store.load("w1")).status is RunStatus.COMPLETED

    asyncio.run(asyncio.wait_for(main(), 30))
    asyncio.run(store.close())


def test_a_pause_for_a_run_that_stopped_meanwhile_lapses() -> None:
    store = MemoryStore()
    agent = adder(call("transfer", amount=5))

    async def main() -> None:
        await Runner(store=store).run(agent, "go", run_id="l1")
        await store.pause("l1")
        assert await Runner(store=store).work(agent, until_idle=True) == 1
        state = await store.load("l1")
        assert state.status is RunStatus.INTERRUPTED
        assert (await store.inbox("l1")).ids == ()  # not left to make the run runnable

    asyncio.run(main())


# -- positions across a crash ----------------------------------------------------------------

CRASHER = """
import asyncio, sys, msgspec
from agentfsm import Runner, SQLiteStore
from test_streaming import build_slow

async def main():
    store = SQLiteStore(sys.argv[1])
    handle = Runner(store=store, lease_seconds=1).run_streamed(build_slow(), "go", run_id="k1")
    async for event in handle.events():
        print(msgspec.json.encode(event).decode(), flush=True)

asyncio.run(main())
"""


FAST = threading.Event()  # set in this process: the re-run after the crash is quick


@tool(idempotent=True)
async def slow(seconds: float) -> str:
    await asyncio.sleep(0 if FAST.is_set() else seconds)
    return "slow done"


def build_slow() -> Agent:
    return Agent("a", "", ScriptedModel([call("slow", seconds=30), say("ok")]), tools=[slow])


def test_positions_keep_increasing_across_a_crash_and_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    crashed = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(db)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
        stdout=subprocess.PIPE,
        text=True,
    )
    before: list[RunEvent] = []
    try:
        assert crashed.stdout is not None
        for line in crashed.stdout:
            before.append(msgspec.json.decode(line, type=RunEvent))
            if isinstance(before[-1], ToolStarted):
                break
    finally:
        crashed.send_signal(signal.SIGKILL)
        crashed.communicate(timeout=10)
    time.sleep(1.2)  # the dead worker's lease runs out

    async def restart() -> list[RunEvent]:
        store = SQLiteStore(db)
        try:
            handle = Runner(store=store).resume_streamed(build_slow(), "k1")
            return (await asyncio.wait_for(collect(handle), 60))[0]
        finally:
            await store.close()

    FAST.set()  # the idempotent call runs again after the crash: quickly, here
    try:
        after = asyncio.run(restart())
    finally:
        FAST.clear()
    assert isinstance(before[-1], ToolStarted)
    assert_increasing([*before, *after])
    assert after[0].position > before[-1].position
    assert isinstance(after[-2], RunFinished) and after[-2].status == "completed"


def test_events_of_a_waiting_run_say_what_it_waits_for() -> None:
    events, result = streamed(Runner(), adder(call("transfer", amount=7)), "go")
    assert result.status == "interrupted"
    [changed] = [e for e in events if isinstance(e, StatusChanged) and e.status == "interrupted"]
    assert changed.reason == "1 call(s) wait for a decision"
    assert not any(isinstance(e, RunFinished) for e in events)
    added = [e.item for e in events if isinstance(e, ItemAdded)]
    assert added[0] == UserMessage(content="go")
    assert isinstance(events[0], RunStarted) and events[0].version == 0
    assert any(isinstance(e, ModelCallFinished) and e.usage is not None for e in events)


def test_run_streamed_needs_a_running_loop() -> None:
    with pytest.raises(agentfsm.ConfigurationError, match="running event loop"):
        Runner().run_streamed(adder(say("x")), "go")


def test_the_last_of_a_pause_and_an_unpause_wins() -> None:
    store = MemoryStore()
    agent = adder(call("add", a=1, b=2), say("3"))

    async def main() -> None:
        await store.create(agentfsm.new_run(agent, "go", run_id="t1"))
        await store.pause("t1")
        await store.unpause("t1")  # changed their mind before any worker saw it
        assert await Runner(store=store).work(agent, until_idle=True) == 1
        assert (await store.load("t1")).status is RunStatus.COMPLETED
        await store.create(agentfsm.new_run(agent, "go", run_id="t2"))
        await store.unpause("t2")
        await store.pause("t2", "for real")
        assert await Runner(store=store).work(agent, until_idle=True) == 1
        assert (await store.load("t2")).status is RunStatus.PAUSED
        assert (await store.inbox("t2")).ids == ()

    asyncio.run(main())
