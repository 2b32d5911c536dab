"""The shipped conformance suite, run against the memory and SQLite stores."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from agentfsm import MemoryStore, SQLiteStore, Store, StoreError
from agentfsm.stores._sqlite import LAYOUT_VERSION
from agentfsm.testing import StoreConformance


class TestMemoryStore(StoreConformance):
    async def make_store(self, clock: Callable[[], float]) -> Store:
        return MemoryStore(clock=clock)


class TestSQLiteStore(StoreConformance):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.path = tmp_path / "runs.db"

    async def make_store(self, clock: Callable[[], float]) -> Store:
        return SQLiteStore(self.path, clock=clock)


def _paused(store: Store) -> list[str]:
    """Pause a run in ``store``; the ids of its waiting calls."""
    import asyncio

    from agentfsm import Runner
    from tests.apps.payments import agent

    async def main() -> list[str]:
        result = await Runner(store=store).run(agent(), "pay", run_id="old")
        return [r.call_id for r in result.interruptions]

    return asyncio.run(main())


def test_a_layout_1_sqlite_store_gets_its_waiting_calls_indexed_on_open(tmp_path: Path) -> None:
    import asyncio
    import sqlite3

    store = SQLiteStore(tmp_path / "runs.db")
    waiting = _paused(store)
    asyncio.run(store.close())
    with sqlite3.connect(tmp_path / "runs.db") as db:  # as agentfsm 0.1 left it
        db.execute("DROP TABLE run_versions")
        db.execute("DROP TABLE run_waiting")
        db.execute("DROP INDEX runs_by_deadline")
        for column in ("deadline", "failures", "parked"):
            db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        db.execute("DELETE FROM agentfsm_schema WHERE version > 1")
    db.close()

    async def reopened() -> list[str]:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            return [c.request.call_id for c in (await store.waiting()).calls]

    assert asyncio.run(reopened()) == waiting


@pytest.mark.parametrize("failure", ["not a database", "newer layout", "interrupted"])
def test_a_store_that_fails_to_open_closes_its_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    path = tmp_path / "runs.db"
    expected: type[BaseException] = StoreError
    if failure == "not a database":
        path.write_bytes(b"not SQLite" * 100)
    elif failure == "newer layout":
        newer = sqlite3.connect(path)
        with newer:
            newer.execute("CREATE TABLE agentfsm_schema (version INTEGER NOT NULL)")
            newer.execute("INSERT INTO agentfsm_schema (version) VALUES (99)")
        newer.close()
    else:

        def interrupt(self: SQLiteStore, db: sqlite3.Connection) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(SQLiteStore, "_migrate", interrupt)
        expected = KeyboardInterrupt
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def remember(*args: object, **kwargs: object) -> sqlite3.Connection:
        opened.append(connect(*args, **kwargs))  # type: ignore[arg-type]
        return opened[-1]

    monkeypatch.setattr(sqlite3, "connect", remember)
    with pytest.raises(expected):
        SQLiteStore(path)
    for db in opened:  # a file refused by its header is never even opened
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            db.execute("SELECT 1")


def test_a_layout_4_sqlite_store_keeps_every_version_when_its_history_is_laid_out_anew(
    tmp_path: Path,
) -> None:
    import asyncio

    import msgspec

    path = tmp_path / "runs.db"
    _paused(SQLiteStore(path))

    async def versions() -> tuple[list[object], dict[int, object]]:
        async with SQLiteStore(path) as store:
            history = await store.history("old")
            return history, {v.version: await store.load("old", version=v.version) for v in history}

    history, states = asyncio.run(versions())
    assert len(history) == 3  # created, started, paused
    with sqlite3.connect(path) as db:  # as layout 4 left it
        db.execute(
            "CREATE TABLE v4 (run_id TEXT NOT NULL, version INTEGER NOT NULL,"
            " status TEXT NOT NULL, event TEXT, at REAL NOT NULL, head BLOB NOT NULL,"
            " n_items INTEGER NOT NULL, schema_version INTEGER NOT NULL,"
            " PRIMARY KEY (run_id, version)) WITHOUT ROWID"
        )
        db.execute(
            "INSERT INTO v4 SELECT run_id, version, status, event, at, head, n_items,"
            " schema_version FROM run_versions"
        )
        db.execute("DROP TABLE run_versions")
        db.execute("ALTER TABLE v4 RENAME TO run_versions")
        db.execute("CREATE INDEX runs_by_runnable ON runs (runnable, updated_at)")
        db.execute("CREATE INDEX runs_by_status ON runs (status, updated_at)")
        db.execute("DELETE FROM agentfsm_schema WHERE version > 4")
    db.close()

    async def reopened() -> None:
        async with SQLiteStore(path) as store:
            assert await store.history("old") == history
            for version, state in states.items():
                assert await store.load("old", version=version) == state
            current = await store.load("old")
            await store.save(msgspec.structs.replace(current, version=current.version + 1))
            assert [v.version for v in await store.history("old")] == [*states, current.version + 1]
            assert await store.load("old", version=current.version) == current
            assert await store.prune(keep_versions=2) == len(states) - 1
            assert await store.load("old", version=current.version) == current

    asyncio.run(reopened())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT max(version) FROM agentfsm_schema").fetchone() == (
            LAYOUT_VERSION,
        )
        (layout,) = db.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'run_versions'"
        ).fetchone()
        assert "WITHOUT ROWID" not in layout
        indexes = {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert "run_versions_by_run" in indexes
        assert "runs_by_runnable" not in indexes
        assert "runs_by_status" not in indexes
    db.close()


def test_a_layout_2_sqlite_store_starts_each_runs_history_at_its_current_version(
    tmp_path: Path,
) -> None:
    import asyncio
    import sqlite3

    store = SQLiteStore(tmp_path / "runs.db")
    _paused(store)
    asyncio.run(store.close())
    with sqlite3.connect(tmp_path / "runs.db") as db:  # as layout 2 left it
        db.execute("DROP TABLE run_versions")
        db.execute("DELETE FROM agentfsm_schema WHERE version > 2")
        ((run_id, version),) = db.execute("SELECT run_id, version FROM runs").fetchall()
    db.close()

    async def reopened() -> None:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            (kept,) = await store.history(run_id)
            assert (kept.version, kept.event, kept.status) == (version, None, "interrupted")
            current = await store.load(run_id)
            assert await store.load(run_id, version=version) == current
            assert kept.n_items == len(current.items)

    asyncio.run(reopened())
    with sqlite3.connect(tmp_path / "runs.db") as db:
        assert db.execute("SELECT max(version) FROM agentfsm_schema").fetchone() == (
            LAYOUT_VERSION,
        )
    db.close()
