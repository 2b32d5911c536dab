"""Tracing: the run keeps a trace context (a pure step copies it from Started), every drive's
stream ends with RunStopped, and OpenTelemetryHooks turns the stream into GenAI spans: names,
nesting, attributes, content only when asked, approvals as span events, errors, and one
trace across an approval wait and a resume in another process.

The span tests need the OpenTelemetry SDK (in the dev lock) at the API's own version; under
``make test-oldest`` the API is at its floor and they skip, while the tests of the API alone
still run.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import agentfsm
import agentfsm.tracing
from agentfsm import (
    Agent,
    ConfigurationError,
    HookError,
    ModelError,
    ModelRequest,
    RunEvent,
    RunHooks,
    Runner,
    RunStopped,
    SQLiteStore,
    Started,
    new_run,
    step,
    tool,
)
from agentfsm.testing import ScriptedModel, call, handoff, say
from agentfsm.tracing import OpenTelemetryHooks, provider_from_model

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def _sdk_problem() -> str | None:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        return f"the OpenTelemetry SDK cannot be imported ({exc})"
    api = importlib.metadata.version("opentelemetry-api")
    sdk = importlib.metadata.version("opentelemetry-sdk")
    if api != sdk:
        return f"the SDK {sdk} needs the API at its own version, not {api} (make test-oldest)"
    return None


SDK_PROBLEM = _sdk_problem()
needs_sdk = pytest.mark.skipif(SDK_PROBLEM is not None, reason=SDK_PROBLEM or "")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool(needs_approval=True)
def transfer(amount: int) -> str:
    """Move money."""
    return f"moved {amount}"


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise ValueError(reason)


class Named:
    """A ScriptedModel under a real model's name, as OpenAI clients report it."""

    def __init__(self, name: str, *turns: Any) -> None:
        self.model = name
        self._inner = ScriptedModel(list(turns))

    async def respond(self, request: ModelRequest) -> Any:
        return await self._inner.respond(request)


class Broken:
    model = "gpt-4o-mini"

    async def respond(self, request: ModelRequest) -> Any:
        raise RuntimeError("the model is down")


def adder(*turns: Any, model: str = "gpt-4o-mini") -> Agent:
    return Agent("a", "", Named(model, *turns), tools=[add, transfer, explode])


# -- the run keeps a carrier; the core only copies it ------------------------------------------


def test_started_sets_the_trace_once_and_the_step_stays_pure() -> None:
    agent = adder(say("hi"))
    first = new_run(agent, "go", run_id="t1", max_turns=0)
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    one, _ = step(first, Started(trace=carrier), agent)
    again, _ = step(first, Started(trace=carrier), agent)
    assert one == again and one.trace == carrier and first.trace == {}
    assert agentfsm.RunState.from_json(one.to_json()).trace == carrier
    # Failed on its turn limit and restarted with more: the run keeps its trace.
    assert one.status is agentfsm.RunStatus.FAILED
    other = {"traceparent": "00-" + "3" * 32 + "-" + "4" * 16 + "-01"}
    assert step(one, Started(max_turns=3, trace=other), agent).state.trace == carrier


