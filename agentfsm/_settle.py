"""How a decision settles a waiting call: part of the pure core.

``_decisions`` checks that a decision may apply; this is what applying it does to the call
(a rejection or an expiry commits it, an approval starts it, with edited arguments when it
brings them, or is counted towards a quorum), what the model is told of a call that will not
run, and the decision's record in the audit trail.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from ._agents import AgentSet
from ._decisions import DecisionRecord
from ._errors import InvalidEvent, ToolArgumentsError
from ._events import Decision
from ._json import digest
from ._state import CallRecord

__all__ = [
    "DEFAULT_REJECTION",
    "EXPIRED_REJECTION",
    "IN_DOUBT_REJECTION",
    "audit_record",
    "refusal_text",
    "sent_back",
    "settle",
]

DEFAULT_REJECTION = "A human declined this tool call; it was not run."
EXPIRED_REJECTION = "No one decided on this tool call in time; it was not run."
IN_DOUBT_REJECTION = (
    "This call was interrupted before its result was recorded, and a human chose not to run "
    "it again; whether it took effect is unknown."
)

_replace = msgspec.structs.replace


def settle(
    call: CallRecord, decision: Decision, spec: AgentSet
) -> tuple[CallRecord | None, str | None]:
    """The call as ``decision`` leaves it, or None and why the decision cannot apply. Only an
    approval needs the tool's code: a rejection or an expiry never runs it. An approval of a
    call that needs a quorum is counted, and the call keeps waiting until the last one; an
    edit replaces its arguments and starts the count again, with the editor's approval."""
    if decision.expired or not decision.approved:
        return _replace(call, status="committed"), None
    if call.quorum <= 1:
        return _approved(call, decision, spec)
    approvals = (*call.approvals, decision) if decision.arguments is None else (decision,)
    if len(approvals) < call.quorum and decision.arguments is None:
        return _replace(call, approvals=approvals), None
    settled, why = _approved(call, decision, spec)
    if settled is None:
        return None, why
    if len(approvals) < call.quorum:
        settled = _replace(settled, status="awaiting_approval", recheck=True)
    return _replace(settled, approvals=approvals), None


def _approved(
    call: CallRecord, decision: Decision, spec: AgentSet
) -> tuple[CallRecord | None, str | None]:
    """The call as an approval (which may carry edited arguments) leaves it: started, or None
    and why it cannot apply."""
    tool = spec.tool(call.agent, call.tool)
    if tool is None:
        return None, (
            f"tool {call.tool!r} of agent {call.agent!r} no longer exists in the code, so the "
            "call cannot run; reject it or cancel the run"
        )
    edited = decision.arguments
    try:
        if edited is not None:
            arguments = tool.validate(edited)
        elif call.schema is not None and call.schema != tool.parameters:
            # The tool's signature changed while the call waited: it must still accept them.
            tool.validate(call.arguments)
            return _replace(call, status="started", schema=tool.parameters), None
        else:
            return _replace(call, status="started"), None
    except ToolArgumentsError as exc:
        if edited is not None:
            return None, str(exc)
        return None, (
            f"tool {call.tool!r} changed since this call was shown, and its arguments no longer "
            f"pass ({exc}); the approval is void: decide again"
        )
    new_digest = digest(arguments)
    return (
        _replace(
            call,
            status="started",
            arguments=arguments,
            digest=new_digest,
            idempotency_key=_edited_key(call.idempotency_key, new_digest),
            edited=True,
            schema=tool.parameters,
        ),
        None,
    )


def sent_back(call: CallRecord, arguments: dict[str, Any], spec: AgentSet) -> CallRecord:
    """An approved call whose arguments a guardrail replaced right before it ran: a person
    approved other arguments, so it waits for a decision on these."""
    tool = spec.tool(call.agent, call.tool)
    if tool is None:
        raise InvalidEvent(f"tool {call.tool!r} of call {call.call_id} no longer exists")
    try:
        arguments = tool.validate(arguments)
    except ToolArgumentsError as exc:
        raise InvalidEvent(f"a guardrail's replaced arguments do not fit: {exc}") from None
    new_digest = digest(arguments)
    return _replace(
        call,
        status="awaiting_approval",
        reason="approval",
        arguments=arguments,
        digest=new_digest,
        idempotency_key=_edited_key(call.idempotency_key, new_digest),
        edited=True,
        schema=tool.parameters,
        deadline=None,
        recheck=True,
        approvals=(),
    )


def _edited_key(key: str, new_digest: str) -> str:
    # Other arguments make another operation: services that dedupe on the key must not
    # mistake it for the call that may already have run with the old ones.
    return hashlib.sha256(f"{key}\x1f{new_digest}".encode()).hexdigest()[:32]


def audit_record(
    decision: Decision, call: CallRecord | None, refused: str | None, *, counted: bool = False
) -> DecisionRecord:
    """The audit record of ``decision`` on ``call``: applied, or refused for a reason, or
    (``counted``) an approval counted towards a quorum, with the count in ``refused``."""
    return DecisionRecord(
        decision=decision,
        tool=call.tool if call is not None else "",
        agent=call.agent if call is not None else "",
        shown=call.arguments if call is not None else {},
        outcome="counted" if counted else "applied" if refused is None else "refused",
        reason=refused,
    )


def refusal_text(call: CallRecord, decision: Decision) -> str:
    """What the model is told about a call that will not run."""
    if decision.message:
        return decision.message
    if decision.expired:
        return EXPIRED_REJECTION
    return IN_DOUBT_REJECTION if call.reason == "in_doubt" else DEFAULT_REJECTION
