"""The events of nested runs (agents called as tools) are part of the outer run's one stream:
streamed to its handle, seen by its hooks and tracing, derived from its saved states by a
watcher, marked with the nested run's path, at positions that keep growing across a pause
for an inner approval and a resume in another process."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from agentfsm import (
    Agent,
    ApprovalRequested,
    HookError,
    MemoryStore,
    ModelRequest,
    ModelTextDelta,
    Position,
    ResponseDone,
    RunEvent,
    RunFinished,
    RunHooks,
    Runner,
    RunStarted,
    RunStopped,
    SQLiteStore,
    TextDelta,
    ToolFinished,
    ToolStarted,
    durable_events,
    tool,
)
from agentfsm.testing import ScriptedModel, call, say
from tests.apps import delegator

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


class Streaming(ScriptedModel):
    """A scripted model that streams its text word by word."""

    async def stream(self, request: ModelRequest) -> AsyncIterator[Any]:
        response = await self.respond(request)
        words = response.text.split(" ") if response.text else []
        for n, word in enumerate(words):
            yield TextDelta(text=word if n == len(words) - 1 else word + " ")
        yield ResponseDone(response)


@tool
def lookup(topic: str) -> str:
    """Look a topic up."""
    return f"{topic}: 42"


def researcher() -> Agent:
    model = Streaming([call("lookup", topic="life"), say("the answer is 42")])
    return Agent("researcher", "Research.", model, tools=[lookup])


def boss() -> Agent:
    model = ScriptedModel([call("researcher", input="what is it?"), say("it is 42")])
    return Agent("boss", "Delegate.", model, tools=[researcher().as_tool()])


def brief(event: RunEvent) -> tuple[str, ...]:
    """What a reader of the stream cares about, in few words."""
    match event:
        case RunStarted(agent=agent) | RunStopped(status=agent):
            return (type(event).__name__, event.nested, str(agent))
        case ModelTextDelta(text=text):
            return ("text", event.nested, text)
        case ToolStarted(tool=name) | ToolFinished(tool=name):
            return (type(event).__name__, event.nested, name)
        case RunFinished(output=output):
            return ("RunFinished", event.nested, str(output))
        case ApprovalRequested(request=request):
            return ("ApprovalRequested", event.nested, request.call_id)
    return ()


async def streamed(runner: Runner, agent: Agent, input: str, **kwargs: Any) -> list[RunEvent]:
    handle = runner.run_streamed(agent, input, **kwargs)
    events = [e async for e in handle.events()]
    await handle.result()
    return events


def assert_ordered(events: list[RunEvent]) -> None:
    positions = [e.position for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_the_outer_stream_shows_the_inner_runs_text_and_tools_marked_nested() -> None:
    events = run(streamed(Runner(), boss(), "go", run_id="o1"))
    assert_ordered(events)
    assert {e.run_id for e in events} == {"o1"}
    assert [b for e in events if (b := brief(e))] == [
        ("RunStarted", "", "boss"),
        ("ToolStarted", "", "researcher"),
        ("RunStarted", "call_0_0", "researcher"),
        ("ToolStarted", "call_0_0", "lookup"),
        ("ToolFinished", "call_0_0", "lookup"),
        ("text", "call_0_0", "the "),
        ("text", "call_0_0", "answer "),
        ("text", "call_0_0", "is "),
        ("text", "call_0_0", "42"),
        ("RunFinished", "call_0_0", "the answer is 42"),
        ("RunStopped", "call_0_0", "completed"),
        ("ToolFinished", "", "researcher"),
        ("RunFinished", "", "it is 42"),
        ("RunStopped", "", "completed"),
    ]
    # The nested run's events name its own agent; the outer run's own are unmarked.
    assert {getattr(e, "agent", "researcher") for e in events if e.nested} == {"researcher"}


def test_two_levels_are_marked_with_their_path_and_approvals_appear_once() -> None:
    events = run(streamed(Runner(), delegator.deep(), "go"))
    assert_ordered(events)
    assert {e.nested for e in events} == {"", "call_0_0", "call_0_0/call_0_0"}
    [asked] = [e for e in events if isinstance(e, ApprovalRequested)]
    # Where it is decided: on the outer run, by the call's path.
    assert asked.nested == "" and asked.request.call_id == "call_0_0/call_0_0/call_0_0"
    stops = [brief(e) for e in events if isinstance(e, RunStopped)]
    assert stops == [
        ("RunStopped", "call_0_0/call_0_0", "interrupted"),
        ("RunStopped", "call_0_0", "interrupted"),
        ("RunStopped", "", "interrupted"),
    ]


def test_two_nested_runs_at_once_keep_their_own_sequences_in_one_order() -> None:
    async def test() -> None:
        model = ScriptedModel(
            [[call("researcher", input="one"), call("researcher", input="two")], say("both")]
        )
        agent = Agent("boss", "Delegate.", model, tools=[researcher().as_tool()])
        states: list[Any] = []
        handle = Runner(on_step=states.append).run_streamed(agent, "go")
        events = [e async for e in handle.events()]
        assert (await handle.result()).final_output == "both"
        assert_ordered(events)
        for path in ("call_0_0", "call_0_1"):
            mine = [brief(e) for e in events if e.nested == path and brief(e)]
            assert mine[0] == ("RunStarted", path, "researcher")
            assert mine[-2:] == [
                ("RunFinished", path, "the answer is 42"),
                ("RunStopped", path, "completed"),
            ]
            assert ("ToolFinished", path, "lookup") in mine
        # Both nested runs' durable events are what the saved states say, at their positions.
        derived = [
            e
            for previous, state in itertools.pairwise(states)
            for e in durable_events(previous, state)
        ]
        assert derived == [e for e in events if e.position.epoch == 0 and e.position.version > 1]

    run(test())


class Recorder(RunHooks):
    def __init__(self, fail_on: str | None = None) -> None:
        self.lines: list[str] = []
        self.fail_on = fail_on

    def on_agent_start(self, agent: str, event: RunEvent) -> None:
        self.lines.append(f"[{event.nested}] agent {agent}")

    async def on_tool_start(self, event: ToolStarted) -> None:
        if event.tool == self.fail_on:
            raise RuntimeError("the hook broke")
        self.lines.append(f"[{event.nested}] {event.tool}")

    def on_tool_end(self, event: ToolFinished) -> None:
        self.lines.append(f"[{event.nested}] {event.tool} -> {event.output}")


def test_the_runners_hooks_see_the_inner_events_and_agent_hooks_only_their_own() -> None:
    hooks, mine = Recorder(), Recorder()
    agent = boss()
    agent.hooks = mine
    result = Runner(hooks=[hooks]).run_sync(agent, "go")
    assert result.final_output == "it is 42"
    assert hooks.lines == [
        "[] agent boss",
        "[] researcher",
        "[call_0_0] agent researcher",
        "[call_0_0] lookup",
        "[call_0_0] lookup -> life: 42",
        "[] researcher -> the answer is 42",
    ]
    assert mine.lines == ["[] agent boss", "[] researcher", "[] researcher -> the answer is 42"]


def test_a_hook_that_fails_on_an_inner_event_stops_the_run_which_resumes() -> None:
    async def test() -> None:
        store = MemoryStore()
        with pytest.raises(HookError, match="the hook broke") as caught:
            await Runner(store=store, hooks=[Recorder(fail_on="lookup")]).run(
                boss(), "go", run_id="h1"
            )
        assert caught.value.state is not None
        assert caught.value.state.version == (await store.load("h1")).version
        done = await Runner(store=store).resume(boss(), "h1")
        assert done.final_output == "it is 42"

    run(test())


RESUMER = """
import asyncio, sys
import msgspec
from agentfsm import Runner, SQLiteStore
from tests.apps import delegator

