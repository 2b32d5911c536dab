"""The driver's side of the event stream: numbering events and handing them to the run's
consumers (a streamed run's handle, lifecycle hooks, tracing), in order; the handle of a
streamed run, with the controls of a live run; and the hooks. Part of the driver."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError, HookError
from ._items import Item, UserMessage
from ._run_events import (
    AgentChanged,
    ApprovalRequested,
    GuardrailChecked,
    ModelCallFinished,
    ModelCallStarted,
    Position,
    RunEvent,
    RunStarted,
    RunStopped,
    StatusChanged,
    ToolFinished,
    ToolStarted,
    durable_events,
)
from ._state import RunState

if TYPE_CHECKING:
    from ._runner import RunResult

__all__ = ["Control", "Emitter", "Listener", "Live", "NestedEmitter", "RunHandle", "RunHooks"]

#: A consumer of run events: called with each event, in order (sync or async).
Listener = Callable[[RunEvent], Awaitable[None] | None]


class RunHooks:
    """Lifecycle callbacks of runs. Subclass it and override what you need; each may be a
    plain or an async method, and gets the event that triggered it. They are called in the
    order things happen, by the process driving the run, between its steps.

    Hooks consume the run's event stream: ``on_event`` sees every event and calls the
    methods below; override it to see everything. A hook that raises stops the run with a
    HookError carrying the run's last saved state (the run is not poisoned: resume it once
    the hook is fixed).

    Given to ``Runner(hooks=...)`` they see every run, with the events of its nested runs
    (agents called as tools; ``event.nested`` names the nested run); given to
    ``Agent(hooks=...)`` they see what happens while that agent is the current one of a run
    (not of a nested run).
    """

    async def on_event(self, event: RunEvent) -> None:
        match event:
            case RunStarted(agent=agent):
                await _call(self.on_agent_start, agent, event)
            case AgentChanged(source=source, target=target):
                await _call(self.on_agent_end, source, event)
                await _call(self.on_handoff, event)
                await _call(self.on_agent_start, target, event)
            case ModelCallStarted():
                await _call(self.on_model_start, event)
            case ModelCallFinished():
                await _call(self.on_model_end, event)
            case ToolStarted():
                await _call(self.on_tool_start, event)
            case ToolFinished():
                await _call(self.on_tool_end, event)
            case ApprovalRequested():
                await _call(self.on_approval_requested, event)
            case GuardrailChecked():
                await _call(self.on_guardrail, event)
            case StatusChanged():
                await _call(self.on_status_changed, event)
                if event.status in ("completed", "failed", "cancelled", "paused", "interrupted"):
                    await _call(self.on_agent_end, None, event)

    def on_agent_start(self, agent: str, event: RunEvent) -> Any:
        """``agent`` becomes the current agent: the run starts or resumes, or a handoff."""

    def on_agent_end(self, agent: str | None, event: RunEvent) -> Any:
        """``agent`` stops being the current one: a handoff away from it (``agent`` named),
        or the run stops, ends or pauses (``agent`` None: the current one)."""

    def on_model_start(self, event: ModelCallStarted) -> Any:
        """A model call starts."""

    def on_model_end(self, event: ModelCallFinished) -> Any:
        """A model call ended (``event.error`` when it failed)."""

    def on_tool_start(self, event: ToolStarted) -> Any:
        """A tool body starts."""

    def on_tool_end(self, event: ToolFinished) -> Any:
        """A tool body ended, or was given up in doubt."""

    def on_handoff(self, event: AgentChanged) -> Any:
        """The run handed off to another agent."""

    def on_approval_requested(self, event: ApprovalRequested) -> Any:
        """A call waits for a person's decision."""

    def on_status_changed(self, event: StatusChanged) -> Any:
        """The run's status changed."""

    def trace_context(self, run_id: str) -> Mapping[str, str] | None:
        """A trace context for the run to keep, or None (the default): a W3C Trace Context
        carrier (``traceparent``, and ``tracestate`` if any): at most 16 string entries of
        4,096 characters in all.

        Asked of the runner's hooks when a run starts with none kept yet, right after its
        ``RunStarted``; the first hook that gives one wins. The run stores it
        (``RunState.trace``) and every later ``RunStarted`` of the run, in any process,
        carries it: that is how ``agentfsm.tracing`` continues a run's trace after a pause or
        a restart. The driver never reads it.
        """
        return None

    def on_guardrail(self, event: GuardrailChecked) -> Any:
        """A guardrail's verdict was recorded (``event.verdict``)."""


async def _call(method: Callable[..., Any], *args: Any) -> None:
    done = method(*args)
    if inspect.isawaitable(done):
        await done


