"""OpenTelemetry tracing of runs, following the GenAI semantic conventions.

``OpenTelemetryHooks`` is a consumer of the run's event stream, like any ``RunHooks``: give
it to ``Runner(hooks=...)``. It needs the ``otel`` extra (``pip install 'agentfsm[otel]'``,
the OpenTelemetry API); the SDK, its exporters and its sampling are the application's
choice. The driver knows nothing of OpenTelemetry.

What it records, per run:

* ``invoke_agent {agent}`` (INTERNAL): a stretch of the run during which ``agent`` is the
  current agent, in one process: from ``RunStarted`` or a handoff to the next handoff, to the
  status change that stops the run (waiting, paused, ended), or to ``RunStopped``.
* ``chat {model}`` (CLIENT): one model call, under its ``invoke_agent``.
* ``execute_tool {tool}`` (INTERNAL): one tool body, under its ``invoke_agent``.
* span events ``agentfsm.approval.requested``, ``agentfsm.approval.decided`` and
  ``agentfsm.approval.expired`` on the ``invoke_agent`` span of the moment, keyed by
  ``gen_ai.tool.call.id``, with the approver (``agentfsm.approval.by``) when known.

A nested run (an agent called as a tool) is traced within the outer run's trace: its spans
(``invoke_agent``, ``chat``, ``execute_tool``) nest under the outer call's ``execute_tool``
span, in this process and in one that resumes it.

While a model call or a tool body runs, its span is the current span of the task that runs
it, so spans the model client or the tool create (an instrumented HTTP client, a database
driver) nest under it.

One trace per run, across pauses and processes: the first ``invoke_agent`` span of a run is
its anchor. Its context is kept in the run (``RunState.trace``, a W3C ``traceparent``
carrier, through ``RunHooks.trace_context``), and every later ``invoke_agent`` span of the
run, after a handoff or in another process days later, is its child. A process that resumes
a run inside a span of its own (a web handler's, a worker's) links to it. So a run reads as
one tree in one trace, and what resumed it is a link away.

Content (messages, tool arguments and results, approval messages) is recorded only with
``capture_content=True``: it may hold personal or secret data.

``error.type`` values: the exception's class name (a model or tool that raised, or the
driver's error when it stops driving on one), ``timeout`` (a tool's time limit),
``in_doubt`` (a tool body given up while it may still take effect), ``cancelled``, and a
failed run's ``RunError.kind`` (``max_turns_exceeded``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError
from ._items import AssistantMessage, ToolCallItem
from ._run_events import (
    AgentChanged,
    ApprovalDecided,
    ApprovalRequested,
    ItemAdded,
    ModelCallFinished,
    ModelCallStarted,
    RunEvent,
    RunStarted,
    RunStopped,
    StateSaved,
    StatusChanged,
    ToolFinished,
    ToolStarted,
)
from ._stream import RunHooks
from ._version import __version__

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # the otel extra is not installed: say so when used
    _MISSING: str | None = str(exc)
else:
    _MISSING = None

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["OpenTelemetryHooks", "provider_from_model"]

# -- names from the conventions --------------------------------------------------------------
# The GenAI names, as in the semantic-conventions registry (opentelemetry-semantic-conventions
# has them only in a private, incubating module; a test checks they agree).

OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
AGENT_NAME = "gen_ai.agent.name"
CONVERSATION_ID = "gen_ai.conversation.id"
REQUEST_MODEL = "gen_ai.request.model"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
OUTPUT_MESSAGES = "gen_ai.output.messages"
TOOL_NAME = "gen_ai.tool.name"
TOOL_TYPE = "gen_ai.tool.type"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_CALL_RESULT = "gen_ai.tool.call.result"
ERROR_TYPE = "error.type"

INVOKE_AGENT = "invoke_agent"
CHAT = "chat"
EXECUTE_TOOL = "execute_tool"

# Ours: what the conventions do not name.
APPROVAL_REQUESTED = "agentfsm.approval.requested"
APPROVAL_DECIDED = "agentfsm.approval.decided"
APPROVAL_EXPIRED = "agentfsm.approval.expired"
APPROVAL_BY = "agentfsm.approval.by"
APPROVAL_DECISION = "agentfsm.approval.decision"
APPROVAL_OUTCOME = "agentfsm.approval.outcome"
APPROVAL_REASON = "agentfsm.approval.reason"
APPROVAL_ARGUMENTS = "agentfsm.approval.arguments"
APPROVAL_MESSAGE = "agentfsm.approval.message"
RUN_STATUS = "agentfsm.run.status"
RUN_VERSION = "agentfsm.run.version"
LINK_KIND = "agentfsm.link"

_STOPS = frozenset({"completed", "failed", "cancelled", "paused", "interrupted"})

#: Model name prefixes of the providers the conventions name (``gen_ai.provider.name``).
_PROVIDERS = (
    (("gpt-", "gpt4", "o1", "o3", "o4", "chatgpt", "text-embedding", "davinci"), "openai"),
    (("claude",), "anthropic"),
    (("gemini",), "gcp.gemini"),
    (("mistral", "mixtral", "codestral", "ministral", "pixtral"), "mistral_ai"),
    (("command",), "cohere"),
    (("deepseek",), "deepseek"),
    (("grok",), "x_ai"),
    (("sonar",), "perplexity"),
)


def provider_from_model(model: str) -> str:
    """The ``gen_ai.provider.name`` a model's name suggests (``"gpt-4o"``: ``"openai"``),
    or ``"unknown"``. A guess from the name alone: a model served by another provider (an
    OpenAI model on Azure, an open model on Ollama) needs ``provider_name``."""
    name = model.lower().rsplit("/", 1)[-1]
    for prefixes, provider in _PROVIDERS:
        if name.startswith(prefixes):
            return provider
    return "unknown"


@dataclass
class _Open:
    """A span under way, and the context token that made it current, if any."""

    span: Span
    token: object | None = None
    task: asyncio.Task[Any] | None = None


@dataclass
class _Answer:
    """A model call's span kept open, after its end was recorded, until the items of its
    answer arrive (content capture only)."""

    span: Span
    end: int
    parts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Run:
    """What the hooks follow of one run driven in this process."""

    run_id: str
    anchor: Context
    agent: str
    links: list[trace.Link]
    stretch: Span | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    chat: _Open | None = None
    answer: _Answer | None = None
    tools: dict[str, _Open] = field(default_factory=dict)
    carrier: dict[str, str] = field(default_factory=dict)


class OpenTelemetryHooks(RunHooks):
    """Trace runs with OpenTelemetry: give it to ``Runner(hooks=...)``.

    Args:
        tracer_provider: where spans go (default: the global one, set by your SDK setup).
        provider_name: ``gen_ai.provider.name``: a string, or a function of the model's
            name (default: ``provider_from_model``, a guess from the name, else
            ``"unknown"``).
        capture_content: also record content: the model's answers
            (``gen_ai.output.messages``), tool arguments and results, the arguments shown
            for approval and the deciders' messages (default False: they may hold personal
            or secret data).

    Raises ConfigurationError when OpenTelemetry (the ``otel`` extra) is not installed.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        provider_name: str | Callable[[str], str] | None = None,
        capture_content: bool = False,
    ) -> None:
        if _MISSING is not None:
            raise ConfigurationError(
                f"OpenTelemetryHooks needs the OpenTelemetry API, which cannot be imported "
                f"({_MISSING}); install it with: pip install 'agentfsm[otel]'"
            )
        if provider_name is not None and not (
            isinstance(provider_name, str) or callable(provider_name)
        ):
            raise ConfigurationError("provider_name is a string or a function of the model name")
        if not isinstance(capture_content, bool):
            raise ConfigurationError("capture_content is True or False")
        self._propagator = TraceContextTextMapPropagator()
        self._tracer: Tracer = trace.get_tracer(
            "agentfsm", __version__, tracer_provider=tracer_provider
        )
        self._provider = provider_name if provider_name is not None else provider_from_model
        self.capture_content = capture_content
        self._runs: dict[tuple[str, str], _Run] = {}  # by _key
        self._providers: dict[str, str] = {}  # by model name

    # -- the stream ------------------------------------------------------------------------

    async def on_event(self, event: RunEvent) -> None:
        self.handle(event)

    def handle(self, event: RunEvent) -> None:
        """Record ``event`` (what ``on_event`` does, without awaiting)."""
        kind = type(event)
        if kind is RunStarted:
            self._started(event)  # type: ignore[arg-type]
            return
        if kind is RunStopped:
            self._stopped(event)  # type: ignore[arg-type]
            return
        record = _RECORDERS.get(kind)
        run = self._runs.get(_key(event))
        if record is not None and run is not None:  # else a run started before these hooks
            record(self, run, event)

    def _item_added(self, run: _Run, event: ItemAdded) -> None:
        if run.answer is None:
            return
        match event.item:
            case AssistantMessage(content=text):
                run.answer.parts.append({"type": "text", "content": text})
            case ToolCallItem() as call:
                run.answer.parts.append(
                    {
                        "type": "tool_call",
                        "id": call.call_id,
                        "name": call.tool,
                        "arguments": _json_or_text(call.arguments),
                    }
                )

    def _agent_changed(self, run: _Run, event: AgentChanged) -> None:
        self._flush_answer(run)
        self._end_stretch(run, None, None)
        run.agent = event.target
        self._stretch(run)

    def _status_changed(self, run: _Run, event: StatusChanged) -> None:
        status = event.status
        if status not in _STOPS:
            return
        self._flush_answer(run)
        if run.stretch is not None:
            run.stretch.set_attribute(RUN_STATUS, status)
        error = (event.error_type or "_OTHER") if status == "failed" else None
        self._end_stretch(run, error, event.reason)

    def _state_saved(self, run: _Run, event: StateSaved) -> None:
        self._flush_answer(run)

    def trace_context(self, run_id: str) -> Mapping[str, str] | None:
        """The context of the run's first ``invoke_agent`` span, for the run to keep."""
        run = self._runs.get((run_id, ""))
        if run is None or not run.carrier:
            return None
        carrier, run.carrier = run.carrier, {}
        return carrier

    # -- stretches of one agent ----------------------------------------------------------

    def _started(self, event: RunStarted) -> None:
        key = _key(event)
        stale = self._runs.pop(key, None)
        if stale is not None:  # driven again here before it said it stopped: close it
            self._close(stale, "abandoned", None)
        if event.nested:
            # A nested run: under the span of the outer call that runs it.
            path, _, call_id = event.nested.rpartition("/")
            parent = self._runs.get((event.run_id, path))
            if parent is None:
                anchor = otel_context.get_current()
            elif (opened := parent.tools.get(call_id)) is not None:
                anchor = trace.set_span_in_context(opened.span)
            else:
                anchor = trace.set_span_in_context(self._stretch(parent))
            run = _Run(event.run_id, anchor, event.agent, [])
            self._runs[key] = run
            self._stretch(run, event)
            return
        ambient = trace.get_current_span().get_span_context()
        stored = self._propagator.extract(event.trace) if event.trace else None
        if stored is not None and trace.get_current_span(stored).get_span_context().is_valid:
            # Parent: the run's anchor, so the run stays one trace. Link: what resumed it.
            links = []
            if ambient.is_valid:
                links.append(trace.Link(ambient, {LINK_KIND: "resumed_by"}))
            run = _Run(event.run_id, stored, event.agent, links)
            self._runs[key] = run
            self._stretch(run, event)
            return
        run = _Run(event.run_id, otel_context.get_current(), event.agent, [])
        self._runs[key] = run
        stretch = self._stretch(run, event)
        # This first span is the run's anchor from now on, here and wherever it resumes.
        run.anchor = trace.set_span_in_context(stretch)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=run.anchor)
        run.carrier = carrier

    def _stretch(self, run: _Run, started: RunStarted | None = None) -> Span:
        """The run's open ``invoke_agent`` span, opened if none is."""
        if run.stretch is not None:
            return run.stretch
        attributes: dict[str, Any] = {
            OPERATION_NAME: INVOKE_AGENT,
            AGENT_NAME: run.agent,
            CONVERSATION_ID: run.run_id,
        }
        span = self._tracer.start_span(
            f"{INVOKE_AGENT} {run.agent}",
            context=run.anchor,
            kind=trace.SpanKind.INTERNAL,
            attributes=attributes,
            links=run.links,
        )
        run.links = []  # the link says what resumed the run: once, on the first span
        run.stretch = span
        run.model = None
        run.input_tokens = run.output_tokens = 0
        if started is not None:
            span.set_attribute(RUN_VERSION, started.version)
        return span

    def _end_stretch(self, run: _Run, error: str | None, description: str | None) -> None:
        span, run.stretch = run.stretch, None
        if span is None:
            return
        if run.input_tokens or run.output_tokens:
            span.set_attribute(USAGE_INPUT_TOKENS, run.input_tokens)
            span.set_attribute(USAGE_OUTPUT_TOKENS, run.output_tokens)
        _finish(span, error, description)

    # -- model calls and tools -------------------------------------------------------------

    def _model_started(self, run: _Run, event: ModelCallStarted) -> None:
        self._flush_answer(run)
        stretch = self._stretch(run)
        provider = self._providers.get(event.model)
        if provider is None:
            name = self._provider
            provider = name if isinstance(name, str) else name(event.model)
            if len(self._providers) < 1024:
                self._providers[event.model] = provider
        if run.model is None:
            run.model = event.model
            stretch.set_attribute(REQUEST_MODEL, event.model)
            stretch.set_attribute(PROVIDER_NAME, provider)
        span = self._tracer.start_span(
            f"{CHAT} {event.model}",
            context=trace.set_span_in_context(stretch),
            kind=trace.SpanKind.CLIENT,
            attributes={
                OPERATION_NAME: CHAT,
                PROVIDER_NAME: provider,
                REQUEST_MODEL: event.model,
                CONVERSATION_ID: event.run_id,
            },
        )
        run.chat = self._current(span)

    def _model_finished(self, run: _Run, event: ModelCallFinished) -> None:
        opened, run.chat = run.chat, None
        if opened is None:
            return
        self._release(opened)
        span = opened.span
        usage = event.usage
        if usage is not None:
            span.set_attribute(USAGE_INPUT_TOKENS, usage.input_tokens)
            span.set_attribute(USAGE_OUTPUT_TOKENS, usage.output_tokens)
            run.input_tokens += usage.input_tokens
            run.output_tokens += usage.output_tokens
        if event.error is not None:
            _finish(span, event.error_type or "_OTHER", event.error)
        elif self.capture_content:
            # Its answer arrives as the items of the next step: keep the span open for them,
            # and end it then, at the time the call ended.
            run.answer = _Answer(span, time.time_ns())
        else:
            span.end()

    def _flush_answer(self, run: _Run) -> None:
        answer, run.answer = run.answer, None
        if answer is None:
            return
        message = {"role": "assistant", "parts": answer.parts}
        answer.span.set_attribute(OUTPUT_MESSAGES, _dumps([message]))
        answer.span.end(end_time=answer.end)

    def _tool_started(self, run: _Run, event: ToolStarted) -> None:
        self._flush_answer(run)
        stretch = self._stretch(run)
        attributes: dict[str, Any] = {
            OPERATION_NAME: EXECUTE_TOOL,
            TOOL_NAME: event.tool,
            TOOL_CALL_ID: event.call_id,
            TOOL_TYPE: "function",
        }
        if self.capture_content:
            attributes[TOOL_CALL_ARGUMENTS] = _dumps(event.arguments)
        span = self._tracer.start_span(
            f"{EXECUTE_TOOL} {event.tool}",
            context=trace.set_span_in_context(stretch),
            kind=trace.SpanKind.INTERNAL,
            attributes=attributes,
        )
        run.tools[event.call_id] = self._current(span)

    def _tool_finished(self, run: _Run, event: ToolFinished) -> None:
        opened = run.tools.pop(event.call_id, None)
        if opened is None:
            return
        self._release(opened)
        span = opened.span
        if self.capture_content and event.output is not None:
            span.set_attribute(TOOL_CALL_RESULT, event.output)
        if event.in_doubt:
            _finish(span, "in_doubt", "given up while it may still take effect")
        elif event.is_error:
            _finish(span, event.error_type or "_OTHER", event.output)
        else:
            span.end()

    def _current(self, span: Span) -> _Open:
        """``span`` made the current span of this task, so that what the model client or the
        tool traces nests under it."""
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        token = otel_context.attach(trace.set_span_in_context(span))
        return _Open(span, token, task)

    def _release(self, opened: _Open) -> None:
        """Undo ``_current``, in the task that did it; another task's context ends with it."""
        if opened.token is None:
            return
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        if task is opened.task:
            otel_context.detach(opened.token)  # type: ignore[arg-type]
        opened.token = None

    # -- approvals ------------------------------------------------------------------------

    def _approval_requested(self, run: _Run, event: ApprovalRequested) -> None:
        request = event.request
        attributes: dict[str, Any] = {
            TOOL_CALL_ID: request.call_id,
            TOOL_NAME: request.tool,
            AGENT_NAME: request.agent,
            APPROVAL_REASON: request.reason,
        }
        if self.capture_content:
            attributes[APPROVAL_ARGUMENTS] = _dumps(request.arguments)
        self._stretch(run).add_event(APPROVAL_REQUESTED, attributes)

    def _approval_decided(self, run: _Run, event: ApprovalDecided) -> None:
        record = event.record
        decision = record.decision
        attributes: dict[str, Any] = {
            TOOL_CALL_ID: decision.call_id,
            TOOL_NAME: record.tool,
            AGENT_NAME: record.agent,
            APPROVAL_DECISION: decision.kind,
            APPROVAL_OUTCOME: record.outcome,
        }
        if decision.by:
            attributes[APPROVAL_BY] = decision.by
        if record.reason is not None:
            attributes[APPROVAL_REASON] = record.reason
        if self.capture_content and decision.message is not None:
            attributes[APPROVAL_MESSAGE] = decision.message
        name = APPROVAL_EXPIRED if decision.expired else APPROVAL_DECIDED
        timestamp = None if decision.at is None else int(decision.at * 1e9)
        self._stretch(run).add_event(name, attributes, timestamp=timestamp)

    # -- the end of a drive ----------------------------------------------------------------

    def _stopped(self, event: RunStopped) -> None:
        run = self._runs.pop(_key(event), None)
        if run is None:
            return
        if run.stretch is not None and event.status is not None:
            run.stretch.set_attribute(RUN_STATUS, event.status)
        self._close(run, event.error_type, event.error)

    def _close(self, run: _Run, error: str | None, description: str | None) -> None:
        """End every span of ``run`` still open: with ``error`` if the drive ended on one."""
        self._flush_answer(run)
        opened = [*([run.chat] if run.chat is not None else []), *run.tools.values()]
        run.chat, run.tools = None, {}
        for each in opened:
            self._release(each)
            _finish(each.span, error or "abandoned", description)
        self._end_stretch(run, error, description)


#: What the hooks do with each kind of event of a run they follow (dispatch by type: this
#: runs for every event of every traced run).
_RECORDERS: dict[type[Any], Callable[[OpenTelemetryHooks, _Run, Any], None]] = {
    ModelCallStarted: OpenTelemetryHooks._model_started,
    ModelCallFinished: OpenTelemetryHooks._model_finished,
    ToolStarted: OpenTelemetryHooks._tool_started,
    ToolFinished: OpenTelemetryHooks._tool_finished,
    ItemAdded: OpenTelemetryHooks._item_added,
    ApprovalRequested: OpenTelemetryHooks._approval_requested,
    ApprovalDecided: OpenTelemetryHooks._approval_decided,
    AgentChanged: OpenTelemetryHooks._agent_changed,
    StatusChanged: OpenTelemetryHooks._status_changed,
    StateSaved: OpenTelemetryHooks._state_saved,
}


def _key(event: RunEvent) -> tuple[str, str]:
    """Which run an event is of: the run's id, and the path of its nested run (or "")."""
    return event.run_id, event.nested


def _finish(span: Span, error: str | None, description: str | None) -> None:
    if error is not None:
        span.set_attribute(ERROR_TYPE, error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, description))
    span.end()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
