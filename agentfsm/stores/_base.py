"""What every store provides, and the logic they share.

A store keeps each run as a small head row (the state without its transcript, rewritten at
every step under compare-and-swap on ``version``) plus the transcript as append-only rows, so
a checkpoint costs the same at step 10 and at step 10,000.

Every version of a run is kept too: each checkpoint also appends its head row, with the
number of items it had, to the run's history. As items are only ever appended, version k is
its head and the first ``n_items`` item rows, so keeping history adds one small row per step
and ``load(run_id, version=k)`` reads what ``load(run_id)`` reads. The one step that writes
items again is a save after a schema migration (every row in the new schema version): then
older heads are read in their schema version and their items in the rows' (see
``rebuild_version``). ``prune`` drops old versions.

A run may belong to a session (a conversation thread, ``RunState.session``): ``create``
adds it as the session's next run, in the same transaction that checks that the session's
last run is not active (new, running, tools, interrupted or paused), so that a session has
one active run at a time even when two processes start runs at once. Decisions, cancellations and
input from other processes go to the run's inbox, which never conflicts with the worker that
is advancing the run; the driver takes them in at its next step.
"""

from __future__ import annotations

import abc
import base64
import binascii
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from .._agents import Agent, AgentSet
from .._codec import decode_parts, encode_head, encode_items
from .._decisions import admit, bound
from .._errors import (
    ConfigurationError,
    ConflictError,
    DecisionRefused,
    SessionBusy,
    UnknownRunError,
    UnknownVersionError,
)
from .._events import Decision
from .._fork import Fork, ForkPlan, fork
from .._items import GuardrailItem, Item, ToolCallItem, ToolResultItem, UserMessage
from .._json import check_json_data
from .._machine import RunStatus
from .._nested import nested_requests
from .._outcomes import ApprovalRequest, Starter
from .._state import RunState
from ._feed import Changed, ChangeFeed, Hub

log = logging.getLogger("agentfsm")

__all__ = [
    "Admission",
    "ChangeFeed",
    "Changed",
    "Inbox",
    "Lease",
    "Message",
    "Renewer",
    "RetryPolicy",
    "RunSummary",
    "RunVersion",
    "SessionRun",
    "SessionSummary",
    "Store",
    "WaitingCall",
    "WaitingPage",
    "is_runnable",
    "posted_cancellation",
    "posted_decisions",
    "summary_of",
]


class Lease(msgspec.Struct, frozen=True):
    """A worker's exclusive, time-limited claim on a run. ``token`` fences writes: it grows
    with every claim, so a worker holding an older lease cannot write."""

    run_id: str
    owner: str
    token: int
    expires_at: float
    #: The lease this claim took over, when it was never released: its worker died, froze,
    #: or lost the store. Calls that worker started and did not record are in doubt.
    taken_from: Starter | None = None


#: A blocking ``renew(lease, lease_seconds)``, callable from any thread (``Store.renewer``).
Renewer = Callable[[Lease, float], Lease]


class RunSummary(msgspec.Struct, frozen=True):
    """One run in a listing. ``waiting`` counts the calls waiting for a decision; ``posted``
    the messages posted to the run (decisions, cancellations, input) and not applied yet."""

    run_id: str
    status: str
    version: int
    starting_agent: str
    current_agent: str
    turn: int
    waiting: int
    updated_at: float
    posted: int = 0
    #: Why a worker set the run aside after it failed again and again, or None.
    parked: str | None = None


class RunVersion(msgspec.Struct, frozen=True):
    """One saved version of a run, as ``Store.history`` lists it: the ``version``, the
    ``status`` the run had then, the type name of the ``event`` whose step made it (such as
    ``"ModelResponded"``; None for the version a run was created with, for versions stored
    before history was kept, and for saves that did not say), when it was saved (``at``, the
    store's clock) and how many items its transcript held (``n_items``)."""

    version: int
    status: str
    event: str | None
    at: float
    n_items: int


class SessionRun(msgspec.Struct, frozen=True):
    """One run of a session, as ``Store.session_runs`` lists it: its ``position`` in the
    session (1 for the first; they only grow), the run, its status now, and when it joined
    the session (``at``, the store's clock)."""

    session: str
    position: int
    run_id: str
    status: str
    at: float


