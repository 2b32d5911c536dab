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
