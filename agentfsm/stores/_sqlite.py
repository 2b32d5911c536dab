"""SQLiteStore: the embedded default. One file, WAL mode, created on first use.

Calls run on the caller's thread: each is one short local transaction, cheaper than a hop to
a worker thread. Several processes may share the file; SQLite serializes their writes, and
``BEGIN IMMEDIATE`` makes each compare-and-swap atomic across them.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .._errors import ConflictError, InboxChanged, LeaseLost, StoreError, UnknownRunError
from .._items import Item
from .._json import check_session
from .._machine import RunStatus
from .._outcomes import Starter
from .._state import RunState
from ._base import (
    Admission,
    Inbox,
    Inboxes,
    InboxMessage,
    Lease,
    Renewer,
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
    conversation_of,
    decode_message,
    encode_message,
    inbox_of,
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
from ._listeners import DataVersionListener
from ._sqlite_file import check_file, create_file, store_error

log = logging.getLogger("agentfsm")

__all__ = ["SQLiteStore"]

#: This store's own table layout version (``agentfsm_schema``), migrated on open.
#:   1: runs, their items and their inbox.
#:   2: the calls waiting for a decision, indexed for the inbox query; deadlines; parked runs.
#:   3: every version of a run (its head row, at each step); runs stored before it start
#:      their history at the version they were at.
#:   4: sessions: the runs of each conversation thread, in order.
#:   5: cheaper checkpoints (see ``_LAYOUT_5``).
LAYOUT_VERSION = 5

_LAYOUT = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    starting_agent TEXT NOT NULL,
    current_agent TEXT NOT NULL,
    turn INTEGER NOT NULL,
    waiting INTEGER NOT NULL,
    head BLOB NOT NULL,
    n_items INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    runnable INTEGER NOT NULL,
    inbox INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_token INTEGER NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_runnable ON runs (runnable, updated_at);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, updated_at);
CREATE TABLE IF NOT EXISTS run_items (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    item BLOB NOT NULL,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    message BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS run_inbox_by_run ON run_inbox (run_id, id);
"""

_LAYOUT_2 = """
CREATE TABLE IF NOT EXISTS run_waiting (
    run_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    agent TEXT NOT NULL,
    request BLOB NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (run_id, call_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS run_waiting_by_since ON run_waiting (since, run_id, call_id);
CREATE INDEX IF NOT EXISTS run_waiting_by_tool ON run_waiting (tool, since, run_id, call_id);
CREATE INDEX IF NOT EXISTS run_waiting_by_agent ON run_waiting (agent, since, run_id, call_id);
ALTER TABLE runs ADD COLUMN deadline REAL;
ALTER TABLE runs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN parked TEXT;
CREATE INDEX IF NOT EXISTS runs_by_deadline ON runs (deadline) WHERE deadline IS NOT NULL;
"""

_LAYOUT_3 = """
CREATE TABLE IF NOT EXISTS run_versions (
    run_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    event TEXT,
    at REAL NOT NULL,
    head BLOB NOT NULL,
    n_items INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    PRIMARY KEY (run_id, version)
) WITHOUT ROWID;
INSERT OR IGNORE INTO run_versions (run_id, version, status, event, at, head, n_items,
    schema_version)
SELECT run_id, version, status, NULL, updated_at, head, n_items, schema_version FROM runs;
"""

_LAYOUT_4 = """
CREATE TABLE IF NOT EXISTS session_runs (
    session TEXT NOT NULL,
    position INTEGER NOT NULL,
    run_id TEXT NOT NULL UNIQUE,
    at REAL NOT NULL,
    PRIMARY KEY (session, position)
) WITHOUT ROWID;
"""