class Emitter:
    """Numbers a run's events and hands each to every listener, in order. Durable events
    come from the states (``stepped``); live ones from the driver (``live``).

    A listener that raises stops the stream (nothing more is delivered), and the failure is
    raised as a HookError at the next step boundary (``stepped``, ``check``), once what the
    driver was doing is recorded: a hook never leaves a tool's result unrecorded."""

    def __init__(
        self,
        state: RunState,
        epoch: int,
        listeners: Sequence[Listener],
        agent_hooks: Mapping[str, RunHooks],
        tracers: Sequence[RunHooks] = (),
    ) -> None:
        self.run_id = state.run_id
        self.epoch = epoch
        self.agent = state.current_agent
        self.failed: HookError | None = None
        self._version = state.version
        self._seq = 0
        self._listeners = listeners
        self._agent_hooks = agent_hooks
        self._tracers = tracers
        self._started = False
        self._turns = asyncio.Lock()  # concurrent tools: each event numbered and delivered in turn

    async def live(self, kind: type[RunEvent], **fields: Any) -> None:
        async with self._turns:
            event = kind(
                run_id=self.run_id,
                position=Position(self._version, self.epoch, self._seq),
                **fields,
            )
            self._seq += 1
            await self._deliver(event)

    async def start(self, state: RunState) -> None:
        """Say that this process starts driving the run (RunStarted)."""
        self._started = True
        await self.live(
            RunStarted,
            agent=state.current_agent,
            status=state.status.value,
            version=state.version,
            trace=dict(state.trace),
        )

    async def stop(self, state: RunState | None, error: BaseException | None) -> None:
        """Say that this process no longer drives the run (RunStopped), at ``state``, or
        because the driver raised ``error``; nothing if it never said it started."""
        if not self._started:
            return
        self._started = False
        if error is None:
            assert state is not None
            await self.live(RunStopped, status=state.status.value)
            return
        known = getattr(error, "state", None)
        await self.live(
            RunStopped,
            status=known.status.value if isinstance(known, RunState) else None,
            error=str(error) or type(error).__name__,
            error_type=type(error).__name__,
        )

    async def stepped(self, previous: RunState, state: RunState) -> None:
        """The durable events of a step just saved; raises a listener's failure."""
        async with self._turns:
            self._version, self._seq = state.version, 0
            if self.failed is None:
                for event in durable_events(previous, state):
                    await self._deliver(event)
            self.agent = state.current_agent
        self.check(state)

    def trace_context(self) -> dict[str, str]:
        """The trace context the first of the runner's hooks gives for the run (empty if
        none does). A hook that raises or gives something else stops the stream, as a
        listener that raises does."""
        if self.failed is not None:
            return {}
        for hooks in self._tracers:
            try:
                given = hooks.trace_context(self.run_id)
                if given is None:
                    continue
                if not (
                    isinstance(given, Mapping)
                    and len(given) <= _MAX_TRACE_ENTRIES
                    and all(isinstance(k, str) and isinstance(v, str) for k, v in given.items())
                    and sum(len(k) + len(v) for k, v in given.items()) <= _MAX_TRACE_CHARS
                ):
                    raise TypeError(
                        f"a trace context is a mapping of at most {_MAX_TRACE_ENTRIES} strings "
                        f"to strings, {_MAX_TRACE_CHARS} characters in all, not {given!r:.80}"
                    )
            except Exception as exc:
                self.failed = HookError(
                    f"run {self.run_id}: hook {type(hooks).__name__}.trace_context raised: "
                    f"{type(exc).__name__}: {exc}"
                )
                self.failed.__cause__ = exc
                return {}
            if given:
                return dict(given)
        return {}

    def check(self, state: RunState) -> None:
        """Raise the first listener's failure, if one failed, carrying ``state`` (the run's
        last saved state)."""
        if self.failed is not None:
            self.failed.state = state
            raise self.failed

    def nested(self, call_id: str, state: RunState) -> NestedEmitter:
        """The event stream of the nested run (``state``) of the call ``call_id``: part of
        this one."""
        return NestedEmitter(self, call_id, state)

    async def _deliver(self, event: RunEvent) -> None:
        targets: Sequence[Listener] = self._listeners
        if self._agent_hooks and not event.nested:
            targets = list(targets)
            hooks = self._agent_hooks.get(_agent_of(event, self.agent))
            if hooks is not None:
                targets.append(hooks.on_event)
            if isinstance(event, AgentChanged):
                hooks = self._agent_hooks.get(event.target)
                if hooks is not None:
                    targets.append(hooks.on_event)
        for listener in targets:
            if self.failed is not None:
                return
            try:
                done = listener(event)
                if inspect.isawaitable(done):
                    await done
            except Exception as exc:
                self.failed = HookError(
                    f"run {self.run_id}: {_name(listener)} raised on {type(event).__name__} "
                    f"at {event.position}: {type(exc).__name__}: {exc}"
                )
                self.failed.__cause__ = exc


