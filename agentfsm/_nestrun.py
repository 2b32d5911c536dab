"""Agents as tools: driving a nested run. Part of the driver.

A call of an agent tool runs its agent with the runner's own loop, as a run whose state lives
in the calling run's state (see ``_nested``). Every step of the inner run is recorded in the
outer state and saved (``Outer.absorb``) before the inner run goes on, so a crash inside it
is recovered as any run's is: the outer call runs again (it is idempotent: it resumes the
inner run), and the inner run's own calls that were running are re-run if idempotent, else
in doubt. An inner run that stops to wait for decisions leaves its outer call waiting with
it; the outer run stops, and its waiting calls are the inner run's.

The inner run's events are the outer run's (``NestedEmitter``): its live events as they
happen, marked with its path; its durable events as each of its steps is saved in the outer
run (``Outer.absorb`` delivers the outer step's durable events, which hold them).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ._errors import AgentFSMError, GuardrailTripped, ToolError
from ._events import ToolOutput
from ._nested import MAX_DEPTH, AgentTool, absorb, nested_run_id
from ._outcomes import Invocation
from ._session import Session
from ._state import RunState
from ._step import new_run
from ._stream import Emitter

if TYPE_CHECKING:
    from ._runner import Runner

__all__ = ["NESTED", "Outer", "run_nested", "tools_of", "waiting_for_nested"]

#: The kind of "error" of a call whose nested run waits for decisions: it is not done.
NESTED = "nested"

Checkpoint = Callable[[RunState], Awaitable[None] | None]


class Outer:
    """A run whose tools are running, as the nested runs of its calls move it on: its newest
    state, saved under ``session`` (when the run is stored) and passed to ``on_step``."""

    def __init__(self, state: RunState, session: Session | None, on_step: Checkpoint | None):
        self.state = state
        self.session = session
        self.on_step = on_step
        #: The outer run's event stream, if anyone consumes it (set by its tools).
        self.emitter: Emitter | None = None
        self.waiting: set[str] = set()
        self._lock = asyncio.Lock()

    async def absorb(self, call_id: str, inner: RunState) -> None:
        """Record a step of the nested run of ``call_id``, and checkpoint the outer run."""
        async with self._lock:
            new = absorb(self.state, call_id, inner)
            if self.session is not None:
                try:
                    await self.session.store.save(
                        new,
                        expected_version=self.state.version,
                        lease=self.session.lease,
                        event="NestedStep",
                    )
                except AgentFSMError as exc:
                    exc.state = self.state
                    raise
            if self.on_step is not None:
                done = self.on_step(new)
                if inspect.isawaitable(done):
                    await done
            previous, self.state = self.state, new
            if self.emitter is not None:
                await self.emitter.stepped(previous, new)


_OUTER: ContextVar[Outer | None] = ContextVar("agentfsm_outer", default=None)
_DEPTH: ContextVar[int] = ContextVar("agentfsm_depth", default=0)


@contextmanager
def tools_of(
    state: RunState, session: Session | None, on_step: Checkpoint | None
) -> Iterator[Outer]:
    """While the tools of ``state`` run: the run as its nested runs move it on."""
    outer = Outer(state, session, on_step)
    token = _OUTER.set(outer)
    try:
        yield outer
    finally:
        _OUTER.reset(token)


def waiting_for_nested() -> set[str]:
    """The calls of the tools running now whose nested runs wait for decisions."""
    outer = _OUTER.get()
    return set() if outer is None else outer.waiting


async def run_nested(
    runner: Runner,
    tool: AgentTool,
    call: Invocation,
    session: Session | None,
    emitter: Emitter | None = None,
) -> tuple[ToolOutput | None, str | None]:
    """Run (or resume) the nested run of ``call``: its result, or None with ``NESTED`` when
    the nested run waits for decisions, or an error result (and its kind) when it failed.
    Errors of the inner run's driving (the model's, the store's, a tool's with
    ``tool_errors="raise"``) are raised, carrying the outer run's last saved state. Its
    events go to the outer run's ``emitter``."""
    outer = _OUTER.get()
    assert outer is not None, "agent tools run inside a run's tools"
    if emitter is not None:
        outer.emitter = emitter
    state = outer.state
    depth = _DEPTH.get() + 1
    inner = state.nested.get(call.call_id)
    if inner is None:
        if depth > MAX_DEPTH:
            return _failed(
                runner,
                call,
                f"Error: agent tool {call.tool!r} was not run: runs nest at most {MAX_DEPTH} "
                "levels deep (does an agent call itself as a tool, directly or through "
                "others?)",
                "recursion",
            )
        inner = new_run(
            tool.agent,
            str(call.arguments.get("input", "")),
            run_id=nested_run_id(state.run_id, call.call_id),
            context=state.context,
            max_turns=tool.max_turns,
        )
    agents = tool.agents
    agents.check(inner)
    child = _child(runner, outer, call.call_id, session)
    events = None if emitter is None else emitter.nested(call.call_id, inner)
    token = _DEPTH.set(depth)
    # The inner run's own tools are not the outer run's: they see an outer run only if
    # they nest runs themselves (``tools_of``).
    shadow = _OUTER.set(None)
    try:
        try:
            result = await child._loop(
                agents, inner, None, None, events, None, False, child._stops, False
            )
        except BaseException as exc:
            if events is not None:
                await events.stop(None, exc)
            raise
        if events is not None:
            await events.stop(result.state, None)
    except GuardrailTripped as exc:
        return _failed(runner, call, f"Error: agent tool {call.tool!r} failed: {exc}", "failed")
    except AgentFSMError as exc:
        exc.state = outer.state
        raise
    finally:
        _OUTER.reset(shadow)
        _DEPTH.reset(token)
    match result.status:
        case "completed":
            return await _output(runner, tool, call, result)
        case "interrupted":
            outer.waiting.add(call.call_id)
            return None, NESTED
        case _:
            return _failed(
                runner,
                call,
                f"Error: agent tool {call.tool!r} ended {result.status}: "
                f"{result.error or 'no reason given'}",
                result.status,
            )


