"""PostgresStore: the shipped conformance suite, plus what only a shared database has to
get right (concurrent claims, schema creation by many processes at once, errors that must
not leak psycopg).

Needs a PostgreSQL server: ``AGENTFSM_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Each test gets a fresh schema, dropped
after it; the tests skip when the server does not answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DSN

from agentfsm import (
    ConfigurationError,
    ConflictError,
    LeaseLost,
    RunState,
    StoreError,
    open_store,
)
from agentfsm._step import new_run
from agentfsm.stores import PostgresStore, Store
from agentfsm.stores._base import CancelMessage
from agentfsm.stores._postgres import LAYOUT_VERSION, redact
from agentfsm.testing import FakeClock, StoreConformance


class TestPostgresStore(StoreConformance):
    @pytest.fixture(autouse=True)
    def _schema(self, schema: str) -> None:
        self.schema = schema

    async def make_store(self, clock: Callable[[], float]) -> Store:
        return PostgresStore(DSN, schema=self.schema, clock=clock)


# -- helpers -------------------------------------------------------------------------------


def run(
    schema: str,
    check: Callable[[PostgresStore], Awaitable[object]],
    **options: Any,
) -> None:
    async def main() -> None:
        async with PostgresStore(DSN, schema=schema, **options) as store:
            await check(store)

    asyncio.run(main())


def fresh(run_id: str, agent: str = "agent") -> RunState:
    return new_run(agent, "go", run_id=run_id)


def sql(statement: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


# -- leases and claims across connections ----------------------------------------------------


def test_eight_stores_claiming_at_once_hand_out_each_runnable_run_once(schema: str) -> None:
    async def main() -> None:
        clock = FakeClock()
        stores = [PostgresStore(DSN, schema=schema, clock=clock) for _ in range(8)]
        try:
            for run_id in ("r1", "r2", "r3"):
                await stores[0].create(fresh(run_id))
                clock.advance(1)
            await stores[0].create(fresh("done"))
            await stores[0].claim("x", run_id="done")  # leased already: not claimable
            # Every store has its connection open before the race starts.
            await asyncio.gather(*(store.list(limit=1) for store in stores))
            leases = await asyncio.gather(
                *(store.claim(f"w{i}", lease_seconds=60) for i, store in enumerate(stores))
            )
        finally:
            for store in stores:
                await store.close()
        claimed = sorted(lease.run_id for lease in leases if lease is not None)
        assert claimed == ["r1", "r2", "r3"]
        assert sum(lease is None for lease in leases) == 5

    for _ in range(3):
        sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        asyncio.run(main())


def test_workers_draining_a_queue_together_never_share_a_run(schema: str) -> None:
    async def main() -> list[str]:
        stores = [PostgresStore(DSN, schema=schema, max_size=2) for _ in range(4)]
        try:
            for n in range(40):
                await stores[0].create(fresh(f"run{n:02}"))

            async def worker(store: PostgresStore, name: str) -> list[str]:
                taken: list[str] = []
                while (lease := await store.claim(name, lease_seconds=60)) is not None:
                    taken.append(lease.run_id)
                return taken

            found = await asyncio.gather(
                *(
                    worker(store, f"{s}-{k}")
                    for s, store in enumerate(stores)
                    for k in range(3)  # three tasks share each store's two connections
                )
            )
        finally:
            for store in stores:
                await store.close()
        return [run_id for taken in found for run_id in taken]

    claimed = asyncio.run(main())
    assert sorted(claimed) == [f"run{n:02}" for n in range(40)]


def test_a_claim_skips_a_run_another_transaction_has_locked_instead_of_waiting(
    schema: str,
) -> None:
    import psycopg

    async def check(store: PostgresStore) -> None:
        await store.create(fresh("old"))
        await store.create(fresh("young"))
        async with await psycopg.AsyncConnection.connect(DSN) as other:
            await other.execute(f"SELECT 1 FROM \"{schema}\".runs WHERE run_id = 'old' FOR UPDATE")
            lease = await asyncio.wait_for(store.claim("w"), timeout=5)
            assert lease is not None and lease.run_id == "young"
            assert await asyncio.wait_for(store.claim("w"), timeout=5) is None
            await other.rollback()
        lease = await store.claim("w")
        assert lease is not None and lease.run_id == "old"

    run(schema, check)


def test_leases_follow_the_database_clock_when_no_clock_is_given(schema: str) -> None:
    async def check(store: PostgresStore) -> None:
        await store.create(fresh("r"))
        before = time.time()
        lease = await store.claim("w1", lease_seconds=0.3)
        assert lease is not None
        # The server runs on this machine in the tests: its clock agrees with ours.
        assert before - 5 < lease.expires_at - 0.3 < time.time() + 5
        assert await store.claim("w2", lease_seconds=0.3, run_id="r") is None
        await asyncio.sleep(0.5)
        taken = await store.claim("w2", lease_seconds=30)
        assert taken is not None and taken.token == lease.token + 1
        await _raises(LeaseLost, store.renew(lease))
        await _raises(LeaseLost, store.save(fresh("r"), expected_version=0, lease=lease))
        renewed = await store.renew(taken, lease_seconds=60)
        assert renewed.expires_at > taken.expires_at

    run(schema, check)


def test_a_save_waits_for_a_concurrent_save_and_then_conflicts(schema: str) -> None:
    import msgspec

    async def check(store: PostgresStore) -> None:
        base = fresh("r")
        await store.create(base)
        one = msgspec.structs.replace(base, version=1, current_agent="one")
        two = msgspec.structs.replace(base, version=1, current_agent="two")
        results = await asyncio.gather(store.save(one), store.save(two), return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["ConflictError", "int"]
        assert (await store.load("r")).current_agent in ("one", "two")

    run(schema, check, max_size=2)


# -- what PostgreSQL stores differently ------------------------------------------------------


def test_names_with_nul_and_control_characters_round_trip(schema: str) -> None:
    async def check(store: PostgresStore) -> None:
        names = ["a\x00b", "a\x01b", "a\x01\x02b", "\x01", "\x00", "plain"]
        for n, name in enumerate(names):
            await store.create(fresh(name, agent=f"agent{name}"))
            assert (await store.load(name)).run_id == name
            lease = await store.claim(name, run_id=name, lease_seconds=60)
            assert lease is not None and lease.run_id == name
            await store.save(fresh(name, agent=f"agent{name}"), expected_version=0, lease=lease)
            assert n + 1 == len(await store.list())
        listed = await store.list()
        assert sorted(s.run_id for s in listed) == sorted(names)
        assert {s.starting_agent for s in listed} == {f"agent{name}" for name in names}
        await store.delete("a\x00b")
        assert len(await store.list()) == len(names) - 1

    run(schema, check)


def test_the_schema_is_created_once_by_many_stores_starting_together(schema: str) -> None:
    async def main() -> None:
        stores = [PostgresStore(DSN, schema=schema) for _ in range(8)]
        try:
            await asyncio.gather(*(s.create(fresh(f"r{i}")) for i, s in enumerate(stores)))
        finally:
            for store in stores:
                await store.close()

    asyncio.run(main())
    versions = sql(f'SELECT version FROM "{schema}".agentfsm_schema ORDER BY version')
    assert versions == [(v,) for v in range(1, LAYOUT_VERSION + 1)], "each layout step once"
    assert sql(f'SELECT count(*) FROM "{schema}".runs') == [(8,)]


def test_a_schema_from_a_newer_agentfsm_is_refused(schema: str) -> None:
    run(schema, lambda store: store.list())
    sql(f'INSERT INTO "{schema}".agentfsm_schema (version) VALUES ({LAYOUT_VERSION + 1})')

    async def check(store: PostgresStore) -> None:
        with pytest.raises(StoreError, match="newer than this agentfsm"):
            await store.list()

    run(schema, check)


def test_a_store_opened_without_create_reads_only_a_schema_that_exists(schema: str) -> None:
    async def missing(store: PostgresStore) -> None:
        with pytest.raises(StoreError, match=f"no agentfsm tables in schema '{schema}'"):
            await store.list()

    run(schema, missing, create=False)
    assert sql(f"SELECT 1 FROM pg_namespace WHERE nspname = '{schema}'") == []
    run(schema, lambda store: store.create(fresh("r")))

    async def present(store: PostgresStore) -> None:
        assert [s.run_id for s in await store.list()] == ["r"]

    run(schema, present, create=False)


# -- errors ----------------------------------------------------------------------------------


def test_database_errors_are_store_errors_and_the_store_recovers(schema: str) -> None:
    import psycopg

    async def check(store: PostgresStore) -> None:
        await store.create(fresh("r"))
        sql(f'ALTER TABLE "{schema}".runs RENAME TO runs_away')
        with pytest.raises(StoreError) as caught:
            await store.load("r")
        assert not isinstance(caught.value, psycopg.Error)
        assert "runs" in str(caught.value)
        sql(f'ALTER TABLE "{schema}".runs_away RENAME TO runs')
        assert (await store.load("r")).run_id == "r"
        with pytest.raises(ConflictError):
            await store.create(fresh("r"))
        with pytest.raises(ConfigurationError, match="unknown status"):
            await store.list(status="sleeping")

    run(schema, check, max_size=1)


def test_an_unreachable_server_is_a_store_error_naming_the_dsn_without_its_password() -> None:
    pytest.importorskip("psycopg")

    async def main() -> None:
        store = PostgresStore("postgresql://ada:s3cret@127.0.0.1:1/db", connect_timeout=2)
        try:
            with pytest.raises(StoreError) as caught:
                await store.list()
        finally:
            await store.close()
        message = str(caught.value)
        assert "postgresql://ada:***@127.0.0.1:1/db" in message
        assert "s3cret" not in message

    asyncio.run(main())


def test_a_bad_dsn_is_a_configuration_error() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(ConfigurationError, match="invalid PostgreSQL DSN"):
        PostgresStore("host=x password=hunter2 nonsense")


def test_passwords_are_redacted_from_every_spelling_of_a_dsn() -> None:
    assert redact("postgresql://u:pw@h:5/d?sslmode=require") == (
        "postgresql://u:***@h:5/d?sslmode=require"
    )
    assert redact("postgresql://u@h/d?password=pw&sslmode=require") == (
        "postgresql://u@h/d?password=***&sslmode=require"
    )
    assert redact("host=h password=pw user=u") == "host=h password=*** user=u"
    assert redact("host=h password = 'p w\\'x' user=u") == "host=h password = *** user=u"
    assert redact("postgresql://h/d") == "postgresql://h/d"


def test_without_psycopg_the_store_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigurationError, match=r"agentfsm\[postgres\]"):
        PostgresStore(DSN)
    with pytest.raises(ConfigurationError, match=r"agentfsm\[postgres\]"):
        open_store(DSN)


# -- the connections -------------------------------------------------------------------------


def test_one_store_serves_many_tasks_with_few_connections(schema: str) -> None:
    async def check(store: PostgresStore) -> None:
        await asyncio.gather(*(store.create(fresh(f"r{n}")) for n in range(20)))
        await asyncio.gather(*(store.load(f"r{n}") for n in range(20)))
        assert 1 <= len(store._idle) <= 2

    run(schema, check, max_size=2)


def test_a_store_outlives_its_event_loop_and_refuses_use_once_closed(schema: str) -> None:
    store = PostgresStore(DSN, schema=schema)
    asyncio.run(store.create(fresh("r")))
    assert asyncio.run(store.load("r")).run_id == "r"  # a second asyncio.run: a new loop
    asyncio.run(store.close())
    with pytest.raises(StoreError, match="closed"):
        asyncio.run(store.load("r"))


def test_a_dropped_connection_fails_one_call_and_the_next_reconnects(schema: str) -> None:
    name = f"agentfsm_{uuid.uuid4().hex[:8]}"
    dsn = f"{DSN}{'&' if '?' in DSN else '?'}application_name={name}"

    async def main() -> None:
        async with PostgresStore(dsn, schema=schema, max_size=1) as store:
            await store.create(fresh("r"))
            sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE application_name = '{name}'"
            )
            with pytest.raises(StoreError, match="PostgreSQL store"):
                await store.load("r")
            assert (await store.load("r")).run_id == "r"

    asyncio.run(main())


def test_a_cancelled_call_leaves_nothing_behind(schema: str) -> None:
    import psycopg

    async def check(store: PostgresStore) -> None:
        await store.create(fresh("r"))
        async with await psycopg.AsyncConnection.connect(DSN) as other:
            await other.execute(f'SELECT 1 FROM "{schema}".runs FOR UPDATE')
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(store.post("r", CancelMessage(reason="x")), 0.2)
            await other.rollback()
        assert (await store.inbox("r")).ids == ()
        await store.post("r", CancelMessage(reason="y"))
        assert len((await store.inbox("r")).ids) == 1

    run(schema, check, max_size=1)


async def _raises(kind: type[BaseException], awaitable: Awaitable[Any]) -> None:
    with pytest.raises(kind):
        await awaitable


def test_a_layout_1_schema_gets_its_waiting_calls_indexed_on_first_use(schema: str) -> None:
    from agentfsm import Runner
    from tests.apps.payments import agent

    async def pause(store: PostgresStore) -> None:
        await Runner(store=store).run(agent(), "pay", run_id="old")

    run(schema, pause)
    sql(f'DROP TABLE "{schema}".run_versions')  # as agentfsm 0.1 left it
    sql(f'DROP TABLE "{schema}".run_waiting')
    for column in ("deadline", "failures", "parked"):
        sql(f'ALTER TABLE "{schema}".runs DROP COLUMN {column}')
    sql(f'DELETE FROM "{schema}".agentfsm_schema WHERE version > 1')
    found: list[str] = []

    async def listed(store: PostgresStore) -> None:
        found.extend(c.request.call_id for c in (await store.waiting()).calls)

    run(schema, listed)
    assert found == ["call_0_0", "call_0_1", "call_0_2"]


def test_a_layout_2_schema_starts_each_runs_history_at_its_current_version(schema: str) -> None:
    from agentfsm import Runner
    from tests.apps.payments import agent

    async def pause(store: PostgresStore) -> None:
        await Runner(store=store).run(agent(), "pay", run_id="old")

    run(schema, pause)
    sql(f'DROP TABLE "{schema}".run_versions')  # as layout 2 left it
    sql(f'DELETE FROM "{schema}".agentfsm_schema WHERE version > 2')

    async def check(store: PostgresStore) -> None:
        current = await store.load("old")
        (kept,) = await store.history("old")
        assert (kept.version, kept.event, kept.status) == (current.version, None, "interrupted")
        assert await store.load("old", version=current.version) == current

    run(schema, check)


# -- a run locked by a process that stopped mid-write -------------------------------------------


def _frozen_lock(schema: str, run_id: str) -> Any:
    """A connection holding the run's row lock, as a process frozen mid-write would."""
    import psycopg

    conn = psycopg.connect(DSN)
    conn.execute(f'SELECT 1 FROM "{schema}".runs WHERE run_id = %s FOR UPDATE', (run_id,))
    return conn


