"""PostgresStore's SQL: the table layouts and every statement, as templates (``{s}`` is the
quoted schema, ``{now}`` the store's clock)."""

from __future__ import annotations

from .._machine import RunStatus

#: This store's own table layout version (``agentfsm_schema``), migrated on first use.
#:   1: runs, their items and their inbox.
#:   2: the calls waiting for a decision, indexed for the inbox query; deadlines; parked runs.
#:   3: every version of a run (its head row, at each step); runs stored before it start
#:      their history at the version they were at.
#:   4: sessions: the runs of each conversation thread, in order.
LAYOUT_VERSION = 4

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

_LAYOUT_3 = """
CREATE TABLE {s}.run_versions (
    run_id text NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
    version bigint NOT NULL,
    status text NOT NULL,
    event text,
    at double precision NOT NULL,
    head bytea NOT NULL,
    n_items bigint NOT NULL,
    schema_version integer NOT NULL,
    PRIMARY KEY (run_id, version)
);
INSERT INTO {s}.run_versions (run_id, version, status, event, at, head, n_items,
                              schema_version)
SELECT run_id, version, status, NULL, updated_at, head, n_items, schema_version
FROM {s}.runs
"""

# A session's runs in order; the primary key makes two runs that race to be a session's
# next run conflict, whichever way their transactions interleave.
_LAYOUT_4 = """
CREATE TABLE IF NOT EXISTS {s}.session_runs (
    session text NOT NULL,
    position bigint NOT NULL,
    run_id text NOT NULL UNIQUE REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
    at double precision NOT NULL,
    PRIMARY KEY (session, position)
)
"""

# A session's last run, and its status now (no row for a session without runs).
_SESSION_LAST = """
SELECT s.position, s.run_id, r.status FROM {s}.session_runs AS s
JOIN {s}.runs AS r ON r.run_id = s.run_id
WHERE s.session = %(session)s ORDER BY s.position DESC LIMIT 1
"""

_SESSION_JOIN = """
INSERT INTO {s}.session_runs (session, position, run_id, at)
VALUES (%(session)s, %(position)s, %(run_id)s, {now})
"""

_SESSION_RUNS = """
SELECT s.position, s.run_id, r.status, s.at FROM {s}.session_runs AS s
JOIN {s}.runs AS r ON r.run_id = s.run_id
WHERE s.session = %(session)s ORDER BY s.position
"""

# Every run of a session before one (all of them when ``before`` is NULL or not in it), whole.
_SESSION_TRANSCRIPT = """
SELECT r.head, ARRAY(
    SELECT i.item FROM {s}.run_items AS i
    WHERE i.run_id = r.run_id AND i.idx < r.n_items ORDER BY i.idx
)
FROM {s}.session_runs AS s JOIN {s}.runs AS r ON r.run_id = s.run_id
WHERE s.session = %(session)s AND s.position < COALESCE(
    (SELECT b.position FROM {s}.session_runs AS b
     WHERE b.session = %(session)s AND b.run_id = %(before)s::text),
    9223372036854775807
)
ORDER BY s.position
"""

_SESSIONS = """
SELECT s.session, (SELECT count(*) FROM {s}.session_runs AS c WHERE c.session = s.session),
    s.run_id, r.status, s.at
FROM {s}.session_runs AS s JOIN {s}.runs AS r ON r.run_id = s.run_id
WHERE s.position = (
    SELECT max(m.position) FROM {s}.session_runs AS m WHERE m.session = s.session
)
ORDER BY s.at DESC, s.session DESC
"""

# The runs go, and their rows in every table with them (ON DELETE CASCADE).
_SESSION_CLEAR = """
DELETE FROM {s}.runs WHERE run_id IN (
    SELECT run_id FROM {s}.session_runs WHERE session = %(session)s
)
"""

# A version joins the run's history in the statement that saves it (a CTE of it).
_KEEP_VERSION = """
kept AS (
    INSERT INTO {s}.run_versions (run_id, version, status, event, at, head, n_items,
                                  schema_version)
    VALUES (%(run_id)s, %(version)s, %(status)s, %(event)s, {at}, %(head)s, %(n_items)s,
            %(schema_version)s)
    ON CONFLICT (run_id, version) DO UPDATE SET
        status = excluded.status, event = excluded.event, at = excluded.at,
        head = excluded.head, n_items = excluded.n_items,
        schema_version = excluded.schema_version
)"""

# One row for a run (none for no run); NULLs in the first three columns for no such version.
_LOAD_VERSION = """
SELECT v.head, v.schema_version, ARRAY(
    SELECT i.item FROM {s}.run_items AS i
    WHERE i.run_id = r.run_id AND i.idx < v.n_items ORDER BY i.idx
), r.head, r.schema_version
FROM {s}.runs AS r
LEFT JOIN {s}.run_versions AS v ON v.run_id = r.run_id AND v.version = %(version)s
WHERE r.run_id = %(run_id)s
"""

# One row per version (one of NULLs for a run without history; none for no run).
_HISTORY = """
SELECT v.version, v.status, v.event, v.at, v.n_items FROM {s}.runs AS r
LEFT JOIN {s}.run_versions AS v ON v.run_id = r.run_id
WHERE r.run_id = %(run_id)s ORDER BY v.version
"""

# The versions to drop: beyond the newest ``keep`` of a run, or saved before ``before``;
# never a run's current version.
_PRUNE = """
DELETE FROM {s}.run_versions AS d USING (
    SELECT v.run_id, v.version FROM (
        SELECT run_id, version, at,
            row_number() OVER (PARTITION BY run_id ORDER BY version DESC) AS rank
        FROM {s}.run_versions
        WHERE %(run_id)s::text IS NULL OR run_id = %(run_id)s::text
    ) AS v JOIN {s}.runs AS r ON r.run_id = v.run_id
    WHERE v.version <> r.version AND (
        (%(keep)s::bigint IS NOT NULL AND v.rank > %(keep)s::bigint)
        OR (%(before)s::float8 IS NOT NULL AND v.at < %(before)s::float8))
) AS old
WHERE d.run_id = old.run_id AND d.version = old.version
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
    + """), """
    + _KEEP_VERSION.format(s="{s}", at="{now}")
    + """
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
    + """), """
    + _KEEP_VERSION.format(s="{s}", at="%(now)s::float8")
    + """
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

# Change notifications (see ``_feed``): sent when the transaction commits.
_NOTIFY = "SELECT pg_notify(%(channel)s, %(payload)s)"

# A lease given back on a run that is still runnable may let another worker claim it.
_RELEASE_AND_NOTIFY = (
    "WITH released AS ("
    + _RELEASE.strip()
    + " RETURNING runnable) SELECT pg_notify(%(channel)s, %(payload)s) FROM released"
    " WHERE runnable"
)

# One row (of the notification) when the run was there.
_DELETE_AND_NOTIFY = (
    "WITH deleted AS (" + _DELETE + ") SELECT pg_notify(%(channel)s, %(payload)s) FROM deleted"
)

_DATABASE_NOW = "extract(epoch from statement_timestamp())::float8"
_TERMINAL = frozenset(status.value for status in RunStatus if status.is_terminal)
_LIVE = ("new", "running", "tools")
