"""Tool execution: the calls of a turn run at once, each reported as a result or in doubt;
the calls a process that died had started; a cancellation in the middle of them. Part of
the driver."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import pydantic_core

from ._agents import AgentSet
from ._errors import AgentFSMError, ToolError, ToolInDoubt
from ._events import ToolOutput, ToolsFinished
from ._guardrun import check_call, check_result, withheld
from ._items import GuardrailItem
from ._json import copy_json
from ._nested import AgentTool
from ._nestrun import NESTED, run_nested, waiting_for_nested
from ._outcomes import Invocation, Starter, ToolCall
from ._run_events import ToolFinished, ToolStarted
from ._session import Session
from ._state import RunState
from ._step import GUARDRAIL_REJECTION, NOT_RUN_TRIPPED, ToolErrors, pending_outcome
from ._stream import Control, Emitter
from ._tools import ToolContext

if TYPE_CHECKING:
    from ._runner import Runner

__all__ = ["NOT_RUN", "ToolRunner", "ToolsCancelled", "as_text", "carrying"]

log = logging.getLogger("agentfsm")

#: How long a cancelled async tool may take to stop before it is given up in doubt.
CANCEL_GRACE = 1.0

#: The result of a call that the run's cancellation stopped before it began.
NOT_RUN = "Error: the run was cancelled before this call ran; it did not run."

#: A call's guardrail verdicts, by call id.
Verdicts = dict[str, list[GuardrailItem]]


class ToolsCancelled(Exception):
    """The run was cancelled while its tools ran: ``report`` has the results of the calls
    that finished, and the others in doubt."""

    def __init__(self, report: ToolsFinished) -> None:
        super().__init__("tools cancelled")
        self.report = report


class ToolRunner:
    """Runs a turn's tool calls for a runner: ``tool_errors`` says whether a tool that
    raises is a result the model sees ("feed") or a ToolError ("raise"); ``owner`` names
    the worker in the calls it leaves in doubt."""

    def __init__(self, *, tool_errors: ToolErrors, owner: str) -> None:
        self.tool_errors: ToolErrors = tool_errors
        self.owner = owner
        #: The runner whose loop drives the nested runs of agent tools.
        self.runner: Runner | None = None
        #: For a nested run's tools: the session of the outer run, whose lease guards them.
        self.session: Session | None = None

    async def recover(
        self,
        agents: AgentSet,
        state: RunState,
        session: Session | None,
        emitter: Emitter | None,
        control: Control | None,
    ) -> ToolsFinished:
        """A state loaded while its tools were running: the process that ran them is gone.
        Re-run the idempotent calls; the others are in doubt and go to a human, with the
        worker that started them when the lease it held was taken over."""
        session = session or self.session
        outcome = pending_outcome(state)
        assert isinstance(outcome, ToolCall)
        again = [c for c in outcome.calls if agents.require_tool(c.agent, c.tool).idempotent]
        doubt = tuple(c.call_id for c in outcome.calls if c not in again)
        starter = None if session is None else session.lease.taken_from
        started_by = dict.fromkeys(doubt, starter) if starter is not None else {}

        def with_doubt(ran: ToolsFinished) -> ToolsFinished:
            return msgspec.structs.replace(
                ran,
                in_doubt=(*ran.in_doubt, *doubt),
                started_by={**ran.started_by, **started_by},
            )

        try:
            ran = await self.run(agents, state, again, session, emitter, control) if again else None
        except ToolsCancelled as cancelled:
            raise ToolsCancelled(with_doubt(cancelled.report)) from None
        return with_doubt(ran or ToolsFinished())

    async def run(
        self,
        agents: AgentSet,
        state: RunState,
        calls: Sequence[Invocation],
        session: Session | None,
        emitter: Emitter | None,
        control: Control | None,
    ) -> ToolsFinished:
        """Run ``calls`` at once. A call whose body may still be running when it is given
        up (a sync tool past its timeout: its thread cannot be stopped) is reported in
        doubt, never as not done. When the run is cancelled (``control``), it stops the
        calls, calls their ``on_cancel`` hooks, and raises ToolsCancelled with what
        finished.

        First, the input guardrails check again the calls that waited for a decision: a
        rejected call does not run (the model is told), one whose arguments were replaced
        goes back to a person, and a trip runs no call at all. The output guardrails check
        each result before it is reported (or emitted)."""
        session = session or self.session
        if session is not None:
            # A worker that may have lost its lease starts no tool body: another may have
            # taken the run over, and would find the call in doubt.
            session.require_lease(calls)
        finished: dict[str, ToolOutput | None] = {}
        verdicts: Verdicts = {}
        returned: dict[str, dict[str, Any]] = {}
        tasks: list[asyncio.Future[None]] = []
        checking = True
        try:
            runnable = await self._recheck(agents, state, calls, finished, verdicts, returned)
            checking = False
            if len(runnable) == 1:
                # The common case, without a task per call.
                call = runnable[0]
                finished[call.call_id] = await self._one(
                    agents, state, call, session, emitter, verdicts
                )
            elif runnable:
                tasks = [
                    asyncio.ensure_future(
                        self._into(finished, agents, state, c, session, emitter, verdicts)
                    )
                    for c in runnable
                ]
                await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            if control is None or control.cancel_reason is None:
                raise
            # What was sent back to a person, or never began (cancelled while the guardrails
            # checked), did not run.
            for call in calls:
                if call.call_id in returned or (checking and call.call_id not in finished):
                    finished[call.call_id] = ToolOutput(
                        call_id=call.call_id, output=NOT_RUN, is_error=True
                    )
            returned.clear()
            report = await self._stopped(agents, calls, finished, tasks, emitter, verdicts)
            raise ToolsCancelled(report) from None
        return self._report(calls, finished, session, verdicts, returned)

    async def _recheck(
        self,
        agents: AgentSet,
        state: RunState,
        calls: Sequence[Invocation],
        finished: dict[str, ToolOutput | None],
        verdicts: Verdicts,
        returned: dict[str, dict[str, Any]],
    ) -> list[Invocation]:
        """Check the calls that waited for a decision again (policy may have changed while
        they waited); the calls that may run."""
        again = [
            c
            for c in calls
            if c.recheck and agents.require_tool(c.agent, c.tool).tool_input_guardrails
        ]
        if not again:
            return list(calls)
        context = copy_json(state.context)
        checks = await asyncio.gather(
            *(
                check_call(
                    agents.require_tool(c.agent, c.tool), c, state.run_id, context, recheck=True
                )
                for c in again
            )
        )
        for call, checked in zip(again, checks, strict=True):
            verdicts[call.call_id] = list(checked.verdicts)
        if any(checked.behavior == "trip" for checked in checks):
            for call in calls:
                finished[call.call_id] = ToolOutput(
                    call_id=call.call_id, output=NOT_RUN_TRIPPED, is_error=True
                )
            return []
        for call, checked in zip(again, checks, strict=True):
            decided = checked.verdict
            if checked.behavior == "reject" and decided is not None:
                finished[call.call_id] = ToolOutput(
                    call_id=call.call_id, output=decided.message or GUARDRAIL_REJECTION
                )
            elif checked.behavior == "replace" and checked.replacement != call.arguments:
                returned[call.call_id] = checked.replacement
        return [c for c in calls if c.call_id not in finished and c.call_id not in returned]

    def _report(
        self,
        calls: Sequence[Invocation],
        finished: dict[str, ToolOutput | None],
        session: Session | None,
        verdicts: Verdicts,
        returned: dict[str, dict[str, Any]],
    ) -> ToolsFinished:
        waiting = waiting_for_nested()
        doubt = tuple(
            c.call_id
            for c in calls
            if finished.get(c.call_id) is None
            and c.call_id not in returned
            and c.call_id not in waiting
        )
        # This worker started them, and their bodies may still be running in it.
        until = None if session is None else session.lease.expires_at
        me = Starter(worker=self.owner, lease_until=until)
        return ToolsFinished(
            results=tuple(o for c in calls if (o := finished.get(c.call_id)) is not None),
            in_doubt=doubt,
            started_by=dict.fromkeys(doubt, me),
            guardrails=tuple(v for c in calls for v in verdicts.get(c.call_id, ())),
            arguments=dict(returned),
            nested=tuple(c.call_id for c in calls if c.call_id in waiting),
        )

    async def _stopped(
        self,
        agents: AgentSet,
        calls: Sequence[Invocation],
        finished: dict[str, ToolOutput | None],
        tasks: Sequence[asyncio.Future[None]],
        emitter: Emitter | None,
        verdicts: Verdicts,
    ) -> ToolsFinished:
        """The calls were cancelled: stop the ones still running, let their tools know,
        and report; what did not finish is in doubt."""
        for task in tasks:
            task.cancel()
        running = [c for c in calls if c.call_id not in finished]
        for call in running:
            await _on_cancel(agents, call)
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        for call in running:
            if emitter is not None and call.call_id not in finished:
                await emitter.live(
                    ToolFinished,
                    agent=call.agent,
                    call_id=call.call_id,
                    tool=call.tool,
                    output=None,
                    in_doubt=True,
                )
        return self._report(calls, finished, None, verdicts, {})

    async def _into(
        self,
        finished: dict[str, ToolOutput | None],
        agents: AgentSet,
        state: RunState,
        call: Invocation,
        session: Session | None,
        emitter: Emitter | None,
        verdicts: Verdicts,
    ) -> None:
        finished[call.call_id] = await self._one(agents, state, call, session, emitter, verdicts)

    async def _one(
        self,
        agents: AgentSet,
        state: RunState,
        call: Invocation,
        session: Session | None,
        emitter: Emitter | None,
        verdicts: Verdicts,
    ) -> ToolOutput | None:
        """The call's result, or None when it is in doubt."""
        if emitter is not None:
            await emitter.live(
                ToolStarted,
                agent=call.agent,
                call_id=call.call_id,
                tool=call.tool,
                arguments=call.arguments,
            )
        output, error_type = await self._body(agents, state, call, session, emitter)
        if output is not None:
            output = await self._check_result(agents, state, call, output, verdicts)
        if emitter is not None:
            await emitter.live(
                ToolFinished,
                agent=call.agent,
                call_id=call.call_id,
                tool=call.tool,
                output=None if output is None else output.output,
                is_error=output is not None and output.is_error,
                in_doubt=output is None and error_type != NESTED,
                error_type=error_type,
            )
        return output

    async def _check_result(
        self,
        agents: AgentSet,
        state: RunState,
        call: Invocation,
        output: ToolOutput,
        verdicts: Verdicts,
    ) -> ToolOutput:
        """The result as the tool's output guardrails leave it: through, replaced, or
        withheld when one trips (the run then fails)."""
        tool = agents.require_tool(call.agent, call.tool)
        if not tool.tool_output_guardrails:
            return output
        context = copy_json(state.context)
        checked = await check_result(
            tool, call, state.run_id, context, output.output, output.is_error
        )
        verdicts.setdefault(call.call_id, []).extend(checked.verdicts)
        decided = checked.verdict
        if checked.behavior == "trip" and decided is not None:
            return ToolOutput(call_id=call.call_id, output=withheld(decided), is_error=True)
        if checked.behavior == "replace":
            return ToolOutput(
                call_id=call.call_id, output=checked.replacement, is_error=output.is_error
            )
        return output

    async def _body(
        self,
        agents: AgentSet,
        state: RunState,
        call: Invocation,
        session: Session | None,
        emitter: Emitter | None = None,
    ) -> tuple[ToolOutput | None, str | None]:
        """The call's result (None when it is in doubt), and the kind of error it ended
        with, if any: the exception's name, or ``"timeout"``."""
        tool = agents.require_tool(call.agent, call.tool)
        if isinstance(tool, AgentTool) and self.runner is not None:
            return await run_nested(self.runner, tool, call, session, emitter)
        context = None
        if tool.context_param is not None:
            context = ToolContext(
                run_id=state.run_id,
                call_id=call.call_id,
                tool=call.tool,
                agent=call.agent,
                idempotency_key=call.idempotency_key,
                context=copy_json(state.context),
                fencing_token=None if session is None else session.lease.token,
            )
        deadline = None if tool.timeout is None else asyncio.timeout(tool.timeout)
        try:
            args, kwargs = tool.bind(copy_json(call.arguments), context)
            async with deadline or contextlib.nullcontext():
                if tool.is_async:
                    value = await tool.fn(*args, **kwargs)
                elif tool.inline:
                    value = tool.fn(*args, **kwargs)
                else:
                    value = await asyncio.to_thread(tool.fn, *args, **kwargs)
            return ToolOutput(call_id=call.call_id, output=as_text(value)), None
        except ToolInDoubt as exc:
            log.warning(
                "tool %r (call %s of run %s) may or may not have taken effect (%s); the call "
                "is in doubt",
                call.tool,
                call.call_id,
                state.run_id,
                exc,
            )
            return None, "in_doubt"
        except Exception as exc:
            cause: BaseException = exc
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                if not tool.is_async:
                    log.warning(
                        "tool %r (call %s of run %s) timed out after %s seconds; its thread "
                        "cannot be stopped, so the call is in doubt",
                        call.tool,
                        call.call_id,
                        state.run_id,
                        tool.timeout,
                    )
                    return None, "timeout"
                error_type = "timeout"
                message = (
                    f"Error: tool {call.tool!r} timed out after {tool.timeout} seconds and was "
                    "stopped; it may have taken effect before it stopped."
                )
            else:
                error_type = type(exc).__name__
                message = f"Error: tool {call.tool!r} raised {error_type}: {exc}"
        if self.tool_errors == "raise":
            raise carrying(ToolError(message.removeprefix("Error: ")), state) from cause
        return ToolOutput(call_id=call.call_id, output=message, is_error=True), error_type


async def _on_cancel(agents: AgentSet, call: Invocation) -> None:
    """Tell a cancelled call's tool, if it asked to know (its ``on_cancel`` hook)."""
    hook = agents.require_tool(call.agent, call.tool).on_cancel
    if hook is None:
        return
    try:
        done = hook(call)
        if inspect.isawaitable(done):
            await asyncio.wait_for(done, CANCEL_GRACE)
    except Exception:
        log.exception("the on_cancel hook of tool %r (call %s) raised", call.tool, call.call_id)


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pydantic_core.to_json(value).decode()


_E = TypeVar("_E", bound=AgentFSMError)


def carrying(error: _E, state: RunState) -> _E:
    """``error``, carrying the run's last consistent state."""
    error.state = state
    return error