class SessionSummary(msgspec.Struct, frozen=True):
    """One session, as ``Store.sessions`` lists it: how many runs it holds, its last run,
    that run's status now, and when that run joined (``updated_at``, the store's clock).
    The session is active when its last run's status is not terminal."""

    session: str
    runs: int
    last_run: str
    status: str
    updated_at: float


class WaitingCall(msgspec.Struct, frozen=True):
    """A call waiting for a decision, as the inbox query lists it: the run, the request a
    person is shown (tool, agent, arguments, digest, reason, argument schema), since when it
    waits (the store's clock), and the decisions posted on it and not applied yet."""

    run_id: str
    request: ApprovalRequest
    since: float
    posted: tuple[Decision, ...] = ()


class WaitingPage(msgspec.Struct, frozen=True):
    """One page of waiting calls, oldest first. ``next`` is the cursor of the next page
    (pass it as ``after``), or None on the last page."""

    calls: tuple[WaitingCall, ...]
    next: str | None = None


class RetryPolicy(msgspec.Struct, frozen=True):
    """How workers retry a run that fails: after ``backoff`` seconds, doubling with each
    failure up to ``max_backoff``, and no more after ``attempts`` failures in a row."""

    attempts: int = 5
    backoff: float = 1.0
    max_backoff: float = 300.0

    def __post_init__(self) -> None:
        if type(self.attempts) is not int or self.attempts < 1:
            raise ConfigurationError("retry attempts must be an int of 1 or more")
        if not 0 <= self.backoff <= self.max_backoff:
            raise ConfigurationError("retry backoff must be from 0 to max_backoff seconds")

    def delay(self, failures: int) -> float:
        """The wait before the next try, after ``failures`` failures in a row."""
        return float(min(self.max_backoff, self.backoff * 2 ** min(failures - 1, 60)))


class Message(msgspec.Struct, frozen=True, tag_field="type"):
    """A message in a run's inbox."""


class DecisionMessage(Message, frozen=True, tag="decision"):
    decision: Decision


class CancelMessage(Message, frozen=True, tag="cancel"):
    reason: str


class InputMessage(Message, frozen=True, tag="input"):
    items: tuple[Item, ...]


class PauseMessage(Message, frozen=True, tag="pause"):
    reason: str


class UnpauseMessage(Message, frozen=True, tag="unpause"):
    pass


InboxMessage = DecisionMessage | CancelMessage | InputMessage | PauseMessage | UnpauseMessage

#: The statuses of a run that stands still until something is posted to it.
STILL = ("interrupted", "paused")


class Inbox(msgspec.Struct, frozen=True):
    """Messages waiting for a run, with the ids to acknowledge once they are applied. A
    message that cannot be read is None in ``messages``."""

    ids: tuple[int, ...]
    messages: tuple[InboxMessage | None, ...]


_message_encoder = msgspec.json.Encoder()
_message_decoder: msgspec.json.Decoder[InboxMessage] = msgspec.json.Decoder(InboxMessage)


def posted_decisions(messages: Sequence[InboxMessage]) -> tuple[Decision, ...]:
    """The decisions among a run's inbox messages, oldest first."""
    return tuple(m.decision for m in messages if isinstance(m, DecisionMessage))


def posted_cancellation(messages: Sequence[InboxMessage]) -> str | None:
    """The reason of a cancellation among a run's inbox messages, or None."""
    return next((m.reason for m in messages if isinstance(m, CancelMessage)), None)


def encode_message(message: InboxMessage) -> bytes:
    return _message_encoder.encode(message)


def decode_message(data: bytes) -> InboxMessage | None:
    """The message in ``data``, or None (logged) for one this code cannot read: older or
    damaged data must never stop a worker. It is acknowledged with the messages applied."""
    try:
        return _message_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.error("skipping an inbox message that cannot be read (%s): %r", exc, data[:200])
        return None


def status_value(status: RunStatus | str) -> str:
    """``status`` as stored; ConfigurationError for a status that does not exist."""
    try:
        return RunStatus(status).value
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise ConfigurationError(f"unknown status {status!r} (known: {known})") from None


def is_runnable(state: RunState, inbox: int) -> bool:
    """Whether a worker should pick the run up: it is mid-run, or still with messages."""
    if state.status in (RunStatus.NEW, RunStatus.RUNNING, RunStatus.TOOLS):
        return True
    return state.status.value in STILL and inbox > 0


