"""Events: the inputs that advance a run. Each carries everything the step needs from outside
(the model's answer, tool results, decisions), so the step itself needs no I/O."""

from __future__ import annotations

from typing import Any

import msgspec

from ._items import GuardrailItem, Item, ModelResponse, Record
from ._outcomes import Starter

__all__ = [
    "ApprovalsDecided",
    "Cancelled",
    "Decision",
    "ErrorHandled",
    "Event",
    "HandedOff",
    "Injected",
    "ModelResponded",
    "Paused",
    "Resumed",
    "Started",
    "ToolOutput",
    "ToolsFinished",
]


class Decision(Record, frozen=True):
    """A decision on one call, bound to the digest of the arguments the person was shown.

    ``always`` also makes the decision sticky for every later call of the same tool.
    ``arguments`` (approvals only) replaces the call's arguments; they are validated against the
    tool's schema before the call runs. ``by`` is who decided (an identity the caller vouches
    for) and ``at`` when, in seconds since the epoch: both come from outside, like every time
    the core sees. ``expired`` marks a call settled by its deadline, not by a person.
    """

    call_id: str
    digest: str
    approved: bool
    always: bool = False
    message: str | None = None
    arguments: dict[str, Any] | None = None
    by: str = ""
    at: float | None = None
    expired: bool = False

    @property
    def kind(self) -> str:
        """``"approve"``, ``"edit"`` (approve with other arguments), ``"reject"`` or
        ``"expire"``."""
        if self.expired:
            return "expire"
        if not self.approved:
            return "reject"
        return "approve" if self.arguments is None else "edit"


class ToolOutput(Record, frozen=True):
    """The result of executing one tool call, as text for the model."""

    call_id: str
    output: str
    is_error: bool = False


class _Event(Record, frozen=True, tag_field="type"):
    pass


class Started(_Event, frozen=True, tag="started"):
    """Start a new run, or restart one that failed on its turn limit with a higher
    ``max_turns``. ``trace`` becomes the run's trace context if it has none yet (a run's
    trace never changes once set). A new run's input guardrails' verdicts come in
    ``guardrails`` (a trip fails the run); ``input``, when set, replaces the run's input (a
    guardrail replaced it). ``history``, for a new run of a session, is what the run is
    given of the session's earlier runs (their transcript, as the driver's
    ``session_history`` hook trimmed it): it goes before the run's input."""

    max_turns: int | None = None
    trace: dict[str, str] = msgspec.field(default_factory=dict)
    guardrails: tuple[GuardrailItem, ...] = ()
    input: tuple[Item, ...] | None = None
    history: tuple[Item, ...] | None = None


class ModelResponded(_Event, frozen=True, tag="model_responded"):
    """The model answered. ``needs_approval`` holds the driver's answers for tools whose
    approval rule is a function (a call missing from it is treated as needing approval);
    ``deadlines`` when each call expires if it must wait for a decision (seconds since the
    epoch: the driver's clock, so the step stays pure).

    ``guardrails`` holds the verdicts of the called tools' input guardrails (``tool_input``,
    before anyone is asked to approve a call) and of the agent's output guardrails on a final
    output (``output``). ``arguments`` holds, by call id, the arguments a guardrail replaced;
    ``final_output`` the final output when a guardrail replaced it."""

    response: ModelResponse
    needs_approval: dict[str, bool] = msgspec.field(default_factory=dict)
    deadlines: dict[str, float] = msgspec.field(default_factory=dict)
    guardrails: tuple[GuardrailItem, ...] = ()
    arguments: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    final_output: Any = None


class ToolsFinished(_Event, frozen=True, tag="tools_finished"):
    """Every started call of the turn finished (``results``) or is in doubt (``in_doubt``:
    started in an earlier process that died before committing its result, or given up
    while its body could still be running). ``started_by`` says, for calls in doubt, which
    worker started them, when the driver knows.

    ``guardrails`` holds the verdicts of the tools' guardrails: input guardrails that checked
    approved calls again before they ran (``recheck``), and output guardrails on the results
    (the results already hold what they replaced). ``arguments`` holds the calls that did not
    run because an input guardrail replaced their arguments after they were approved: they
    wait for a decision again, on these arguments. ``nested`` holds the agent tool calls
    whose nested runs stopped to wait for decisions (their states are already recorded in
    the run's ``nested``): they wait with them."""

    results: tuple[ToolOutput, ...] = ()
    in_doubt: tuple[str, ...] = ()
    started_by: dict[str, Starter] = msgspec.field(default_factory=dict)
    guardrails: tuple[GuardrailItem, ...] = ()
    arguments: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    nested: tuple[str, ...] = ()


class ApprovalsDecided(_Event, frozen=True, tag="approvals_decided"):
    """Apply decisions: the ones recorded in the state plus ``decisions``. ``max_turns``, if
    given, replaces the run's turn limit."""

    decisions: tuple[Decision, ...] = ()
    max_turns: int | None = None


class Cancelled(_Event, frozen=True, tag="cancelled"):
    """Stop the run for good. ``decisions`` posted and not applied go into the audit trail
    as refused, so that whoever made them can see why they never took effect.

    A run cancelled while its tools ran reports every started call, as ``ToolsFinished``
    does: the ones that finished with their ``results`` (they join the transcript), the
    others ``in_doubt`` (they may have taken effect; the ledger keeps them started), with
    the verdicts of their ``guardrails``."""

    reason: str = "cancelled"
    decisions: tuple[Decision, ...] = ()
    results: tuple[ToolOutput, ...] = ()
    in_doubt: tuple[str, ...] = ()
    started_by: dict[str, Starter] = msgspec.field(default_factory=dict)
    guardrails: tuple[GuardrailItem, ...] = ()


class Paused(_Event, frozen=True, tag="paused"):
    """Stop between turns, at someone's request; ``Resumed`` goes on from there."""

    reason: str = "paused"


class Resumed(_Event, frozen=True, tag="resumed"):
    """Go on with a paused run."""


class Injected(_Event, frozen=True, tag="injected"):
    """New input from the user, given to the model at its next turn. ``guardrails`` holds
    the verdicts of the current agent's input guardrails on it (``items`` already hold what
    they replaced); a trip fails the run, and the input is not kept."""

    items: tuple[Item, ...]
    guardrails: tuple[GuardrailItem, ...] = ()


class ErrorHandled(_Event, frozen=True, tag="error_handled"):
    """The runner's error handler for a run that failed on its turn limit answered: the run
    ends ``completed`` with ``output`` (added to the transcript as the agent's message when
    ``include_in_history``). ``guardrails`` holds the output guardrails' verdicts on it
    (``output`` already holds what they replaced; a trip fails the run for good). With
    ``failure`` (the handler raised, or gave an output that does not fit), the run stays
    failed and its error says why."""

    output: Any = None
    include_in_history: bool = True
    failure: str | None = None
    guardrails: tuple[GuardrailItem, ...] = ()


class HandedOff(_Event, frozen=True, tag="handed_off"):
    """The options of the handoff the run just took ran (its ``on_handoff``, its
    ``input_filter``): the next agent may take its turn. ``input`` is the history the input
    filter gave, which the next agent sees in place of the run's history so far (None: no
    filter, the whole history)."""

    input: tuple[Item, ...] | None = None


Event = (
    Started
    | ModelResponded
    | ToolsFinished
    | ApprovalsDecided
    | Cancelled
    | Injected
    | Paused
    | Resumed
    | ErrorHandled
    | HandedOff
)
