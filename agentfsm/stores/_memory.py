"""MemoryStore: runs in a dict, for tests. Keeps the same encoded rows as the SQL stores, so
it exercises the same codec path and hands out independent copies."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from .._errors import ConflictError, InboxChanged, LeaseLost, UnknownRunError
from .._json import check_session
from .._machine import RunStatus
from .._outcomes import Starter
from .._state import RunState
from ._base import (
    STILL,
    Admission,
    Inbox,
    Inboxes,
    InboxMessage,
    Lease,
    RetryPolicy,
    RunSummary,
    RunVersion,
    SessionRun,
    SessionSummary,
    Store,
    WaitingPage,
    check_limit,
    check_page,
    check_prune,
    decode_message,
    encode_message,
    is_runnable,
    page_of,
    parts,
    rebuild,
    rebuild_version,
    session_busy,
    status_value,
    summary_of,
    unknown_version,
    waiting_rows,
)
from ._feed import Hub

__all__ = ["MemoryStore"]


@dataclass
class _Run:
    head: bytes
    items: list[bytes]
    summary: RunSummary
    runnable: bool
    schema_version: int
    inbox: dict[int, bytes] = field(default_factory=dict)
    lease_owner: str | None = None
    lease_token: int = 0
    lease_until: float = 0.0
    #: The calls waiting for a decision: call id -> (tool, agent, request, since).
    waiting: dict[str, tuple[str, str, bytes, float]] = field(default_factory=dict)
    #: The earliest deadline of a waiting call: a worker takes the run up then.
    deadline: float | None = None
    failures: int = 0
    parked: str | None = None
    #: The run's history: version -> (head, its schema version, the entry listed).
    versions: dict[int, tuple[bytes, int, RunVersion]] = field(default_factory=dict)

    def keep(self, head: bytes, state: RunState, event: str | None) -> None:
        self.versions[state.version] = (
            head,
            state.schema_version,
            RunVersion(
                version=state.version,
                status=state.status.value,
                event=event,
                at=self.summary.updated_at,
                n_items=len(self.items),
            ),
        )

    def set_waiting(self, state: RunState, now: float) -> None:
        """Calls that still wait keep the time they started waiting."""
        kept = {}
        deadlines = []
        for call_id, tool, agent, request, deadline in waiting_rows(state):
            since = self.waiting[call_id][3] if call_id in self.waiting else now
            kept[call_id] = (tool, agent, request, since)
            if deadline is not None:
                deadlines.append(deadline)
        self.waiting = kept
        self.deadline = min(deadlines, default=None)


class MemoryStore(Store):
    """Runs kept in memory, in this process only. ``clock`` (default ``time.time``) is what
    leases are measured against."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._runs: dict[str, _Run] = {}
        self._ids = itertools.count(1)
        self._clock = clock
        #: Each session's runs, in order: (position, run id, when it joined).
        self._sessions: dict[str, list[tuple[int, str, float]]] = {}
        self._hub = Hub()

    def _change_hub(self) -> Hub:
        return self._hub

    def _run(self, run_id: str) -> _Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise UnknownRunError(f"no run {run_id!r} in the store") from None

    async def create(self, state: RunState) -> None:
        if state.run_id in self._runs:
            raise ConflictError(f"run {state.run_id} is already stored")
        head, items, _ = parts(state, 0, state.schema_version)
        if state.session is not None:
            self._join(state.session, state.run_id)
        run = self._runs[state.run_id] = _Run(
            head=head,
            items=items,
            summary=summary_of(state, self._clock()),
            runnable=is_runnable(state, 0),
            schema_version=state.schema_version,
        )
        run.set_waiting(state, run.summary.updated_at)
        run.keep(head, state, None)
        self._hub.publish(state.run_id, claimable=run.runnable)

    def _join(self, session: str, run_id: str) -> None:
        """Add the run as the session's next one, unless the session's last run is active."""
        check_session(session)
        runs = self._sessions.setdefault(session, [])
        if runs:
            _, last, _ = runs[-1]
            status = self._runs[last].summary.status
            if not RunStatus(status).is_terminal:
                raise session_busy(session, last, status)
        runs.append((runs[-1][0] + 1 if runs else 1, run_id, self._clock()))

    async def session_runs(self, session: str) -> list[SessionRun]:
        check_session(session)
        return [
            SessionRun(
                session=session,
                position=position,
                run_id=run_id,
                status=self._runs[run_id].summary.status,
                at=at,
            )
            for position, run_id, at in self._sessions.get(session, ())
        ]

    async def sessions(self, *, limit: int | None = None) -> list[SessionSummary]:
        check_limit(limit)
        found = [
            SessionSummary(
                session=session,
                runs=len(runs),
                last_run=runs[-1][1],
                status=self._runs[runs[-1][1]].summary.status,
                updated_at=runs[-1][2],
            )
            for session, runs in self._sessions.items()
            if runs
        ]
        found.sort(key=lambda s: (s.updated_at, s.session), reverse=True)
        return found if limit is None else found[:limit]

    async def clear_session(self, session: str) -> int:
        check_session(session)
        runs = self._sessions.get(session, [])
        if runs:
            _, last, _ = runs[-1]
            status = self._runs[last].summary.status
            if not RunStatus(status).is_terminal:
                raise session_busy(session, last, status)
        for _, run_id, _ in runs:
            del self._runs[run_id]
            self._hub.publish(run_id)
        self._sessions.pop(session, None)
        return len(runs)

    async def load(self, run_id: str, *, version: int | None = None) -> RunState:
        run = self._run(run_id)
        if version is None:
            return rebuild(run.head, run.items)
        if version not in run.versions:
            raise unknown_version(run_id, version)
        head, schema, entry = run.versions[version]
        return rebuild_version(
            head, schema, run.items[: entry.n_items], run.head, run.schema_version
        )

    async def history(self, run_id: str) -> list[RunVersion]:
        run = self._run(run_id)
        return [run.versions[v][2] for v in sorted(run.versions)]

    async def prune(
        self,
        *,
        keep_versions: int | None = None,
        older_than: float | None = None,
        run_id: str | None = None,
    ) -> int:
        check_prune(keep_versions, older_than)
        runs = [self._run(run_id)] if run_id is not None else list(self._runs.values())
        dropped = 0
        for run in runs:
            newest = sorted(run.versions, reverse=True)
            for rank, version in enumerate(newest):
                at = run.versions[version][2].at
                old = (keep_versions is not None and rank >= keep_versions) or (
                    older_than is not None and at < older_than
                )
                if old and version != run.summary.version:
                    del run.versions[version]
                    dropped += 1
        return dropped

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
        run = self._run(state.run_id)
        expected = state.version - 1 if expected_version is None else expected_version
        if lease is not None and not self._holds(run, lease):
            raise LeaseLost(f"run {state.run_id}: the lease of {lease.owner!r} is no longer held")
        if run.summary.version != expected:
            raise ConflictError(
                f"run {state.run_id} is at version {run.summary.version}, not {expected}: "
                "it changed since this state was loaded"
            )
        if seen is not None and run.inbox and max(run.inbox) > seen:
            raise InboxChanged(f"run {state.run_id}: more was posted to its inbox")
        head, items, start = parts(state, len(run.items), run.schema_version)
        for message_id in acknowledge:
            run.inbox.pop(message_id, None)
        run.head = head
        run.items[start:] = items
        run.schema_version = state.schema_version
        run.summary = summary_of(state, self._clock())
        run.runnable = is_runnable(state, len(run.inbox))
        run.set_waiting(state, run.summary.updated_at)
        run.failures, run.parked = 0, None
        run.keep(head, state, event)
        self._hub.publish(state.run_id, claimable=lease is None and run.runnable)
        return len(run.inbox)

    async def waiting(
        self,
        *,
        tool: str | None = None,
        agent: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> WaitingPage:
        start = check_page(limit, after)
        found = sorted(
            (since, run_id, call_id, request)
            for run_id, run in self._runs.items()
            for call_id, (tool_, agent_, request, since) in run.waiting.items()
            if tool in (None, tool_) and agent in (None, agent_)
        )
        if start is not None:
            found = [row for row in found if row[:3] > start]
        rows = [(run_id, request, since) for since, run_id, _, request in found[: limit + 1]]
        posted: Inboxes = {
            run_id: [m for m in map(decode_message, self._runs[run_id].inbox.values()) if m]
            for run_id, _, _ in rows
        }
        return page_of(rows, limit, posted)

    async def list(
        self, *, status: RunStatus | str | None = None, limit: int | None = None
    ) -> list[RunSummary]:
        check_limit(limit)
        wanted = None if status is None else status_value(status)
        found = [
            msgspec.structs.replace(run.summary, posted=len(run.inbox), parked=run.parked)
            for run in self._runs.values()
            if wanted is None or run.summary.status == wanted
        ]
        found.sort(key=lambda s: s.updated_at, reverse=True)
        return found if limit is None else found[:limit]

    async def delete(self, run_id: str) -> None:
        run = self._run(run_id)
        del self._runs[run_id]
        session = rebuild(run.head, []).session
        if session is not None and session in self._sessions:
            runs = [entry for entry in self._sessions[session] if entry[1] != run_id]
            if runs:
                self._sessions[session] = runs
            else:
                del self._sessions[session]
        self._hub.publish(run_id)

    async def post(
        self, run_id: str, message: InboxMessage, *, admit: Admission | None = None
    ) -> bool:
        run = self._run(run_id)
        _check_open(run_id, run.summary.status)
        if admit is not None:
            inbox = [decode_message(data) for data in run.inbox.values()]
            if not admit(rebuild(run.head, []), [m for m in inbox if m is not None]):
                return False
        run.inbox[next(self._ids)] = encode_message(message)
        run.runnable = run.runnable or run.summary.status in STILL
        self._hub.publish(run_id, claimable=True)
        return True

    async def inbox(self, run_id: str) -> Inbox:
        run = self._run(run_id)
        ids = tuple(sorted(run.inbox))
        return Inbox(ids=ids, messages=tuple(decode_message(run.inbox[i]) for i in ids))

    async def claim(
        self,
        owner: str,
        *,
        lease_seconds: float = 30.0,
        run_id: str | None = None,
        starting_agent: str | None = None,
    ) -> Lease | None:
        now = self._clock()
        if run_id is not None:
            candidates = [(run_id, self._run(run_id))]
        else:
            candidates = sorted(
                (
                    (rid, run)
                    for rid, run in self._runs.items()
                    if (run.runnable or (run.deadline is not None and run.deadline <= now))
                    and run.parked is None
                    and (starting_agent is None or run.summary.starting_agent == starting_agent)
                ),
                key=lambda pair: pair[1].summary.updated_at,
            )
        for rid, run in candidates:
            if run.lease_until < now:
                taken = None
                if run.lease_owner is not None:
                    taken = Starter(worker=run.lease_owner, lease_until=run.lease_until)
                run.lease_owner = owner
                run.lease_token += 1
                run.lease_until = now + lease_seconds
                return Lease(
                    run_id=rid,
                    owner=owner,
                    token=run.lease_token,
                    expires_at=run.lease_until,
                    taken_from=taken,
                )
        return None

    async def fail(self, lease: Lease, error: str, *, retry: RetryPolicy) -> bool:
        run = self._run(lease.run_id)
        if not self._holds(run, lease):
            return False
        run.failures += 1
        run.lease_owner = None
        if run.failures >= retry.attempts:
            run.parked, run.lease_until = error, 0.0
        else:
            run.lease_until = self._clock() + retry.delay(run.failures)
        return run.parked is not None

    async def renew(self, lease: Lease, *, lease_seconds: float = 30.0) -> Lease:
        run = self._run(lease.run_id)
        if not self._holds(run, lease):
            raise LeaseLost(f"run {lease.run_id}: the lease of {lease.owner!r} is no longer held")
        run.lease_until = self._clock() + lease_seconds
        return Lease(
            run_id=lease.run_id, owner=lease.owner, token=lease.token, expires_at=run.lease_until
        )

    async def release(self, lease: Lease) -> None:
        run = self._runs.get(lease.run_id)
        if run is not None and run.lease_token == lease.token:
            run.lease_owner = None
            run.lease_until = 0.0
            if run.runnable:
                self._hub.publish(lease.run_id, claimable=True)

    def _holds(self, run: _Run, lease: Lease) -> bool:
        return (
            run.lease_token == lease.token
            and run.lease_owner == lease.owner
            and run.lease_until >= self._clock()
        )


def _check_open(run_id: str, status: str) -> None:
    if RunStatus(status).is_terminal:
        raise ConflictError(f"run {run_id} is {status}; it takes no more decisions or input")