def summary_of(state: RunState, updated_at: float) -> RunSummary:
    return RunSummary(
        run_id=state.run_id,
        status=state.status.value,
        version=state.version,
        starting_agent=state.starting_agent,
        current_agent=state.current_agent,
        turn=state.turn,
        waiting=sum(
            len(nested_requests(state, c)) if c.reason == "nested" else 1
            for c in state.ledger
            if c.status == "awaiting_approval"
        ),
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
    async def load(self, run_id: str, *, version: int | None = None) -> RunState:
        """The stored run, or with ``version`` the run exactly as it was saved at that
        version. UnknownRunError if there is no such run; UnknownVersionError (one) if the
        run has no such version (never saved, or pruned)."""

    @abc.abstractmethod
    async def history(self, run_id: str) -> list[RunVersion]:
        """Every kept version of the run, oldest first (the last is the current one).
        UnknownRunError if there is no such run."""

    @abc.abstractmethod
    async def prune(
        self,
        *,
        keep_versions: int | None = None,
        older_than: float | None = None,
        run_id: str | None = None,
    ) -> int:
        """Drop old versions of runs from their history (of one run, with ``run_id``): the
        versions beyond the newest ``keep_versions`` of each run, and the versions saved
        before ``older_than`` (a time on the store's clock, such as ``time.time() - 86400``).
        A run's current version is always kept. Returns how many versions were dropped.
        Raises ConfigurationError unless one of the two is given, ``keep_versions`` an int
        of at least 1 (call ``check_prune``)."""

    async def prune_runs(self, *, older_than: float) -> int:
        """Delete the runs that ended (completed, failed or cancelled) and were last saved
        before ``older_than`` (a time on the store's clock, such as ``time.time() - 90 *
        86400``), with their transcripts, history and inboxes; a run of a session leaves
        it. Runs that are live, waiting or paused are never deleted. Returns how many runs
        were deleted. Raises ConfigurationError for an ``older_than`` that is not a time."""
        check_prune(None, older_than)
        deleted = 0
        for status in sorted(s.value for s in RunStatus if s.is_terminal):
            for summary in await self.list(status=status):
                if summary.updated_at >= older_than:
                    continue
                try:
                    await self.delete(summary.run_id)
                except UnknownRunError:
                    continue  # deleted meanwhile, by another pruner
                deleted += 1
        return deleted

    @abc.abstractmethod
    async def save(
        self,
        state: RunState,
        *,
        expected_version: int | None = None,
        lease: Lease | None = None,
        acknowledge: Sequence[int] = (),
        seen: int | None = None,
        event: str | None = None,
    ) -> int:
        """Replace the stored run by ``state`` if the stored version is ``expected_version``
        (default: ``state.version - 1``, the version one step earlier), appending only the
        items it added. With ``lease``, the write also requires that lease to be the run's
        current one (else LeaseLost). ``acknowledge`` removes those inbox messages in the
        same transaction. ``seen`` is the newest inbox message id that the step's author
        read: if a newer one was posted since, the write fails with InboxChanged, so that a
        decision posted while a step was taken from the inbox is never passed over. The
        version saved joins the run's history, with ``event``, the type name of the event
        whose step made it (the driver passes it). Returns
        the number of messages left in the run's inbox. Raises ConflictError (nothing
        written) or UnknownRunError."""

    # -- sessions (conversation threads) -------------------------------------------------
    #
    # Stores written before sessions existed keep working: these refuse, saying why, until
    # the store implements them (the conformance suite checks them).

    async def session_runs(self, session: str) -> list[SessionRun]:
        """The runs of ``session``, in the order they joined it (an empty list for a session
        with no runs). ConfigurationError for an id that is not a valid session id
        (``check_session``)."""
        raise self._no_sessions()

    async def sessions(self, *, limit: int | None = None) -> list[SessionSummary]:
        """Every session with runs, the one whose last run joined latest first: at most
        ``limit`` of them (ConfigurationError unless an int of at least 1, or None)."""
        raise self._no_sessions()

    async def clear_session(self, session: str) -> int:
        """Forget ``session``: delete its runs (their transcripts, history and inboxes), so
        that its next run starts a new conversation. Returns how many runs were deleted (0
        for a session with none). Raises SessionBusy, deleting nothing, while the session's
        last run is active (cancel it, or let it end, first); ConfigurationError for an
        invalid id."""
        raise self._no_sessions()

    def _no_sessions(self) -> ConfigurationError:
        return ConfigurationError(
            f"{type(self).__name__} keeps no sessions: it implements neither session_runs, "
            "sessions nor clear_session (see docs/stores.md, 'Checking your own store')"
        )

    async def session_transcript(self, session: str, *, before: str | None = None) -> list[Item]:
        """The conversation of ``session``: each run's own input and the items it generated,
        run after run (without the history each run was given, which would repeat it), as
        the model sees them: guardrail verdicts (kept in the runs, for the audit) are left
        out, and a call that never got a result because its run ended (cancelled or failed
        while the call waited) gets one saying it did not run. With ``before``, only the runs
        that joined the session before that run. The runs stay as they are stored."""
        runs = await self.session_runs(session)
        items: list[Item] = []
        for run in runs:
            if run.run_id == before:
                break
            try:
                state = await self.load(run.run_id)
            except UnknownRunError:  # deleted meanwhile
                continue
            items.extend(conversation_of(state))
        return items

    @abc.abstractmethod
    async def list(
        self, *, status: RunStatus | str | None = None, limit: int | None = None
    ) -> list[RunSummary]:
        """Summaries of the stored runs, most recently updated first: at most ``limit`` of
        them (default: all). Raises ConfigurationError for a ``limit`` that is not an int of
        at least 1 (call ``check_limit``)."""

    @abc.abstractmethod
    async def waiting(
        self,
        *,
        tool: str | None = None,
        agent: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> WaitingPage:
        """The calls waiting for a decision across every run, oldest first, optionally only
        those of one ``tool`` or ``agent``: at most ``limit`` (1 to 1,000) from the cursor
        ``after`` (the ``next`` of the previous page). Served from an index, not a scan of
        the runs. Raises ConfigurationError for a bad limit or cursor."""

    @abc.abstractmethod
    async def delete(self, run_id: str) -> None:
        """Remove a run, its transcript and its inbox; UnknownRunError if there is none."""

    @abc.abstractmethod
    async def post(
        self, run_id: str, message: InboxMessage, *, admit: Admission | None = None
    ) -> bool:
        """Put a message in the run's inbox and make the run runnable. With ``admit``, first
        call it with the stored run (its transcript left out) and the messages already in the
        inbox, in the same transaction, so that no other writer comes between: it raises to
        refuse the message, or returns False to skip it. Returns whether it was posted.
        Raises UnknownRunError, ConflictError (the run has ended)."""

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
    async def fail(self, lease: Lease, error: str, *, retry: RetryPolicy) -> bool:
        """Record that the run failed under ``lease``, and give the lease up. Until the run
        next makes progress (a saved step), failures count up: the run is retried after a
        growing delay (``retry``), and set aside ("parked", with ``error``) after
        ``retry.attempts`` of them, when workers stop taking it up; ``runs list`` shows it,
        and resuming it by id once the cause is fixed takes it back. Returns whether it was
        parked; nothing happens (False) if the lease was lost meanwhile."""

    @abc.abstractmethod
    async def renew(self, lease: Lease, *, lease_seconds: float = 30.0) -> Lease:
        """Extend a lease that is still held; LeaseLost otherwise."""

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give a lease up (nothing happens if it was already lost)."""

    def renewer(self) -> Renewer | None:
        """``renew`` as a blocking call that any thread may make while the event loop is
        busy (a store with connections gives it a connection of its own), or None (the
        default) when the store has none: leases are then renewed on the event loop, and a
        tool that blocks the loop for longer than a lease can lose it. Workers renew leases
        on a thread of their own through it."""
        return None

    def changes(self, run_id: str | None = None, *, claimable: bool = False) -> ChangeFeed:
        """A feed of this store's changes, from every process: use it as ``async with
        store.changes() as feed:``, then ``await feed.wait(timeout)`` returns what changed
        (a ``Changed``) as soon as a run is created, saved, deleted or posted to, or an
        empty one after ``timeout`` seconds; nothing that changes while the feed is open is
        missed. ``run_id`` limits the feed to one run; ``claimable`` to the changes that may
        let a worker claim a run (created, posted to, its lease given back). A store that
        cannot notify gives a feed that says "anything may have changed" at each timeout,
        so that its users poll; a store that can returns its hub from ``_change_hub``."""
        return ChangeFeed(self._change_hub(), run_id, claimable=claimable)

    def _change_hub(self) -> Hub | None:
        """The hub that tells this store's feeds of changes, or None (the default) for a
        store that cannot notify."""
        return None

    async def close(self) -> None:  # noqa: B027 (stores without connections need nothing)
        """Release the store's connections."""

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- for people in the loop, from any process -----------------------------------------

    async def decide(self, run_id: str, decision: Decision) -> bool:
        """Post ``decision`` on a waiting call of a stored run; a worker (or ``resume``)
        applies it. It is checked here, atomically with the run and the decisions already
        posted, as ``RunState.decide`` checks it: the call waits with the digest the decision
        names, edited arguments fit the schema recorded with the call, and the first decision
        on a call wins (for a call that needs several approvals: a rejection, an expiry, an
        edit or the last approval settles it; each person's approval counts once), and the
        run's starter rule. Returns True when posted, False when nothing changes: it repeats
        a posted decision exactly, or approves again for someone already counted. Raises
        DecisionRefused saying why (UnknownCallError when the call is not waiting),
        UnknownRunError."""
        # Text that cannot be stored (a lone surrogate from a terminal, say) is refused here,
        # before it reaches a database driver.
        check_json_data(msgspec.to_builtins(decision), "the decision", DecisionRefused)
        if decision.at is None:
            decision = msgspec.structs.replace(decision, at=self._decision_time())

        def check(state: RunState, inbox: Sequence[InboxMessage]) -> bool:
            return admit(state, decision, (*state.decisions, *posted_decisions(inbox)))

        return await self.post(run_id, DecisionMessage(decision=decision), admit=check)

    async def approve(
        self,
        run_id: str,
        call: str | ApprovalRequest,
        *,
        digest: str | None = None,
        always: bool = False,
        arguments: dict[str, Any] | None = None,
        by: str = "",
    ) -> bool:
        """Approve a waiting call of a stored run (it runs when the run resumes). The
        decision is bound to the arguments the person saw: pass the ``ApprovalRequest`` they
        were shown, or its call id with ``digest``. ``by`` is who decided. Returns and raises
        as ``decide``."""
        call_id, digest = _bound(call, digest)
        return await self.decide(
            run_id,
            Decision(
                call_id=call_id,
                digest=digest,
                approved=True,
                always=always,
                arguments=arguments,
                by=by,
            ),
        )

    async def reject(
        self,
        run_id: str,
        call: str | ApprovalRequest,
        *,
        digest: str | None = None,
        message: str | None = None,
        always: bool = False,
        by: str = "",
    ) -> bool:
        """Reject a waiting call of a stored run; the model is told ``message``. Binding,
        returns and errors as ``approve``."""
        call_id, digest = _bound(call, digest)
        return await self.decide(
            run_id,
            Decision(
                call_id=call_id,
                digest=digest,
                approved=False,
                always=always,
                message=message,
                by=by,
            ),
        )

    async def cancel(self, run_id: str, reason: str = "cancelled") -> None:
        """Ask for a stored run to be cancelled (at its next step)."""
        check_json_data(reason, "the reason", ConfigurationError)
        await self.post(run_id, CancelMessage(reason=reason))

    async def add_input(self, run_id: str, text: str) -> None:
        """Stage input for a stored run; the model sees it at its next turn."""
        check_json_data(text, "input")
        await self.post(run_id, InputMessage(items=(UserMessage(content=text),)))

    async def pause(self, run_id: str, reason: str = "paused") -> None:
        """Ask for a stored run to pause at its next safe point (between turns; never while
        its tools run). A run waiting for decisions is stopped already: the request lapses
        if it is still waiting when a worker reads it. ``unpause`` lets workers go on."""
        check_json_data(reason, "the reason", ConfigurationError)
        await self.post(run_id, PauseMessage(reason=reason))

    async def unpause(self, run_id: str) -> None:
        """Let workers go on with a paused run (``Runner.resume`` goes on with it at once,
        here)."""
        await self.post(run_id, UnpauseMessage())

    # -- forks ------------------------------------------------------------------------------

    async def fork(
        self,
        run_id: str,
        *,
        version: int,
        new_run_id: str | None = None,
        input: str | None = None,
        decisions: Sequence[Decision] | None = None,
        agents: Agent | AgentSet | None = None,
    ) -> Fork:
        """Store a new run forked from run ``run_id`` as it was at ``version``, and return
        it with its plan (``Fork.plan``: its hazards, what it left behind). Nothing runs:
        resume the fork (``Runner.resume``, a worker) to go on with it.

        The fork keeps the results of the calls committed before ``version``; the calls in
        flight then are in doubt, as after a crash, and wait for a person unless their tool
        is idempotent (which only ``agents``, the starting agent, can tell); the calls
        waiting then wait. ``input`` replaces the last user message, taking the fork back to
        when it arrived. ``decisions`` are the fork's own decisions on the calls it waits
        on; the ones pending at ``version`` are left behind. ``new_run_id`` defaults to a
        random id. The fork's state names its origin (``RunState.forked_from``).

        Raises UnknownRunError, UnknownVersionError, ConflictError (``new_run_id`` taken),
        ConfigurationError, DecisionRefused (see ``agentfsm.fork``)."""
        planned = await self.fork_plan(
            run_id,
            version=version,
            new_run_id=new_run_id,
            input=input,
            decisions=decisions,
            agents=agents,
        )
        await self.create(planned.state)
        return planned

    async def fork_plan(
        self,
        run_id: str,
        *,
        version: int,
        new_run_id: str | None = None,
        input: str | None = None,
        decisions: Sequence[Decision] | None = None,
        agents: Agent | AgentSet | None = None,
    ) -> Fork:
        """What ``fork`` with these arguments would store, without storing it: a dry run,
        to read the hazards before deciding to fork. Raises as ``fork`` does (except for a
        taken ``new_run_id``)."""
        if type(version) is not int or version < 0:
            raise ConfigurationError(f"version must be an int of at least 0, not {version!r}")
        if new_run_id is not None:
            check_json_data(new_run_id, "the run id", ConfigurationError)
        state = await self.load(run_id, version=version)
        return fork(
            state,
            run_id=new_run_id if new_run_id is not None else uuid.uuid4().hex,
            input=input,
            decisions=decisions,
            agents=agents,
        )

    async def fork_hazards(
        self,
        run_id: str,
        *,
        version: int,
        agents: Agent | AgentSet | None = None,
    ) -> ForkPlan:
        """The plan of a fork of run ``run_id`` at ``version``: the calls in flight or
        waiting then, which are idempotent, and which the fork would ask a person about.
        Stores nothing."""
        return (await self.fork_plan(run_id, version=version, agents=agents)).plan

    def _decision_time(self) -> float:
        """When a decision is posted: the store's clock if it has one (tests pass one)."""
        clock = getattr(self, "_clock", None)
        return float(clock()) if callable(clock) else time.time()


#: What a session's transcript says for a call that never got a result.
NOT_RUN_IN_SESSION = "not run: the run ended before this call ran"


def conversation_of(state: RunState) -> list[Item]:
    """What ``state`` adds to its session's conversation (see ``Store.session_transcript``).
    A call of a run that ended without its result gets one, after the calls the model made
    with it (a run still going has its calls waiting or running, not ended)."""
    own = [*state.input[state.session_items :], *state.items]
    answered = {i.call_id for i in own if isinstance(i, ToolResultItem)}
    if not state.status.is_terminal:
        return [item for item in own if not isinstance(item, GuardrailItem)]
    items: list[Item] = []
    unanswered: list[ToolCallItem] = []
    for item in own:
        if isinstance(item, GuardrailItem):
            continue
        if unanswered and not isinstance(item, ToolCallItem):
            items.extend(map(_not_run, unanswered))
            unanswered.clear()
        items.append(item)
        if isinstance(item, ToolCallItem) and item.call_id not in answered:
            unanswered.append(item)
    items.extend(map(_not_run, unanswered))
    return items


def _not_run(call: ToolCallItem) -> ToolResultItem:
    return ToolResultItem(
        call_id=call.call_id,
        tool=call.tool,
        output=NOT_RUN_IN_SESSION,
        agent=call.agent,
        is_error=True,
    )


def session_busy(session: str, active_run: str | None, status: str | None) -> SessionBusy:
    """The error for a run refused by its busy session: ``active_run`` is the session's
    active run and ``status`` its status, or None for a run that another process was adding
    to the session in the same moment."""
    if active_run is None:
        what = "another run, started at the same moment"
    else:
        what = f"an active run, {active_run} ({status})"
    return SessionBusy(
        f"session {session!r} has {what}: a session runs one run at a time; let it end, or "
        "resume or cancel it, before starting another",
        session=session,
        active_run=active_run or "",
    )


#: Checks a message against the stored run and its inbox (see ``Store.post``).
Admission = Callable[[RunState, Sequence[InboxMessage]], bool]


def _bound(call: str | ApprovalRequest, digest: str | None) -> tuple[str, str]:
    call_id, digest = bound(call, digest)
    if digest is None:
        raise ConfigurationError(
            f"a decision on call {call_id!r} must name the digest of the arguments the person "
            "was shown (ApprovalRequest.digest, printed by `agentfsm runs show`), or pass the "
            "ApprovalRequest itself"
        )
    return call_id, digest


MAX_PAGE = 1000


def check_limit(limit: int | None) -> None:
    """ConfigurationError for a ``list`` limit that is not None or an int of at least 1, so
    that every store refuses the same limits (SQL engines read a negative LIMIT each in
    their own way)."""
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ConfigurationError(f"limit must be an int of at least 1, not {limit!r}")


def check_page(limit: int, after: str | None) -> tuple[float, str, str] | None:
    """The position a page starts after, and ConfigurationError for a bad ``limit``."""
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise ConfigurationError(f"limit must be an int from 1 to {MAX_PAGE}, not {limit!r}")
    if after is None:
        return None
    try:
        since, run_id, call_id = msgspec.json.decode(base64.urlsafe_b64decode(after.encode()))
        return float(since), str(run_id), str(call_id)
    except (ValueError, TypeError, msgspec.DecodeError, binascii.Error):
        raise ConfigurationError(f"not a cursor of the waiting calls: {after!r}") from None


def page_of(rows: Sequence[tuple[str, bytes, float]], limit: int, posted: Inboxes) -> WaitingPage:
    """A page from ``limit + 1`` rows of (run id, encoded request, since), and the posted
    messages of their runs."""
    calls = []
    for run_id, request, since in rows[:limit]:
        decoded = _request_decoder.decode(request)
        decisions = tuple(
            d for d in posted_decisions(posted.get(run_id, ())) if d.call_id == decoded.call_id
        )
        calls.append(WaitingCall(run_id=run_id, request=decoded, since=since, posted=decisions))
    following = None
    if len(rows) > limit:
        last = calls[-1]
        position = [last.since, last.run_id, last.request.call_id]
        following = base64.urlsafe_b64encode(msgspec.json.encode(position)).decode()
    return WaitingPage(calls=tuple(calls), next=following)


#: The messages posted to each run and not applied yet.
Inboxes = dict[str, list[InboxMessage]]


def waiting_rows(state: RunState) -> list[tuple[str, str, str, bytes, float | None]]:
    """The calls of ``state`` that wait for a decision, as rows of the inbox query: call id,
    tool, agent, the encoded ApprovalRequest, its deadline."""
    return [
        (r.call_id, r.tool, r.agent, _message_encoder.encode(r), r.deadline)
        for r in state.interruptions
    ]


_request_decoder = msgspec.json.Decoder(ApprovalRequest)


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


def rebuild_version(
    head: bytes, schema: int, items: Sequence[bytes], current_head: bytes, current_schema: int
) -> RunState:
    """A past version of a run from its head (written in schema version ``schema``) and the
    first item rows of the run as stored now, which the run's current head
    (``current_head``, of ``current_schema``) describes.

    The two schema versions differ only when the run was migrated on load after that version
    was saved, and its rows were written again in the new one (``parts``): then the head and
    the items are each brought to this code's schema version on their own."""
    if schema == current_schema:
        return decode_parts(head, items)
    state = decode_parts(head, [])
    return msgspec.structs.replace(state, items=decode_parts(current_head, items).items)


def check_prune(keep_versions: int | None, older_than: float | None) -> None:
    """ConfigurationError for a ``prune`` (or ``prune_runs``) that names no limit, or a bad
    one."""
    if keep_versions is None and older_than is None:
        raise ConfigurationError("prune needs keep_versions, older_than, or both")
    if keep_versions is not None and (type(keep_versions) is not int or keep_versions < 1):
        raise ConfigurationError(
            f"keep_versions must be an int of at least 1, not {keep_versions!r}"
        )
    if older_than is not None and (
        isinstance(older_than, bool) or not isinstance(older_than, int | float)
    ):
        raise ConfigurationError(f"older_than must be a time in seconds, not {older_than!r}")


def unknown_version(run_id: str, version: int) -> UnknownVersionError:
    return UnknownVersionError(
        f"run {run_id!r} has no version {version} in the store (never saved, or pruned)"
    )


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
