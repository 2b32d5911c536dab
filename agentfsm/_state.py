"""RunState: a run as one immutable, versioned, JSON-serializable value."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import msgspec

from ._decisions import DecisionRecord, admit, bound
from ._events import Decision
from ._items import Item, Record, Usage
from ._machine import RunStatus
from ._nested import nested_requests, waiting_call
from ._outcomes import ApprovalRequest, Invocation, RunError, Starter

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "CallRecord",
    "ForkOrigin",
    "HandoffDue",
    "HandoffInput",
    "Policy",
    "RunState",
    "StoredResponse",
    "Transcript",
]


class Transcript(Sequence[Item]):
    """An immutable view of a run's items that appends in constant time.

    Successive states share one underlying list: a transcript is the list's first ``n``
    entries. Appending from the newest transcript extends the list in place, which no older
    view can see; appending from an older one (a fork) copies. A step therefore never copies
    or rescans the history.
    """

    __slots__ = ("_buffer", "_length")

    def __init__(self, items: Iterable[Item] = ()) -> None:
        self._buffer: list[Item] = list(items)
        self._length = len(self._buffer)

    @classmethod
    def _view(cls, buffer: list[Item], length: int) -> Transcript:
        view = cls.__new__(cls)
        view._buffer = buffer
        view._length = length
        return view

    def extend(self, items: Sequence[Item]) -> Transcript:
        """A transcript with ``items`` added at the end; ``self`` is unchanged."""
        if not items:
            return self
        buffer, length = self._buffer, self._length
        if len(buffer) == length:
            buffer.extend(items)
            # Another thread may have appended to the same tip between the check and the
            # extend; then our items are not where we put them, and we fork instead.
            if buffer[length] is items[0] and len(buffer) >= length + len(items):
                return Transcript._view(buffer, length + len(items))
        return Transcript._view([*buffer[:length], *items], length + len(items))

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Item: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Item, ...]: ...
    def __getitem__(self, index: int | slice) -> Item | tuple[Item, ...]:
        if isinstance(index, slice):
            return tuple(self._buffer[slice(*index.indices(self._length))])
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("transcript index out of range")
        return self._buffer[index]

    def __iter__(self) -> Iterator[Item]:
        return itertools.islice(self._buffer, self._length)

    def __reversed__(self) -> Iterator[Item]:
        return itertools.islice(reversed(self._buffer), len(self._buffer) - self._length, None)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Transcript):
            if self._buffer is other._buffer:
                return self._length == other._length
            return self._length == other._length and all(
                a == b for a, b in zip(self, other, strict=True)
            )
        if isinstance(other, tuple | list):
            return self._length == len(other) and all(
                a == b for a, b in zip(self, other, strict=True)
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # Bounded: reprs end up in logs and asyncio debug output for runs of any length.
        if self._length <= 6:
            return f"Transcript({list(self)!r})"
        return f"Transcript(<{self._length} items>, last={self._buffer[self._length - 1]!r})"

    def to_tuple(self) -> tuple[Item, ...]:
        return tuple(self._buffer[: self._length])


class CallRecord(Record, frozen=True):
    """One entry of the invocation ledger: a tool call of the current turn.

    ``status`` is ``awaiting_approval`` (waiting for a decision), ``started`` (its intent is
    recorded and the driver must execute it) or ``committed`` (its result is in the
    transcript; it never runs again). The ledger is emptied when the turn ends, once every
    call is committed.
    """

    call_id: str
    tool: str
    agent: str
    arguments: dict[str, Any]
    digest: str
    idempotency_key: str
    status: Literal["awaiting_approval", "started", "committed"]
    #: Why it waits: it needs ``approval``, it is ``in_doubt``, or its ``nested`` run (an
    #: agent tool's) waits for decisions on its own calls, which the run lists instead.
    reason: Literal["approval", "in_doubt", "nested"] = "approval"
    edited: bool = False
    #: The tool's argument schema when the call was validated (see ApprovalRequest.schema).
    schema: dict[str, Any] | None = None
    #: When the call expires if nobody decides (see ApprovalRequest.deadline).
    deadline: float | None = None
    #: Who started the call, when it is in doubt (see ApprovalRequest.started_by).
    started_by: Starter | None = None
    #: The call waited for a decision: its tool's input guardrails check it again right
    #: before it runs (see Invocation.recheck).
    recheck: bool = False
    #: The tool is pinned (an MCP tool): on resume it must still exist with ``schema``.
    pinned: bool = False
    #: How many distinct people must approve the call (the tool's ``quorum``), and the
    #: approvals counted so far, on these arguments (an edit starts the count again).
    quorum: int = 1
    approvals: tuple[Decision, ...] = ()

    def invocation(self) -> Invocation:
        return Invocation(
            call_id=self.call_id,
            tool=self.tool,
            agent=self.agent,
            arguments=self.arguments,
            idempotency_key=self.idempotency_key,
            recheck=self.recheck,
        )

    def request(self) -> ApprovalRequest:
        return ApprovalRequest(
            call_id=self.call_id,
            tool=self.tool,
            agent=self.agent,
            arguments=self.arguments,
            digest=self.digest,
            # A call that waits for its nested run is never listed itself (see interruptions).
            reason="in_doubt" if self.reason == "in_doubt" else "approval",
            idempotency_key=self.idempotency_key,
            schema=self.schema,
            deadline=self.deadline,
            started_by=self.started_by,
            quorum=self.quorum,
            approved_by=tuple(d.by for d in self.approvals),
        )


class Policy(Record, frozen=True):
    """A sticky decision: every later call of ``tool`` is approved (or rejected)."""

    tool: str
    approved: bool
    message: str | None = None


class ForkOrigin(Record, frozen=True):
    """Where a forked run came from: the run it was forked from, and that run's version."""

    run_id: str
    version: int


