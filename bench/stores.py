"""Store benchmarks: what a checkpoint costs as a run grows, what it writes, and how fast a
stored run resumes among many.

Run with ``make bench`` (or ``.venv/bin/python bench/stores.py``; ``--quick`` for fewer
repetitions). SQLite always; PostgreSQL too when ``AGENTFSM_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``) answers and ``PostgresStore`` is available.

* checkpoint per step: one ``save`` of a step that adds a tool call and its result, on runs
  that already hold 10, 1,000 and 10,000 items, every version kept in the run's history. The
  goal: flat (within 1.5x from the smallest to the largest).
* bytes per step: the head row plus the item rows one such step writes.
* pages per checkpoint (SQLite): the pages one such save writes to the write-ahead log, on
  average; a commit's cost is mostly these (before history was kept: 4.9).
* resume among 10,000 runs: load one run plus its first step, with 10,000 runs stored.
* load a past version: ``load(run_id, version=k)`` of the version in the middle of a run of
  10,000 items saved step by step (its history kept). The goal: at most 20 ms on SQLite.
* fork from that version: ``fork(run_id, version=k)``, which loads it and stores a new run
  of its 5,000 items (no goal: it copies the transcript).
* the floor: a plain SQLite WAL transaction that checks a version and appends a small row.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from agentfsm import (
    Agent,
    ModelResponded,
    ModelResponse,
    ModelToolCall,
    RunState,
    SQLiteStore,
    Started,
    Store,
    ToolOutput,
    ToolsFinished,
    Usage,
    new_run,
    step,
    tool,
)
from agentfsm._codec import encode_head, encode_items

QUICK = "--quick" in sys.argv
REPS = 30 if QUICK else 120
SIZES = (10, 1_000, 10_000)
MANY = 2_000 if QUICK else 10_000
PG_DSN = os.environ.get("AGENTFSM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@tool
async def noop(x: int) -> str:
    return "ok"


AGENT = Agent("bench", "", None, tools=[noop])


def grown(run_id: str, items: int) -> RunState:
    """A run in status ``running`` whose transcript holds ``items`` items."""
    state = step(new_run(AGENT, "go", run_id=run_id, max_turns=10**9), Started(), AGENT).state
    for turn in range(items // 2):
        state = one_turn(state, turn)
    return state


def half_steps(state: RunState, turn: int) -> list[RunState]:
    """The two steps of one turn: the model calls a tool, then the tool's result."""
    call = ModelToolCall(call_id=f"c{turn}", name="noop", arguments='{"x": 1}')
    response = ModelResponse(tool_calls=(call,), usage=Usage(requests=1))
    called = step(state, ModelResponded(response=response), AGENT).state
    results = (ToolOutput(call_id=f"c{turn}", output="ok"),)
    return [called, step(called, ToolsFinished(results=results), AGENT).state]


def one_turn(state: RunState, turn: int) -> RunState:
    return half_steps(state, turn)[-1]


