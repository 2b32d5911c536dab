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
import re
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
    Store,
    WaitingPage,
    check_limit,
    check_page,
    decode_message,
    encode_message,
    inbox_of,
    is_runnable,
    page_of,
    parts,
    rebuild,
    status_value,
    summary_of,
    waiting_rows,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

    Connection = psycopg.AsyncConnection[TupleRow]

__all__ = ["PostgresStore"]

#: This store's own table layout version (``agentfsm_schema``), migrated on first use.
#:   1: runs, their items and their inbox.
#:   2: the calls waiting for a decision, indexed for the inbox query; deadlines; parked runs.
LAYOUT_VERSION = 2

# Statements are templates: ``{s}`` is the quoted schema, ``{now}`` the store's clock.
_LAYOUT = """
CREATE TABLE {s}.runs (
    run_id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    status text NOT NULL,
    version bigint NOT NULL,
    starting_agent text NOT NULL,
    current_agent text NOT NULL,
    turn bigint NOT NULL,
    waiting integer NOT NULL,
    head bytea NOT NULL,
    n_items bigint NOT NULL,
    schema_version integer NOT NULL,
    runnable boolean NOT NULL,
    inbox integer NOT NULL DEFAULT 0,
    lease_owner text,
    lease_token bigint NOT NULL DEFAULT 0,
    lease_until double precision NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE INDEX runs_by_updated ON {s}.runs (updated_at DESC, seq);
CREATE INDEX runs_by_status ON {s}.runs (status, updated_at DESC, seq);
CREATE INDEX runs_runnable ON {s}.runs (updated_at, seq) WHERE runnable;
CREATE INDEX runs_runnable_by_agent ON {s}.runs (starting_agent, updated_at, seq)
    WHERE runnable;
CREATE TABLE {s}.run_items (
    run_id text NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
    idx bigint NOT NULL,
    item bytea NOT NULL,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE {s}.run_inbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
    message bytea NOT NULL
);
CREATE INDEX run_inbox_by_run ON {s}.run_inbox (run_id, id);
"""

_LAYOUT_2 = """
CREATE TABLE {s}.run_waiting (
    run_id text NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
    call_id text NOT NULL,
    tool text NOT NULL,
    agent text NOT NULL,
    request bytea NOT NULL,
    since double precision NOT NULL,
    PRIMARY KEY (run_id, call_id)
);
CREATE INDEX run_waiting_by_since ON {s}.run_waiting (since, run_id, call_id);
CREATE INDEX run_waiting_by_tool ON {s}.run_waiting (tool, since, run_id, call_id);
CREATE INDEX run_waiting_by_agent ON {s}.run_waiting (agent, since, run_id, call_id);
ALTER TABLE {s}.runs ADD COLUMN deadline double precision;
ALTER TABLE {s}.runs ADD COLUMN failures integer NOT NULL DEFAULT 0;
ALTER TABLE {s}.runs ADD COLUMN parked text;
CREATE INDEX runs_by_deadline ON {s}.runs (deadline) WHERE deadline IS NOT NULL;
"""

# Calls that still wait keep the time they started waiting; the run keeps its earliest
# deadline, when a worker takes it up.
_SET_WAITING = """
WITH gone AS (
    DELETE FROM {s}.run_waiting
    WHERE run_id = %(run_id)s AND NOT (call_id = ANY(%(calls)s::text[]))
), due AS (
    UPDATE {s}.runs SET deadline = %(deadline)s::float8 WHERE run_id = %(run_id)s
)
INSERT INTO {s}.run_waiting (run_id, call_id, tool, agent, request, since)
SELECT %(run_id)s, c, t, a, r, %(since)s::float8
FROM unnest(%(calls)s::text[], %(tools)s::text[], %(agents)s::text[], %(requests)s::bytea[])
    AS x(c, t, a, r)
ON CONFLICT (run_id, call_id) DO UPDATE SET
    tool = excluded.tool, agent = excluded.agent, request = excluded.request
"""

_WAITING = "SELECT run_id, request, since FROM {s}.run_waiting"
_AFTER = " AND (since, run_id, call_id) > (%(since)s::float8, %(run)s, %(call)s)"

