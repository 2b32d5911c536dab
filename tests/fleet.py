"""Helpers for the tests that run ``agentfsm`` commands (workers, resumers) as separate
processes: starting them, reading what their tools did, and the careful person who decides
what waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import DSN

from agentfsm import (
    ConflictError,
    PostgresStore,
    RunState,
    SQLiteStore,
    Store,
    ToolCallItem,
    ToolResultItem,
    UnknownCallError,
)

ROOT = Path(__file__).resolve().parent.parent


def store_dsn(schema: str) -> str:
    """The ``--store`` of the test database, in ``schema``."""
    return f"{DSN}?agentfsm_schema={schema}"


def store_of(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[str, Callable[[], Store]]:
    """For a test run on ``kind`` ("sqlite" or "postgres"): the workers' ``--store``, and a
    function that opens the same store in this process (PostgreSQL in the test's schema)."""
    if kind == "postgres":
        schema = request.getfixturevalue("schema")
        return store_dsn(schema), lambda: PostgresStore(DSN, schema=schema)
    path = str(tmp_path / "runs.db")
    return path, lambda: SQLiteStore(path)


def stop(workers: list[subprocess.Popen[str]], *, thaw: bool = False) -> None:
    """SIGTERM each worker (SIGCONT first with ``thaw``, for one that may be frozen), wait
    for it, and kill one that does not stop within 30 s."""
    for worker in workers:
        if thaw:
            worker.send_signal(signal.SIGCONT)
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def spawn(
    args: list[str],
    env: Mapping[str, str],
    *,
    stdout: int | IO[Any] = subprocess.PIPE,
    stderr: int | IO[Any] = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """``python -m agentfsm ARGS`` from the repository's root, with ``env`` added."""
    return subprocess.Popen(
        [sys.executable, "-m", "agentfsm", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def effects_of(path: Path) -> list[str]:
    """The words of an effects file (the idempotency keys of the calls that took effect)."""
    return path.read_text().split() if path.exists() else []


async def decide_waiting(store: Store, effects: Path) -> None:
    """The human: approve what waits; for a call in doubt, approve only if it never ran
    (its idempotency key is not in ``effects``)."""
    done = set(effects_of(effects))
    for summary in await store.list(status="interrupted"):
        state = await store.load(summary.run_id)
        if (await store.inbox(state.run_id)).ids:
            continue
        for request in state.interruptions:
            key = next(c.idempotency_key for c in state.ledger if c.call_id == request.call_id)
            try:
                if request.reason == "in_doubt" and key in done:
                    await store.reject(state.run_id, request, message="Already sent.")
                else:
                    await store.approve(state.run_id, request)
            except (UnknownCallError, ConflictError):
                # A worker moved the run on since we looked: exactly what a person meets too.
                continue


def one_result_per_call(state: RunState) -> None:
    """Every call the model made has exactly one result in the transcript."""
    calls = [i.call_id for i in state.items if isinstance(i, ToolCallItem)]
    results = [i.call_id for i in state.items if isinstance(i, ToolResultItem)]
    assert sorted(calls) == sorted(results), state.run_id
    assert len(set(results)) == len(results), state.run_id


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.01)
