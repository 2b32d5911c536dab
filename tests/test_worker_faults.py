"""Workers against a store that misbehaves: a claim that fails does not stop the worker, a
renewal that fails once does not lose the lease, a worker that may have lost its lease starts
no tool body, and tools get the lease's fencing token."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import DSN

from agentfsm import (
    Agent,
    MemoryStore,
    ModelRequest,
    ModelResponse,
    ModelToolCall,
    PostgresStore,
    Runner,
    SQLiteStore,
    Store,
    StoreError,
    ToolContext,
    new_run,
    tool,
)
from agentfsm.testing import FakeClock, ScriptedModel, call, say

BODIES: list[Any] = []


@tool
async def slow(seconds: float, ctx: ToolContext) -> str:
    BODIES.append(ctx.fencing_token)
    await asyncio.sleep(seconds)
    return "done"


def agent(*turns: Any) -> Agent:
    return Agent("a", "", ScriptedModel(list(turns)), tools=[slow])


class Flaky:
    """Wraps a store; the named methods fail the first ``times`` calls. A flaky ``renew``
    makes the store's blocking ``renewer`` flaky too (they share the count)."""

    def __init__(self, store: Any, times: int, *methods: str) -> None:
        self._store, self._left, self._methods = store, dict.fromkeys(methods, times), methods

    def _fails(self, name: str) -> bool:
        if self._left[name] > 0:
            self._left[name] -= 1
            return True
        return False

    def renewer(self) -> Any:
        renew = self._store.renewer()
        if "renew" not in self._methods or renew is None:
            return renew

        def flaky(lease: Any, seconds: float) -> Any:
            if self._fails("renew"):
                raise StoreError("connection to the server was lost")
            return renew(lease, seconds)

        return flaky

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name not in self._methods:
            return method

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if self._fails(name):
                raise StoreError("connection to the server was lost")
            return await method(*args, **kwargs)

        return flaky