class HandoffDue(Record, frozen=True):
    """A handoff taken whose options (``on_handoff``, ``input_filter``) the driver has yet to
    run, before the ``target`` agent's first turn (see ``HandedOff``)."""

    source: str
    target: str


class HandoffInput(Record, frozen=True):
    """What the agent a handoff went to was given when an input filter rewrote the history:
    the model sees ``items`` in place of the run's input and its first ``start`` items, then
    the items from ``start`` on. Kept, so that a resumed run never runs the filter again."""

    source: str
    target: str
    items: tuple[Item, ...]
    start: int


class StoredResponse(Record, frozen=True):
    """The last response the server keeps for the run (``ModelSettings(store=True)``): its
    ``id``, and how many of the run's items it holds (with the run's input)."""

    id: str
    items: int


class RunState(msgspec.Struct, frozen=True, kw_only=True):
    """A run, as a value. Immutable: every change returns a new RunState.

    Advance it with ``agentfsm.step`` (or a ``Runner``), record decisions with ``approve`` and
    ``reject``, and persist it with ``to_json`` / ``from_json``.
    """

    schema_version: int
    run_id: str
    status: RunStatus
    starting_agent: str
    current_agent: str
    turn: int
    max_turns: int
    input: tuple[Item, ...]
    items: Transcript
    ledger: tuple[CallRecord, ...]
    pending_handoff: str | None
    decisions: tuple[Decision, ...]
    policies: tuple[Policy, ...]
    usage: Usage
    final_output: Any
    error: RunError | None
    context: Any
    staged: tuple[Item, ...]
    version: int
    audit: tuple[DecisionRecord, ...]
    #: The run's trace context, kept for tracing consumers (a W3C Trace Context carrier:
    #: ``traceparent``, ``tracestate``), so that a run resumed in another process continues
    #: its trace. Set once, by the ``Started`` event; the core never reads it.
    trace: dict[str, str] = msgspec.field(default_factory=dict)
    #: The nested runs of the turn's agent tool calls (``Agent.as_tool``), by call id: each
    #: a run of its own, saved and resumed with this one. A call's nested run is dropped
    #: when its result is recorded.
    nested: dict[str, RunState] = msgspec.field(default_factory=dict)
    #: The run and version this run was forked from (``Store.fork``), or None.
    forked_from: ForkOrigin | None = None
    #: Who started the run (an identity the starter vouches for; "" when not said), and
    #: whether that person may approve the run's calls (``new_run(starter_may_approve=...)``).
    started_by: str = ""
    starter_may_approve: bool = True
    #: The session (conversation thread) the run belongs to, or None: the run is the
    #: session's next run, and starts from the transcript of its earlier runs.
    session: str | None = None
    #: How many of ``input``'s first items came from the session's earlier runs (what the
    #: ``session_history`` hook gave, by ``Started``); the run's own input follows them.
    session_items: int = 0
    #: A handoff whose options the driver must run before the next model turn.
    handoff_due: HandoffDue | None = None
    #: The history an input filter gave at the last filtered handoff (None: the whole run).
    handoff_input: HandoffInput | None = None
    #: The last response the server keeps for the run, for server-side continuation.
    stored_response: StoredResponse | None = None

    # -- reading -----------------------------------------------------------------------------

    def conversation(self) -> tuple[tuple[Item, ...], Sequence[Item]]:
        """What the model sees, as (input, items): the run's input and items, or after a
        filtered handoff the history the filter gave and the items since."""
        given = self.handoff_input
        if given is None:
            return self.input, self.items
        return given.items, self.items[given.start :]

    @property
    def interruptions(self) -> list[ApprovalRequest]:
        """The calls waiting for a decision (none once the run has ended: a cancelled run's
        calls can no longer be decided). The waiting calls of a nested run (an agent tool's)
        are listed in its call's place, with ids that name the path to them
        (``outer_call/inner_call``): decide on them through this run."""
        if self.status.is_terminal:
            return []
        requests: list[ApprovalRequest] = []
        for call in self.ledger:
            if call.status != "awaiting_approval":
                continue
            if call.reason == "nested":
                requests.extend(nested_requests(self, call))
            else:
                requests.append(call.request())
        return requests

    # -- decisions ---------------------------------------------------------------------------

    def approve(
        self,
        call: str | ApprovalRequest,
        *,
        always: bool = False,
        arguments: dict[str, Any] | None = None,
        digest: str | None = None,
        by: str = "",
        at: float | None = None,
    ) -> Self:
        """Approve a waiting call, returning a new state (this one is unchanged: keep the
        result, and resume that).

        ``call`` is an ``ApprovalRequest`` from ``interruptions`` or its call id. The decision
        is bound to the arguments the person saw: the request's digest, or ``digest``, or
        else the call's arguments in this state. ``always`` approves every later call of the
        same tool too. ``arguments`` replaces the call's arguments: a JSON object that must
        fit the tool's schema. ``by`` and ``at`` say who decided and when (seconds since the
        epoch), for the audit trail.

        Raises UnknownCallError if the call is not waiting, DecisionRefused if its arguments
        changed since they were shown, the edited ones do not fit, or it was already decided
        otherwise. Approving again exactly as before returns this state, and so does
        approving again, as the same ``by``, a call that needs several approvals (the tool's
        ``quorum``: each person counts once; see docs/inbox.md, "Quorum").
        """
        call_id, digest = self._bound(call, digest)
        decision = Decision(
            call_id=call_id,
            digest=digest,
            approved=True,
            always=always,
            arguments=arguments,
            by=by,
            at=at,
        )
        return self.decide(decision)

    def reject(
        self,
        call: str | ApprovalRequest,
        *,
        message: str | None = None,
        always: bool = False,
        digest: str | None = None,
        by: str = "",
        at: float | None = None,
    ) -> Self:
        """Reject a waiting call, returning a new state (this one is unchanged).

        The model is told ``message`` (or a default) instead of the tool's result. ``always``
        rejects every later call of the same tool too. ``call``, ``digest``, ``by``, ``at``
        and the errors raised are as for ``approve``.
        """
        call_id, digest = self._bound(call, digest)
        decision = Decision(
            call_id=call_id,
            digest=digest,
            approved=False,
            always=always,
            message=message,
            by=by,
            at=at,
        )
        return self.decide(decision)

    def decide(self, decision: Decision) -> Self:
        """Record ``decision`` (checked as ``approve`` describes), returning a new state; the
        run applies it when it resumes."""
        if not admit(self, decision, self.decisions):
            return self
        return msgspec.structs.replace(
            self, decisions=(*self.decisions, decision), version=self.version + 1
        )

    def _bound(self, call: str | ApprovalRequest, digest: str | None) -> tuple[str, str]:
        """The call id and digest of a decision on ``call``; without a digest, the arguments
        of the call as it waits in this state, which is what its holder sees."""
        call_id, digest = bound(call, digest)
        if digest is None:
            waiting = waiting_call(self, call_id)
            digest = waiting.digest if waiting is not None else ""  # admit() says why
        return call_id, digest

    # -- persistence -------------------------------------------------------------------------

    def to_json(self, *, signing_key: bytes | str | None = None) -> str:
        """This state as JSON text. With ``signing_key``, wrapped with an HMAC-SHA256
        signature that ``from_json`` checks."""
        from ._codec import encode

        return encode(self, signing_key=signing_key).decode()

    @classmethod
    def from_json(cls, data: str | bytes, *, signing_key: bytes | str | None = None) -> RunState:
        """Load a state from ``to_json`` output, migrating older schema versions.

        Raises StateFormatError, saying what is wrong, for anything that is not a valid
        state: not JSON, a missing field or unknown tag, a newer schema version, or (with
        ``signing_key``) a missing or wrong signature.
        """
        from ._codec import decode

        return decode(data, signing_key=signing_key)
