"""What every store provides, and the logic they share.

A store keeps each run as a small head row (the state without its transcript, rewritten at
every step under compare-and-swap on ``version``) plus the transcript as append-only rows, so
a checkpoint costs the same at step 10 and at step 10,000. Decisions, cancellations and
input from other processes go to the run's inbox, which never conflicts with the worker that
is advancing the run; the driver takes them in at its next step.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import msgspec

from .._codec import decode_parts, encode_head, encode_items
from .._errors import ConfigurationError, ConflictError, UnknownCallError, UnknownRunError
from .._events import Decision
from .._items import Item, UserMessage
from .._json import check_json_data
from .._machine import RunStatus
from .._state import RunState

__all__ = [
    "Inbox",
    "Lease",
    "Message",
    "RunSummary",
    "Store",
    "is_runnable",
    "summary_of",
]


class Lease(msgspec.Struct, frozen=True):
    """A worker's exclusive, time-limited claim on a run. ``token`` fences writes: it grows
    with every claim, so a worker holding an older lease cannot write."""

    run_id: str
    owner: str
    token: int
    expires_at: float


class RunSummary(msgspec.Struct, frozen=True):
    """One run in a listing."""

    run_id: str
    status: str
    version: int
    starting_agent: str
    current_agent: str
    turn: int
    waiting: int
    updated_at: float


class Message(msgspec.Struct, frozen=True, tag_field="type"):
    """A message in a run's inbox."""


class DecisionMessage(Message, frozen=True, tag="decision"):
    decision: Decision


class CancelMessage(Message, frozen=True, tag="cancel"):
    reason: str


class InputMessage(Message, frozen=True, tag="input"):
    items: tuple[Item, ...]


InboxMessage = DecisionMessage | CancelMessage | InputMessage


class Inbox(msgspec.Struct, frozen=True):
    """Messages waiting for a run, with the ids to acknowledge once they are applied."""

    ids: tuple[int, ...]
    messages: tuple[InboxMessage, ...]


_message_encoder = msgspec.json.Encoder()
_message_decoder: msgspec.json.Decoder[InboxMessage] = msgspec.json.Decoder(InboxMessage)


def encode_message(message: InboxMessage) -> bytes:
    return _message_encoder.encode(message)


def decode_message(data: bytes) -> InboxMessage:
    return _message_decoder.decode(data)


def status_value(status: RunStatus | str) -> str:
    """``status`` as stored; ConfigurationError for a status that does not exist."""
    try:
        return RunStatus(status).value
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise ConfigurationError(f"unknown status {status!r} (known: {known})") from None


def is_runnable(state: RunState, inbox: int) -> bool:
    """Whether a worker should pick the run up: it is mid-run, or paused with messages."""
    if state.status in (RunStatus.NEW, RunStatus.RUNNING, RunStatus.TOOLS):
        return True
    return state.status is RunStatus.INTERRUPTED and inbox > 0


def summary_of(state: RunState, updated_at: float) -> RunSummary:
    return RunSummary(
        run_id=state.run_id,
        status=state.status.value,
        version=state.version,
        starting_agent=state.starting_agent,
        current_agent=state.current_agent,
        turn=state.turn,
        waiting=sum(1 for c in state.ledger if c.status == "awaiting_approval"),
        updated_at=updated_at,
    )