def test_calls_on_a_run_locked_by_a_frozen_process_fail_within_the_lock_timeout(
    schema: str,
) -> None:
    import psycopg

    from agentfsm import Runner
    from tests.apps.mailer import agent

    async def check(store: PostgresStore) -> None:
        paused = await Runner(store=store).run(agent(), "hi", run_id="r")
        request = paused.interruptions[0]
        frozen = _frozen_lock(schema, "r")
        try:
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "cancel": lambda: store.cancel("r"),
                "approve": lambda: store.approve("r", request, by="ada"),
                # Tried again while the lock holds, for up to store_wait, then given up.
                "resume": lambda: Runner(store=store, store_wait=0.5).resume(agent(), "r"),
            }
            for name, call in calls.items():
                started = time.monotonic()
                with pytest.raises(StoreError, match="locked by another transaction") as caught:
                    await asyncio.wait_for(call(), timeout=10)
                assert time.monotonic() - started < 5, name
                assert "lock_timeout of 0.3 s" in str(caught.value)
                assert "\n" not in str(caught.value)
                assert isinstance(caught.value.__cause__, psycopg.errors.LockNotAvailable)
        finally:
            frozen.close()
        assert await store.approve("r", request, by="ada")  # the lock is gone: it goes on
        done = await Runner(store=store).resume(agent(), "r")
        assert done.final_output == "sent"

    run(schema, check, lock_timeout=0.3)


