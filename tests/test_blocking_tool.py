"""A tool that blocks its worker's event loop does not cost the worker its lease: an ``async``
tool calls ``time.sleep(6)`` while its ``agentfsm worker`` holds a 2 s lease and a second worker
polls the same store (a SQLite file, or PostgreSQL). The lease is renewed by something the
user's code cannot starve (DESIGN.md, "Faults are normal"), so nobody else takes the run over,
the tool body runs exactly once, and the run completes. (The runner's heartbeat thread renews
it, through a connection of its own.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentfsm import RunState, ToolResultItem, new_run
from tests.apps.blocker import agent
from tests.fleet import one_result_per_call, spawn, stop, store_of, wait_until

RUN = "blocker"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_tool_that_blocks_the_event_loop_keeps_its_lease_and_runs_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    dsn, open_store = store_of(kind, request, tmp_path)

    async def load() -> RunState:
        async with open_store() as store:
            return await store.load(RUN)

    async def create() -> None:
        async with open_store() as store:
            await store.create(new_run(agent(), "crunch", run_id=RUN))

    async def lay_out() -> None:
        async with open_store() as store:
            await store.list(limit=1)

    asyncio.run(lay_out())  # the store's tables, before two workers race to make them
    args = ["worker", "--app", "tests.apps.blocker:agent", "--store", dsn]
    args += ["--lease", "2", "--poll", "0.05"]
    outs = [tmp_path / f"worker{n}.out" for n in range(2)]
    errs = [tmp_path / f"worker{n}.err" for n in range(2)]
    opened = [path.open("w") for path in (*outs, *errs)]
    workers = [
        spawn(args, {"BLOCKER_EFFECTS": str(effects)}, stdout=opened[n], stderr=opened[2 + n])
        for n in range(2)
    ]
    try:
        # Both poll before the run exists, so whichever takes it, the other polls all along.
        for out in outs:
            wait_until(lambda out=out: "started" in out.read_text(), 30, "the workers to start")
        asyncio.run(create())
        wait_until(effects.exists, 30, "the tool to start")

        def settled() -> bool:
            return asyncio.run(load()).status.value in ("completed", "interrupted", "failed")

        wait_until(settled, 30, "the run to complete, or to wait for a decision")
    finally:
        stop(workers)
        for file in opened:
            file.close()
    said = [out.read_text() for out in outs]
    complaints = [err.read_text() for err in errs]
    for worker, err in zip(workers, complaints, strict=True):
        assert worker.returncode == 0, err[-2000:]
        assert "Traceback" not in err, err[-4000:]
    state = asyncio.run(load())
    notes = effects.read_text().split("\n")
    assert [note.split(" ")[0] for note in notes if note] == ["started", "done"], notes
    assert state.status.value == "completed", (state.status, state.interruptions, complaints)
    assert [i.output for i in state.items if isinstance(i, ToolResultItem)] == ["crunched"]
    one_result_per_call(state)
    # One worker advanced the run, in one go; the other never took it over.
    assert sorted("advancing 1 runs" in out for out in said) == [False, True], said
    assert sum("advancing 0 runs" in out for out in said) == 1, said
    for err in complaints:
        assert "lost the lease" not in err, err
        assert "no longer held" not in err, err
