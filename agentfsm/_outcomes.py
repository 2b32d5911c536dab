"""Outcomes: what the driver must do after a step. Exactly one per step."""

from __future__ import annotations

from typing import Any, Literal

from ._items import Record

__all__ = [
    "ApprovalRequest",
    "FinalOutput",
    "Handoff",
    "Interruption",
    "Invocation",
    "Outcome",
    "RunAgain",
    "RunError",
    "ToolCall",
]


class RunError(Record, frozen=True):
    """Why a run ended without an output. ``kind`` is ``"max_turns_exceeded"``,
    ``"guardrail_tripped"`` or ``"cancelled"``."""

    kind: str
    message: str


class Invocation(Record, frozen=True):
    """One tool call the driver must execute, with validated arguments.

    ``idempotency_key`` is stable for this call across processes and retries; tools can pass it
    on to the services they call. ``recheck``: the call waited for a decision, so the tool's
    input guardrails check it again before it runs.
    """

    call_id: str
    tool: str
    agent: str
    arguments: dict[str, Any]
    idempotency_key: str
    recheck: bool = False


class Starter(Record, frozen=True):
    """Who started a call that is in doubt: the worker (its runner's ``owner``), and when
    its lease on the run ran out or runs out (seconds since the epoch, by the store's clock;
    None without a store). A worker that was frozen or cut off, not dead, may still finish
    the call's body: a person makes sure it is gone, or waits, before approving it again."""

    worker: str
    lease_until: float | None = None


class ApprovalRequest(Record, frozen=True):
    """A call waiting for a human. ``reason`` is ``"approval"`` (the tool needs approval) or
    ``"in_doubt"`` (it started and its result was never recorded: the process died, or the
    call timed out while its body could still be running)."""

    call_id: str
    tool: str
    agent: str
    arguments: dict[str, Any]
    digest: str
    reason: Literal["approval", "in_doubt"] = "approval"
    #: The call's idempotency key: what to look for in the outside world when it is in doubt.
    idempotency_key: str = ""
    #: The JSON Schema of the tool's arguments when the call was validated, so that edited
    #: arguments can be checked (and a form drawn) without the tool's code.
    schema: dict[str, Any] | None = None
    #: When the call expires if nobody decides (seconds since the epoch), or None.
    deadline: float | None = None
    #: For a call in doubt: who started it, when known.
    started_by: Starter | None = None
    #: How many distinct people must approve the call before it runs (the tool's
    #: ``quorum``), and who approved it so far, on these arguments.
    quorum: int = 1
    approved_by: tuple[str, ...] = ()


class _Outcome(Record, frozen=True, tag_field="type"):
    pass


class RunAgain(_Outcome, frozen=True, tag="run_again"):
    """Call the current agent's model."""

    agent: str


class ToolCall(_Outcome, frozen=True, tag="tool_call"):
    """Execute these calls (concurrently), then report them all with ``ToolsFinished``."""

    calls: tuple[Invocation, ...]


class Interruption(_Outcome, frozen=True, tag="interruption"):
    """Stop: these calls wait for decisions; resume with ``ApprovalsDecided``. Or, with
    ``paused``, the run was paused between turns; resume it with ``Resumed``."""

    requests: tuple[ApprovalRequest, ...]
    paused: bool = False


class Handoff(_Outcome, frozen=True, tag="handoff"):
    """The current agent is now ``target``; call its model."""

    source: str
    target: str


class FinalOutput(_Outcome, frozen=True, tag="final_output"):
    """The run is over: ``output`` when it completed, ``error`` when it failed or was
    cancelled."""

    output: Any = None
    error: RunError | None = None


Outcome = RunAgain | ToolCall | Interruption | Handoff | FinalOutput