async def checkpoint_costs(store: Store) -> dict[int, list[float]]:
    """µs per save, for one step on runs of each size, interleaved across sizes."""
    runs: dict[int, RunState] = {}
    for size in SIZES:
        state = grown(f"size-{size}-{uuid.uuid4().hex[:6]}", size)
        await store.create(state)
        runs[size] = state
    timings: dict[int, list[float]] = {size: [] for size in SIZES}
    turn = 10**6
    for _ in range(REPS // 2):
        for size in SIZES:
            turn += 1
            for nxt in half_steps(runs[size], turn):
                started = time.perf_counter_ns()
                await store.save(nxt)
                timings[size].append((time.perf_counter_ns() - started) / 1000)
                runs[size] = nxt
    return timings


async def sqlite_pages_per_checkpoint(path: Path) -> float:
    """Pages one save writes to the write-ahead log, on average over the steps of
    ``checkpoint_costs``."""
    store = SQLiteStore(path)
    try:
        db = store._db
        db.execute("PRAGMA wal_autocheckpoint=0")  # the log only grows: its growth counts
        (page,) = db.execute("PRAGMA page_size").fetchone()
        runs: dict[int, RunState] = {}
        for size in SIZES:
            runs[size] = grown(f"pages-{size}", size)
            await store.create(runs[size])
        wal = Path(f"{path}-wal")
        written = saves = 0
        turn = 10**6
        for _ in range(REPS // 2):
            for size in SIZES:
                turn += 1
                for nxt in half_steps(runs[size], turn):
                    before = wal.stat().st_size
                    await store.save(nxt)
                    written += wal.stat().st_size - before
                    saves += 1
                    runs[size] = nxt
        return written / (page + 24) / saves  # each page in the log has a 24-byte header
    finally:
        await store.close()


def bytes_per_step() -> tuple[int, int]:
    state = grown("bytes", 1_000)
    nxt = one_turn(state, 10**6)
    head = len(encode_head(nxt))
    items = sum(len(b) for b in encode_items(nxt.items[len(state.items) :]))
    return head, items


async def resume_among_many(store: Store) -> list[float]:
    template = grown("template", 20)
    ids = [f"many-{n}-{uuid.uuid4().hex[:6]}" for n in range(MANY)]
    for run_id in ids:
        await store.create(msgspec.structs.replace(template, run_id=run_id))
    timings = []
    for run_id in ids[:: max(1, MANY // REPS)][:REPS]:
        started = time.perf_counter_ns()
        state = await store.load(run_id)
        nxt = half_steps(state, 10**6)[0]
        await store.save(nxt)
        timings.append((time.perf_counter_ns() - started) / 1000)
    return timings


async def load_past_version(store: Store) -> tuple[list[float], list[float]]:
    """µs per ``load(version=k)`` of the middle version of a 10,000-item run saved step by
    step, so that its history holds every version; and µs per ``fork`` from that version (a
    new run of 5,000 items)."""
    state = grown(f"versions-{uuid.uuid4().hex[:6]}", 0)
    await store.create(state)
    middle = None
    turn = 0
    while len(state.items) < SIZES[-1]:
        turn += 1
        for nxt in half_steps(state, turn):
            await store.save(nxt)
            state = nxt
            if middle is None and len(state.items) >= SIZES[-1] // 2:
                middle = state
    assert middle is not None
    timings = []
    for _ in range(max(10, REPS // 4)):
        started = time.perf_counter_ns()
        loaded = await store.load(middle.run_id, version=middle.version)
        timings.append((time.perf_counter_ns() - started) / 1000)
    assert loaded == middle
    forks = []
    for _ in range(max(5, REPS // 12)):
        started = time.perf_counter_ns()
        await store.fork(middle.run_id, version=middle.version, new_run_id=uuid.uuid4().hex)
        forks.append((time.perf_counter_ns() - started) / 1000)
    return timings, forks


def sqlite_floor(path: Path) -> list[float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE head (id TEXT PRIMARY KEY, version INTEGER)")
    db.execute("CREATE TABLE log (id TEXT, idx INTEGER, body BLOB, PRIMARY KEY (id, idx))")
    db.execute("INSERT INTO head VALUES ('r', 0)")
    timings = []
    for version in range(REPS * 3):
        started = time.perf_counter_ns()
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "UPDATE head SET version = ? WHERE id = 'r' AND version = ?", (version + 1, version)
        )
        db.execute("INSERT INTO log VALUES ('r', ?, ?)", (version, b'{"type":"tool_result"}'))
        db.execute("COMMIT")
        timings.append((time.perf_counter_ns() - started) / 1000)
    db.close()
    return timings


def line(label: str, values: list[float], unit: str = "µs", goal: str = "") -> str:
    median = statistics.median(values)
    best = min(values)
    return f"  {label:<48} {median:>10.1f} {unit}  {best:>10.1f} {unit}  {goal}"


async def bench_store(name: str, make: Any) -> None:
    print(f"\n{name}")
    print(f"  {'measure':<48} {'median':>13}  {'best':>13}")
    store = await make()
    try:
        costs = await checkpoint_costs(store)
        for size in SIZES:
            print(line(f"checkpoint per step, run of {size:,} items", costs[size]))
        ratio = statistics.median(costs[SIZES[-1]]) / statistics.median(costs[SIZES[0]])
        verdict = "PASS" if ratio <= 1.5 else "MISS"
        print(f"  {'10,000 items / 10 items':<48} {ratio:>12.2f}x  {'':>13}  ≤ 1.5x  {verdict}")
    finally:
        await store.close()
    store = await make()
    try:
        print(
            line(f"resume (load + first step) among {MANY:,} runs", await resume_among_many(store))
        )
    finally:
        await store.close()
    store = await make()
    try:
        if hasattr(store, "history"):
            loads, forks = await load_past_version(store)
            timings = [t / 1000 for t in loads]
            print(line("load(version=k), middle of a 10,000-item run", timings, "ms", "≤ 20 ms"))
            print(
                line("fork from there (a new run of 5,000 items)", [t / 1000 for t in forks], "ms")
            )
    finally:
        await store.close()


async def main() -> int:
    head, items = bytes_per_step()
    print("agentfsm store bench")
    print(f"\nbytes written by one turn (two steps): head rows 2 x {head} B + items {items} B")
    with tempfile.TemporaryDirectory() as tmp:
        floor = sqlite_floor(Path(tmp) / "floor.db")
        print("\nthe floor: a plain SQLite WAL transaction (check a version, append a small row)")
        print(line("BEGIN IMMEDIATE; UPDATE ... WHERE version; INSERT; COMMIT", floor))
        counter = iter(range(100))

        async def sqlite() -> Store:
            return SQLiteStore(Path(tmp) / f"bench-{next(counter)}.db")

        await bench_store("SQLiteStore (WAL, synchronous=NORMAL)", sqlite)
        pages = await sqlite_pages_per_checkpoint(Path(tmp) / "pages.db")
        print(f"  {'pages written per checkpoint (to the WAL)':<48} {pages:>13.1f}")
    await bench_postgres()
    return 0


async def bench_postgres() -> None:
    try:
        import psycopg

        from agentfsm import PostgresStore

        with psycopg.connect(PG_DSN, connect_timeout=2):
            pass
    except Exception as exc:
        print(f"\nPostgresStore: skipped ({exc})")
        return
    schemas: list[str] = []

    async def postgres() -> Store:
        schemas.append(f"bench_{uuid.uuid4().hex[:8]}")
        return PostgresStore(PG_DSN, schema=schemas[-1])

    try:
        await bench_store("PostgresStore (127.0.0.1, psycopg 3)", postgres)
        print(f"\n  run-steps per second with N worker processes ({WORKER_RUNS} runs of 12 steps)")
        for workers in (1, 2, 4):
            schemas.append(f"bench_{uuid.uuid4().hex[:8]}")
            rate = await worker_throughput(schemas[-1], workers)
            print(f"  {workers} worker(s){'':<38} {rate:>10.0f} steps/s")
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as db:
            for schema in schemas:
                db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


WORKER_RUNS = 100 if QUICK else 400


async def worker_throughput(schema: str, workers: int) -> float:
    """Steps per second for ``workers`` processes draining ``WORKER_RUNS`` runs together."""
    from agentfsm import PostgresStore

    sys.path.insert(0, str(HERE))
    from workload import agent

    async with PostgresStore(PG_DSN, schema=schema) as store:
        for n in range(WORKER_RUNS):
            await store.create(new_run(agent(), "go", run_id=f"w{n}"))
    dsn = f"{PG_DSN}?agentfsm_schema={schema}"
    command = [sys.executable, "-m", "agentfsm", "worker", "--app", "workload:agent"]
    command += ["--store", dsn, "--until-idle", "--poll", "0.01"]
    # Start the processes first (imports take a while), then count from the first claim.
    started = time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(
            *command, cwd=HERE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(workers)
    ]
    first_step = await _first_step(schema, started)
    for proc in procs:
        _, err = await proc.communicate()
        if proc.returncode:
            raise RuntimeError(err.decode())
    elapsed = time.perf_counter() - first_step
    async with PostgresStore(PG_DSN, schema=schema) as store:
        summaries = await store.list()
    assert all(s.status == "completed" for s in summaries), "every run completes"
    steps = sum(s.version for s in summaries)
    return steps / elapsed


async def _first_step(schema: str, fallback: float) -> float:
    from agentfsm import PostgresStore

    async with PostgresStore(PG_DSN, schema=schema) as store:
        for _ in range(2000):
            if any(s.version for s in await store.list(limit=5)):
                return time.perf_counter()
            await asyncio.sleep(0.005)
    return fallback


HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