async def main():
    store = SQLiteStore(sys.argv[1])
    try:
        handle = Runner(store=store).resume_streamed(delegator.agent(), "n1")
        async for event in handle.events():
            sys.stdout.write(msgspec.json.encode(event).decode() + "\\n")
        await handle.result()
    finally:
        await store.close()

asyncio.run(asyncio.wait_for(main(), 30))
"""


def test_an_inner_approval_pauses_and_a_new_process_continues_the_stream(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    effects = tmp_path / "effects"
    os.environ["DELEGATOR_EFFECTS"] = str(effects)

    async def first() -> list[RunEvent]:
        store = SQLiteStore(db)
        try:
            events = await streamed(Runner(store=store), delegator.agent(), "go", run_id="n1")
            state = await store.load("n1")
            [request] = state.interruptions
            await store.approve("n1", request, by="ada")
            return events
        finally:
            await store.close()

    try:
        before = run(first())
    finally:
        del os.environ["DELEGATOR_EFFECTS"]
    assert_ordered(before)
    assert [b for e in before if (b := brief(e))][-4:] == [
        ("RunStopped", "call_0_0", "interrupted"),
        ("ToolFinished", "", "mailer"),
        ("ApprovalRequested", "", "call_0_0/call_0_0"),
        ("RunStopped", "", "interrupted"),
    ]
    later = subprocess.run(
        [sys.executable, "-c", RESUMER, str(db)],
        cwd=ROOT,
        env={**os.environ, "DELEGATOR_EFFECTS": str(effects), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert later.returncode == 0, later.stderr
    after = [msgspec.json.decode(line, type=RunEvent) for line in later.stdout.splitlines()]
    assert_ordered(after)
    assert after[0].position > before[-1].position
    assert [b for e in after if (b := brief(e))] == [
        ("RunStarted", "", "boss"),
        ("ToolStarted", "", "mailer"),
        ("RunStarted", "call_0_0", "mailer"),
        ("ToolStarted", "call_0_0", "send"),
        ("ToolFinished", "call_0_0", "send"),
        ("RunFinished", "call_0_0", "mail sent to ada"),
        ("RunStopped", "call_0_0", "completed"),
        ("ToolFinished", "", "mailer"),
        ("RunFinished", "", "done: mail sent"),
        ("RunStopped", "", "completed"),
    ]
    [sent] = [e for e in after if isinstance(e, ToolFinished) and e.tool == "send"]
    assert sent.output == "sent to ada" and not sent.is_error
    assert [line.split()[:2] for line in effects.read_text().splitlines()] == [["send", "ada"]]


def test_the_durable_events_of_nested_steps_follow_from_the_outer_states() -> None:
    """What a watcher in another process derives from two saved states is what the driving
    process streamed, at the same positions (a nested step is an outer step)."""

    async def test() -> None:
        states = []
        handle = Runner(on_step=states.append).run_streamed(boss(), "go", run_id="d1")
        live = [e async for e in handle.events()]
        await handle.result()
        durable = [e for e in live if e.position.epoch == 0]
        derived = [
            e
            for previous, state in itertools.pairwise(states)
            for e in durable_events(previous, state)
        ]
        # The first step's events come from the new run: both start after it.
        assert derived == [e for e in durable if e.position.version > states[0].version]
        assert {e.nested for e in derived} == {"", "call_0_0"}

    run(test())


def test_the_inbox_streams_nested_events_and_resumes_from_one_exactly() -> None:
    pytest.importorskip("starlette", reason="the inbox needs the web extra")
    from agentfsm.web import create_app
    from tests.inboxkit import ADA, TOKENS, Stream

    async def until_the_end(stream: Stream, seen: set[int] | None = None) -> list[dict[str, Any]]:
        taken: list[dict[str, Any]] = []
        async for event in stream.events():
            taken.append(event)
            data = event["data"]
            if event["event"] == "state_saved" and not data["nested"] and seen is not None:
                seen.add(data["version"])
            if event["event"] == "run_finished" and not data["nested"]:
                return taken
        raise AssertionError(f"the stream ended before the run did: {taken}")

    async def test() -> None:
        store = MemoryStore()
        paused = await Runner(store=store).run(delegator.agent(), "go", run_id="w1")
        app = create_app(store, auth=TOKENS, poll_interval=0.01)
        version = paused.state.version
        seen: set[int] = set()

        async def watched(state: Any) -> None:
            # Each version is watched before the next: the watcher derives every step's
            # events (one that looks less often gets them together, and misses the steps of
            # a nested run that ended between two looks, as it misses passing statuses).
            for _ in range(1000):
                if state.version in seen:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"version {state.version} was never streamed")

        async with Stream(app, f"/api/runs/w1/events?after={version}", ADA) as stream:
            reading = asyncio.ensure_future(until_the_end(stream, seen))
            [request] = paused.state.interruptions
            await store.approve("w1", request, by="ada")
            await Runner(store=store, on_step=watched).resume(delegator.agent(), "w1")
            events = await asyncio.wait_for(reading, 10)
        positions = [Position.parse(e["id"]) for e in events]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        nested = [e for e in events if e["data"]["nested"] == "call_0_0"]
        assert [e["event"] for e in nested if e["event"] != "state_saved"][-3:] == [
            "item_added",
            "status_changed",
            "run_finished",
        ]
        assert nested[-1]["data"]["output"] == "mail sent to ada"
        first = events.index(nested[0])
        headers = {**ADA, "Last-Event-ID": events[first]["id"]}
        async with Stream(app, "/api/runs/w1/events", headers) as again:
            rest = await asyncio.wait_for(until_the_end(again), 10)
        assert rest == events[first + 1 :]

    run(test())


def test_inner_spans_nest_under_the_outer_calls_span(spans: Any) -> None:
    from agentfsm.tracing import OpenTelemetryHooks

    hooks = OpenTelemetryHooks(tracer_provider=spans.provider)
    assert Runner(hooks=[hooks]).run_sync(boss(), "go").final_output == "it is 42"
    finished = {s.name: s for s in spans.get_finished_spans()}
    outer, call_span = finished["invoke_agent boss"], finished["execute_tool researcher"]
    inner, inner_tool = finished["invoke_agent researcher"], finished["execute_tool lookup"]
    assert call_span.parent.span_id == outer.context.span_id
    assert inner.parent.span_id == call_span.context.span_id
    assert inner_tool.parent.span_id == inner.context.span_id
    assert len({s.context.trace_id for s in finished.values()}) == 1
    assert all(s.status.is_ok for s in finished.values())


@pytest.fixture
def spans() -> Any:
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
    except ImportError as exc:
        pytest.skip(f"the OpenTelemetry SDK cannot be imported ({exc})")
    from test_tracing import SDK_PROBLEM

    if SDK_PROBLEM is not None:
        pytest.skip(SDK_PROBLEM)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exporter.provider = provider  # type: ignore[attr-defined]
    yield exporter
    provider.shutdown()


TRACED_RESUMER = """
import asyncio, json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from agentfsm import Runner, SQLiteStore
from agentfsm.tracing import OpenTelemetryHooks
from tests.apps import delegator

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))

