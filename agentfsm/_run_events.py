"""The run's event stream: what happens in a run, in order, as typed values.

Every consumer of a live run (streaming to a caller, lifecycle hooks, tracing, the CLI's
progress output, watching a run from another process) reads this one sequence.

Two kinds of events share it:

* **Durable** events follow from the saved states alone: the items a step added (a
  guardrail's verdict as ``GuardrailChecked``, every other item as ``ItemAdded``), the calls
  that started waiting, the decisions applied, the agent and status changes, the save
  itself, the end. ``durable_events(previous, state)`` computes them, purely, so every
  process that sees the same two states derives the same events at the same positions.
* **Live** events exist only in the process driving the run: the model's text and argument
  deltas, model calls and tool bodies starting and finishing.

Events of a nested run (an agent called as a tool, ``Agent.as_tool``) are part of the same
stream, marked by ``nested``: the path of the nested run, the id of the outer call that runs
it (``"call_0_0"``), deeper levels joined by ``/`` (``"call_0_0/call_1_0"``); ``""`` for the
run's own events. They carry the outer run's ``run_id`` and are numbered in its positions:
the nested run's live events as the outer run's, and its durable events follow from the outer
run's saved states (each step of a nested run is saved as a step of the outer run), before
the outer run's own events of that version. A nested run's waiting calls are the outer run's
(``ApprovalRequested`` with the call's path, ``nested`` empty), so they appear once, where
they are decided.

Each event has a ``position``, unique and increasing over the run's whole life: the state
version the event belongs to, an epoch, and a sequence number. Durable events of version v
are ``(v, 0, i)``. Live events emitted while the run goes from version v to v+1 are
``(v, epoch, j)``, where the epoch is the fencing token of the lease the driving process
holds (1 without a store); a process that takes a run over after a crash holds a higher
token, so its events follow the dead process's, and none collide. A consumer that reconnects
or sees a retry keeps order and drops duplicates by comparing positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from ._decisions import DecisionRecord
from ._items import GuardrailItem, Item, Usage
from ._outcomes import ApprovalRequest
from ._state import RunState

__all__ = [
    "AgentChanged",
    "ApprovalDecided",
    "ApprovalRequested",
    "GuardrailChecked",
    "ItemAdded",
    "ModelCallFinished",
    "ModelCallStarted",
    "ModelTextDelta",
    "ModelToolCallDelta",
    "Position",
    "RunEvent",
    "RunFinished",
    "RunStarted",
    "RunStopped",
    "StateSaved",
    "StatusChanged",
    "ToolFinished",
    "ToolStarted",
    "durable_events",
]


class Position(NamedTuple):
    """Where an event stands in its run: compare positions to order events and drop
    duplicates. ``str(position)`` (``"12.0.3"``) is the form for an SSE ``id``;
    ``Position.parse`` reads it back."""

    version: int
    epoch: int
    seq: int

    def __str__(self) -> str:
        return f"{self.version}.{self.epoch}.{self.seq}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """The position ``str(position)`` wrote; ValueError for anything else."""
        parts = text.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"not an event position: {text[:40]!r}")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]))


class _RunEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    run_id: str
    position: Position
    #: The path of the nested run the event belongs to (``"call_0_0"``,
    #: ``"call_0_0/call_1_0"``), or ``""``: the run's own.
    nested: str = ""


# -- live events ---------------------------------------------------------------------------


class RunStarted(_RunEvent, frozen=True, tag="run_started"):
    """A process starts driving the run: a new run (``version`` 0), or one resumed here.
    ``trace`` is the trace context the run keeps (``RunState.trace``; empty if none yet), so
    that a tracing consumer continues the run's trace in whichever process resumes it."""

    agent: str
    status: str
    version: int
    trace: dict[str, str] = msgspec.field(default_factory=dict)


class RunStopped(_RunEvent, frozen=True, tag="run_stopped"):
    """The process stops driving the run; the last event of every ``RunStarted``. The run
    waits, is paused, ended, or was stopped (``Runner.stop``) at ``status``; or the driver
    raised ``error`` (an exception of type ``error_type``), and the run stays at its last
    saved state (``status``, when known), to be resumed or retried."""

    status: str | None = None
    error: str | None = None
    error_type: str | None = None


