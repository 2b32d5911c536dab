"""Decisions on waiting calls: one record, one check, one audit trail.

Every surface (``RunState.approve``, the store API, the CLI, a web handler) builds the same
``Decision`` and checks it with ``admit`` when it is posted: the call must be waiting, with the
arguments the person saw (the digest), edited arguments must be a JSON object that fits the
schema recorded with the call, and the first decision on a call wins (an identical one posted
again is a harmless no-op). The step checks it once more when it applies it (``refusal``), now
with the tools' code at hand; what fails there is recorded as refused and the call keeps
waiting. Every applied or refused decision is appended to the run's audit trail.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ._errors import ConfigurationError, DecisionRefused, UnknownCallError
from ._events import Decision
from ._items import Record
from ._json import check_json_data
from ._jsonschema import schema_errors
from ._nested import nested_requests, waiting_call
from ._outcomes import ApprovalRequest

if TYPE_CHECKING:
    from ._state import CallRecord, RunState

__all__ = [
    "DecisionRecord",
    "admit",
    "arguments_problem",
    "bound",
    "describe",
    "refusal",
    "same_decision",
]


class DecisionRecord(Record, frozen=True):
    """One entry of a run's audit trail: a decision, the call it was made on (``tool``,
    ``agent`` and the ``shown`` arguments), and whether it took effect."""

    decision: Decision
    tool: str
    agent: str
    shown: dict[str, Any]
    outcome: Literal["applied", "refused"]
    reason: str | None = None


def bound(call: str | ApprovalRequest, digest: str | None) -> tuple[str, str | None]:
    """The call id and digest a decision on ``call`` binds to: an ``ApprovalRequest``'s own,
    or a call id with ``digest`` (None when not given)."""
    if isinstance(call, ApprovalRequest):
        if digest is not None and digest != call.digest:
            raise ConfigurationError("pass an ApprovalRequest or a digest, not both")
        return call.call_id, call.digest
    if not isinstance(call, str):
        raise ConfigurationError(
            f"decide on an ApprovalRequest or a call id, not {type(call).__name__}"
        )
    return call, digest


def admit(state: RunState, decision: Decision, pending: Sequence[Decision] = ()) -> bool:
    """Check ``decision`` as it is posted, against the run and the decisions already posted
    but not applied (``pending``). True: post it. False: it repeats a pending decision
    exactly (nothing to do). Raises DecisionRefused (UnknownCallError when the call is not
    waiting) saying why otherwise."""
    problem = refusal(state, decision, pending)
    if problem is not None:
        raise problem
    return not any(d.call_id == decision.call_id for d in pending)


def refusal(
    state: RunState, decision: Decision, pending: Sequence[Decision] = ()
) -> DecisionRefused | None:
    """Why ``decision`` cannot be taken for ``state`` given the ``pending`` decisions posted
    before it, or None when it can. The checks that need no code: the tools' own validation
    is the step's."""
    call = _waiting(state, decision.call_id)
    if call is None:
        return UnknownCallError(_not_waiting(state, decision.call_id))
    if decision.digest != call.digest:
        shown = msgspec.json.encode(call.arguments, order="sorted").decode()
        return DecisionRefused(
            f"call {call.call_id} ({call.tool}) now waits with other arguments than the ones "
            f"this decision was made on (digest {decision.digest[:12]}); it waits with "
            f"{_clip(shown)} (digest {call.digest[:12]}): look again, then decide on those"
        )
    if decision.arguments is not None:
        if decision.expired or not decision.approved:
            return DecisionRefused("only an approval can carry edited arguments")
        problem = arguments_problem(decision.arguments, call.schema)
        if problem is not None:
            return DecisionRefused(
                f"the edited arguments for call {call.call_id} ({call.tool}) {problem}"
            )
    if decision.expired and decision.always:
        return DecisionRefused("an expiry applies to one call; it cannot be sticky")
    first = next((d for d in pending if d.call_id == decision.call_id), None)
    if first is not None and not same_decision(first, decision):
        return DecisionRefused(
            f"call {call.call_id} ({call.tool}) was already decided: {describe(first)}; "
            "the first decision wins"
        )
    return None


def arguments_problem(arguments: Any, schema: dict[str, Any] | None) -> str | None:
    """What is wrong with edited ``arguments`` (a phrase), or None: they must be a JSON
    object that fits ``schema`` (the tool's argument schema, when known)."""
    if not isinstance(arguments, dict):
        return f"must be a JSON object, not {_json_kind(arguments)}"
    try:
        check_json_data(arguments, "they", DecisionRefused)
    except DecisionRefused as exc:
        return f"are not JSON data: {exc}"
    if schema is not None:
        errors = schema_errors(arguments, schema)
        if errors:
            return f"do not fit the tool's schema: {'; '.join(errors)}"
    return None


def same_decision(a: Decision, b: Decision) -> bool:
    """Whether ``b`` repeats ``a`` (a resubmitted form): everything but the time is equal."""
    return msgspec.structs.replace(a, at=None) == msgspec.structs.replace(b, at=None)


def describe(decision: Decision) -> str:
    """``decision`` in a few words: what, by whom, when."""
    verb = {"approve": "approved", "edit": "approved with edits", "reject": "rejected"}
    text = verb.get(decision.kind, "expired")
    if decision.by:
        text += f" by {decision.by}"
    if decision.at is not None:
        moment = datetime.fromtimestamp(decision.at, UTC)
        text += f" at {moment.isoformat(timespec='seconds').replace('+00:00', 'Z')}"
    return text


def _waiting(state: RunState, call_id: str) -> CallRecord | None:
    return waiting_call(state, call_id)


def _not_waiting(state: RunState, call_id: str) -> str:
    settled = next(
        (r for r in reversed(state.audit) if r.decision.call_id == call_id),
        None,
    )
    if settled is not None and settled.outcome == "applied":
        return (
            f"run {state.run_id} has no call {call_id!r} awaiting a decision: it was "
            f"{describe(settled.decision)}"
        )
    waiting = [
        r.call_id
        for c in state.ledger
        if c.status == "awaiting_approval"
        for r in (nested_requests(state, c) if c.reason == "nested" else [c.request()])
    ]
    return (
        f"run {state.run_id} has no call {call_id!r} awaiting a decision "
        f"(awaiting: {', '.join(waiting) or 'none'})"
    )


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if type(value) in (int, float) else "JSON data")