async def main():
    store = SQLiteStore(sys.argv[1])
    try:
        hooks = OpenTelemetryHooks(tracer_provider=provider)
        return await Runner(store=store, hooks=[hooks]).resume(delegator.agent(), "t1")
    finally:
        await store.close()

result = asyncio.run(asyncio.wait_for(main(), 30))
print(json.dumps({
    "status": result.status,
    "spans": {
        s.name: {
            "trace": format(s.context.trace_id, "032x"),
            "span": format(s.context.span_id, "016x"),
            "parent": s.parent and format(s.parent.span_id, "016x"),
        }
        for s in exporter.get_finished_spans()
    },
}))
"""


def test_a_nested_run_resumed_in_a_new_process_is_traced_under_the_outer_call(
    spans: Any, tmp_path: Path
) -> None:
    from agentfsm.tracing import OpenTelemetryHooks

    db = tmp_path / "runs.db"

    async def first() -> None:
        store = SQLiteStore(db)
        try:
            hooks = OpenTelemetryHooks(tracer_provider=spans.provider)
            paused = await Runner(store=store, hooks=[hooks]).run(
                delegator.agent(), "go", run_id="t1"
            )
            [request] = paused.state.interruptions
            await store.approve("t1", request, by="ada")
        finally:
            await store.close()

    run(first())
    before = {s.name: s for s in spans.get_finished_spans()}
    assert before["invoke_agent mailer"].parent.span_id == (
        before["execute_tool mailer"].context.span_id
    )
    later = subprocess.run(
        [sys.executable, "-c", TRACED_RESUMER, str(db)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert later.returncode == 0, later.stderr
    report = json.loads(later.stdout.splitlines()[-1])
    assert report["status"] == "completed"
    theirs = report["spans"]
    trace_id = format(before["invoke_agent boss"].context.trace_id, "032x")
    assert {s["trace"] for s in theirs.values()} == {trace_id}
    assert theirs["invoke_agent mailer"]["parent"] == theirs["execute_tool mailer"]["span"]
    assert theirs["execute_tool send"]["parent"] == theirs["invoke_agent mailer"]["span"]
    assert theirs["execute_tool mailer"]["parent"] == theirs["invoke_agent boss"]["span"]