class ModelCallStarted(_RunEvent, frozen=True, tag="model_call_started"):
    """The driver asks ``agent``'s model (``model``: its name, or its class) for a turn."""

    agent: str
    model: str
    turn: int


class ModelTextDelta(_RunEvent, frozen=True, tag="model_text_delta"):
    """The next piece of the model's text, as it arrives."""

    agent: str
    text: str


class ModelToolCallDelta(_RunEvent, frozen=True, tag="model_tool_call_delta"):
    """The next piece of a tool call's JSON arguments (``name`` is set on its first)."""

    agent: str
    call_id: str
    name: str | None
    arguments: str


class ModelCallFinished(_RunEvent, frozen=True, tag="model_call_finished"):
    """The model answered (``usage`` of this answer), or failed (``error``; ``error_type``
    names the exception, ``"cancelled"`` when the call was cancelled)."""

    agent: str
    model: str
    usage: Usage | None = None
    error: str | None = None
    error_type: str | None = None


class ToolStarted(_RunEvent, frozen=True, tag="tool_started"):
    """A tool body starts."""

    agent: str
    call_id: str
    tool: str
    arguments: dict[str, Any]


class ToolFinished(_RunEvent, frozen=True, tag="tool_finished"):
    """A tool body ended: its result (``is_error`` when it raised or timed out, with
    ``error_type``: the exception's name, or ``"timeout"``), or ``in_doubt`` when it was
    given up while it may still take effect."""

    agent: str
    call_id: str
    tool: str
    output: str | None
    is_error: bool = False
    in_doubt: bool = False
    error_type: str | None = None


# -- durable events ------------------------------------------------------------------------


class ItemAdded(_RunEvent, frozen=True, tag="item_added"):
    """An item joined the transcript: input, a message, a tool call or result, a handoff."""

    item: Item


class GuardrailChecked(_RunEvent, frozen=True, tag="guardrail_checked"):
    """A guardrail's verdict was recorded: ``verdict.behavior`` says whether it allowed,
    replaced, rejected a call, or tripped (the run failed: a ``RunFinished`` follows)."""

    verdict: GuardrailItem


class ApprovalRequested(_RunEvent, frozen=True, tag="approval_requested"):
    """A call waits for a decision (``request.reason`` says whether it is in doubt)."""

    request: ApprovalRequest


class ApprovalDecided(_RunEvent, frozen=True, tag="approval_decided"):
    """A decision was applied, refused or expired (``record.decision.expired``)."""

    record: DecisionRecord


class AgentChanged(_RunEvent, frozen=True, tag="agent_changed"):
    """The run handed off from ``source`` to ``target``."""

    source: str
    target: str


class StatusChanged(_RunEvent, frozen=True, tag="status_changed"):
    """The run's status changed; ``reason`` says why when it stopped (an error, a
    cancellation, calls waiting), and ``error_type`` names the kind of error
    (``RunError.kind``) when it stopped on one."""

    previous: str
    status: str
    reason: str | None = None
    error_type: str | None = None


class StateSaved(_RunEvent, frozen=True, tag="state_saved"):
    """A step is done, and saved with a store: the run is at ``version``."""

    version: int
    status: str


class RunFinished(_RunEvent, frozen=True, tag="run_finished"):
    """The run is over: ``completed`` with its output, ``failed`` or ``cancelled``."""

    status: str
    output: Any = None
    error: str | None = None


#: Every event of a run's stream.
RunEvent = (
    RunStarted
    | ModelCallStarted
    | ModelTextDelta
    | ModelToolCallDelta
    | ModelCallFinished
    | ToolStarted
    | ToolFinished
    | ItemAdded
    | GuardrailChecked
    | ApprovalRequested
    | ApprovalDecided
    | AgentChanged
    | StatusChanged
    | StateSaved
    | RunFinished
    | RunStopped
)


