"""Workers in processes of their own, woken by the store's change feed: a run created and an
approval posted from another process start their work at once, though the worker's poll
interval is 30 s. Every wait below is bounded well under that, so these pass only through
the notifications: PostgreSQL's LISTEN/NOTIFY (also after its connection was cut), SQLite's
change counter, and the inbox's web API on PostgreSQL with its live events. The PostgreSQL
tests skip when the server does not answer."""

from __future__ import annotations

import asyncio
import select
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import DSN

from agentfsm import PostgresStore, Store, new_run
from tests.apps.mailer import agent as mailer
from tests.fleet import effects_of, spawn, store_dsn, store_of
from tests.tcp_proxy import Proxy

#: The worker's poll interval: no wait of these tests comes near it.
POLL = "30"

#: How long a step may take to be seen: generous for a loaded machine, far under POLL.
BOUND = 12.0


def started(worker: subprocess.Popen[str]) -> subprocess.Popen[str]:
    """``worker`` once it says it started (it then looks for work, finds none, and waits)."""
    assert worker.stdout is not None
    ready, _, _ = select.select([worker.stdout], [], [], 30)
    if not ready:
        worker.kill()
        raise AssertionError(f"the worker did not start: {worker.communicate()}")
    line = worker.stdout.readline()
    assert line.startswith("worker "), (line, worker.communicate())
    return worker


def stopped(worker: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM ``worker``; its exit status and stderr. A worker waiting on its feed stops at
    once (not after its poll interval)."""
    worker.send_signal(signal.SIGTERM)
    try:
        _, err = worker.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        worker.kill()
        _, err = worker.communicate()
        raise AssertionError(f"the worker did not stop within {BOUND} s: {err}") from None
    return worker.returncode, err


async def until(store: Store, run_id: str, status: str, what: str) -> None:
    async def reached() -> None:
        while True:
            try:
                if (await store.load(run_id)).status.value == status:
                    return
            except Exception:  # not created yet
                pass
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(reached(), BOUND)
    except TimeoutError:
        raise AssertionError(f"{what}: run {run_id} not {status} within {BOUND} s") from None


async def created_then_approved(store: Store, run_id: str) -> None:
    """Create a run, wait for it to ask for approval, approve it, wait for the end."""
    await store.create(new_run(mailer(), "mail ada", run_id=run_id))
    await until(store, run_id, "interrupted", "a run created in another process")
    state = await store.load(run_id)
    await store.approve(run_id, state.interruptions[0], by="ada")
    await until(store, run_id, "completed", "an approval posted from another process")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_worker_process_starts_an_approved_tool_at_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    dsn, open_store = store_of(kind, request, tmp_path)
    effects = tmp_path / "effects.txt"
    env = {"MAILER_EFFECTS": str(effects)}
    args = ["worker", "--app", "tests.apps.mailer:agent", "--store", dsn, "--poll", POLL]
    worker = started(spawn(args, env))
    try:

        async def steer() -> None:
            async with open_store() as store:
                for n in range(3):
                    await created_then_approved(store, f"run-{n}")

        asyncio.run(steer())
    finally:
        status, err = stopped(worker)
    assert status == 0, err
    assert len(effects_of(effects)) == 3


def test_a_worker_cut_off_from_postgres_hears_again_once_reconnected(
    schema: str, proxy: Proxy, tmp_path: Path
) -> None:
    port = urlsplit(DSN).port or 5432
    dsn = DSN.replace(f":{port}/", f":{proxy.port}/") + f"?agentfsm_schema={schema}"
    args = ["worker", "--app", "tests.apps.mailer:agent", "--store", dsn, "--poll", POLL]
    worker = started(spawn(args, {"MAILER_EFFECTS": str(tmp_path / "effects.txt")}))
    try:

        async def steer() -> None:
            async with PostgresStore(DSN, schema=schema) as store:
                await created_then_approved(store, "before")
                proxy.cut()  # the worker's connections, its listener's among them, drop
                await store.create(new_run(mailer(), "mail ada", run_id="meanwhile"))
                await asyncio.sleep(1)
                proxy.restore()
                # The listener reconnects, tells the worker that anything may have changed,
                # and the run created while it was away is taken up.
                await until(store, "meanwhile", "interrupted", "a run created while cut off")
                state = await store.load("meanwhile")
                await store.approve("meanwhile", state.interruptions[0])
                await until(store, "meanwhile", "completed", "an approval after reconnecting")
                await created_then_approved(store, "after")

        asyncio.run(steer())
    finally:
        status, err = stopped(worker)
    assert status == 0, err


def test_the_inbox_flow_on_postgres_with_the_worker_woken_by_notification(
    schema: str, tmp_path: Path
) -> None:
    """A run started through the web API, run to its approval by a worker process, approved
    over HTTP, and completed: the worker and the inbox's live events are woken by
    notifications (both poll every 30 s)."""
    pytest.importorskip("starlette", reason="the inbox needs the web extra")
    from agentfsm.web import create_app
    from tests.apps.inbox_app import agent as accountant
    from tests.inboxkit import ADA, TOKENS, Stream, client

    args = ["worker", "--app", "tests.apps.inbox_app:agent", "--store", store_dsn(schema)]
    worker = started(spawn([*args, "--poll", POLL], {}))
    try:

        async def flow() -> None:
            async with PostgresStore(DSN, schema=schema) as store:
                app = create_app(store, auth=TOKENS, agent=accountant(), poll_interval=30)
                async with client(app) as http:
                    answer = await http.post("/api/runs", headers=ADA, json={"input": "pay"})
                    assert answer.status_code == 201, answer.text
                    run_id = answer.json()["run_id"]
                    events = f"/api/runs/{run_id}/events?after=0"
                    async with Stream(app, events, ADA) as stream:
                        asked = await stream.take("approval_requested", BOUND)
                        request = asked[-1]["data"]["request"]
                        assert request["tool"] == "pay"
                        [waiting] = (await http.get("/api/approvals", headers=ADA)).json()["calls"]
                        assert waiting["request"]["call_id"] == request["call_id"]
                        decided = await http.post(
                            f"/api/runs/{run_id}/decisions",
                            headers=ADA,
                            json={
                                "call_id": request["call_id"],
                                "digest": request["digest"],
                                "action": "approve",
                            },
                        )
                        assert decided.status_code == 201, decided.text
                        finished = await stream.take("run_finished", BOUND)
                    assert finished[-1]["data"]["output"] == "Paid."
                    shown = (await http.get(f"/api/runs/{run_id}", headers=ADA)).json()
                    assert shown["status"] == "completed"
                    [record] = shown["decisions"]
                    assert record["decision"]["by"] == "ada"
                    assert record["outcome"] == "applied"

        asyncio.run(asyncio.wait_for(flow(), 60))
    finally:
        status, err = stopped(worker)
    assert status == 0, err
