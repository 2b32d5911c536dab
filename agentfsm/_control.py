"""What moves a run on besides its model and tools, as the loop's next event: what its
handle asks for (cancel, inject, pause), decisions recorded on its state while it ran, and the
expiry of calls no one decided on in time. Part of the driver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from ._events import Cancelled, Decision, Event, Injected, Paused, ToolOutput
from ._machine import RunStatus
from ._outcomes import ApprovalRequest, ToolCall
from ._state import RunState
from ._step import pending_outcome
from ._stream import Control
from ._toolrun import NOT_RUN

__all__ = ["MAIL_STATUSES", "controlled", "decided", "expiries", "guarded"]


#: The statuses in which a run takes what was posted to it, from its inbox or its handle.
MAIL_STATUSES = (RunStatus.RUNNING, RunStatus.INTERRUPTED, RunStatus.PAUSED)


_T = TypeVar("_T")


def controlled(state: RunState, control: Control) -> Event | None:
    """What the handle asked for that the run can take now, as the next event: a
    cancellation at once, input at the next model call, a pause between turns."""
    status = state.status
    if status.is_terminal:
        return None
    if control.cancel_reason is not None:
        if status is RunStatus.TOOLS:
            # The calls are recorded as started, and none of them began: they never ran.
            calls = pending_outcome(state)
            assert isinstance(calls, ToolCall)
            return Cancelled(
                reason=control.cancel_reason,
                results=tuple(
                    ToolOutput(call_id=c.call_id, output=NOT_RUN, is_error=True)
                    for c in calls.calls
                ),
            )
        return Cancelled(reason=control.cancel_reason)
    if control.injected and status in MAIL_STATUSES:
        items, control.injected = tuple(control.injected), []
        return Injected(items=items)
    if control.pause_reason is not None and status is RunStatus.RUNNING:
        reason, control.pause_reason = control.pause_reason, None
        return Paused(reason=reason)
    return None


async def guarded(control: Control | None, work: Coroutine[Any, Any, _T]) -> _T | None:
    """``await work`` (the model call, or the tools) so that the handle's ``cancel`` can stop
    it: None when it did. A cancellation of the caller's own task goes on as usual."""
    if control is None:
        return await work
    task = asyncio.ensure_future(work)
    control.io = task
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not task.cancelled() or (current is not None and current.cancelling()):
            raise
        return None
    finally:
        control.io = None


def decided(state: RunState, requests: Sequence[ApprovalRequest]) -> bool:
    decided = {(d.call_id, d.digest) for d in state.decisions}
    return any((r.call_id, r.digest) in decided for r in requests)


def expiries(
    requests: Sequence[ApprovalRequest], clock: Callable[[], float]
) -> tuple[Decision, ...]:
    """Expiries for the calls past their deadline."""
    if all(r.deadline is None for r in requests):
        return ()
    now = clock()
    return tuple(
        Decision(call_id=r.call_id, digest=r.digest, approved=False, expired=True, at=now)
        for r in requests
        if r.deadline is not None and r.deadline <= now
    )