def durable_events(previous: RunState, state: RunState) -> list[RunEvent]:
    """The durable events of the step from ``previous`` to ``state`` (two RunStates of one
    run, ``state`` the next version), at their positions: those of the steps of its nested
    runs recorded in it first, then its own. Pure."""
    run_id, version = state.run_id, state.version
    events: list[RunEvent] = []

    def at() -> Position:
        return Position(version, 0, len(events))

    for path, before, after in _nested_steps(previous, state, ""):
        _step_events(before, after, run_id, path, at, events)
    _step_events(previous, state, run_id, "", at, events)
    return events


def _nested_steps(
    previous: RunState | None, state: RunState, prefix: str
) -> list[tuple[str, RunState | None, RunState]]:
    """The steps the nested runs of ``state`` took since ``previous`` (deepest first): each
    nested run's path, its state before (None: it is new) and after."""
    steps: list[tuple[str, RunState | None, RunState]] = []
    for call_id, inner in state.nested.items():
        before = None if previous is None else previous.nested.get(call_id)
        if before is not None and before.version >= inner.version:
            continue
        path = f"{prefix}/{call_id}" if prefix else call_id
        steps += _nested_steps(before, inner, path)
        steps.append((path, before, inner))
    return steps


def _step_events(
    previous: RunState | None,
    state: RunState,
    run_id: str,
    nested: str,
    at: Callable[[], Position],
    events: list[RunEvent],
) -> None:
    """Append the events of the step from ``previous`` to ``state`` (of the nested run at
    path ``nested``; ``previous`` None when that run is new) to ``events``."""
    version = state.version
    if previous is None or previous.version == 0:
        events += [
            ItemAdded(run_id=run_id, position=at(), nested=nested, item=i) for i in state.input
        ]
    for item in state.items[0 if previous is None else len(previous.items) :]:
        if isinstance(item, GuardrailItem):
            events.append(
                GuardrailChecked(run_id=run_id, position=at(), nested=nested, verdict=item)
            )
        else:
            events.append(ItemAdded(run_id=run_id, position=at(), nested=nested, item=item))
    waiting = state.interruptions if state.ledger else []
    if not nested:
        # A nested run's decisions and waiting calls are the outer run's: told there.
        assert previous is not None
        if len(state.audit) > len(previous.audit):
            for record in state.audit[len(previous.audit) :]:
                events.append(ApprovalDecided(run_id=run_id, position=at(), record=record))
        if waiting:
            waited = {(r.call_id, r.digest) for r in previous.interruptions}
            for request in waiting:
                if (request.call_id, request.digest) not in waited:
                    events.append(ApprovalRequested(run_id=run_id, position=at(), request=request))
    source = state.starting_agent if previous is None else previous.current_agent
    if state.current_agent != source:
        events.append(
            AgentChanged(
                run_id=run_id,
                position=at(),
                nested=nested,
                source=source,
                target=state.current_agent,
            )
        )
    status = "new" if previous is None else previous.status.value
    if state.status.value != status:
        events.append(
            StatusChanged(
                run_id=run_id,
                position=at(),
                nested=nested,
                previous=status,
                status=state.status.value,
                reason=_reason(state, waiting),
                error_type=None if state.error is None else state.error.kind,
            )
        )
    events.append(
        StateSaved(
            run_id=run_id,
            position=at(),
            nested=nested,
            version=version,
            status=state.status.value,
        )
    )
    if state.status.is_terminal and (previous is None or not previous.status.is_terminal):
        events.append(
            RunFinished(
                run_id=run_id,
                position=at(),
                nested=nested,
                status=state.status.value,
                output=state.final_output,
                error=None if state.error is None else state.error.message,
            )
        )


def _reason(state: RunState, waiting: list[ApprovalRequest]) -> str | None:
    if state.error is not None:
        return str(state.error.message)
    if waiting:
        doubt = sum(r.reason == "in_doubt" for r in waiting)
        text = f"{len(waiting)} call(s) wait for a decision"
        return text + (f", {doubt} of them in doubt" if doubt else "")
    return None