# A checkpoint's cost is mostly the pages its commit writes. Keyed by (run_id, version), a
# run's versions were appended in the middle of the table, which split its pages every few
# steps: 3 pages written per version on average. Appended by a row id, a version writes the
# table's last page (a new one every few steps) and a page of the small index that finds it:
# 2.3. The indexes on runnable and on status cost a page each at every step (a step changes
# the indexed updated_at) and a few microseconds more: no query used the first (``claim``
# reads the whole table); ``list(status=...)`` now reads the whole table, as ``list()``
# always did (4 ms for 10,000 runs): listings are far rarer than steps. (A partial index of
# the runs at rest costs the UPDATE of every step as much as the page it saves.)
_LAYOUT_5 = """
CREATE TABLE run_versions_5 (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    event TEXT,
    at REAL NOT NULL,
    head BLOB NOT NULL,
    n_items INTEGER NOT NULL,
    schema_version INTEGER NOT NULL
);
INSERT INTO run_versions_5 (run_id, version, status, event, at, head, n_items, schema_version)
SELECT run_id, version, status, event, at, head, n_items, schema_version FROM run_versions
ORDER BY run_id, version;
DROP TABLE run_versions;
ALTER TABLE run_versions_5 RENAME TO run_versions;
CREATE UNIQUE INDEX run_versions_by_run ON run_versions (run_id, version);
DROP INDEX IF EXISTS runs_by_runnable;
DROP INDEX IF EXISTS runs_by_status
"""

# A session's last run, and its status now (None for no run, or one deleted meanwhile).
_SESSION_LAST = (
    "SELECT s.position, s.run_id, r.status FROM session_runs AS s"
    " LEFT JOIN runs AS r ON r.run_id = s.run_id WHERE s.session = ?"
    " ORDER BY s.position DESC LIMIT 1"
)

# Every run of a session before one (all of them when ``before`` is NULL or not in it).
_SESSION_TRANSCRIPT = """
SELECT r.run_id, r.head, r.n_items
FROM session_runs AS s JOIN runs AS r ON r.run_id = s.run_id
WHERE s.session = ? AND s.position < COALESCE(
    (SELECT b.position FROM session_runs AS b WHERE b.session = ? AND b.run_id = ?),
    9223372036854775807
)
ORDER BY s.position
"""

_SESSIONS = """
SELECT s.session, (SELECT count(*) FROM session_runs AS c WHERE c.session = s.session),
    s.run_id, r.status, s.at
FROM session_runs AS s JOIN runs AS r ON r.run_id = s.run_id
WHERE s.position = (SELECT max(m.position) FROM session_runs AS m WHERE m.session = s.session)
ORDER BY s.at DESC, s.session DESC
"""

