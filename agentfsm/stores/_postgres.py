"""PostgresStore: many workers on many machines, one PostgreSQL database.

The layout is SQLiteStore's: a small head row per run, rewritten under compare-and-swap at
every step, the transcript as append-only rows, and an inbox table. Its tables live in their
own PostgreSQL schema (``agentfsm`` unless told otherwise), created on first use together
with a version table for the store's own migrations.

Workers claim runs with ``SELECT ... FOR UPDATE SKIP LOCKED``, so two claims never wait on
each other nor hand out the same run. Time is the database's (``statement_timestamp()``,
as seconds since the epoch), so workers on machines whose clocks disagree still agree on
when a lease ends; a ``clock`` callable replaces it everywhere, for tests of expiry.

psycopg 3 is imported when a store is built, so this module imports without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from .._errors import (
    ConfigurationError,
    ConflictError,
    InboxChanged,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    UnknownRunError,
)
from .._items import Item
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
from ._listeners import NotifyListener, notice
from ._postgres_sql import (
    _CLAIM,
    _CLAIM_NEXT,
    _CLEAR_ITEMS,
    _CREATE,
    _DATABASE_NOW,
    _DELETE_AND_NOTIFY,
    _FAIL,
    _HISTORY,
    _INBOX,
    _INBOX_MESSAGES,
    _LAYOUT,
    _LAYOUT_2,
    _LAYOUT_3,
    _LAYOUT_4,
    _LIVE,
    _LOAD,
    _LOAD_VERSION,
    _LOCK_FOR_CLAIM,
    _LOCK_FOR_POST,
    _LOCK_FOR_SAVE,
    _NEWEST_MESSAGE,
    _NOTIFY,
    _POST,
    _POSTED,
    _PRUNE,
    _RELEASE_AND_NOTIFY,
    _RENEW,
    _SAVE,
    _SESSION_CLEAR,
    _SESSION_JOIN,
    _SESSION_LAST,
    _SESSION_RUNS,
    _SESSION_TRANSCRIPT,
    _SESSIONS,
    _SET_WAITING,
    _SUMMARY,
    _TERMINAL,
    _WAITING,
    LAYOUT_VERSION,
)
from ._postgres_text import (
    one_line,
    redact,
    redact_text,
    text,
    transient,
    unreachable,
    untext,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

    Connection = psycopg.AsyncConnection[TupleRow]

__all__ = ["LAYOUT_VERSION", "PostgresStore", "redact"]


class PostgresStore(Store):
    """Runs in a PostgreSQL database, for many workers on many machines.

    ``dsn`` is a libpq connection string or URL (``postgresql://user@host/db``). The tables
    go in the PostgreSQL schema ``schema``, created with them on first use (the role needs
    the right to create it, once). Up to ``max_size`` connections are opened as calls need
    them and kept for the next ones; several tasks may use one store at once.

    Leases are measured against the database's clock, unless ``clock`` (seconds since the
    epoch, like ``time.time``) is given: then it is used for every timestamp instead. All
    the stores and processes sharing a schema should use the same kind of clock.

    ``create=False`` uses only tables that exist, for readers that must not create them: a
    missing schema raises StoreError at the first call.

    No call waits forever on a run that another transaction keeps locked (a process frozen
    in the middle of a write, say): after ``lock_timeout`` seconds waiting for a lock, or
    ``statement_timeout`` seconds in one statement, it fails with StoreUnavailable. And a
    transaction of this store left idle for ``idle_in_transaction_timeout`` seconds (its own
    process frozen) is ended by the server, so that its locks do not stop everyone else.
    None leaves that setting to the server; one set in the DSN's ``options`` (or in
    ``PGOPTIONS``) is left as it is there. Migrating the tables is exempt from the statement
    timeout, as building an index on a large table may take longer.

    Every change (a run created, saved, deleted or posted to, a lease given back on a
    runnable run) sends a NOTIFY, in its transaction, on a channel of the schema's
    (``channel``); the feeds of ``changes`` hear it on a connection of their own, so a
    worker or an inbox anywhere learns of it at once.

    Needs psycopg 3: ``pip install 'agentfsm[postgres]'``. Every database error is raised
    as a StoreError; one that may pass when tried again (a connection lost or refused, a
    server restarting, a lock or statement timeout) as a StoreUnavailable.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "agentfsm",
        max_size: int = 4,
        connect_timeout: float = 10.0,
        lock_timeout: float | None = 10.0,
        statement_timeout: float | None = 30.0,
        idle_in_transaction_timeout: float | None = 60.0,
        clock: Callable[[], float] | None = None,
        create: bool = True,
    ) -> None:
        try:
            import psycopg
            from psycopg import conninfo
        except ImportError as exc:
            raise ConfigurationError(
                f"PostgresStore needs psycopg 3, which cannot be imported ({exc}); install "
                "it with: pip install 'agentfsm[postgres]'"
            ) from None
        if not isinstance(schema, str) or not schema or "\x00" in schema:
            raise ValueError("schema must be a non-empty name without NUL characters")
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        timeouts = {
            "lock_timeout": lock_timeout,
            "statement_timeout": statement_timeout,
            "idle_in_transaction_session_timeout": idle_in_transaction_timeout,
        }
        for name, seconds in timeouts.items():
            if seconds is not None and not seconds > 0:
                raise ValueError(f"{name} must be positive, or None")
        self._dsn = dsn
        self.schema = schema
        self._where = redact(dsn)
        try:
            options = conninfo.conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"invalid PostgreSQL DSN {self._where!r}: {redact_text(str(exc))}"
            ) from None
        self._connect_options: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in options:
            # libpq counts whole seconds, and at least 2.
            self._connect_options["connect_timeout"] = max(2, round(connect_timeout))
        given = str(options.get("options", os.environ.get("PGOPTIONS", "")))
        self._timeouts = {
            name: seconds
            for name, seconds in timeouts.items()
            if seconds is not None and name not in given
        }
        self._q_timeouts = (
            "SELECT " + ", ".join("set_config(%s, %s, false)" for _ in self._timeouts)
        ).encode()
        self._clock = clock
        self._create = create
        self._max_size = max_size
        self._lock_key = int.from_bytes(
            hashlib.blake2b(f"agentfsm:{schema}".encode(), digest_size=8).digest(),
            "big",
            signed=True,
        )
        #: The channel of the schema's change notifications (a name PostgreSQL keeps as it
        #: is, and short enough for any schema's name).
        self.channel = "agentfsm_" + hashlib.blake2b(schema.encode(), digest_size=8).hexdigest()
        self._hub = Hub(
            lambda hub: NotifyListener(hub, self._connect_blocking, self.channel, self._where)
        )

        quoted = '"' + schema.replace('"', '""') + '"'  # PostgreSQL's quoting of a name
        self._quoted = quoted
        now = "%(now)s::float8" if clock is not None else _DATABASE_NOW

        def query(template: str, **extra: str) -> bytes:
            return template.format(s=quoted, now=now, **extra).encode()

        self._q_layouts = [
            (version, [query(s) for s in layout.split(";") if s.strip()])
            for version, layout in ((1, _LAYOUT), (2, _LAYOUT_2), (3, _LAYOUT_3), (4, _LAYOUT_4))
        ]
        self._q_set_waiting = query(_SET_WAITING)
        self._q_posted = query(_POSTED)
        self._q_waiting = {
            (tool, agent, start): query(
                _WAITING
                + " WHERE true"
                + (" AND tool = %(tool)s" if tool else "")
                + (" AND agent = %(agent)s" if agent else "")
                + (
                    " AND (since, run_id, call_id) > (%(since)s, %(run)s, %(call)s)"
                    if start
                    else ""
                )
                + " ORDER BY since, run_id, call_id LIMIT %(limit)s"
            )
            for tool in (False, True)
            for agent in (False, True)
            for start in (False, True)
        }
        self._q_create_schema = f"CREATE SCHEMA IF NOT EXISTS {quoted}".encode()
        self._q_create_versions = (
            f"CREATE TABLE IF NOT EXISTS {quoted}.agentfsm_schema (version integer NOT NULL)"
        ).encode()
        self._q_versions = f"SELECT max(version) FROM {quoted}.agentfsm_schema".encode()
        self._q_add_version = f"INSERT INTO {quoted}.agentfsm_schema (version) VALUES (%s)".encode()
        self._q_create = query(_CREATE)
        self._q_session_last = query(_SESSION_LAST)
        self._q_session_join = query(_SESSION_JOIN)
        self._q_session_runs = query(_SESSION_RUNS)
        self._q_session_clear = query(_SESSION_CLEAR)
        self._q_session_transcript = query(_SESSION_TRANSCRIPT)
        self._q_sessions = {
            limited: query(_SESSIONS + (" LIMIT %(limit)s" if limited else ""))
            for limited in (False, True)
        }
        self._q_load = query(_LOAD)
        self._q_load_version = query(_LOAD_VERSION)
        self._q_history = query(_HISTORY)
        self._q_prune = query(_PRUNE)
        self._q_exists = query("SELECT 1 FROM {s}.runs WHERE run_id = %(run_id)s")
        self._q_lock_for_save = query(_LOCK_FOR_SAVE)
        self._q_save = query(_SAVE)
        self._q_lock_for_post = query(_LOCK_FOR_POST)
        self._q_post = query(_POST)
        self._q_inbox = query(_INBOX)
        self._q_inbox_messages = query(_INBOX_MESSAGES)
        self._q_newest_message = query(_NEWEST_MESSAGE)
        self._q_clear_items = query(_CLEAR_ITEMS)
        self._q_claim_next = query(_CLAIM_NEXT, agent="")
        self._q_claim_next_of = query(_CLAIM_NEXT, agent="AND starting_agent = %(agent)s")
        self._q_lock_for_claim = query(_LOCK_FOR_CLAIM)
        self._q_claim = query(_CLAIM)
        self._q_renew = query(_RENEW)
        self._q_release_and_notify = query(_RELEASE_AND_NOTIFY)
        self._q_delete_and_notify = query(_DELETE_AND_NOTIFY)
        self._q_notify = _NOTIFY.encode()
        self._q_fail = query(_FAIL)
        self._q_list = {
            (by_status, limited): query(
                _SUMMARY
                + (" WHERE status = %(status)s" if by_status else "")
                + " ORDER BY updated_at DESC, seq"
                + (" LIMIT %(limit)s" if limited else "")
            )
            for by_status in (False, True)
            for limited in (False, True)
        }

        # The pool: idle connections, and a semaphore bounding how many are open. Both belong
        # to one event loop; a store used from a new loop (``asyncio.run`` again) starts over.
        self._idle: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._migrating: asyncio.Lock | None = None
        self._ready = False
        self._closed = False
        # The blocking connection of ``renewer``, for threads: its own, behind a lock.
        self._renewal: psycopg.Connection[TupleRow] | None = None
        self._renewal_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r}, schema={self.schema!r})"

    # -- connections -------------------------------------------------------------------------

    def _now(self) -> float | None:
        """The store's clock, or None when the database's clock is used."""
        return None if self._clock is None else self._clock()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A connection of the pool, for one call; psycopg's errors become StoreErrors."""
        import psycopg

        if self._closed:
            raise StoreError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            await self._discard_idle()
            self._loop = loop
            self._slots = asyncio.Semaphore(self._max_size)
            self._migrating = asyncio.Lock()
        assert self._slots is not None
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                if not self._ready:
                    await self._migrate(conn)
                yield conn
            except psycopg.Error as exc:
                self._fail(exc)
            finally:
                await self._check_in(conn)

    async def _connect(self) -> Connection:
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn, **self._connect_options)
        except psycopg.Error as exc:
            raise self._cannot_connect(exc) from None
        if self._timeouts:
            try:
                await conn.execute(self._q_timeouts, self._timeout_settings())
            except BaseException as exc:
                await _close_quietly(conn)
                if isinstance(exc, psycopg.Error):  # the connection broke at once, say
                    self._fail(exc)
                raise
        return conn

    def _connect_blocking(self) -> psycopg.Connection[TupleRow]:
        """A blocking connection, set up as ``_connect`` sets up the pool's."""
        import psycopg

        try:
            conn = psycopg.Connection.connect(self._dsn, **self._connect_options)
        except psycopg.Error as exc:
            raise self._cannot_connect(exc) from None
        try:
            if self._timeouts:
                conn.execute(self._q_timeouts, self._timeout_settings())
        except psycopg.Error as exc:
            conn.close()
            self._fail(exc)
        return conn

    def _cannot_connect(self, exc: Exception) -> StoreError:
        """A StoreUnavailable if the server could not be reached for now, else a StoreError.
        Not to be chained: libpq's own text may spell out the DSN; this one is redacted."""
        message = one_line(str(exc))
        kind = StoreUnavailable if unreachable(message) else StoreError
        return kind(
            f"cannot connect to the PostgreSQL store {self._where!r}: {redact_text(message)}"
        )

    def _timeout_settings(self) -> list[str]:
        return [
            value
            for name, seconds in self._timeouts.items()
            for value in (name, f"{round(seconds * 1000)}ms")
        ]

    async def _check_in(self, conn: Connection) -> None:
        """Keep a connection for the next call if it is healthy and idle; else close it."""
        from psycopg.pq import TransactionStatus

        reusable = (
            not self._closed
            and not conn.closed
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
            and len(self._idle) < self._max_size
        )
        if reusable:
            self._idle.append(conn)
        else:
            await _close_quietly(conn)

    async def _discard_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close_quietly(conn)

    def _fail(self, exc: Exception) -> NoReturn:
        from psycopg import errors

        # One line (the server adds CONTEXT and DETAIL lines), for logs and the CLI.
        message = one_line(str(exc)) or type(exc).__name__
        meaning = ""
        if isinstance(exc, errors.LockNotAvailable):
            meaning = (
                "the run (or a table) is locked by another transaction, which held the lock "
                f"longer than {self._limit('lock_timeout')} (is a process stuck in the "
                "middle of a write?)"
            )
        elif isinstance(exc, errors.QueryCanceled) and "statement timeout" in message:
            meaning = f"the statement ran longer than {self._limit('statement_timeout')}"
        if meaning:
            message = f"{meaning}: {message}"
        kind = StoreUnavailable if transient(exc) else StoreError
        raise kind(f"PostgreSQL store {self._where!r}: {message}") from exc

    def _limit(self, name: str) -> str:
        seconds = self._timeouts.get(name)
        return f"the {name} of {seconds:g} s" if seconds is not None else f"the {name}"

    async def _migrate(self, conn: Connection) -> None:
        """Create or upgrade the tables, once per store (and once per schema, whatever the
        number of stores and processes starting at once: they take turns on a lock)."""
        assert self._migrating is not None
        async with self._migrating:
            if self._ready:
                return
            current = await self._layout_version(conn)
            if current is None and not self._create:
                raise StoreError(
                    f"the PostgreSQL store {self._where!r} has no agentfsm tables in schema "
                    f"{self.schema!r}"
                )
            if current != LAYOUT_VERSION:
                async with conn.transaction():
                    await conn.execute("SET LOCAL statement_timeout = 0")
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                    await conn.execute(self._q_create_schema)
                    await conn.execute(self._q_create_versions)
                    current = await self._layout_version(conn) or 0
                    for version, statements in self._q_layouts:
                        if current < version:
                            for statement in statements:
                                await conn.execute(statement)
                            await conn.execute(self._q_add_version, (version,))
                    if current == 1:  # runs paused before the waiting calls had a table
                        await self._fill_waiting(conn)
            self._ready = True

    async def _fill_waiting(self, conn: Connection) -> None:
        cursor = await conn.execute(
            f"SELECT head, updated_at FROM {self._quoted}.runs WHERE waiting > 0".encode(),
            binary=True,
        )
        for head, updated_at in await cursor.fetchall():
            await self._set_waiting(conn, rebuild(head, []), updated_at, 0)

    async def _set_waiting(
        self, conn: Connection, state: RunState, since: float | None, was_waiting: int
    ) -> None:
        """Keep the run's rows of the inbox query in step with ``state``."""
        rows = waiting_rows(state)
        if not rows and not was_waiting:
            return
        await conn.execute(
            self._q_set_waiting,
            {
                "run_id": text(state.run_id),
                "calls": [text(row[0]) for row in rows],
                "tools": [text(row[1]) for row in rows],
                "agents": [text(row[2]) for row in rows],
                "requests": [row[3] for row in rows],
                "deadline": min((row[4] for row in rows if row[4] is not None), default=None),
                "since": since,
            },
        )

    async def _layout_version(self, conn: Connection) -> int | None:
        cursor = await conn.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s"
            " AND tablename = 'agentfsm_schema'",
            (self.schema,),
        )
        if await cursor.fetchone() is None:
            return None
        cursor = await conn.execute(self._q_versions)
        row = await cursor.fetchone()
        current = None if row is None or row[0] is None else int(row[0])
        if current is not None and current > LAYOUT_VERSION:
            raise StoreError(
                f"the PostgreSQL store {self._where!r} (schema {self.schema!r}) has layout "
                f"version {current}, newer than this agentfsm understands ({LAYOUT_VERSION}); "
                "upgrade agentfsm"
            )
        return current

    async def close(self) -> None:
        """Close the store's connections. A closed store cannot be used again."""
        self._closed = True
        self._hub.close()
        await self._discard_idle()
        with self._renewal_lock:
            if self._renewal is not None:
                self._renewal.close()

    def _change_hub(self) -> Hub:
        return self._hub

    async def _notify(self, conn: Connection, run_id: str, claimable: bool) -> None:
        """Tell every listener that the run ``run_id`` (as stored) changed, when the
        transaction under way commits."""
        await conn.execute(
            self._q_notify, {"channel": self.channel, "payload": notice(run_id, claimable)}
        )

    # -- runs ------------------------------------------------------------------------------

    async def create(self, state: RunState) -> None:
        from psycopg import errors

        head, items, _ = parts(state, 0, state.schema_version)
        summary = summary_of(state, 0.0)
        params = {
            "run_id": text(state.run_id),
            "status": summary.status,
            "version": summary.version,
            "starting_agent": text(summary.starting_agent),
            "current_agent": text(summary.current_agent),
            "turn": summary.turn,
            "waiting": summary.waiting,
            "head": head,
            "n_items": len(items),
            "schema_version": state.schema_version,
            "runnable": is_runnable(state, 0),
            "now": self._now(),
            "start": 0,
            "items": items,
            "event": None,
        }
        async with self._connection() as conn, conn.transaction():
            try:
                await conn.execute(self._q_create, params)
            except errors.UniqueViolation:
                raise ConflictError(f"run {state.run_id} is already stored") from None
            if state.session is not None:
                await self._join(conn, state.session, state.run_id)
            if summary.waiting:
                cursor = await conn.execute(
                    f"SELECT updated_at FROM {self._quoted}.runs WHERE run_id = %s".encode(),
                    (text(state.run_id),),
                )
                (since,) = await _one(cursor)
                await self._set_waiting(conn, state, since, 0)
            await self._notify(conn, text(state.run_id), is_runnable(state, 0))

    async def _join(self, conn: Connection, session: str, run_id: str) -> None:
        """Add the run as the session's next one, unless the session's last run is active.
        Two runs that race past the check both take the same position: the primary key
        refuses the second (once the first commits), so at most one of them joins."""
        from psycopg import errors

        check_session(session)
        params: dict[str, Any] = {"session": text(session), "now": self._now()}
        cursor = await conn.execute(self._q_session_last, params)
        last = await cursor.fetchone()
        if last is not None and not RunStatus(last[2]).is_terminal:
            raise session_busy(session, untext(last[1]), last[2])
        params.update(position=1 if last is None else last[0] + 1, run_id=text(run_id))
        try:
            # No savepoint: the error ends the caller's transaction, which rolls back whole.
            await conn.execute(self._q_session_join, params)
        except errors.UniqueViolation:
            raise session_busy(session, None, None) from None

    async def session_runs(self, session: str) -> list[SessionRun]:
        check_session(session)
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_session_runs, {"session": text(session)})
            rows = await cursor.fetchall()
        return [
            SessionRun(session, position, untext(run_id), status, at)
            for position, run_id, status, at in rows
        ]

    async def session_transcript(self, session: str, *, before: str | None = None) -> list[Item]:
        # One query for the whole session, not one per run.
        check_session(session)
        params = {"session": text(session), "before": None if before is None else text(before)}
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_session_transcript, params, binary=True)
            rows = await cursor.fetchall()
        return [item for head, items in rows for item in conversation_of(rebuild(head, items))]

    async def sessions(self, *, limit: int | None = None) -> list[SessionSummary]:
        check_limit(limit)
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_sessions[limit is not None], {"limit": limit})
            rows = await cursor.fetchall()
        return [
            SessionSummary(untext(session), runs, untext(run_id), status, at)
            for session, runs, run_id, status, at in rows
        ]

    async def clear_session(self, session: str) -> int:
        check_session(session)
        params = {"session": text(session)}
        async with self._connection() as conn, conn.transaction():
            # Lock the session's runs, so that none of them moves on meanwhile.
            cursor = await conn.execute(
                f"SELECT r.run_id FROM {self._quoted}.session_runs AS s"
                f" JOIN {self._quoted}.runs AS r ON r.run_id = s.run_id"
                " WHERE s.session = %(session)s FOR UPDATE OF r".encode(),
                params,
            )
            locked = await cursor.fetchall()
            cursor = await conn.execute(self._q_session_last, params)
            last = await cursor.fetchone()
            if last is not None and not RunStatus(last[2]).is_terminal:
                raise session_busy(session, untext(last[1]), last[2])
            cursor = await conn.execute(self._q_session_clear, params)
            cleared = int(cursor.rowcount)
            for (run_id,) in locked:
                await self._notify(conn, run_id, False)
            return cleared

    async def load(self, run_id: str, *, version: int | None = None) -> RunState:
        if version is not None:
            return await self._load_version(run_id, version)
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_load, {"run_id": text(run_id)}, binary=True)
            row = await cursor.fetchone()
        if row is None:
            raise UnknownRunError(f"no run {run_id!r} in the store")
        return rebuild(row[0], row[1])

    async def _load_version(self, run_id: str, version: int) -> RunState:
        if type(version) is not int:
            raise ConfigurationError(f"version must be an int, not {version!r}")
        params = {"run_id": text(run_id), "version": version}
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_load_version, params, binary=True)
            row = await cursor.fetchone()
        if row is None:
            raise UnknownRunError(f"no run {run_id!r} in the store")
        head, schema, items, current_head, current_schema = row
        if head is None:
            raise unknown_version(run_id, version)
        return rebuild_version(head, schema, items, current_head, current_schema)

    async def history(self, run_id: str) -> list[RunVersion]:
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_history, {"run_id": text(run_id)})
            rows = await cursor.fetchall()
        if not rows:
            raise UnknownRunError(f"no run {run_id!r} in the store")
        return [
            RunVersion(
                version=version,
                status=status,
                event=None if event is None else untext(event),
                at=at,
                n_items=n_items,
            )
            for version, status, event, at, n_items in rows
            if version is not None
        ]

    async def prune(
        self,
        *,
        keep_versions: int | None = None,
        older_than: float | None = None,
        run_id: str | None = None,
    ) -> int:
        check_prune(keep_versions, older_than)
        params = {
            "run_id": None if run_id is None else text(run_id),
            "keep": keep_versions,
            "before": None if older_than is None else float(older_than),
        }
        async with self._connection() as conn, conn.transaction():
            if run_id is not None:
                cursor = await conn.execute(self._q_exists, params)
                if await cursor.fetchone() is None:
                    raise UnknownRunError(f"no run {run_id!r} in the store")
            cursor = await conn.execute(self._q_prune, params)
            return max(cursor.rowcount, 0)

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
        summary = summary_of(state, 0.0)
        run_id = text(state.run_id)
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                self._q_lock_for_save, {"run_id": run_id, "now": self._now()}
            )
            row = await cursor.fetchone()
            if row is None:
                raise UnknownRunError(f"no run {state.run_id!r} in the store")
            version, stored_items, owner, token, until, _, now, stored_schema, was_waiting = row
            if lease is not None and not (
                owner == text(lease.owner) and token == lease.token and until >= now
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
                cursor = await conn.execute(self._q_newest_message, {"run_id": run_id})
                (newest,) = await _one(cursor)
                if newest is not None and newest > seen:
                    raise InboxChanged(f"run {state.run_id}: more was posted to its inbox")
            head, items, start = parts(state, stored_items, stored_schema)
            if start < stored_items:
                await conn.execute(self._q_clear_items, {"run_id": run_id})
            cursor = await conn.execute(
                self._q_save,
                {
                    "run_id": run_id,
                    "acknowledge": list(acknowledge),
                    "start": start,
                    "items": items,
                    "status": summary.status,
                    "version": summary.version,
                    "current_agent": text(summary.current_agent),
                    "turn": summary.turn,
                    "waiting": summary.waiting,
                    "head": head,
                    "n_items": start + len(items),
                    "schema_version": state.schema_version,
                    "live": summary.status in _LIVE,
                    "still": summary.status in STILL,
                    "now": now,
                    "event": None if event is None else text(event),
                },
            )
            (left,) = await _one(cursor)
            await self._set_waiting(conn, state, now, was_waiting)
            await self._notify(conn, run_id, lease is None and is_runnable(state, int(left)))
        return int(left)

    async def waiting(
        self,
        *,
        tool: str | None = None,
        agent: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> WaitingPage:
        start = check_page(limit, after)
        params: dict[str, object] = {"limit": limit + 1}
        if tool is not None:
            params["tool"] = text(tool)
        if agent is not None:
            params["agent"] = text(agent)
        if start is not None:
            params.update(since=start[0], run=text(start[1]), call=text(start[2]))
        query = self._q_waiting[tool is not None, agent is not None, start is not None]
        async with self._connection() as conn:
            cursor = await conn.execute(query, params, binary=True)
            rows = [(untext(r), request, since) for r, request, since in await cursor.fetchall()]
            runs = sorted({text(row[0]) for row in rows[:limit]})
            posted: Inboxes = {}
            if runs:
                cursor = await conn.execute(self._q_posted, {"runs": runs}, binary=True)
                for run_id, data in await cursor.fetchall():
                    message = decode_message(data)
                    if message is not None:
                        posted.setdefault(untext(run_id), []).append(message)
        return page_of(rows, limit, posted)

    async def list(
        self, *, status: RunStatus | str | None = None, limit: int | None = None
    ) -> list[RunSummary]:
        check_limit(limit)
        params: dict[str, object] = {}
        if status is not None:
            params["status"] = status_value(status)
        if limit is not None:
            params["limit"] = limit
        query = self._q_list[status is not None, limit is not None]
        async with self._connection() as conn:
            cursor = await conn.execute(query, params)
            rows = await cursor.fetchall()
        return [
            RunSummary(
                run_id=untext(run_id),
                status=status_,
                version=version,
                starting_agent=untext(starting_agent),
                current_agent=untext(current_agent),
                turn=turn,
                waiting=waiting,
                updated_at=updated_at,
                posted=posted,
                parked=None if parked is None else untext(parked),
            )
            for (
                run_id,
                status_,
                version,
                starting_agent,
                current_agent,
                turn,
                waiting,
                updated_at,
                posted,
                parked,
            ) in rows
        ]

    async def delete(self, run_id: str) -> None:
        # The run's transcript, history and inbox go with it (ON DELETE CASCADE).
        run = text(run_id)
        params = {"run_id": run, "channel": self.channel, "payload": notice(run, False)}
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_delete_and_notify, params)
            found = await cursor.fetchone()
        if found is None:
            raise UnknownRunError(f"no run {run_id!r} in the store")

    # -- the inbox -------------------------------------------------------------------------

    async def post(
        self, run_id: str, message: InboxMessage, *, admit: Admission | None = None
    ) -> bool:
        params = {"run_id": text(run_id), "message": encode_message(message)}
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(self._q_lock_for_post, params, binary=True)
            row = await cursor.fetchone()
            if row is None:
                raise UnknownRunError(f"no run {run_id!r} in the store")
            if row[0] in _TERMINAL:
                raise ConflictError(
                    f"run {run_id} is {row[0]}; it takes no more decisions or input"
                )
            if admit is not None:
                cursor = await conn.execute(self._q_inbox_messages, params, binary=True)
                inbox = [decode_message(data) for (data,) in await cursor.fetchall()]
                if not admit(rebuild(row[1], []), [m for m in inbox if m is not None]):
                    return False
            await conn.execute(self._q_post, params)
            await self._notify(conn, text(run_id), True)
        return True

    async def inbox(self, run_id: str) -> Inbox:
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_inbox, {"run_id": text(run_id)}, binary=True)
            rows = await cursor.fetchall()
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
        params: dict[str, object] = {
            "owner": text(owner),
            "seconds": float(lease_seconds),
            "now": self._now(),
        }
        if run_id is None:
            if starting_agent is None:
                query = self._q_claim_next
            else:
                query = self._q_claim_next_of
                params["agent"] = text(starting_agent)
            async with self._connection() as conn:
                cursor = await conn.execute(query, params)
                row = await cursor.fetchone()
            if row is None:
                return None
            return Lease(
                run_id=untext(row[0]),
                owner=owner,
                token=row[1],
                expires_at=row[2],
                taken_from=_taken_from(row[3], row[4]),
            )
        params["run_id"] = text(run_id)
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(self._q_lock_for_claim, params)
            row = await cursor.fetchone()
            if row is None:
                raise UnknownRunError(f"no run {run_id!r} in the store")
            free, params["now"], old_owner, old_until = row
            if not free:
                return None
            cursor = await conn.execute(self._q_claim, params)
            token, until = await _one(cursor)
        return Lease(
            run_id=run_id,
            owner=owner,
            token=token,
            expires_at=until,
            taken_from=_taken_from(old_owner, old_until),
        )

    async def renew(self, lease: Lease, *, lease_seconds: float = 30.0) -> Lease:
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_renew, self._renew_params(lease, lease_seconds))
            row = await cursor.fetchone()
        return _renewed(lease, row)

    def renewer(self) -> Renewer:
        return self._renew_blocking

    def _renew_blocking(self, lease: Lease, lease_seconds: float) -> Lease:
        """``renew`` on a blocking connection of its own, opened on first use and again after
        a failure: it works from any thread, while the event loop is busy."""
        import psycopg

        with self._renewal_lock:
            if self._closed:
                raise StoreError(f"{self!r} is closed")
            if self._renewal is None or self._renewal.closed:
                self._renewal = self._connect_blocking()
            try:
                row = self._renewal.execute(
                    self._q_renew, self._renew_params(lease, lease_seconds)
                ).fetchone()
            except psycopg.Error as exc:
                self._renewal.close()
                self._fail(exc)
        return _renewed(lease, row)

    def _renew_params(self, lease: Lease, lease_seconds: float) -> dict[str, Any]:
        return {
            "run_id": text(lease.run_id),
            "owner": text(lease.owner),
            "token": lease.token,
            "seconds": float(lease_seconds),
            "now": self._now(),
        }

    async def fail(self, lease: Lease, error: str, *, retry: RetryPolicy) -> bool:
        params = {
            "run_id": text(lease.run_id),
            "owner": text(lease.owner),
            "token": lease.token,
            "error": text(error),
            "attempts": retry.attempts,
            "backoff": retry.backoff,
            "max_backoff": retry.max_backoff,
            "now": self._now(),
        }
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_fail, params)
            row = await cursor.fetchone()
        return bool(row[0]) if row is not None else False

    async def release(self, lease: Lease) -> None:
        run_id = text(lease.run_id)
        params = {
            "run_id": run_id,
            "token": lease.token,
            "channel": self.channel,
            "payload": notice(run_id, True),
        }
        async with self._connection() as conn:
            await conn.execute(self._q_release_and_notify, params)


# -- helpers ---------------------------------------------------------------------------------


def _taken_from(owner: str | None, until: float) -> Starter | None:
    return None if owner is None else Starter(worker=untext(owner), lease_until=until)


def _renewed(lease: Lease, row: TupleRow | None) -> Lease:
    if row is None:
        raise LeaseLost(f"run {lease.run_id}: the lease of {lease.owner!r} is no longer held")
    return msgspec.structs.replace(lease, expires_at=row[0])


async def _one(cursor: psycopg.AsyncCursor[TupleRow]) -> TupleRow:
    row = await cursor.fetchone()
    if row is None:  # pragma: no cover (the row is locked by this transaction)
        raise StoreError("the run vanished during a write")
    return row


async def _close_quietly(conn: Connection) -> None:
    with contextlib.suppress(Exception):
        await conn.close()
