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
    "repeats",
    "same_decision",
    "standing",
    "tally",
]


class DecisionRecord(Record, frozen=True):
    """One entry of a run's audit trail: a decision, the call it was made on (``tool``,
    ``agent`` and the ``shown`` arguments), and whether it took effect: ``applied``,
    ``refused`` (``reason`` says why), or ``counted``: an approval of a call that needs
    several, counted while the call waits for more (``reason`` says how many so far)."""

    decision: Decision
    tool: str
    agent: str
    shown: dict[str, Any]
    outcome: Literal["applied", "refused", "counted"]
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
    but not applied (``pending``). True: post it. False: nothing to do (it repeats a pending
    decision exactly, or approves again for someone whose approval already counts). Raises
    DecisionRefused (UnknownCallError when the call is not waiting) saying why otherwise."""
    problem = refusal(state, decision, pending)
    if problem is not None:
        raise problem
    return not repeats(state, decision, pending)


def repeats(state: RunState, decision: Decision, pending: Sequence[Decision] = ()) -> bool:
    """Whether ``decision``, which ``refusal`` let through, changes nothing: it repeats the
    pending decision that settles its call, or it approves a call needing a quorum for
    someone whose approval already counts."""
    call = _waiting(state, decision.call_id)
    if call is None:
        return False
    approvers, final = tally(call, pending)
    if _counted(call, decision, approvers):
        return True
    return final is not None and same_decision(final, decision)


def tally(
    call: CallRecord | ApprovalRequest, pending: Sequence[Decision]
) -> tuple[list[str], Decision | None]:
    """Where ``call`` stands given the decisions ``pending`` on it (oldest first): who
    approved it so far (recorded in the call, then posted), and the pending decision that
    settles it, if any. A call that needs one approval is settled by its first decision; one
    that needs a quorum of M by a rejection, an expiry, an edit (which starts the count
    again, on the new arguments), or the approval of the M-th distinct person."""
    approvers = _approvers(call)
    for d in pending:
        if d.call_id != call.call_id:
            continue
        if call.quorum <= 1 or d.expired or not d.approved or d.arguments is not None:
            return approvers, d
        if d.by not in approvers:
            approvers.append(d.by)
            if len(approvers) >= call.quorum:
                return approvers, d
    return approvers, None


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
    approval = decision.approved and not decision.expired
    if approval and (call.quorum > 1 or not state.starter_may_approve):
        if not decision.by.strip():
            why = (
                f"needs {call.quorum} approvals from distinct people"
                if call.quorum > 1
                else "may not be approved by the person who started its run"
            )
            return DecisionRefused(
                f"call {call.call_id} ({call.tool}) {why}, so an approval must say who approves"
            )
        if not state.starter_may_approve and decision.by == state.started_by:
            return DecisionRefused(
                f"{decision.by} started run {state.run_id}, and may not approve its calls: "
                f"someone else must approve call {call.call_id} ({call.tool})"
            )
    if approval and call.quorum > 1 and decision.always:
        return DecisionRefused(
            f"call {call.call_id} ({call.tool}) needs {call.quorum} approvals: one "
            "person cannot approve the tool's later calls for good (always)"
        )
    approvers, final = tally(call, pending)
    if final is not None and same_decision(final, decision):
        return None
    if final is not None and call.quorum > 1 and final.approved and final.arguments is not None:
        # Approvals of the old arguments no longer count: not even as a repeat.
        return DecisionRefused(
            f"call {call.call_id} ({call.tool}) was {describe(final)}: its count of "
            f"approvals starts again on the new arguments; decide on those once the run "
            "shows them"
        )
    if _counted(call, decision, approvers):
        return None
    if final is not None:
        return DecisionRefused(
            f"call {call.call_id} ({call.tool}) was already decided: {describe(final)}; "
            "the first decision wins"
        )
    return None


def _counted(call: CallRecord, decision: Decision, approvers: Sequence[str]) -> bool:
    """Whether ``decision`` approves a call needing a quorum for someone already counted."""
    return (
        call.quorum > 1
        and decision.approved
        and not decision.expired
        and decision.arguments is None
        and decision.by in approvers
    )


def standing(call: CallRecord | ApprovalRequest, posted: Sequence[Decision] = ()) -> str | None:
    """A call's count of approvals for people, such as ``"1 of 2 approvals (alice)"``,
    counting the approvals ``posted`` on its current arguments; None for a call that needs
    one approval."""
    if call.quorum <= 1:
        return None
    names = _approvers(call)
    for d in posted:
        if (
            d.call_id == call.call_id
            and d.digest == call.digest
            and d.approved
            and not d.expired
            and d.by not in names
        ):
            names.append(d.by)
    text = f"{min(len(names), call.quorum)} of {call.quorum} approvals"
    return f"{text} ({', '.join(names)})" if names else text


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


def _approvers(call: CallRecord | ApprovalRequest) -> list[str]:
    if isinstance(call, ApprovalRequest):
        return list(call.approved_by)
    return [d.by for d in call.approvals]


def _waiting(state: RunState, call_id: str) -> CallRecord | None:
    # A nested run's call, under the id it is decided by (``outer/inner``): the decisions
    # posted on it, and the messages about it, name it so.
    call = waiting_call(state, call_id)
    if call is None or call.call_id == call_id:
        return call
    return msgspec.structs.replace(call, call_id=call_id)


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