_KEEP_VERSION = (
    "INSERT OR REPLACE INTO run_versions (run_id, version, status, event, at, head, n_items,"
    " schema_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

# The versions to drop: beyond the newest ``keep`` of a run, or saved before ``before``;
# never a run's current version.
_PRUNE = """
DELETE FROM run_versions WHERE (run_id, version) IN (
    SELECT v.run_id, v.version FROM (
        SELECT run_id, version, at,
            row_number() OVER (PARTITION BY run_id ORDER BY version DESC) AS rank
        FROM run_versions WHERE :run_id IS NULL OR run_id = :run_id
    ) AS v JOIN runs AS r ON r.run_id = v.run_id
    WHERE v.version <> r.version
        AND ((:keep IS NOT NULL AND v.rank > :keep) OR (:before IS NOT NULL AND v.at < :before))
)
"""

_LIVE = ("new", "running", "tools")


class SQLiteStore(Store):
    """Runs in a SQLite file at ``path`` (created with its tables on first use).

    ``synchronous`` is SQLite's durability setting: ``"NORMAL"`` (default) survives a crash
    of the process; ``"FULL"`` also survives a power cut, at the cost of an fsync per step.
    ``timeout`` is how long a call waits for another process's write to finish before it
    fails with StoreUnavailable ("the database is locked").

    ``create=False`` opens only an existing store, for readers that must not leave an empty
    file behind: a missing file raises StoreError. Whatever ``create``, a file that is not an
    agentfsm store (empty, zeroed, truncated, corrupted, not SQLite, or another
    application's SQLite database) raises StoreError and is left as it is.

    One store may be shared by threads and by asyncio tasks: its calls take turns on a lock,
    each holding it for one short transaction. Every sqlite3 error is raised as a StoreError
    that keeps it as its ``__cause__``.

    ``watch_interval`` is how often, in seconds, the feeds of ``changes`` look at the file's
    change counter for what other processes wrote (changes made through this store are told
    at once).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        create: bool = True,
        watch_interval: float = 0.05,
    ) -> None:
        if not 0 < watch_interval <= 60:
            raise ValueError("watch_interval must be more than 0 and at most 60 seconds")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be OFF, NORMAL, FULL or EXTRA")
        self.path = Path(path)
        self._clock = clock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._hub = Hub(lambda hub: DataVersionListener(hub, self.path, watch_interval))
        try:
            if not self.path.exists():
                if not create:
                    raise StoreError(f"the SQLite store {str(self.path)!r} does not exist")
                create_file(self.path, self._setup)
            check_file(self.path)
            # mode=rw: the file is opened as it is, never created anew.
            self._db = sqlite3.connect(
                f"{self.path.absolute().as_uri()}?mode=rw",
                timeout=timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=True,
            )
        except sqlite3.Error as exc:
            raise self._error(exc, opening=True) from exc
        except OSError as exc:
            raise StoreError(
                f"cannot create the SQLite store {str(self.path)!r}: {exc.strerror or exc}"
            ) from exc
        try:
            self._open(synchronous, create)
        except BaseException:  # whatever stops it (StoreError, an interrupt), nothing leaks
            self._db.close()
            raise

    def _setup(self, db: sqlite3.Connection) -> None:
        """Lay out a new store's file (see ``create_file``)."""
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        self._migrate(db)
        db.execute("COMMIT")

    def _open(self, synchronous: str, create: bool) -> None:
        with self._transaction("BEGIN", opening=True) as db:
            current = self._layout_version(db)
        if current is None and not create:
            raise StoreError(
                f"{str(self.path)!r} is not an agentfsm store: it has no agentfsm tables"
            )
        try:
            # Only now that the file is known to be ours (or empty) may anything change it.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        except sqlite3.Error as exc:
            raise self._error(exc, opening=True) from exc
        if current != LAYOUT_VERSION:
            with self._transaction("BEGIN IMMEDIATE", opening=True) as db:
                self._migrate(db)

    def _layout_version(self, db: sqlite3.Connection) -> int | None:
        """The file's layout version (0 if unknown), or None for a database with nothing in
        it. A database with tables and no ``agentfsm_schema`` belongs to some other
        application: StoreError, so that agentfsm never adds its tables to it."""
        names = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
                " ORDER BY name"
            )
        ]
        if "agentfsm_schema" in names:
            row = db.execute("SELECT max(version) FROM agentfsm_schema").fetchone()
            current = int(row[0] or 0)
            if current > LAYOUT_VERSION:
                raise StoreError(
                    f"the store {str(self.path)!r} has layout version {current}, newer than "
                    f"this agentfsm understands ({LAYOUT_VERSION}); upgrade agentfsm"
                )
            return current
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise StoreError(
                f"{str(self.path)!r} is not an agentfsm store: it is another application's "
                f"SQLite database (it holds {shown}, and no agentfsm_schema table); "
                "agentfsm leaves it alone"
            )
        return None

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the layout up to date, in the caller's write transaction; the version is
        read again in it, as another process may have migrated the file meanwhile."""
        current = self._layout_version(db) or 0
        db.execute("CREATE TABLE IF NOT EXISTS agentfsm_schema (version INTEGER NOT NULL)")
        for version, layout in (
            (1, _LAYOUT),
            (2, _LAYOUT_2),
            (3, _LAYOUT_3),
            (4, _LAYOUT_4),
            (5, _LAYOUT_5),
        ):
            if current < version:
                for statement in layout.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO agentfsm_schema (version) VALUES (?)", (version,))
        if current == 1:  # runs paused before the waiting calls had a table of their own
            paused = db.execute("SELECT head, updated_at FROM runs WHERE waiting > 0").fetchall()
            for head, updated_at in paused:
                self._set_waiting(db, rebuild(head, []), updated_at, 0)

    @contextlib.contextmanager
    def _transaction(
        self, begin: str = "BEGIN IMMEDIATE", *, opening: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """One transaction, with the store to itself: a write (``BEGIN IMMEDIATE`` takes
        the file's write lock at once), or a read (``BEGIN``, one consistent snapshot).

        sqlite3's errors become StoreErrors; agentfsm's own errors pass as they are. Either
        way what was done is rolled back, if SQLite has not already done so (it does on some
        errors, such as a full disk, and a second ROLLBACK would fail and hide the cause)."""
        with self._lock:
            db = self._db
            try:
                if db.in_transaction:  # left open by a rollback that failed
                    db.execute("ROLLBACK")
                db.execute(begin)
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                self._roll_back()
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc, opening=opening) from exc
                if isinstance(exc, UnicodeEncodeError):  # sqlite3 binding a lone surrogate
                    raise StoreError(
                        f"SQLite store {str(self.path)!r}: text that SQLite cannot hold: {exc}"
                    ) from exc
                raise

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._transaction("BEGIN")

    def _roll_back(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the error being raised says more; keep it
            log.warning("SQLite store %r: rollback failed: %s", str(self.path), exc)

    def _error(self, exc: sqlite3.Error, *, opening: bool = False) -> StoreError:
        return store_error(self.path, exc, timeout=self._timeout, opening=opening)

    async def close(self) -> None:
        self._hub.close()
        with self._lock:
            self._db.close()

    def _change_hub(self) -> Hub:
        return self._hub

    # -- runs ------------------------------------------------------------------------------

    async def create(self, state: RunState) -> None:
        head, items, _ = parts(state, 0, state.schema_version)
        summary = summary_of(state, self._clock())
        with self._write() as db:
            try:
                db.execute(
                    "INSERT INTO runs (run_id, status, version, starting_agent, current_agent,"
                    " turn, waiting, head, n_items, schema_version, runnable, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        state.run_id,
                        summary.status,
                        summary.version,
                        summary.starting_agent,
                        summary.current_agent,
                        summary.turn,
                        summary.waiting,
                        head,
                        len(items),
                        state.schema_version,
                        is_runnable(state, 0),
                        summary.updated_at,
                        summary.updated_at,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"run {state.run_id} is already stored") from exc
            if state.session is not None:
                self._join(db, state.session, state.run_id, summary.updated_at)
            self._append(db, state.run_id, 0, items)
            self._set_waiting(db, state, summary.updated_at, 0)
            db.execute(
                _KEEP_VERSION,
                (
                    state.run_id,
                    summary.version,
                    summary.status,
                    None,
                    summary.updated_at,
                    head,
                    len(items),
                    state.schema_version,
                ),
            )
        self._hub.publish(state.run_id, claimable=is_runnable(state, 0))

    def _join(self, db: sqlite3.Connection, session: str, run_id: str, now: float) -> None:
        """Add the run as the session's next one, unless the session's last run is active
        (in the caller's write transaction, which no other process can interleave)."""
        check_session(session)
        last = db.execute(_SESSION_LAST, (session,)).fetchone()
        if last is not None and last[2] is not None and not RunStatus(last[2]).is_terminal:
            raise session_busy(session, last[1], last[2])
        try:
            db.execute(
                "INSERT INTO session_runs (session, position, run_id, at) VALUES (?, ?, ?, ?)",
                (session, 1 if last is None else last[0] + 1, run_id, now),
            )
        except sqlite3.IntegrityError as exc:
            raise session_busy(session, None, None) from exc

    async def session_runs(self, session: str) -> list[SessionRun]:
        check_session(session)
        with self._read() as db:
            rows = db.execute(
                "SELECT s.position, s.run_id, r.status, s.at FROM session_runs AS s"
                " JOIN runs AS r ON r.run_id = s.run_id WHERE s.session = ?"
                " ORDER BY s.position",
                (session,),
            ).fetchall()
        return [SessionRun(session, *row) for row in rows]

    async def session_transcript(self, session: str, *, before: str | None = None) -> list[Item]:
        # One snapshot of the whole session, not one transaction per run.
        check_session(session)
        runs = []
        with self._read() as db:
            for run_id, head, n_items in db.execute(
                _SESSION_TRANSCRIPT, (session, session, before)
            ):
                items = db.execute(
                    "SELECT item FROM run_items WHERE run_id = ? AND idx < ? ORDER BY idx",
                    (run_id, n_items),
                )
                runs.append((head, [item for (item,) in items]))
        return [item for head, items in runs for item in conversation_of(rebuild(head, items))]

    async def sessions(self, *, limit: int | None = None) -> list[SessionSummary]:
        check_limit(limit)
        query, params = _SESSIONS, []
        if limit is not None:
            query, params = query + " LIMIT ?", [limit]
        with self._read() as db:
            return [SessionSummary(*row) for row in db.execute(query, params)]

    async def clear_session(self, session: str) -> int:
        check_session(session)
        with self._write() as db:
            last = db.execute(_SESSION_LAST, (session,)).fetchone()
            if last is not None and last[2] is not None and not RunStatus(last[2]).is_terminal:
                raise session_busy(session, last[1], last[2])
            runs = "(SELECT run_id FROM session_runs WHERE session = ?)"
            for table in ("run_items", "run_inbox", "run_waiting", "run_versions"):
                db.execute(f"DELETE FROM {table} WHERE run_id IN {runs}", (session,))
            deleted = [
                row[0]
                for row in db.execute(
                    f"DELETE FROM runs WHERE run_id IN {runs} RETURNING run_id", (session,)
                )
            ]
            db.execute("DELETE FROM session_runs WHERE session = ?", (session,))
        for run_id in deleted:
            self._hub.publish(run_id)
        return len(deleted)

    async def load(self, run_id: str, *, version: int | None = None) -> RunState:
        with self._read() as db:
            row = db.execute(
                "SELECT head, n_items, schema_version FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise UnknownRunError(f"no run {run_id!r} in the store")
            current_head, n_items, current_schema = row
            if version is not None:
                kept = db.execute(
                    "SELECT head, n_items, schema_version FROM run_versions"
                    " WHERE run_id = ? AND version = ?",
                    (run_id, version),
                ).fetchone()
                if kept is None:
                    raise unknown_version(run_id, version)
                head, n_items, schema = kept
            items = [
                item
                for (item,) in db.execute(
                    "SELECT item FROM run_items WHERE run_id = ? AND idx < ? ORDER BY idx",
                    (run_id, n_items),
                )
            ]
        if version is None:
            return rebuild(current_head, items)
        return rebuild_version(head, schema, items, current_head, current_schema)

    async def history(self, run_id: str) -> list[RunVersion]:
        with self._read() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise UnknownRunError(f"no run {run_id!r} in the store")
            return [
                RunVersion(*row)
                for row in db.execute(
                    "SELECT version, status, event, at, n_items FROM run_versions"
                    " WHERE run_id = ? ORDER BY version",
                    (run_id,),
                )
            ]

    async def prune(
        self,
        *,
        keep_versions: int | None = None,
        older_than: float | None = None,
        run_id: str | None = None,
    ) -> int:
        check_prune(keep_versions, older_than)
        with self._write() as db:
            if (
                run_id is not None
                and db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None
            ):
                raise UnknownRunError(f"no run {run_id!r} in the store")
            return int(
                db.execute(
                    _PRUNE, {"run_id": run_id, "keep": keep_versions, "before": older_than}
                ).rowcount
            )

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
        expected = state.version - 1 if expected_version is None else expected_version
        summary = summary_of(state, self._clock())
        live = state.status.value in _LIVE
        with self._write() as db:
            row = db.execute(
                "SELECT version, n_items, lease_owner, lease_token, lease_until, inbox,"
                " schema_version, waiting FROM runs"
                " WHERE run_id = ?",
                (state.run_id,),
            ).fetchone()
            if row is None:
                raise UnknownRunError(f"no run {state.run_id!r} in the store")
            version, stored_items, owner, token, until, inbox, stored_schema, was_waiting = row
            if lease is not None and not (
                owner == lease.owner and token == lease.token and until >= self._clock()
            ):
                raise LeaseLost(
                    f"run {state.run_id}: the lease of {lease.owner!r} is no longer held"
                )
            if version != expected:
                raise ConflictError(
                    f"run {state.run_id} is at version {version}, not {expected}: it changed "
                    "since this state was loaded"
                )
            if seen is not None:
                (newest,) = db.execute(
                    "SELECT max(id) FROM run_inbox WHERE run_id = ?", (state.run_id,)
                ).fetchone()
                if newest is not None and newest > seen:
                    raise InboxChanged(f"run {state.run_id}: more was posted to its inbox")
            head, items, start = parts(state, stored_items, stored_schema)
            if start < stored_items:
                db.execute("DELETE FROM run_items WHERE run_id = ?", (state.run_id,))
            acked = 0
            if acknowledge:
                marks = ",".join("?" * len(acknowledge))
                acked = db.execute(
                    f"DELETE FROM run_inbox WHERE run_id = ? AND id IN ({marks})",
                    (state.run_id, *acknowledge),
                ).rowcount
            db.execute(
                "UPDATE runs SET status = ?, version = ?, current_agent = ?, turn = ?,"
                " waiting = ?, head = ?, n_items = ?, schema_version = ?, inbox = inbox - ?,"
                " runnable = (? OR (? IN ('interrupted', 'paused') AND inbox - ? > 0)),"
                " updated_at = ?,"
                " failures = 0, parked = NULL WHERE run_id = ?",
                (
                    summary.status,
                    summary.version,
                    summary.current_agent,
                    summary.turn,
                    summary.waiting,
                    head,
                    start + len(items),
                    state.schema_version,
                    acked,
                    live,
                    summary.status,
                    acked,
                    summary.updated_at,
                    state.run_id,
                ),
            )
            self._append(db, state.run_id, start, items)
            self._set_waiting(db, state, summary.updated_at, was_waiting)
            db.execute(
                _KEEP_VERSION,
                (
                    state.run_id,
                    summary.version,
                    summary.status,
                    event,
                    summary.updated_at,
                    head,
                    start + len(items),
                    state.schema_version,
                ),
            )
        left = int(inbox) - acked
        self._hub.publish(state.run_id, claimable=lease is None and is_runnable(state, left))
        return left

    def _set_waiting(
        self, db: sqlite3.Connection, state: RunState, now: float, was_waiting: int
    ) -> None:
        """Keep the run's rows of the inbox query, and its earliest deadline, in step with
        ``state``: calls that still wait keep the time they started waiting."""
        rows = waiting_rows(state)
        if not rows and not was_waiting:
            return
        marks = ",".join("?" * len(rows))
        db.execute(
            f"DELETE FROM run_waiting WHERE run_id = ? AND call_id NOT IN ({marks})",
            (state.run_id, *(row[0] for row in rows)),
        )
        db.executemany(
            "INSERT INTO run_waiting (run_id, call_id, tool, agent, request, since)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, call_id) DO UPDATE SET"
            " tool = excluded.tool, agent = excluded.agent, request = excluded.request",
            [(state.run_id, c, t, a, r, now) for c, t, a, r, _ in rows],
        )
        deadline = min((row[4] for row in rows if row[4] is not None), default=None)
        db.execute("UPDATE runs SET deadline = ? WHERE run_id = ?", (deadline, state.run_id))

    def _append(self, db: sqlite3.Connection, run_id: str, start: int, items: list[bytes]) -> None:
        if items:
            db.executemany(
                "INSERT INTO run_items (run_id, idx, item) VALUES (?, ?, ?)",
                [(run_id, start + offset, item) for offset, item in enumerate(items)],
            )

    async def list(
        self, *, status: RunStatus | str | None = None, limit: int | None = None
    ) -> list[RunSummary]:
        check_limit(limit)
        query = (
            "SELECT run_id, status, version, starting_agent, current_agent, turn, waiting,"
            " updated_at, inbox, parked FROM runs"
        )
        params: list[object] = []
        if status is not None:
            query += " WHERE status = ?"
            params.append(status_value(status))
        query += " ORDER BY updated_at DESC"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._read() as db:
            return [RunSummary(*row) for row in db.execute(query, params)]

    async def delete(self, run_id: str) -> None:
        with self._write() as db:
            if not db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount:
                raise UnknownRunError(f"no run {run_id!r} in the store")
            db.execute("DELETE FROM run_items WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM run_inbox WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM run_waiting WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM run_versions WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM session_runs WHERE run_id = ?", (run_id,))
        self._hub.publish(run_id)

    async def waiting(
        self,
        *,
        tool: str | None = None,
        agent: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> WaitingPage:
        start = check_page(limit, after)
        query = "SELECT run_id, request, since FROM run_waiting"
        where: list[str] = []
        params: list[object] = []
        for column, value in (("tool", tool), ("agent", agent)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if start is not None:
            where.append("(since, run_id, call_id) > (?, ?, ?)")
            params += start
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY since, run_id, call_id LIMIT ?"
        with self._read() as db:
            rows = db.execute(query, (*params, limit + 1)).fetchall()
            runs = sorted({row[0] for row in rows[:limit]})
            posted: Inboxes = {}
            if runs:
                marks = ",".join("?" * len(runs))
                for run_id, data in db.execute(
                    f"SELECT run_id, message FROM run_inbox WHERE run_id IN ({marks}) ORDER BY id",
                    runs,
                ):
                    message = decode_message(data)
                    if message is not None:
                        posted.setdefault(run_id, []).append(message)
        return page_of(rows, limit, posted)

    # -- the inbox -------------------------------------------------------------------------

    async def post(
        self, run_id: str, message: InboxMessage, *, admit: Admission | None = None
    ) -> bool:
        with self._write() as db:
            row = db.execute("SELECT status, head FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise UnknownRunError(f"no run {run_id!r} in the store")
            if RunStatus(row[0]).is_terminal:
                raise ConflictError(
                    f"run {run_id} is {row[0]}; it takes no more decisions or input"
                )
            if admit is not None:
                inbox = [
                    decode_message(data)
                    for (data,) in db.execute(
                        "SELECT message FROM run_inbox WHERE run_id = ? ORDER BY id", (run_id,)
                    )
                ]
                if not admit(rebuild(row[1], []), [m for m in inbox if m is not None]):
                    return False
            db.execute(
                "INSERT INTO run_inbox (run_id, message) VALUES (?, ?)",
                (run_id, encode_message(message)),
            )
            db.execute(
                "UPDATE runs SET inbox = inbox + 1,"
                " runnable = (runnable OR status IN ('interrupted', 'paused'))"
                " WHERE run_id = ?",
                (run_id,),
            )
        self._hub.publish(run_id, claimable=True)
        return True

    async def inbox(self, run_id: str) -> Inbox:
        with self._read() as db:
            rows = db.execute(
                "SELECT i.id, i.message FROM runs AS r"
                " LEFT JOIN run_inbox AS i ON i.run_id = r.run_id"
                " WHERE r.run_id = ? ORDER BY i.id",
                (run_id,),
            ).fetchall()
        return inbox_of(run_id, rows)

    # -- leases ----------------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        *,
        lease_seconds: float = 30.0,
        run_id: str | None = None,
        starting_agent: str | None = None,
    ) -> Lease | None:
        now = self._clock()
        with self._write() as db:
            if run_id is None:
                # Runnable runs, and paused runs with a call past its deadline.
                row = db.execute(
                    "SELECT run_id, lease_owner, lease_until FROM runs WHERE lease_until < ?"
                    " AND (? IS NULL OR starting_agent = ?) AND (runnable OR deadline <= ?)"
                    " AND parked IS NULL ORDER BY updated_at LIMIT 1",
                    (now, starting_agent, starting_agent, now),
                ).fetchone()
            else:
                exists = db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                if exists is None:
                    raise UnknownRunError(f"no run {run_id!r} in the store")
                row = db.execute(
                    "SELECT run_id, lease_owner, lease_until FROM runs"
                    " WHERE run_id = ? AND lease_until < ?",
                    (run_id, now),
                ).fetchone()
            if row is None:
                return None
            until = now + lease_seconds
            (token,) = db.execute(
                "UPDATE runs SET lease_owner = ?, lease_token = lease_token + 1,"
                " lease_until = ? WHERE run_id = ? RETURNING lease_token",
                (owner, until, row[0]),
            ).fetchone()
        return Lease(
            run_id=row[0],
            owner=owner,
            token=token,
            expires_at=until,
            taken_from=None if row[1] is None else Starter(worker=row[1], lease_until=row[2]),
        )

    async def fail(self, lease: Lease, error: str, *, retry: RetryPolicy) -> bool:
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "UPDATE runs SET failures = failures + 1, lease_owner = NULL"
                " WHERE run_id = ? AND lease_owner = ? AND lease_token = ?"
                " RETURNING failures",
                (lease.run_id, lease.owner, lease.token),
            ).fetchone()
            if row is None:
                return False
            parked = bool(row[0] >= retry.attempts)
            db.execute(
                "UPDATE runs SET parked = ?, lease_until = ? WHERE run_id = ?",
                (
                    error if parked else None,
                    0.0 if parked else now + retry.delay(row[0]),
                    lease.run_id,
                ),
            )
        return parked

    async def renew(self, lease: Lease, *, lease_seconds: float = 30.0) -> Lease:
        return self._renew(lease, lease_seconds)

    def renewer(self) -> Renewer:
        return self._renew  # the store is shared by threads already

    def _renew(self, lease: Lease, lease_seconds: float) -> Lease:
        now = self._clock()
        until = now + lease_seconds
        with self._write() as db:
            renewed = db.execute(
                "UPDATE runs SET lease_until = ? WHERE run_id = ? AND lease_owner = ?"
                " AND lease_token = ? AND lease_until >= ?",
                (until, lease.run_id, lease.owner, lease.token, now),
            ).rowcount
        if not renewed:
            raise LeaseLost(f"run {lease.run_id}: the lease of {lease.owner!r} is no longer held")
        return Lease(run_id=lease.run_id, owner=lease.owner, token=lease.token, expires_at=until)

    async def release(self, lease: Lease) -> None:
        with self._write() as db:
            released = db.execute(
                "UPDATE runs SET lease_owner = NULL, lease_until = 0"
                " WHERE run_id = ? AND lease_token = ? RETURNING runnable",
                (lease.run_id, lease.token),
            ).fetchone()
        if released is not None and released[0]:
            self._hub.publish(lease.run_id, claimable=True)
