"""Session benchmarks: what joining a session adds to creating a run, and what reading a
session's transcript (what its next run starts from) costs as the session grows.

Run with ``make bench`` (or ``.venv/bin/python bench/sessions.py``; ``--quick`` for smaller
sessions). SQLite always; PostgreSQL too when ``AGENTFSM_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``) answers.

* create: ``store.create(state)`` of a run in no session, and of the next run of a session
  that already holds many runs (the store checks the session's last run and adds the run
  in the same transaction). The goal: a small, flat addition to a create.
* transcript: ``store.session_transcript(session)`` for sessions of 10, 100 and 1,000 runs
  (a question and an answer each). It loads each run, so it grows with the session: long
  sessions want a ``session_history`` hook that trims, and its cost is paid once per run.
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

from agentfsm import Agent, Runner, RunState, SQLiteStore, Store, new_run
from agentfsm.testing import ScriptedModel, say

QUICK = "--quick" in sys.argv
SIZES = (10, 100) if QUICK else (10, 100, 1_000)
REPS = 200
PG_DSN = os.environ.get("AGENTFSM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def median_us(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e6:8.0f} us (best {min(samples) * 1e6:.0f})"


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:8.2f} ms (best {min(samples) * 1e3:.2f})"


async def completed_template() -> RunState:
    agent = Agent("chat", "", ScriptedModel([say("an answer")]))
    return (await Runner().run(agent, "a question", run_id="template")).state


async def fill(store: Store, session: str, runs: int, template: RunState) -> None:
    """A session of ``runs`` completed runs (stored directly: the store's cost, not the
    runner's)."""
    for n in range(runs):
        state = msgspec.structs.replace(template, run_id=f"{session}-{n}", session=session)
        await store.create(state)


async def bench(name: str, store: Store) -> None:
    template = await completed_template()
    big = max(SIZES)
    await fill(store, "big", big, template)

    plain, joined = [], []
    for n in range(REPS):
        state = new_run("chat", "hi", run_id=f"plain-{n}")
        started = time.perf_counter()
        await store.create(state)
        plain.append(time.perf_counter() - started)
        # The next run of a session of ``big`` runs, completed so that the one after may join.
        state = msgspec.structs.replace(template, run_id=f"big-next-{n}", session="big")
        started = time.perf_counter()
        await store.create(state)
        joined.append(time.perf_counter() - started)
    print(f"{name}: create, no session                    {median_us(plain)}")
    print(f"{name}: create, joining a session of {big:>5} runs {median_us(joined)}")

    for size in SIZES:
        session = f"s{size}"
        await fill(store, session, size, template)
        samples = []
        for _ in range(max(3, REPS // size)):
            started = time.perf_counter()
            items = await store.session_transcript(session)
            samples.append(time.perf_counter() - started)
        assert len(items) == 2 * size
        print(f"{name}: transcript of a session of {size:>5} runs  {median_ms(samples)}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with SQLiteStore(Path(directory) / "bench.db") as store:
            await bench("sqlite", store)
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=2):
            pass
    except Exception as exc:
        print(f"postgres: skipped ({type(exc).__name__})")
        return
    from agentfsm import PostgresStore

    schema = f"agentfsm_bench_{uuid.uuid4().hex[:8]}"
    try:
        async with PostgresStore(PG_DSN, schema=schema) as store:
            await bench("postgres", store)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    asyncio.run(main())