_POSTED = """
SELECT run_id, message FROM {s}.run_inbox WHERE run_id = ANY(%(runs)s::text[]) ORDER BY id
"""

_APPEND = """
INSERT INTO {s}.run_items (run_id, idx, item)
SELECT %(run_id)s, %(start)s::bigint + t.n - 1, t.item
FROM unnest(%(items)s::bytea[]) WITH ORDINALITY AS t(item, n)
"""

_CREATE = (
    """
WITH run AS (
    INSERT INTO {s}.runs (run_id, status, version, starting_agent, current_agent, turn,
                          waiting, head, n_items, schema_version, runnable, created_at,
                          updated_at)
    VALUES (%(run_id)s, %(status)s, %(version)s, %(starting_agent)s, %(current_agent)s,
            %(turn)s, %(waiting)s, %(head)s, %(n_items)s, %(schema_version)s, %(runnable)s,
            {now}, {now})
    RETURNING run_id
), added AS ("""
    + _APPEND
    + """)
SELECT 1 FROM run
"""
)

_LOAD = """
SELECT r.head, ARRAY(
    SELECT i.item FROM {s}.run_items AS i
    WHERE i.run_id = r.run_id AND i.idx < r.n_items ORDER BY i.idx
)
FROM {s}.runs AS r WHERE r.run_id = %(run_id)s
"""

_LOCK_FOR_SAVE = """
SELECT version, n_items, lease_owner, lease_token, lease_until, inbox, {now}, schema_version,
    waiting
FROM {s}.runs WHERE run_id = %(run_id)s FOR UPDATE
"""

_SAVE = (
    """
WITH acked AS (
    DELETE FROM {s}.run_inbox
    WHERE run_id = %(run_id)s AND id = ANY(%(acknowledge)s::bigint[])
    RETURNING 1
), added AS ("""
    + _APPEND
    + """)
UPDATE {s}.runs AS r SET
    status = %(status)s, version = %(version)s, current_agent = %(current_agent)s,
    turn = %(turn)s, waiting = %(waiting)s, head = %(head)s, n_items = %(n_items)s,
    schema_version = %(schema_version)s, inbox = r.inbox - a.n,
    runnable = (%(live)s OR (%(still)s AND r.inbox - a.n > 0)),
    updated_at = %(now)s::float8, failures = 0, parked = NULL
FROM (SELECT count(*)::integer AS n FROM acked) AS a
WHERE r.run_id = %(run_id)s
RETURNING r.inbox
"""
)

_SUMMARY = (
    "SELECT run_id, status, version, starting_agent, current_agent, turn, waiting, updated_at,"
    " inbox, parked FROM {s}.runs"
)

_DELETE = "DELETE FROM {s}.runs WHERE run_id = %(run_id)s RETURNING 1"

_CLEAR_ITEMS = "DELETE FROM {s}.run_items WHERE run_id = %(run_id)s"

_LOCK_FOR_POST = "SELECT status, head FROM {s}.runs WHERE run_id = %(run_id)s FOR UPDATE"

_INBOX_MESSAGES = "SELECT message FROM {s}.run_inbox WHERE run_id = %(run_id)s ORDER BY id"

_NEWEST_MESSAGE = "SELECT max(id) FROM {s}.run_inbox WHERE run_id = %(run_id)s"

_POST = """
WITH added AS (
    INSERT INTO {s}.run_inbox (run_id, message) VALUES (%(run_id)s, %(message)s)
)
UPDATE {s}.runs SET inbox = inbox + 1,
    runnable = (runnable OR status IN ('interrupted', 'paused'))
WHERE run_id = %(run_id)s
"""

# One row per message, or one row of NULLs for a run with an empty inbox; none for no run.
_INBOX = """
SELECT i.id, i.message FROM {s}.runs AS r
LEFT JOIN {s}.run_inbox AS i ON i.run_id = r.run_id
WHERE r.run_id = %(run_id)s ORDER BY i.id
"""

_CLAIM_NEXT = """
UPDATE {s}.runs AS r SET
    lease_owner = %(owner)s, lease_token = r.lease_token + 1,
    lease_until = {now} + %(seconds)s::float8
FROM (
    SELECT run_id, lease_owner, lease_until FROM {s}.runs
    WHERE lease_until < {now} {agent} AND (runnable OR deadline <= {now}) AND parked IS NULL
    ORDER BY updated_at, seq
    LIMIT 1
    FOR UPDATE SKIP LOCKED
) AS old
WHERE r.run_id = old.run_id
RETURNING r.run_id, r.lease_token, r.lease_until, old.lease_owner, old.lease_until
"""