async def _output(
    runner: Runner, tool: AgentTool, call: Invocation, result: Any
) -> tuple[ToolOutput | None, str | None]:
    from ._toolrun import as_text

    if tool.output_extractor is None:
        return ToolOutput(call_id=call.call_id, output=as_text(result.state.final_output)), None
    try:
        text = tool.output_extractor(result)
        if inspect.isawaitable(text):
            text = await text
        if not isinstance(text, str):
            raise TypeError(f"it returned {type(text).__name__}, not str")
    except Exception as exc:
        return _failed(
            runner,
            call,
            f"Error: the output_extractor of agent tool {call.tool!r} failed: "
            f"{type(exc).__name__}: {exc}",
            type(exc).__name__,
        )
    return ToolOutput(call_id=call.call_id, output=text), None


def _failed(
    runner: Runner, call: Invocation, message: str, kind: str
) -> tuple[ToolOutput | None, str | None]:
    if runner.tool_errors == "raise":
        outer = _OUTER.get()
        error = ToolError(message.removeprefix("Error: "))
        if outer is not None:
            error.state = outer.state
        raise error
    return ToolOutput(call_id=call.call_id, output=message, is_error=True), kind


def _child(runner: Runner, outer: Outer, call_id: str, session: Session | None) -> Runner:
    """The runner that drives the nested run of ``call_id``: this one's loop, models and
    tools, with every step recorded in ``outer`` instead of a store of its own, and the
    outer run's lease guarding its tool bodies. It runs to a stop like a tool body (``stop()``
    does not cut it short), with no hooks or error handlers of its own: its failure is the
    call's result."""
    child = copy.copy(runner)
    child.store = None
    child.hooks = ()
    child.error_handlers = {}

    def checkpoint(state: RunState) -> Awaitable[None]:
        return outer.absorb(call_id, state)

    child.on_step = checkpoint
    tools = copy.copy(runner._tools)
    tools.session = session
    tools.runner = child
    child._tools = tools
    return child
