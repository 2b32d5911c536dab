"""The documents the CLI prints with ``--json``: one JSON document per command, on one line.

They are for scripts, so they are explicit (every field always present, ``null`` when it
does not apply) and reuse the encodings the state JSON already has: transcript items are
the tagged items of ``schemas/item.schema.json``, waiting calls are ``ApprovalRequest``
values, listed runs are ``RunSummary`` values, a run's versions ``RunVersion`` values,
sessions ``SessionSummary`` and ``SessionRun`` values. Their JSON Schemas are generated into
``schemas/cli_run.schema.json``, ``schemas/cli_run_list.schema.json``,
``schemas/cli_run_history.schema.json``, ``schemas/cli_session_list.schema.json``,
``schemas/cli_session.schema.json`` and, for ``fork --json`` (a ``ForkPlan``),
``schemas/cli_fork.schema.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ._decisions import DecisionRecord
from ._events import Decision
from ._fork import ForkPlan
from ._items import Item, Record, Usage
from ._machine import RunStatus
from ._outcomes import ApprovalRequest, RunError
from ._state import ForkOrigin, RunState
from .stores._base import (
    InboxMessage,
    RunSummary,
    RunVersion,
    SessionRun,
    SessionSummary,
    WaitingPage,
    posted_cancellation,
    posted_decisions,
)

__all__ = [
    "RunDocument",
    "RunHistoryDocument",
    "RunListDocument",
    "SessionDocument",
    "SessionListDocument",
    "encode",
    "run_document",
]


class RunDocument(Record, frozen=True):
    """A run, as ``runs show --json``, ``run --json`` and ``resume --json`` print it.

    ``final_output`` is the run's output when it completed, else null. ``error`` says why a
    failed or cancelled run stopped. ``waiting`` lists the calls waiting for a decision, each
    with the digest of the arguments a decision is bound to and its idempotency key.
    ``input`` and ``items`` are the transcript: the run's input, then what it generated.
    ``decisions`` is the audit trail: every decision applied or refused. ``posted`` lists
    the decisions posted and not applied yet, ``cancelling`` the reason of a cancellation
    posted and not applied yet.
    """

    run_id: str
    status: RunStatus
    starting_agent: str
    current_agent: str
    turn: int
    max_turns: int
    version: int
    final_output: Any
    error: RunError | None
    waiting: tuple[ApprovalRequest, ...]
    input: tuple[Item, ...]
    items: tuple[Item, ...]
    usage: Usage
    decisions: tuple[DecisionRecord, ...]
    posted: tuple[Decision, ...]
    cancelling: str | None
    #: The run and version this run was forked from, or null.
    forked_from: ForkOrigin | None = None


class RunListDocument(Record, frozen=True):
    """Stored runs, latest first, as ``runs list --json`` prints them."""

    runs: tuple[RunSummary, ...]


class RunHistoryDocument(Record, frozen=True):
    """Every kept version of a run, oldest first, as ``runs history --json`` prints them.
    ``event`` is null for the version the run was created with and for versions stored
    before history was kept. ``forked_from`` names the run and version a fork came from."""

    run_id: str
    versions: tuple[RunVersion, ...]
    #: The run and version this run was forked from, or null.
    forked_from: ForkOrigin | None = None


class SessionListDocument(Record, frozen=True):
    """Sessions, the one whose last run started latest first, as ``sessions list --json``
    prints them."""

    sessions: tuple[SessionSummary, ...]


class SessionDocument(Record, frozen=True):
    """A session, as ``sessions show --json`` prints it: its runs in order, and its
    ``transcript`` (each run's own input and items, as ``Store.session_transcript`` reads
    it)."""

    session: str
    runs: tuple[SessionRun, ...]
    transcript: tuple[Item, ...]


def run_document(state: RunState, posted: Sequence[InboxMessage] = ()) -> RunDocument:
    """``state`` as a document, with the inbox messages ``posted`` and not applied yet."""
    return RunDocument(
        run_id=state.run_id,
        status=state.status,
        starting_agent=state.starting_agent,
        current_agent=state.current_agent,
        turn=state.turn,
        max_turns=state.max_turns,
        version=state.version,
        final_output=state.final_output if state.status is RunStatus.COMPLETED else None,
        error=state.error,
        waiting=tuple(state.interruptions),
        input=state.input,
        items=state.items.to_tuple(),
        usage=state.usage,
        decisions=state.audit,
        posted=(*state.decisions, *posted_decisions(posted)),
        cancelling=posted_cancellation(posted),
        forked_from=state.forked_from,
    )


def encode(
    document: RunDocument
    | RunListDocument
    | RunHistoryDocument
    | WaitingPage
    | ForkPlan
    | SessionListDocument
    | SessionDocument,
) -> str:
    """``document`` as one line of JSON."""
    return msgspec.json.encode(document).decode()