def test_without_a_lock_timeout_the_statement_timeout_still_bounds_the_wait(schema: str) -> None:
    async def check(store: PostgresStore) -> None:
        await store.create(fresh("r"))
        frozen = _frozen_lock(schema, "r")
        try:
            with pytest.raises(StoreError, match=r"statement_timeout of 0\.3 s"):
                await asyncio.wait_for(store.cancel("r"), timeout=10)
        finally:
            frozen.close()
        await store.cancel("r")

    run(schema, check, lock_timeout=None, statement_timeout=0.3)


def test_the_timeouts_are_set_on_every_connection_unless_the_dsn_sets_them(schema: str) -> None:
    names = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")

    async def settings(store: PostgresStore) -> list[str]:
        async with store._connection() as conn:
            return [(await (await conn.execute(f"SHOW {n}")).fetchone())[0] for n in names]

    async def check() -> None:
        async with PostgresStore(DSN, schema=schema) as store:
            assert await settings(store) == ["10s", "30s", "1min"]
        separator = "&" if "?" in DSN else "?"
        dsn = f"{DSN}{separator}options=-c%20lock_timeout%3D1234"
        async with PostgresStore(dsn, schema=schema, statement_timeout=5) as store:
            assert await settings(store) == ["1234ms", "5s", "1min"]

    asyncio.run(check())
    with pytest.raises(ValueError, match="lock_timeout"):
        PostgresStore(DSN, schema=schema, lock_timeout=0)


