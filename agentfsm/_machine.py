"""The run's status machine: every legal move, written down once.

Theory of operation
-------------------
A run's ``status`` says what the run is waiting for:

* ``new``: created, not started.
* ``running``: waiting for the model's next answer (the last outcome was RunAgain or
  Handoff); after a handoff with options (an input filter, ``on_handoff``), for
  ``HandedOff`` first, which carries what the user's filter gave.
* ``tools``: waiting for the results of the calls the last ToolCall outcome asked for. The
  intent to run them is already recorded in the state's ledger.
* ``interrupted``: paused; some calls wait for a human's decision.
* ``paused``: stopped between turns at someone's request (``Paused``); ``Resumed`` goes on.
* ``completed``, ``failed``, ``cancelled``: over. A run that failed on its turn limit accepts
  ``Started`` again, with a higher limit, or ``ErrorHandled``: the runner's error handler
  ends it with an output instead. A run that a guardrail failed accepts neither (the step
  refuses them: InvalidEvent).

Guardrails add no status: their verdicts ride on the events that carry what they checked
(``Started`` and ``Injected`` the input, ``ModelResponded`` a call's arguments and the final
output, ``ToolsFinished`` an approved call's arguments again and the results), and a trip is
one more way for those events to end the run ``failed``.

An event moves a run only along a row of ``TRANSITIONS`` below. Several rows may share a source
and an event: the step function chooses among their destinations from the event's content
(a model answer with tool calls leads to ``tools``, one without to ``completed``), and the
outcome it returns names that choice (``STATUS_OF_OUTCOME``). The step first checks that the
(status, event) pair is legal, then computes, then checks that the destination it reached is
one the table allows; either failure is an ``IllegalTransition`` and the state is unchanged.

The rows are declared with the ``transitions`` library, which validates them (every state and
trigger must exist) and draws the diagram in docs/; they are then compiled into a frozen dict
for the hot path, so a step costs one dict lookup here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from transitions import Machine

from ._errors import IllegalTransition
from ._events import (
    ApprovalsDecided,
    Cancelled,
    ErrorHandled,
    Event,
    HandedOff,
    Injected,
    ModelResponded,
    Paused,
    Resumed,
    Started,
    ToolsFinished,
)
from ._outcomes import FinalOutput, Handoff, Interruption, Outcome, RunAgain, ToolCall

__all__ = ["EVENT_TYPES", "TABLE", "TRANSITIONS", "RunStatus", "allowed", "mermaid", "status_of"]


class RunStatus(enum.StrEnum):
    NEW = "new"
    RUNNING = "running"
    TOOLS = "tools"
    INTERRUPTED = "interrupted"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

EVENT_TYPES: tuple[type[Event], ...] = (
    Started,
    ModelResponded,
    ToolsFinished,
    ApprovalsDecided,
    Cancelled,
    Injected,
    Paused,
    Resumed,
    ErrorHandled,
    HandedOff,
)

_S = RunStatus
_LIVE = [_S.NEW, _S.RUNNING, _S.TOOLS, _S.INTERRUPTED, _S.PAUSED]

#: (event, sources, destinations): every legal move of a run.
TRANSITIONS: tuple[tuple[type[Event], list[RunStatus], list[RunStatus]], ...] = (
    # Start, or restart after hitting the turn limit (which may be hit again at once).
    # An input guardrail's trip fails a new run at once.
    (Started, [_S.NEW, _S.FAILED], [_S.RUNNING, _S.FAILED]),
    # The model answered: call it again (feedback, handoff), run tools, ask a human, or finish
    # (or fail: out of turns, or a guardrail tripped on a call's arguments or the output).
    (
        ModelResponded,
        [_S.RUNNING],
        [_S.RUNNING, _S.TOOLS, _S.INTERRUPTED, _S.COMPLETED, _S.FAILED],
    ),
    # Every started call reported: next turn, or pause for calls still waiting or in doubt (or
    # sent back to a person by a guardrail), or fail (out of turns, or a guardrail tripped).
    (ToolsFinished, [_S.TOOLS], [_S.RUNNING, _S.INTERRUPTED, _S.FAILED]),
    # Decisions applied: run the approved calls, keep waiting, or go on to the next turn.
    (
        ApprovalsDecided,
        [_S.INTERRUPTED],
        [_S.TOOLS, _S.INTERRUPTED, _S.RUNNING, _S.FAILED],
    ),
    (Cancelled, _LIVE, [_S.CANCELLED]),
    # Input between turns joins the transcript now; input while calls wait, at the resume. An
    # input guardrail's trip fails the run instead.
    (Injected, [_S.RUNNING], [_S.RUNNING, _S.FAILED]),
    (Injected, [_S.INTERRUPTED], [_S.INTERRUPTED, _S.FAILED]),
    (Injected, [_S.PAUSED], [_S.PAUSED, _S.FAILED]),
    # Paused between turns (never while tools run), and resumed where it stopped.
    (Paused, [_S.RUNNING], [_S.PAUSED]),
    (Resumed, [_S.PAUSED], [_S.RUNNING]),
    # Out of turns: the error handler's output completes the run (unless an output guardrail
    # trips on it, or the handler failed).
    (ErrorHandled, [_S.FAILED], [_S.COMPLETED, _S.FAILED]),
    # A handoff with options: the driver ran them (and the input filter gave the next
    # agent's history) before that agent's first turn.
    (HandedOff, [_S.RUNNING], [_S.RUNNING]),
)


def _declare(machine_class: type[Machine] = Machine, **kwargs: Any) -> Machine:
    return machine_class(
        states=[s.value for s in RunStatus],
        transitions=[
            {"trigger": event.__name__, "source": source.value, "dest": dest.value}
            for event, sources, dests in TRANSITIONS
            for source in sources
            for dest in dests
        ],
        initial=RunStatus.NEW.value,
        auto_transitions=False,
        **kwargs,
    )


def _compile(machine: Machine) -> Mapping[tuple[RunStatus, type[Event]], frozenset[RunStatus]]:
    by_name = {event.__name__: event for event in EVENT_TYPES}
    table: dict[tuple[RunStatus, type[Event]], set[RunStatus]] = {}
    for trigger, event in machine.events.items():
        for source, moves in event.transitions.items():
            key = (RunStatus(source), by_name[trigger])
            table.setdefault(key, set()).update(RunStatus(str(move.dest)) for move in moves)
    return MappingProxyType({key: frozenset(dests) for key, dests in table.items()})


#: (status, event type) -> the statuses the run may move to. A missing key is illegal.
TABLE = _compile(_declare())


def allowed(status: RunStatus, event: Event) -> frozenset[RunStatus]:
    """The statuses ``event`` may move a run in ``status`` to; raises IllegalTransition."""
    try:
        return TABLE[status, type(event)]
    except KeyError:
        raise IllegalTransition(status, type(event).__name__) from None


def status_of(outcome: Outcome) -> RunStatus:
    """The status a run is in right after a step returned ``outcome``."""
    match outcome:
        case RunAgain() | Handoff():
            return RunStatus.RUNNING
        case ToolCall():
            return RunStatus.TOOLS
        case Interruption(paused=True):
            return RunStatus.PAUSED
        case Interruption():
            return RunStatus.INTERRUPTED
        case FinalOutput(error=None):
            return RunStatus.COMPLETED
        case FinalOutput(error=error) if error is not None and error.kind == "cancelled":
            return RunStatus.CANCELLED
        case FinalOutput():
            return RunStatus.FAILED


def mermaid() -> str:
    """The status machine as a mermaid ``stateDiagram-v2``, drawn by ``transitions`` from the
    same declaration the engine compiles."""
    from transitions.extensions import GraphMachine

    graph = _declare(GraphMachine, graph_engine="mermaid", title="RunStatus")
    text: str = graph.get_graph().draw(None)
    return text
