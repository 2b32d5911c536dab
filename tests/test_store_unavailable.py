"""Which faults are StoreUnavailable (may pass: try again later) and which are a plain
StoreError (will not pass by themselves), met for real: a PostgreSQL connection killed by
the server or cut on the network, a lock held past the lock timeout, a statement past its
timeout, a SQLite database locked by another connection; against a file that is not a store,
missing tables, an unknown database, a closed store.

The PostgreSQL tests skip when the server does not answer."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import DSN, through

from agentfsm import (
    ConflictError,
    PostgresStore,
    SQLiteStore,
    StoreError,
    StoreUnavailable,
    new_run,
)
from tests.tcp_proxy import Proxy


def named(application: str) -> str:
    return f"{DSN}{'&' if '?' in DSN else '?'}application_name={application}"


def sql(statement: str, *params: Any) -> None:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(statement, params)


def unavailable(error: BaseException) -> bool:
    return isinstance(error, StoreUnavailable)


# -- PostgreSQL: faults that pass ------------------------------------------------------------


def test_a_connection_the_server_terminates_is_unavailable_and_the_next_call_reconnects(
    schema: str,
) -> None:
    import psycopg

    name = f"agentfsm_{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        async with PostgresStore(named(name), schema=schema, max_size=1) as store:
            await store.create(new_run("a", "go", run_id="r"))
            sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                name,
            )
            with pytest.raises(StoreUnavailable) as caught:
                await asyncio.wait_for(store.load("r"), 30)
            assert isinstance(caught.value.__cause__, psycopg.OperationalError)  # AdminShutdown
            assert "\n" not in str(caught.value)
            assert (await asyncio.wait_for(store.load("r"), 30)).run_id == "r"

    asyncio.run(main())


def test_a_cut_network_is_unavailable_for_open_and_new_connections(
    schema: str, proxy: Proxy
) -> None:
    import psycopg

    async def main() -> None:
        async with PostgresStore(through(proxy), schema=schema, connect_timeout=2) as store:
            await store.create(new_run("a", "go", run_id="r"))
            proxy.cut()
            await asyncio.sleep(0.2)
            with pytest.raises(StoreUnavailable) as dropped:
                await asyncio.wait_for(store.load("r"), 30)  # the pooled connection is gone
            assert isinstance(dropped.value.__cause__, psycopg.OperationalError)
            with pytest.raises(StoreUnavailable, match="cannot connect") as refused:
                await asyncio.wait_for(store.load("r"), 30)  # and no new one is let through
            assert "\n" not in str(refused.value)
            proxy.restore()
            assert (await asyncio.wait_for(store.load("r"), 30)).run_id == "r"

    asyncio.run(main())


def test_a_lock_held_past_the_lock_timeout_is_unavailable(schema: str) -> None:
    import psycopg

    async def main() -> None:
        async with PostgresStore(DSN, schema=schema, lock_timeout=0.2) as store:
            await store.create(new_run("a", "go", run_id="r"))
            with psycopg.connect(DSN) as frozen:  # a process stopped in the middle of a write
                frozen.execute(
                    f'SELECT 1 FROM "{schema}".runs WHERE run_id = %s FOR UPDATE', ("r",)
                )
                with pytest.raises(StoreUnavailable, match="lock_timeout") as caught:
                    await asyncio.wait_for(store.cancel("r"), 30)
            assert isinstance(caught.value.__cause__, psycopg.errors.LockNotAvailable)
            await store.cancel("r")  # the lock is gone

    asyncio.run(main())


def test_a_statement_past_the_statement_timeout_is_unavailable(schema: str) -> None:
    import psycopg

    async def main() -> None:
        options = {"lock_timeout": None, "statement_timeout": 0.2}
        async with PostgresStore(DSN, schema=schema, **options) as store:
            await store.create(new_run("a", "go", run_id="r"))
            with psycopg.connect(DSN) as frozen:
                frozen.execute(
                    f'SELECT 1 FROM "{schema}".runs WHERE run_id = %s FOR UPDATE', ("r",)
                )
                with pytest.raises(StoreUnavailable, match="statement_timeout") as caught:
                    await asyncio.wait_for(store.cancel("r"), 30)
            assert isinstance(caught.value.__cause__, psycopg.errors.QueryCanceled)

    asyncio.run(main())


def test_a_server_that_refuses_connections_is_unavailable(postgres_down: str | None) -> None:
    if postgres_down is not None:
        pytest.skip(postgres_down)

    async def main() -> None:
        # Port 1 on loopback: nothing listens there, as while a server restarts.
        async with PostgresStore("postgresql://postgres@127.0.0.1:1/test") as store:
            with pytest.raises(StoreUnavailable, match="Connection refused"):
                await asyncio.wait_for(store.list(), 30)

    asyncio.run(main())


# -- PostgreSQL: faults that do not pass -----------------------------------------------------


def test_an_unknown_database_missing_tables_and_a_closed_store_are_not_unavailable(
    schema: str,
) -> None:
    port = urlsplit(DSN).port or 5432

    async def main() -> None:
        unknown = f"postgresql://postgres@127.0.0.1:{port}/no_such_database_{uuid.uuid4().hex[:6]}"
        async with PostgresStore(unknown, schema=schema) as store:
            with pytest.raises(StoreError, match="does not exist") as caught:
                await asyncio.wait_for(store.list(), 30)
            assert not unavailable(caught.value)
        async with PostgresStore(DSN, schema=schema, create=False) as store:
            with pytest.raises(StoreError, match="no agentfsm tables") as caught:
                await asyncio.wait_for(store.list(), 30)
            assert not unavailable(caught.value)
        store = PostgresStore(DSN, schema=schema)
        await store.create(new_run("a", "go", run_id="r"))
        sql(f'ALTER TABLE "{schema}".runs RENAME TO runs_away')  # a schema someone broke
        with pytest.raises(StoreError) as caught:
            await asyncio.wait_for(store.load("r"), 30)
        assert not unavailable(caught.value)
        sql(f'ALTER TABLE "{schema}".runs_away RENAME TO runs')
        with pytest.raises(ConflictError):
            await store.create(new_run("a", "go", run_id="r"))
        await store.close()
        with pytest.raises(StoreError, match="closed") as caught:
            await store.load("r")
        assert not unavailable(caught.value)

    asyncio.run(main())


# -- SQLite ----------------------------------------------------------------------------------


def test_a_sqlite_database_locked_past_the_timeout_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    asyncio.run(SQLiteStore(path).close())
    frozen = sqlite3.connect(path, isolation_level=None)
    frozen.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:

        async def main() -> None:
            async with SQLiteStore(path, timeout=0.1) as store:
                with pytest.raises(StoreUnavailable, match="the database is locked") as caught:
                    await store.create(new_run("a", "go", run_id="r"))
                assert isinstance(caught.value.__cause__, sqlite3.OperationalError)

        asyncio.run(main())
    finally:
        frozen.close()
    assert asyncio.run(_created(path)) == ["r"]


async def _created(path: Path) -> list[str]:
    async with SQLiteStore(path) as store:
        await store.create(new_run("a", "go", run_id="r"))  # free again: it goes on
        return [s.run_id for s in await store.list()]


def test_a_file_that_is_not_a_store_and_a_closed_store_are_not_unavailable(
    tmp_path: Path,
) -> None:
    (tmp_path / "notes.db").write_bytes(b"these are my notes, not a database\n" * 10)
    with pytest.raises(StoreError, match="not a SQLite database") as caught:
        SQLiteStore(tmp_path / "notes.db")
    assert not unavailable(caught.value)
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE accounts (id INTEGER)")
    other.close()
    with pytest.raises(StoreError, match="another application's") as caught:
        SQLiteStore(tmp_path / "other.db")
    assert not unavailable(caught.value)

    async def closed() -> None:
        store = SQLiteStore(tmp_path / "runs.db")
        await store.close()
        with pytest.raises(StoreError, match="closed") as caught:
            await store.list()
        assert not unavailable(caught.value)

    asyncio.run(closed())