def test_a_hooks_trace_context_is_kept_and_handed_back_on_every_start(tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    class Carrier(RunHooks):
        def on_event(self, event: RunEvent) -> None:  # type: ignore[override]
            if isinstance(event, agentfsm.RunStarted):
                seen.append(event.trace)

        def trace_context(self, run_id: str) -> dict[str, str]:
            return {"traceparent": f"for {run_id}"}

    async def main() -> agentfsm.RunResult:
        store = SQLiteStore(tmp_path / "runs.db")
        try:
            runner = Runner(store=store, hooks=Carrier())
            waiting = await runner.run(
                adder(call("transfer", amount=1), say("ok")), "go", run_id="k"
            )
            await store.decide("k", _approval(waiting))
            return await runner.resume(adder(call("transfer", amount=1), say("ok")), "k")
        finally:
            await store.close()

    done = run(main())
    assert done.status == "completed"
    assert done.state.trace == {"traceparent": "for k"}
    assert seen == [{}, {"traceparent": "for k"}]


def _approval(result: agentfsm.RunResult, by: str = "") -> agentfsm.Decision:
    [request] = result.interruptions
    return agentfsm.Decision(call_id=request.call_id, digest=request.digest, approved=True, by=by)


@pytest.mark.parametrize(
    "given",
    [{"traceparent": 1}, ["traceparent"], {str(i): "" for i in range(17)}, {"t": "x" * 5000}],
)
def test_a_trace_context_that_is_not_strings_stops_the_run_with_a_hook_error(given: Any) -> None:
    class Bad(RunHooks):
        def trace_context(self, run_id: str) -> Any:
            return given

    with pytest.raises(HookError, match="trace_context"):
        run(Runner(hooks=Bad()).run(adder(say("hi")), "go"))


def test_every_drive_ends_with_run_stopped_saying_why() -> None:
    events: list[RunEvent] = []

    class Recorder(RunHooks):
        def on_event(self, event: RunEvent) -> None:  # type: ignore[override]
            events.append(event)

    with pytest.raises(ModelError):
        run(Runner(hooks=Recorder()).run(Agent("a", "", Broken()), "go"))
    last = events[-1]
    assert isinstance(last, RunStopped)
    assert last.error_type == "ModelError" and last.status == "running"
    finished = [e for e in events if isinstance(e, agentfsm.ModelCallFinished)]
    assert finished[-1].error_type == "RuntimeError"


# -- OpenTelemetry missing, or present without an SDK ----------------------------------------


def test_without_opentelemetry_the_hooks_say_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agentfsm.tracing, "_MISSING", "No module named 'opentelemetry'")
    with pytest.raises(ConfigurationError, match=r"agentfsm\[otel\]"):
        OpenTelemetryHooks()


@pytest.mark.parametrize(
    "kwargs", [{"provider_name": 3}, {"capture_content": "yes"}], ids=["provider", "content"]
)
def test_bad_settings_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        OpenTelemetryHooks(**kwargs)


def test_with_the_api_alone_nothing_is_recorded_and_no_trace_is_kept() -> None:
    from opentelemetry import trace

    hooks = OpenTelemetryHooks(tracer_provider=trace.NoOpTracerProvider())
    result = run(Runner(hooks=hooks).run(adder(call("add", a=1, b=2), say("3")), "go"))
    assert result.status == "completed" and result.state.trace == {}


def test_the_provider_is_guessed_from_the_model_name() -> None:
    assert provider_from_model("gpt-4o-mini") == "openai"
    assert provider_from_model("claude-3-5-sonnet") == "anthropic"
    assert provider_from_model("mistralai/mistral-large") == "mistral_ai"
    assert provider_from_model("llama3.1:8b") == "unknown"


def test_the_attribute_names_are_the_conventions() -> None:
    try:
        from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
    except ImportError:
        pytest.skip("opentelemetry-semantic-conventions is not installed")
    t = agentfsm.tracing
    pairs = {
        t.OPERATION_NAME: gen_ai.GEN_AI_OPERATION_NAME,
        t.PROVIDER_NAME: gen_ai.GEN_AI_PROVIDER_NAME,
        t.AGENT_NAME: gen_ai.GEN_AI_AGENT_NAME,
        t.CONVERSATION_ID: gen_ai.GEN_AI_CONVERSATION_ID,
        t.REQUEST_MODEL: gen_ai.GEN_AI_REQUEST_MODEL,
        t.USAGE_INPUT_TOKENS: gen_ai.GEN_AI_USAGE_INPUT_TOKENS,
        t.USAGE_OUTPUT_TOKENS: gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS,
        t.OUTPUT_MESSAGES: gen_ai.GEN_AI_OUTPUT_MESSAGES,
        t.TOOL_NAME: gen_ai.GEN_AI_TOOL_NAME,
        t.TOOL_TYPE: gen_ai.GEN_AI_TOOL_TYPE,
        t.TOOL_CALL_ID: gen_ai.GEN_AI_TOOL_CALL_ID,
        t.TOOL_CALL_ARGUMENTS: gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS,
        t.TOOL_CALL_RESULT: gen_ai.GEN_AI_TOOL_CALL_RESULT,
    }
    assert all(ours == theirs for ours, theirs in pairs.items()), pairs
    operations = gen_ai.GenAiOperationNameValues
    assert (
        operations.INVOKE_AGENT.value,
        operations.CHAT.value,
        operations.EXECUTE_TOOL.value,
    ) == (t.INVOKE_AGENT, t.CHAT, t.EXECUTE_TOOL)