_LOCK_FOR_CLAIM = """
SELECT lease_until < {now}, {now}, lease_owner, lease_until FROM {s}.runs
WHERE run_id = %(run_id)s FOR UPDATE
"""

_CLAIM = """
UPDATE {s}.runs SET
    lease_owner = %(owner)s, lease_token = lease_token + 1,
    lease_until = %(now)s::float8 + %(seconds)s::float8
WHERE run_id = %(run_id)s
RETURNING lease_token, lease_until
"""

_RENEW = """
UPDATE {s}.runs SET lease_until = {now} + %(seconds)s::float8
WHERE run_id = %(run_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s
    AND lease_until >= {now}
RETURNING lease_until
"""

_FAIL = """
UPDATE {s}.runs SET
    failures = failures + 1,
    lease_owner = NULL,
    parked = CASE WHEN failures + 1 >= %(attempts)s THEN %(error)s END,
    lease_until = CASE WHEN failures + 1 >= %(attempts)s THEN 0::float8
        ELSE {now} + least(%(max_backoff)s::float8,
                           %(backoff)s::float8 * power(2, least(failures, 60))) END
WHERE run_id = %(run_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s
RETURNING parked IS NOT NULL
"""

_RELEASE = """
UPDATE {s}.runs SET lease_owner = NULL, lease_until = 0
WHERE run_id = %(run_id)s AND lease_token = %(token)s
"""