def test_the_cli_cancelling_a_locked_run_fails_in_one_line_within_the_timeout(
    schema: str,
) -> None:
    async def create(store: PostgresStore) -> None:
        await store.create(fresh("r"))

    run(schema, create)
    separator = "&" if "?" in DSN else "?"
    dsn = f"{DSN}{separator}agentfsm_schema={schema}&options=-c%20lock_timeout%3D300"
    frozen = _frozen_lock(schema, "r")
    try:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "agentfsm", "cancel", "r", "--store", dsn, "--store-wait", "1"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        assert time.monotonic() - started < 30
    finally:
        frozen.close()
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("agentfsm: error: ") and done.stderr.count("\n") == 1
    assert "locked by another transaction" in done.stderr
    assert "gave up after" in done.stderr


def test_the_blocking_renewer_has_its_own_connection_and_reconnects(schema: str) -> None:
    """Workers renew leases off the event loop through ``renewer()``: it works from another
    thread, fails one call when its connection drops, reconnects for the next, and says
    LeaseLost once the lease is taken over."""
    name = f"agentfsm_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(
        f"{DSN}{'&' if '?' in DSN else '?'}application_name={name}", schema=schema
    )
    asyncio.run(store.create(fresh("r")))
    lease = asyncio.run(store.claim("w", lease_seconds=5, run_id="r"))
    assert lease is not None
    renew = store.renewer()
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        renewed = thread.submit(renew, lease, 30).result(timeout=30)
        assert renewed.token == lease.token and renewed.expires_at > lease.expires_at
        sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE application_name = '{name}'"
        )
        with pytest.raises(StoreError, match="PostgreSQL store"):
            thread.submit(renew, lease, 30).result(timeout=30)
        assert thread.submit(renew, lease, 30).result(timeout=30).token == lease.token
        asyncio.run(store.release(lease))
        with pytest.raises(LeaseLost):
            thread.submit(renew, lease, 30).result(timeout=30)
    asyncio.run(store.close())
    with pytest.raises(StoreError, match="closed"):
        renew(lease, 30)
