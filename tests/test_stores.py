"""The shipped conformance suite, run against the memory and SQLite stores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agentfsm import MemoryStore, SQLiteStore, Store
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