class NestedEmitter(Emitter):
    """The event stream of a nested run: part of the outer run's (``outer``). Its live events
    are the outer stream's, marked with the nested run's path; its durable events follow from
    the outer run's states, in which its steps are recorded (``durable_events``), so they are
    the outer stream's too, delivered as the outer run saves them. Its failures are the outer
    stream's."""

    def __init__(self, outer: Emitter, call_id: str, state: RunState) -> None:
        super().__init__(state, outer.epoch, (), {})
        self.outer = outer
        self.call_id = call_id

    async def live(self, kind: type[RunEvent], **fields: Any) -> None:
        inner = fields.pop("nested", "")
        path = f"{self.call_id}/{inner}" if inner else self.call_id
        await self.outer.live(kind, nested=path, **fields)

    async def stepped(self, previous: RunState, state: RunState) -> None:
        """A step of the nested run, recorded (and its events delivered) by the outer run."""
        self.agent = state.current_agent
        self.check(state)

    def trace_context(self) -> dict[str, str]:
        return {}  # a nested run is traced within the outer run's trace

    def check(self, state: RunState) -> None:
        self.outer.check(state)


# A carrier is kept in the run's state: small (W3C's traceparent is 55 characters, its
# tracestate at most 512), so a hook cannot bloat every saved state.
_MAX_TRACE_ENTRIES = 16
_MAX_TRACE_CHARS = 4096


def _agent_of(event: RunEvent, current: str) -> str:
    agent = getattr(event, "agent", None)
    if isinstance(agent, str):
        return agent
    if isinstance(event, AgentChanged):
        return event.source
    if isinstance(event, ApprovalRequested):
        return event.request.agent
    if isinstance(event, GuardrailChecked):
        return event.verdict.agent
    return current


def _name(listener: Listener) -> str:
    owner = getattr(listener, "__self__", None)
    if owner is not None:
        return f"hook {type(owner).__name__}.{getattr(listener, '__name__', 'on_event')}"
    return f"listener {getattr(listener, '__qualname__', repr(listener))}"


class Control:
    """What a live run's handle asks of the driver: cancel now, pause at the next safe
    point, input for the next model call. The driver reads it between steps."""

    def __init__(self) -> None:
        self.cancel_reason: str | None = None
        self.pause_reason: str | None = None
        self.injected: list[Item] = []
        self.io: asyncio.Future[Any] | None = None  # the model call or tools under way

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self.io is not None:
            self.io.cancel()


@dataclass(frozen=True)
class Live:
    """A run streamed to a handle: the handle's listener and its controls."""

    listener: Listener
    control: Control


_DONE = object()


class RunHandle:
    """A run going on in the background, from ``Runner.run_streamed``.

    ``events()`` yields the run's events as they happen; ``await result()`` returns its
    RunResult (or raises what the run raised). ``cancel``, ``pause`` and ``inject`` steer it
    while it runs."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.control = Control()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[RunResult] | None = None
        self._reading = False

    def _start(self, work: Callable[[Live], Awaitable[RunResult]]) -> None:
        async def drive() -> RunResult:
            try:
                return await work(Live(self._queue.put_nowait, self.control))
            finally:
                self._queue.put_nowait(_DONE)

        self._task = asyncio.ensure_future(drive())

    async def events(self) -> AsyncIterator[RunEvent]:
        """The run's events, in order, until it stops (pauses, waits, ends or fails). Read
        them once: a second reader is refused."""
        if self._reading:
            raise ConfigurationError("a run's events can be read once; a reader is reading")
        self._reading = True
        while True:
            event = await self._queue.get()
            if event is _DONE:
                return
            yield event

    async def result(self) -> RunResult:
        """The RunResult, once the run stops; raises what the run raised."""
        assert self._task is not None
        return await self._task

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop now: the model call is abandoned (its HTTP stream closed), running async
        tools are cancelled (with their ``on_cancel`` hooks), and the run ends cancelled,
        saved. Calls whose bodies were running are recorded in doubt; finished ones keep
        their results."""
        if not isinstance(reason, str):
            raise ConfigurationError("a cancellation's reason is a string")
        self.control.cancel(reason)

    def pause(self, reason: str = "paused") -> None:
        """Finish the step under way (and its tools), save, and stop as ``paused``: resume
        the run later, here or in another process."""
        if not isinstance(reason, str):
            raise ConfigurationError("a pause's reason is a string")
        self.control.pause_reason = self.control.pause_reason or reason

    def inject(self, input: str | Sequence[Item]) -> None:
        """Input the model sees at its next call, exactly once: recorded in the run's state
        (and so durable with a store) when it is given to the model."""
        items = (UserMessage(content=input),) if isinstance(input, str) else tuple(input)
        self.control.injected.extend(items)