def test_a_worker_outlives_a_store_that_fails_to_claim(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    asyncio.run(store.create(new_run("a", "go", run_id="c1")))
    flaky: Any = Flaky(store, 4, "claim")
    worker = Runner(store=flaky)
    with caplog.at_level(logging.WARNING, logger="agentfsm"):
        advanced = asyncio.run(worker.work(agent(say("ok")), until_idle=True))
    assert advanced == 1
    assert asyncio.run(store.load("c1")).status.value == "completed"
    said = [r.getMessage() for r in caplog.records]
    assert sum("the store fails, retrying" in m for m in said) == 1, "once per episode"
    assert sum("the store answers again (4 tries)" in m for m in said) == 1
    asyncio.run(store.close())


def test_one_failed_renewal_does_not_lose_the_lease(tmp_path: Path) -> None:
    BODIES.clear()
    store = SQLiteStore(tmp_path / "runs.db")
    flaky: Any = Flaky(store, 1, "renew")
    runner = Runner(store=flaky, lease_seconds=0.6)
    done = runner.run_sync(agent(call("slow", seconds=1.5), say("ok")), "go", run_id="r1")
    assert done.status == "completed"
    assert len(BODIES) == 1
    asyncio.run(store.close())


def test_a_worker_that_may_have_lost_its_lease_starts_no_tool() -> None:
    BODIES.clear()

    class Stalling:
        """A model whose answer blocks the whole process, as a frozen worker would."""

        async def respond(self, request: ModelRequest) -> ModelResponse:
            time.sleep(1.0)
            return ModelResponse(
                tool_calls=(ModelToolCall(call_id="c0", name="slow", arguments='{"seconds": 0}'),)
            )

    # The store's clock stands still, so only this process's own clock says the lease ran out.
    store = MemoryStore(clock=FakeClock())
    stalled = Agent("a", "", Stalling(), tools=[slow])
    asyncio.run(store.create(new_run(stalled, "go", run_id="z1")))
    asyncio.run(Runner(store=store, lease_seconds=0.5).work(stalled, until_idle=True))
    assert BODIES == [], "a tool body started after the lease may have run out"
    state = asyncio.run(store.load("z1"))
    assert state.status.value == "tools"  # the intent is recorded; the call did not start


def test_tools_get_the_fencing_token_of_the_lease(tmp_path: Path) -> None:
    BODIES.clear()
    store = SQLiteStore(tmp_path / "runs.db")
    Runner(store=store).run_sync(agent(call("slow", seconds=0), say("ok")), "go", run_id="f1")
    Runner().run_sync(agent(call("slow", seconds=0), say("ok")), "go")
    assert BODIES[0] is not None and BODIES[0] >= 1
    assert BODIES[1] is None  # no store, no lease
    asyncio.run(store.close())


@tool
async def hog(seconds: float, ctx: ToolContext) -> str:
    """An async tool that blocks its event loop (calls blocking code), as tools do by
    mistake."""
    BODIES.append(ctx.fencing_token)
    time.sleep(seconds)
    return "done"


def hogging(*turns: Any) -> Agent:
    return Agent("a", "", ScriptedModel(list(turns)), tools=[hog])


def thieves(store: Store, run_id: str, running: threading.Event) -> list[Any]:
    """Another worker trying to take the run over, from when its tool starts while
    ``running`` is set: what it got."""
    taken: list[Any] = []

    async def steal() -> None:
        while running.is_set() and not BODIES:
            await asyncio.sleep(0.01)
        while running.is_set():
            taken.append(await store.claim("thief", lease_seconds=5, run_id=run_id))
            await asyncio.sleep(0.05)

    thread = threading.Thread(target=asyncio.run, args=(steal(),))
    thread.start()
    return [thread, taken]


def test_a_tool_that_blocks_the_event_loop_keeps_the_lease(tmp_path: Path) -> None:
    """The heartbeat renews on a thread of its own, so another worker cannot take the run
    over while a tool holds the loop for longer than the lease (and run the tool again)."""
    BODIES.clear()
    store = SQLiteStore(tmp_path / "runs.db")
    other = SQLiteStore(tmp_path / "runs.db")  # another worker's connection
    running = threading.Event()
    running.set()
    thread, taken = thieves(other, "b1", running)
    try:
        done = Runner(store=store, lease_seconds=0.6).run_sync(
            hogging(call("hog", seconds=2.0), say("ok")), "go", run_id="b1"
        )
    finally:
        running.clear()
        thread.join(timeout=10)
    assert done.status == "completed"
    assert len(BODIES) == 1
    assert len(taken) >= 10 and not any(taken), "another worker took the run over"
    for s in (store, other):
        asyncio.run(s.close())


def test_the_lease_outlives_dropped_connections_during_a_long_tool(schema: str) -> None:
    """PostgreSQL: every connection of the worker is dropped, twice, during a tool that takes
    longer than the lease; the heartbeat reconnects, the worker keeps its lease, nobody else
    takes the run, and the tool runs once."""
    import psycopg

    BODIES.clear()
    name = f"agentfsm_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(f"{DSN}?application_name={name}", schema=schema)
    other = PostgresStore(DSN, schema=schema)
    running = threading.Event()
    running.set()

    def cut() -> None:
        for _ in range(2):
            time.sleep(1.0)
            with psycopg.connect(DSN, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (name,),
                )

    asyncio.run(other.create(new_run("a", "go", run_id="p1")))
    cutter = threading.Thread(target=cut)
    cutter.start()
    thread, taken = thieves(other, "p1", running)
    try:
        done = Runner(store=store, lease_seconds=1.5).resume_sync(
            agent(call("slow", seconds=3.5), say("ok")), "p1"
        )
    finally:
        running.clear()
        cutter.join(timeout=10)
        thread.join(timeout=10)
    assert done.status == "completed"
    assert len(BODIES) == 1
    assert taken and not any(taken), "another worker took the run over"
    for s in (store, other):
        asyncio.run(s.close())