class Store(abc.ABC):
    """A place to keep runs. Every method is async; every store passes
    ``agentfsm.testing.StoreConformance``.

    Writes are compare-and-swap: ``save`` names the version it replaces and fails with
    ConflictError (changing nothing) if the stored run has moved on.
    """

    # -- the primitives each store implements -----------------------------------------------

    @abc.abstractmethod
    async def create(self, state: RunState) -> None:
        """Store a run that is not stored yet; ConflictError if its id is taken."""

    @abc.abstractmethod
    async def load(self, run_id: str) -> RunState:
        """The stored run; UnknownRunError if there is none."""

    @abc.abstractmethod
    async def save(
        self,
        state: RunState,
        *,
        expected_version: int | None = None,
        lease: Lease | None = None,
        acknowledge: Sequence[int] = (),
    ) -> int:
        """Replace the stored run by ``state`` if the stored version is ``expected_version``
        (default: ``state.version - 1``, the version one step earlier), appending only the
        items it added. With ``lease``, the write also requires that lease to be the run's
        current one (else LeaseLost). ``acknowledge`` removes those inbox messages in the
        same transaction. Returns the number of messages left in the run's inbox. Raises
        ConflictError (nothing written) or UnknownRunError."""

    @abc.abstractmethod
    async def list(
        self, *, status: RunStatus | str | None = None, limit: int | None = None
    ) -> list[RunSummary]:
        """Summaries of the stored runs, most recently updated first."""

    @abc.abstractmethod
    async def delete(self, run_id: str) -> None:
        """Remove a run, its transcript and its inbox; UnknownRunError if there is none."""

    @abc.abstractmethod
    async def post(self, run_id: str, message: InboxMessage) -> None:
        """Put a message in the run's inbox and make the run runnable."""

    @abc.abstractmethod
    async def inbox(self, run_id: str) -> Inbox:
        """The run's unacknowledged messages, oldest first."""

    @abc.abstractmethod
    async def claim(
        self,
        owner: str,
        *,
        lease_seconds: float = 30.0,
        run_id: str | None = None,
        starting_agent: str | None = None,
    ) -> Lease | None:
        """Lease to ``owner`` the runnable run that waited longest (only runs started by
        ``starting_agent``, if given), or the run ``run_id`` whatever its status, if no one
        else holds a lease on it. None if there is nothing to claim."""

    @abc.abstractmethod
    async def renew(self, lease: Lease, *, lease_seconds: float = 30.0) -> Lease:
        """Extend a lease that is still held; LeaseLost otherwise."""

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give a lease up (nothing happens if it was already lost)."""

    async def close(self) -> None:  # noqa: B027 (stores without connections need nothing)
        """Release the store's connections."""

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- for people in the loop, from any process -----------------------------------------

    async def approve(
        self,
        run_id: str,
        call_id: str,
        *,
        always: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Approve a waiting call of a stored run, without running it. The decision is
        bound to the arguments stored now. Raises UnknownRunError, UnknownCallError."""
        if arguments is not None:
            from .._errors import ToolArgumentsError

            check_json_data(arguments, "edited arguments", ToolArgumentsError)
        digest = await self._waiting_digest(run_id, call_id)
        decision = Decision(
            call_id=call_id, digest=digest, approved=True, always=always, arguments=arguments
        )
        await self.post(run_id, DecisionMessage(decision=decision))

    async def reject(
        self, run_id: str, call_id: str, *, message: str | None = None, always: bool = False
    ) -> None:
        """Reject a waiting call of a stored run, without running it."""
        digest = await self._waiting_digest(run_id, call_id)
        decision = Decision(
            call_id=call_id, digest=digest, approved=False, always=always, message=message
        )
        await self.post(run_id, DecisionMessage(decision=decision))

    async def cancel(self, run_id: str, reason: str = "cancelled") -> None:
        """Ask for a stored run to be cancelled (at its next step)."""
        await self.load(run_id)
        await self.post(run_id, CancelMessage(reason=reason))

    async def add_input(self, run_id: str, text: str) -> None:
        """Stage input for a stored run; the model sees it at its next turn."""
        await self.load(run_id)
        item = UserMessage(content=text)
        check_json_data(text, "input")
        await self.post(run_id, InputMessage(items=(item,)))

    async def _waiting_digest(self, run_id: str, call_id: str) -> str:
        state = await self.load(run_id)
        for request in state.interruptions:
            if request.call_id == call_id:
                return request.digest
        waiting = ", ".join(r.call_id for r in state.interruptions) or "none"
        raise UnknownCallError(
            f"run {run_id} has no call {call_id!r} awaiting a decision (awaiting: {waiting})"
        )


def parts(state: RunState, stored_items: int, stored_schema: int) -> tuple[bytes, list[bytes], int]:
    """The head of ``state``, the item rows to write, and the index the first one goes to.

    Normally that is the items beyond the ``stored_items`` already stored. When the stored
    rows were written by another schema version (the run was migrated on load), every row is
    written again: a run's rows are always all of one version."""
    if len(state.items) < stored_items:
        raise ConflictError(
            f"run {state.run_id}: the state has fewer items than the stored run; it does not "
            "descend from it"
        )
    if stored_schema != state.schema_version:
        return encode_head(state), encode_items(state.items), 0
    return encode_head(state), encode_items(state.items[stored_items:]), stored_items


def rebuild(head: bytes, items: Sequence[bytes]) -> RunState:
    return decode_parts(head, items)


def inbox_of(run_id: str, rows: Sequence[Sequence[Any]]) -> Inbox:
    """The Inbox from rows of (id, message) of a LEFT JOIN from the run to its messages: no
    row means no run; one row of NULLs means an empty inbox."""
    if not rows:
        raise UnknownRunError(f"no run {run_id!r} in the store")
    found = [row for row in rows if row[0] is not None]
    return Inbox(
        ids=tuple(row[0] for row in found),
        messages=tuple(decode_message(row[1]) for row in found),
    )