# -- spans ------------------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[Any]:
    if SDK_PROBLEM is not None:
        pytest.skip(SDK_PROBLEM)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exporter.provider = provider  # type: ignore[attr-defined]
    yield exporter
    provider.shutdown()


def hooks(spans: Any, **kwargs: Any) -> OpenTelemetryHooks:
    return OpenTelemetryHooks(tracer_provider=spans.provider, **kwargs)


def one(spans: Any, name: str) -> Any:
    """The one finished span called ``name``."""
    [found] = [s for s in spans.get_finished_spans() if s.name == name]
    return found


@needs_sdk
def test_a_run_is_an_agent_span_over_its_model_calls_and_tools(spans: Any) -> None:
    result = run(
        Runner(hooks=hooks(spans)).run(adder(call("add", a=1, b=2), say("3")), "go", run_id="r1")
    )
    assert result.status == "completed"
    finished = spans.get_finished_spans()
    assert sorted(s.name for s in finished) == [
        "chat gpt-4o-mini",
        "chat gpt-4o-mini",
        "execute_tool add",
        "invoke_agent a",
    ]
    [agent] = [s for s in finished if s.name == "invoke_agent a"]
    assert agent.parent is None and agent.kind.name == "INTERNAL"
    assert {s.context.trace_id for s in finished} == {agent.context.trace_id}
    assert all(s.parent.span_id == agent.context.span_id for s in finished if s is not agent)
    assert dict(agent.attributes) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "a",
        "gen_ai.conversation.id": "r1",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 20,
        "gen_ai.usage.output_tokens": 10,
        "agentfsm.run.version": 0,
        "agentfsm.run.status": "completed",
    }
    chat = next(s for s in finished if s.name.startswith("chat"))
    assert chat.kind.name == "CLIENT"
    assert dict(chat.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.conversation.id": "r1",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5,
    }
    tool_span = next(s for s in finished if s.name == "execute_tool add")
    assert dict(tool_span.attributes) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "add",
        "gen_ai.tool.call.id": "call_0_0",
        "gen_ai.tool.type": "function",
    }
    assert all(s.status.is_ok for s in finished)
    assert result.state.trace["traceparent"].split("-")[1:3] == [
        format(agent.context.trace_id, "032x"),
        format(agent.context.span_id, "016x"),
    ]


@needs_sdk
def test_the_provider_name_can_be_set(spans: Any) -> None:
    run(Runner(hooks=hooks(spans, provider_name="azure.ai.openai")).run(adder(say("hi")), "go"))
    assert one(spans, "chat gpt-4o-mini").attributes["gen_ai.provider.name"] == "azure.ai.openai"


@needs_sdk
def test_content_is_recorded_only_when_asked(spans: Any) -> None:
    def attributes() -> set[str]:
        return {k for s in spans.get_finished_spans() for k in s.attributes} | {
            k for s in spans.get_finished_spans() for e in s.events for k in e.attributes
        }

    turns = (call("add", a=1, b=2), call("transfer", amount=5))
    run(Runner(hooks=hooks(spans)).run(adder(*turns), "secret"))
    content = {
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "gen_ai.output.messages",
        "agentfsm.approval.arguments",
    }
    assert not attributes() & content
    spans.clear()
    run(Runner(hooks=hooks(spans, capture_content=True)).run(adder(*turns), "secret"))
    assert attributes() >= content
    tool_span = next(s for s in spans.get_finished_spans() if s.name == "execute_tool add")
    assert tool_span.attributes["gen_ai.tool.call.arguments"] == '{"a":1,"b":2}'
    assert tool_span.attributes["gen_ai.tool.call.result"] == "3"
    answers = [
        json.loads(s.attributes["gen_ai.output.messages"])
        for s in spans.get_finished_spans()
        if s.name.startswith("chat")
    ]
    assert answers[0] == [
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "id": "call_0_0",
                    "name": "add",
                    "arguments": {"a": 1, "b": 2},
                }
            ],
        }
    ]
    chat = next(s for s in spans.get_finished_spans() if s.name.startswith("chat"))
    assert chat.end_time <= tool_span.start_time  # it ends when the call did, not later


