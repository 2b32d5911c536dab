"""Events: the inputs that advance a run. Each carries everything the step needs from outside
(the model's answer, tool results, decisions), so the step itself needs no I/O."""

from __future__ import annotations

from typing import Any

import msgspec

from ._items import Item, ModelResponse, Record
from ._outcomes import Starter

__all__ = [
    "ApprovalsDecided",
    "Cancelled",
    "Decision",
    "Event",
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
    trace never changes once set)."""

    max_turns: int | None = None
    trace: dict[str, str] = msgspec.field(default_factory=dict)


class ModelResponded(_Event, frozen=True, tag="model_responded"):
    """The model answered. ``needs_approval`` holds the driver's answers for tools whose
    approval rule is a function (a call missing from it is treated as needing approval);
    ``deadlines`` when each call expires if it must wait for a decision (seconds since the
    epoch: the driver's clock, so the step stays pure)."""

    response: ModelResponse
    needs_approval: dict[str, bool] = msgspec.field(default_factory=dict)
    deadlines: dict[str, float] = msgspec.field(default_factory=dict)


class ToolsFinished(_Event, frozen=True, tag="tools_finished"):
    """Every started call of the turn finished (``results``) or is in doubt (``in_doubt``:
    started in an earlier process that died before committing its result, or given up
    while its body could still be running). ``started_by`` says, for calls in doubt, which
    worker started them, when the driver knows."""

    results: tuple[ToolOutput, ...] = ()
    in_doubt: tuple[str, ...] = ()
    started_by: dict[str, Starter] = msgspec.field(default_factory=dict)


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
    others ``in_doubt`` (they may have taken effect; the ledger keeps them started)."""

    reason: str = "cancelled"
    decisions: tuple[Decision, ...] = ()
    results: tuple[ToolOutput, ...] = ()
    in_doubt: tuple[str, ...] = ()
    started_by: dict[str, Starter] = msgspec.field(default_factory=dict)


class Paused(_Event, frozen=True, tag="paused"):
    """Stop between turns, at someone's request; ``Resumed`` goes on from there."""

    reason: str = "paused"


class Resumed(_Event, frozen=True, tag="resumed"):
    """Go on with a paused run."""


class Injected(_Event, frozen=True, tag="injected"):
    """New input from the user, given to the model at its next turn."""

    items: tuple[Item, ...]


Event = (
    Started
    | ModelResponded
    | ToolsFinished
    | ApprovalsDecided
    | Cancelled
    | Injected
    | Paused
    | Resumed
)
