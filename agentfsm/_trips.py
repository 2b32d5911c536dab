"""Guardrail verdicts in the step: part of the pure core.

The driver runs the user's guardrails (``_guardrun``) and hands their verdicts to the step on
the event that carries what they checked. The step checks that the verdicts fit the event,
records them, and acts on them: a trip fails the run, at once and whatever it was doing.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ._errors import InvalidEvent
from ._items import GuardrailItem, Item, ToolResultItem
from ._outcomes import FinalOutput, Outcome, RunError
from ._settle import audit_record
from ._state import RunState

__all__ = [
    "GUARDRAIL_REJECTION",
    "IN_DOUBT_TRIPPED",
    "NOT_RUN_TRIPPED",
    "checked_verdicts",
    "first_trip",
    "require_replaced",
    "trip",
]

GUARDRAIL_REJECTION = "A guardrail blocked this call; it was not run."
NOT_RUN_TRIPPED = "This call was not run: the run stopped when a guardrail tripped."
IN_DOUBT_TRIPPED = (
    "The run stopped when a guardrail tripped; whether this call took effect before it was "
    "interrupted is unknown."
)

_replace = msgspec.structs.replace

_CALL_KINDS = frozenset({"tool_input", "tool_output"})


def checked_verdicts(
    verdicts: Sequence[GuardrailItem], event: str, kinds: set[str]
) -> tuple[GuardrailItem, ...]:
    """The verdicts an event carries, checked to fit it: the kinds of guardrail that check
    what it carries, with a call for tool guardrails only, ``reject`` from tool input
    guardrails only."""
    for verdict in verdicts:
        if verdict.kind not in kinds:
            raise InvalidEvent(f"{event} carries no {verdict.kind} guardrail verdicts")
        if (verdict.kind in _CALL_KINDS) != (verdict.call_id is not None):
            raise InvalidEvent(
                f"guardrail {verdict.guardrail!r}: a tool guardrail's verdict names its call, "
                "others none"
            )
        if verdict.behavior == "reject" and verdict.kind != "tool_input":
            raise InvalidEvent(
                f"guardrail {verdict.guardrail!r}: only a tool input guardrail rejects a call"
            )
    return tuple(verdicts)


def first_trip(verdicts: Sequence[GuardrailItem]) -> GuardrailItem | None:
    return next((v for v in verdicts if v.behavior == "trip"), None)


def require_replaced(verdicts: Sequence[GuardrailItem], what: str) -> None:
    if not any(v.behavior == "replace" for v in verdicts):
        raise InvalidEvent(f"{what} is set, and no guardrail replaced it")


def trip(state: RunState, verdict: GuardrailItem) -> tuple[RunState, Outcome]:
    """The run fails on a guardrail's trip. Every call of the turn that has no result gets one
    saying it did not run (so the transcript stays a valid conversation), the ledger is
    emptied, and decisions posted and not applied go to the audit trail as refused."""
    items: list[Item] = []
    for call in state.ledger:
        if call.status != "committed":
            text = IN_DOUBT_TRIPPED if call.reason == "in_doubt" else NOT_RUN_TRIPPED
            items.append(
                ToolResultItem(
                    call_id=call.call_id,
                    tool=call.tool,
                    output=text,
                    agent=call.agent,
                    is_error=True,
                )
            )
    calls = {c.call_id: c for c in state.ledger}
    why = "the run failed (a guardrail tripped) before this decision was applied"
    audit = (*state.audit, *(audit_record(d, calls.get(d.call_id), why) for d in state.decisions))
    error = RunError(kind="guardrail_tripped", message=_trip_message(verdict))
    new = _replace(
        state,
        items=state.items.extend(items),
        ledger=(),
        nested={},
        pending_handoff=None,
        handoff_due=None,
        decisions=(),
        audit=audit,
        error=error,
        final_output=None,
    )
    return new, FinalOutput(error=error)


def _trip_message(verdict: GuardrailItem) -> str:
    match verdict.kind:
        case "input":
            where = "the input"
        case "output":
            where = "the final output"
        case "tool_input":
            where = f"the arguments of call {verdict.call_id} ({verdict.tool})"
            if verdict.recheck:
                where += ", checked again after its approval"
        case _:
            where = f"the result of call {verdict.call_id} ({verdict.tool})"
    return (
        f"guardrail {verdict.guardrail!r} tripped on {where}: "
        f"{verdict.message or 'no reason given'}"
    )