@needs_sdk
def test_approvals_are_events_with_the_approver(spans: Any) -> None:
    agent = adder(call("transfer", amount=5), say("done"))
    runner = Runner(hooks=hooks(spans))
    waiting = run(runner.run(agent, "go", run_id="ap"))
    [request] = waiting.interruptions
    approved = waiting.state.approve(request, by="alice@example.com", at=1_700_000_000.0)
    assert run(runner.run(agent, approved)).status == "completed"
    first, second = (s for s in spans.get_finished_spans() if s.name == "invoke_agent a")
    [asked] = first.events
    assert asked.name == "agentfsm.approval.requested"
    assert dict(asked.attributes) == {
        "gen_ai.tool.call.id": request.call_id,
        "gen_ai.tool.name": "transfer",
        "gen_ai.agent.name": "a",
        "agentfsm.approval.reason": "approval",
    }
    assert first.attributes["agentfsm.run.status"] == "interrupted"
    [decided] = second.events
    assert decided.name == "agentfsm.approval.decided"
    assert decided.timestamp == 1_700_000_000 * 10**9
    assert dict(decided.attributes) == {
        "gen_ai.tool.call.id": request.call_id,
        "gen_ai.tool.name": "transfer",
        "gen_ai.agent.name": "a",
        "agentfsm.approval.decision": "approve",
        "agentfsm.approval.outcome": "applied",
        "agentfsm.approval.by": "alice@example.com",
    }
    assert second.parent.span_id == first.context.span_id
    assert second.context.trace_id == first.context.trace_id


@needs_sdk
def test_an_expired_approval_is_an_event_of_its_own(spans: Any) -> None:
    now = [1_000.0]
    runner = Runner(hooks=hooks(spans), approval_timeout=60, clock=lambda: now[0])
    agent = adder(call("transfer", amount=5), say("too late"))
    waiting = run(runner.run(agent, "go"))
    now[0] += 61
    # Resumed with no decision, past its deadline: the call expires, and the model is told.
    assert run(runner.run(agent, waiting.state)).status == "completed"
    events = [e for s in spans.get_finished_spans() for e in s.events]
    assert [e.name for e in events] == [
        "agentfsm.approval.requested",
        "agentfsm.approval.expired",
    ]
    expired = events[1]
    assert expired.attributes["agentfsm.approval.decision"] == "expire"
    assert expired.attributes["gen_ai.tool.call.id"] == waiting.interruptions[0].call_id
    assert "agentfsm.approval.by" not in expired.attributes  # nobody decided


@needs_sdk
def test_a_failing_tool_and_a_failing_model_are_error_spans(spans: Any) -> None:
    run(Runner(hooks=hooks(spans)).run(adder(call("explode", reason="no"), say("sorry")), "go"))
    failed = one(spans, "execute_tool explode")
    assert failed.status.status_code.name == "ERROR"
    assert failed.attributes["error.type"] == "ValueError"
    assert one(spans, "invoke_agent a").status.is_ok  # the model was told, and went on
    spans.clear()

    with pytest.raises(ModelError):
        run(Runner(hooks=hooks(spans)).run(Agent("b", "", Broken()), "go"))
    chat, agent = one(spans, "chat gpt-4o-mini"), one(spans, "invoke_agent b")
    assert (
        chat.status.status_code.name == "ERROR" and chat.attributes["error.type"] == "RuntimeError"
    )
    assert "the model is down" in (chat.status.description or "")
    assert (
        agent.status.status_code.name == "ERROR" and agent.attributes["error.type"] == "ModelError"
    )
    assert chat.parent.span_id == agent.context.span_id


@needs_sdk
def test_a_run_out_of_turns_is_a_failed_agent_span(spans: Any) -> None:
    result = run(Runner(hooks=hooks(spans)).run(adder(call("add", a=1, b=1)), "go", max_turns=1))
    assert result.status == "failed"
    agent = one(spans, "invoke_agent a")
    assert agent.attributes["error.type"] == "max_turns_exceeded"
    assert agent.status.status_code.name == "ERROR"


@needs_sdk
def test_a_handoff_starts_the_next_agents_span_under_the_runs_first(spans: Any) -> None:
    model = ScriptedModel([handoff("billing"), say("paid")])
    billing = Agent("billing", "", model)
    triage = Agent("triage", "", model, handoffs=[billing])
    run(Runner(hooks=hooks(spans)).run(triage, "pay"))
    first, second = one(spans, "invoke_agent triage"), one(spans, "invoke_agent billing")
    assert first.parent is None and second.parent.span_id == first.context.span_id
    assert first.end_time <= second.start_time


