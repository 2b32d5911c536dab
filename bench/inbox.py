"""Inbox benchmarks: how soon an approval given over HTTP starts its tool in a worker process,
and how fast the inbox serves its page and its API list with 10,000 calls waiting.

Run with ``make bench`` (or ``.venv/bin/python bench/inbox.py``; ``--quick`` for fewer
approvals and calls). SQLite always; PostgreSQL too when ``AGENTFSM_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``) answers. Needs the web extra.

* approval to tool: ``agentfsm serve`` and ``agentfsm worker`` run as processes of their own
  on one store, both with a poll interval of 30 s, so only the store's change feed can wake
  them (PostgreSQL's LISTEN/NOTIFY, SQLite's change counter). For each of APPROVALS runs
  waiting for approval, the time from just before ``POST /api/runs/{id}/decisions`` is sent
  to the moment the tool's body starts in the worker (it sends the time in a UDP datagram).
  Between two approvals the worker is idle again, after a random pause (so that SQLite's
  polling of its change counter is met at any phase). Goals: a median of at most 50 ms on
  PostgreSQL, 250 ms on SQLite. Next to it, what the change feed alone takes: a commit by
  another connection, then the wake of a feed (SQLite: half its 50 ms polling on average).
* the inbox page and the API list: ``GET /`` (HTML, 25 calls a page) and ``GET
  /api/approvals`` (JSON, 50 a page), the first page and one half-way through the list,
  with CALLS calls waiting, through httpx's ASGI transport (the app's own cost, without a
  network). Goal: at most 100 ms a page.

The worker imports this file as the module ``inbox`` (``--app inbox:agent``, with bench/ on
its path): ``agent`` and its tool are defined here.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from agentfsm import Agent, Runner, RunState, Store, ToolContext, new_run, tool
from agentfsm.testing import ScriptedModel, call, say

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUICK = "--quick" in sys.argv
APPROVALS = 10 if QUICK else 30
CALLS = 10_000
POLL = "30"
PG_DSN = os.environ.get("AGENTFSM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
TOKEN = "bench-token-0123456789abcdef"
ADA = {"Authorization": f"Bearer {TOKEN}"}


@tool(needs_approval=True)
def stamp(note: str, ctx: ToolContext) -> str:
    """Tell the bench when the body starts: a datagram of the run id and the time."""
    now = time.time()
    port = int(os.environ.get("BENCH_INBOX_PORT", "0"))
    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(f"{ctx.run_id} {now!r}".encode(), ("127.0.0.1", port))
    return "stamped"


def agent() -> Agent:
    model = ScriptedModel([call("stamp", note="why: the bench asked"), say("done")])
    return Agent("bench", "You stamp.", model, tools=[stamp])


# -- approval to tool --------------------------------------------------------------------------


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentfsm", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def first_line(process: subprocess.Popen[str], seconds: float = 30) -> str:
    assert process.stdout is not None
    if not select.select([process.stdout], [], [], seconds)[0]:
        process.kill()
        raise RuntimeError(f"no output within {seconds} s: {process.communicate()}")
    return process.stdout.readline()


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


async def until(store: Store, run_ids: list[str], status: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    for run_id in run_ids:
        while (await store.load(run_id)).status.value != status:
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} not {status} within {seconds} s")
            await asyncio.sleep(0.01)


def ms(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))] * 1e3


async def approval_latency(name: str, dsn: str, store: Store, goal_ms: float) -> None:
    import httpx

    with tempfile.TemporaryDirectory() as directory:
        tokens = Path(directory) / "tokens"
        tokens.write_text(f"ada {TOKEN}\n")
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        env = {"BENCH_INBOX_PORT": str(receiver.getsockname()[1])}
        store_args = ["--store", dsn, "--poll", POLL]
        serve = spawn(
            ["serve", "--app", "inbox:agent", "--tokens", str(tokens), "--port", "0", *store_args],
            env,
        )
        worker = spawn(["worker", "--app", "inbox:agent", *store_args], env)
        try:
            base = first_line(serve).split(" at ", 1)[1].strip().rstrip("/")
            if not first_line(worker).startswith("worker "):
                raise RuntimeError("the worker did not start")
            run_ids = [f"lat-{n:03d}" for n in range(APPROVALS)]
            for run_id in run_ids:
                await store.create(new_run(agent(), "stamp", run_id=run_id))
            await until(store, run_ids, "interrupted")
            loop = asyncio.get_running_loop()
            posts, latencies = [], []
            async with httpx.AsyncClient(base_url=base, headers=ADA, timeout=30) as http:
                await http.get("/api/me")  # the connection is open before the first sample
                for run_id in run_ids:
                    (request,) = (await store.load(run_id)).interruptions
                    await asyncio.sleep(random.uniform(0.05, 0.15))
                    body = {
                        "call_id": request.call_id,
                        "digest": request.digest,
                        "action": "approve",
                    }
                    sent = time.time()
                    answer = await http.post(f"/api/runs/{run_id}/decisions", json=body)
                    posts.append(time.time() - sent)
                    if answer.status_code != 201:
                        raise RuntimeError(f"the decision was refused: {answer.text}")
                    data = await asyncio.wait_for(loop.sock_recv(receiver, 4096), 30)
                    stamped_run, started = data.decode().split()
                    assert stamped_run == run_id, (stamped_run, run_id)
                    latencies.append(float(started) - sent)
                    await until(store, [run_id], "completed")
        finally:
            stop(worker)
            stop(serve)
            receiver.close()
    median = statistics.median(latencies) * 1e3
    print(f"{name}: approval over HTTP to the tool's body in a worker process, {APPROVALS} runs")
    print(
        f"  latency   median {median:6.1f} ms  p95 {ms(latencies, 0.95):6.1f} ms  "
        f"best {min(latencies) * 1e3:5.1f} ms  worst {max(latencies) * 1e3:6.1f} ms"
    )
    print(
        f"  (of which the HTTP POST: median {statistics.median(posts) * 1e3:.1f} ms, "
        f"p95 {ms(posts, 0.95):.1f} ms)"
    )
    verdict = "met" if median <= goal_ms else "MISSED"
    print(f"  goal: a median of at most {goal_ms:g} ms: {verdict}")


async def feed_delivery(name: str, watched: Store, other: Store) -> None:
    """Where the latency goes: a change committed through another connection (``other``,
    as another process would) to the wake of a feed on ``watched``, next to what the commit
    alone takes."""
    commits, wakes = [], []
    async with watched.changes() as feed:
        for n in range(APPROVALS):
            await asyncio.sleep(random.uniform(0.02, 0.08))
            began = time.perf_counter()
            await other.create(new_run(agent(), "stamp", run_id=f"feed-{n:03d}"))
            committed = time.perf_counter()
            if not await feed.wait(10):
                raise RuntimeError("the feed told of nothing within 10 s")
            woke = time.perf_counter()
            commits.append(committed - began)
            wakes.append(woke - committed)
    print(
        f"  (the change feed alone: a commit by another connection "
        f"{statistics.median(commits) * 1e3:.1f} ms, then the feed's wake "
        f"{statistics.median(wakes) * 1e3:.1f} ms, medians)"
    )


# -- the inbox page and the API list -----------------------------------------------------------


async def waiting_template() -> RunState:
    state = (await Runner().run(agent(), "stamp", run_id="template")).state
    assert state.interruptions
    return state


async def populate(store: Store, calls: int) -> None:
    template = await waiting_template()
    batch = []
    for n in range(calls):
        batch.append(store.create(msgspec.structs.replace(template, run_id=f"w{n:06d}")))
        if len(batch) == 64:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)


async def pages(name: str, store: Store) -> None:
    import httpx

    from agentfsm.web import create_app

    started = time.perf_counter()
    await populate(store, CALLS)
    print(f"{name}: {CALLS:,} calls waiting (stored in {time.perf_counter() - started:.0f} s)")
    app = create_app(store, auth={TOKEN: "ada"}, agent=agent())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://inbox") as http:
        answer = await http.post("/login", data={"token": TOKEN, "next": "/"})
        assert answer.status_code == 303, answer.text
        half = (await store.waiting(limit=1000)).next
        for _ in range(CALLS // 2000 - 1):
            half = (await store.waiting(limit=1000, after=half)).next
        assert half is not None
        worst = 0.0
        for label, path, headers in (
            ("inbox page (HTML), first", "/", {}),
            ("inbox page (HTML), half-way", f"/?after={half}", {}),
            ("API list (JSON), first", "/api/approvals", ADA),
            ("API list (JSON), half-way", f"/api/approvals?after={half}", ADA),
        ):
            samples = []
            for _ in range(30):
                began = time.perf_counter()
                answer = await http.get(path, headers=headers)
                samples.append(time.perf_counter() - began)
                assert answer.status_code == 200, answer.text[:300]
            median = statistics.median(samples)
            worst = max(worst, median)
            print(
                f"  {label:30} median {median * 1e3:6.1f} ms  p95 {ms(samples, 0.95):6.1f} ms"
                f"  ({len(answer.content):,} bytes)"
            )
    print(f"  goal: at most 100 ms a page: {'met' if worst <= 0.1 else 'MISSED'}")


async def main() -> None:
    from agentfsm import PostgresStore, SQLiteStore

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.db"
        async with SQLiteStore(path) as store, SQLiteStore(path) as other:
            await approval_latency("SQLite", str(path), store, goal_ms=250)
            await feed_delivery("SQLite", store, other)
        async with SQLiteStore(Path(directory) / "pages.db") as store:
            await pages("SQLite", store)
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=2):
            pass
    except Exception as exc:
        print(f"PostgreSQL: skipped ({type(exc).__name__}: {exc})")
        return
    for purpose in ("latency", "pages"):
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        dsn = f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}agentfsm_schema={schema}"
        try:
            async with (
                PostgresStore(PG_DSN, schema=schema, max_size=8) as store,
                PostgresStore(PG_DSN, schema=schema) as other,
            ):
                if purpose == "latency":
                    await approval_latency("PostgreSQL", dsn, store, goal_ms=50)
                    await feed_delivery("PostgreSQL", store, other)
                else:
                    await pages("PostgreSQL", store)
        finally:
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    asyncio.run(main())