_DATABASE_NOW = "extract(epoch from statement_timestamp())::float8"
_TERMINAL = frozenset(status.value for status in RunStatus if status.is_terminal)
_LIVE = ("new", "running", "tools")


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
                f"invalid PostgreSQL DSN {self._where!r}: {_redact_text(str(exc))}"
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

        quoted = '"' + schema.replace('"', '""') + '"'  # PostgreSQL's quoting of a name
        self._quoted = quoted
        now = "%(now)s::float8" if clock is not None else _DATABASE_NOW

        def query(template: str, **extra: str) -> bytes:
            return template.format(s=quoted, now=now, **extra).encode()

        self._q_layouts = [
            (version, [query(s) for s in layout.split(";") if s.strip()])
            for version, layout in ((1, _LAYOUT), (2, _LAYOUT_2))
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
        self._q_load = query(_LOAD)
        self._q_lock_for_save = query(_LOCK_FOR_SAVE)
        self._q_save = query(_SAVE)
        self._q_delete = query(_DELETE)
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
        self._q_release = query(_RELEASE)
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
        message = _one_line(str(exc))
        kind = StoreUnavailable if _unreachable(message) else StoreError
        return kind(
            f"cannot connect to the PostgreSQL store {self._where!r}: {_redact_text(message)}"
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
        message = _one_line(str(exc)) or type(exc).__name__
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
        kind = StoreUnavailable if _transient(exc) else StoreError
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
                "run_id": _text(state.run_id),
                "calls": [_text(row[0]) for row in rows],
                "tools": [_text(row[1]) for row in rows],
                "agents": [_text(row[2]) for row in rows],
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
        await self._discard_idle()
        with self._renewal_lock:
            if self._renewal is not None:
                self._renewal.close()

    # -- runs ------------------------------------------------------------------------------

    async def create(self, state: RunState) -> None:
        from psycopg import errors

        head, items, _ = parts(state, 0, state.schema_version)
        summary = summary_of(state, 0.0)
        params = {
            "run_id": _text(state.run_id),
            "status": summary.status,
            "version": summary.version,
            "starting_agent": _text(summary.starting_agent),
            "current_agent": _text(summary.current_agent),
            "turn": summary.turn,
            "waiting": summary.waiting,
            "head": head,
            "n_items": len(items),
            "schema_version": state.schema_version,
            "runnable": is_runnable(state, 0),
            "now": self._now(),
            "start": 0,
            "items": items,
        }
        async with self._connection() as conn, conn.transaction():
            try:
                await conn.execute(self._q_create, params)
            except errors.UniqueViolation:
                raise ConflictError(f"run {state.run_id} is already stored") from None
            if summary.waiting:
                cursor = await conn.execute(
                    f"SELECT updated_at FROM {self._quoted}.runs WHERE run_id = %s".encode(),
                    (_text(state.run_id),),
                )
                (since,) = await _one(cursor)
                await self._set_waiting(conn, state, since, 0)

    async def load(self, run_id: str) -> RunState:
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_load, {"run_id": _text(run_id)}, binary=True)
            row = await cursor.fetchone()
        if row is None:
            raise UnknownRunError(f"no run {run_id!r} in the store")
        return rebuild(row[0], row[1])

    async def save(
        self,
        state: RunState,
        *,
        expected_version: int | None = None,
        lease: Lease | None = None,
        acknowledge: Sequence[int] = (),
        seen: int | None = None,
    ) -> int:
        expected = state.version - 1 if expected_version is None else expected_version
        summary = summary_of(state, 0.0)
        run_id = _text(state.run_id)
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                self._q_lock_for_save, {"run_id": run_id, "now": self._now()}
            )
            row = await cursor.fetchone()
            if row is None:
                raise UnknownRunError(f"no run {state.run_id!r} in the store")
            version, stored_items, owner, token, until, _, now, stored_schema, was_waiting = row
            if lease is not None and not (
                owner == _text(lease.owner) and token == lease.token and until >= now
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
                    "current_agent": _text(summary.current_agent),
                    "turn": summary.turn,
                    "waiting": summary.waiting,
                    "head": head,
                    "n_items": start + len(items),
                    "schema_version": state.schema_version,
                    "live": summary.status in _LIVE,
                    "still": summary.status in STILL,
                    "now": now,
                },
            )
            (left,) = await _one(cursor)
            await self._set_waiting(conn, state, now, was_waiting)
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
            params["tool"] = _text(tool)
        if agent is not None:
            params["agent"] = _text(agent)
        if start is not None:
            params.update(since=start[0], run=_text(start[1]), call=_text(start[2]))
        query = self._q_waiting[tool is not None, agent is not None, start is not None]
        async with self._connection() as conn:
            cursor = await conn.execute(query, params, binary=True)
            rows = [(_untext(r), request, since) for r, request, since in await cursor.fetchall()]
            runs = sorted({_text(row[0]) for row in rows[:limit]})
            posted: Inboxes = {}
            if runs:
                cursor = await conn.execute(self._q_posted, {"runs": runs}, binary=True)
                for run_id, data in await cursor.fetchall():
                    message = decode_message(data)
                    if message is not None:
                        posted.setdefault(_untext(run_id), []).append(message)
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
                run_id=_untext(run_id),
                status=status_,
                version=version,
                starting_agent=_untext(starting_agent),
                current_agent=_untext(current_agent),
                turn=turn,
                waiting=waiting,
                updated_at=updated_at,
                posted=posted,
                parked=None if parked is None else _untext(parked),
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
        # The run's transcript and inbox go with it (ON DELETE CASCADE).
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_delete, {"run_id": _text(run_id)})
            found = await cursor.fetchone()
        if found is None:
            raise UnknownRunError(f"no run {run_id!r} in the store")

    # -- the inbox -------------------------------------------------------------------------

    async def post(
        self, run_id: str, message: InboxMessage, *, admit: Admission | None = None
    ) -> bool:
        params = {"run_id": _text(run_id), "message": encode_message(message)}
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
        return True

    async def inbox(self, run_id: str) -> Inbox:
        async with self._connection() as conn:
            cursor = await conn.execute(self._q_inbox, {"run_id": _text(run_id)}, binary=True)
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
            "owner": _text(owner),
            "seconds": float(lease_seconds),
            "now": self._now(),
        }
        if run_id is None:
            if starting_agent is None:
                query = self._q_claim_next
            else:
                query = self._q_claim_next_of
                params["agent"] = _text(starting_agent)
            async with self._connection() as conn:
                cursor = await conn.execute(query, params)
                row = await cursor.fetchone()
            if row is None:
                return None
            return Lease(
                run_id=_untext(row[0]),
                owner=owner,
                token=row[1],
                expires_at=row[2],
                taken_from=_taken_from(row[3], row[4]),
            )
        params["run_id"] = _text(run_id)
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
            "run_id": _text(lease.run_id),
            "owner": _text(lease.owner),
            "token": lease.token,
            "seconds": float(lease_seconds),
            "now": self._now(),
        }

    async def fail(self, lease: Lease, error: str, *, retry: RetryPolicy) -> bool:
        params = {
            "run_id": _text(lease.run_id),
            "owner": _text(lease.owner),
            "token": lease.token,
            "error": _text(error),
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
        async with self._connection() as conn:
            await conn.execute(
                self._q_release, {"run_id": _text(lease.run_id), "token": lease.token}
            )


# -- helpers ---------------------------------------------------------------------------------


def _taken_from(owner: str | None, until: float) -> Starter | None:
    return None if owner is None else Starter(worker=_untext(owner), lease_until=until)


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


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


#: The SQLSTATEs of faults that pass: the server is shutting down, restarting or starting
#: (57P01-57P03), it ended an idle session or our frozen transaction (57P05, 25P03), a lock
#: was not granted in time (55P03), a transaction lost a race with another (40001, 40P01),
#: too many connections (53300). Class 08 (the connection failed) too; and 57014, a
#: cancelled statement, when the statement timeout cancelled it.
_TRANSIENT_STATES = frozenset(
    {"57P01", "57P02", "57P03", "57P05", "25P03", "55P03", "40001", "40P01", "53300"}
)


def _transient(exc: Exception) -> bool:
    """Whether the error of a call on an open connection may pass if the call is tried
    again. psycopg's errors without a SQLSTATE are its own: an OperationalError among them
    is a connection that broke (the server closed it, the network dropped it)."""
    import psycopg

    state = getattr(exc, "sqlstate", None)
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    if state == "57014":
        return "statement timeout" in str(exc)
    return state.startswith("08") or state in _TRANSIENT_STATES


#: What libpq (or psycopg) says when a connection cannot be made for now: the network, or a
#: server that is restarting or full. libpq gives no SQLSTATE for a failed connection, so
#: this is read from its message; anything else (a database or role that does not exist, a
#: refused password, a host name that does not resolve) is a StoreError at once.
_UNREACHABLE = re.compile(
    "|".join(
        (
            "connection refused",
            "timeout expired",
            "timed out",
            "connection reset",
            "no route to host",
            "network is unreachable",
            "server closed the connection unexpectedly",
            "could not receive data from server",
            "could not send data to server",
            "ssl syscall error",
            "ssl connection has been closed unexpectedly",
            "temporary failure in name resolution",
            "the database system is (starting up|shutting down|in recovery mode|not yet "
            "accepting connections|not accepting connections)",
            "too many clients already",
            "remaining connection slots are reserved",
            "terminating connection",
        )
    ),
    re.IGNORECASE,
)


def _unreachable(message: str) -> bool:
    return _UNREACHABLE.search(message) is not None


def _text(value: str) -> str:
    """``value`` as PostgreSQL text, which cannot hold NUL: NUL becomes ``\\x01\\x02`` and
    ``\\x01`` is doubled, so every string keeps a distinct, reversible spelling (and names
    without these two control characters, that is all real ones, are stored as they are)."""
    if "\x00" in value or "\x01" in value:
        return value.replace("\x01", "\x01\x01").replace("\x00", "\x01\x02")
    return value


_ESCAPED = re.compile("\x01(.)", re.DOTALL)


def _untext(value: str) -> str:
    if "\x01" in value:
        return _ESCAPED.sub(lambda m: "\x01" if m[1] == "\x01" else "\x00", value)
    return value


_PASSWORD_IN_TEXT = re.compile(r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)""", re.I)


def _redact_text(text: str) -> str:
    return _PASSWORD_IN_TEXT.sub(r"\1***", text)


def redact(dsn: str) -> str:
    """``dsn`` with its password, if any, replaced by ``***``."""
    if "://" not in dsn:
        return _redact_text(dsn)
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            users, hosts = netloc.rsplit("@", 1)
            if ":" in users:
                users = users.split(":", 1)[0] + ":***"
            netloc = f"{users}@{hosts}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable DSN>"