@needs_sdk
def test_spans_made_inside_a_tool_nest_under_its_span(spans: Any) -> None:
    tracer = spans.provider.get_tracer("user-code")

    @tool
    def lookup(key: str) -> str:
        """Look something up."""
        with tracer.start_as_current_span("db.query"):
            return key.upper()

    agent = Agent("a", "", Named("gpt-4o", call("lookup", key="k"), say("K")), tools=[lookup])
    run(Runner(hooks=hooks(spans)).run(agent, "go"))
    query, tool_span = one(spans, "db.query"), one(spans, "execute_tool lookup")
    assert query.parent.span_id == tool_span.context.span_id
    # Nothing of the run is left current in the caller's context.
    from opentelemetry import trace

    assert not trace.get_current_span().get_span_context().is_valid


@needs_sdk
def test_a_run_started_inside_a_span_is_part_of_its_trace(spans: Any) -> None:
    tracer = spans.provider.get_tracer("app")

    async def main() -> agentfsm.RunResult:
        with tracer.start_as_current_span("POST /runs"):
            return await Runner(hooks=hooks(spans)).run(adder(say("hi")), "go")

    run(main())
    request, agent = one(spans, "POST /runs"), one(spans, "invoke_agent a")
    assert agent.parent.span_id == request.context.span_id


# -- one trace across processes ---------------------------------------------------------------


def approvable() -> Agent:
    return adder(call("transfer", amount=5), say("done"))


RESUMER = """
import asyncio, json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from agentfsm import Decision, Runner, SQLiteStore
from agentfsm.tracing import OpenTelemetryHooks
from test_tracing import approvable

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))

async def main():
    store = SQLiteStore(sys.argv[1])
    state = await store.load("far")
    [request] = state.interruptions
    await store.decide("far", Decision(
        call_id=request.call_id, digest=request.digest, approved=True, by="carol"))
    with provider.get_tracer("worker").start_as_current_span("worker tick"):
        runner = Runner(store=store, hooks=OpenTelemetryHooks(tracer_provider=provider))
        result = await runner.resume(approvable(), "far")
    await store.close()
    return result

result = asyncio.run(asyncio.wait_for(main(), 30))
print(json.dumps({
    "status": result.status,
    "spans": [
        {
            "name": s.name,
            "trace": format(s.context.trace_id, "032x"),
            "span": format(s.context.span_id, "016x"),
            "parent": s.parent and format(s.parent.span_id, "016x"),
            "links": [format(l.context.span_id, "016x") for l in s.links],
            "events": [[e.name, dict(e.attributes)] for e in s.events],
        }
        for s in exporter.get_finished_spans()
    ],
}))
"""


@needs_sdk
def test_one_trace_across_an_approval_wait_and_a_resume_in_a_new_process(
    spans: Any, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"

    async def first() -> agentfsm.RunResult:
        store = SQLiteStore(db)
        try:
            return await Runner(store=store, hooks=hooks(spans)).run(
                approvable(), "go", run_id="far"
            )
        finally:
            await store.close()

    assert run(first()).status == "interrupted"
    anchor = one(spans, "invoke_agent a")
    later = subprocess.run(
        [sys.executable, "-c", RESUMER, str(db)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert later.returncode == 0, later.stderr
    report = json.loads(later.stdout.splitlines()[-1])
    assert report["status"] == "completed"
    theirs = {s["name"]: s for s in report["spans"]}
    assert set(theirs) == {
        "worker tick",
        "invoke_agent a",
        "execute_tool transfer",
        "chat gpt-4o-mini",
    }
    trace_id = format(anchor.context.trace_id, "032x")
    resumed = theirs["invoke_agent a"]
    # One trace: the resumed agent span is a child of the run's first span...
    assert resumed["trace"] == trace_id
    assert resumed["parent"] == format(anchor.context.span_id, "016x")
    assert theirs["execute_tool transfer"]["parent"] == resumed["span"]
    assert theirs["execute_tool transfer"]["trace"] == trace_id
    # ... linked to what resumed it, in that process's own trace.
    assert resumed["links"] == [theirs["worker tick"]["span"]]
    assert theirs["worker tick"]["trace"] != trace_id
    [decided] = resumed["events"]
    assert (
        decided[0] == "agentfsm.approval.decided" and decided[1]["agentfsm.approval.by"] == "carol"
    )
