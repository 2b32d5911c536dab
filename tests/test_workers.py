"""Many workers on one PostgreSQL store, as separate processes: every run completes exactly
once, no tool runs twice, a dead worker's runs are taken over, and racing resumers do not
fork a run. Skipped when PostgreSQL does not answer."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import DSN

from agentfsm import PostgresStore, Runner, RunState, new_run
from tests.apps.mailer import agent
from tests.fleet import decide_waiting, effects_of, one_result_per_call, store_dsn, store_of
from tests.fleet import spawn as spawn_agentfsm

APP = ["--app", "tests.apps.mailer:agent"]


def spawn(args: list[str], effects: Path) -> subprocess.Popen[str]:
    return spawn_agentfsm(args, {"MAILER_EFFECTS": str(effects)})


def test_four_workers_finish_200_runs_exactly_once_though_one_is_killed(
    schema: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    dsn = store_dsn(schema)

    async def create() -> None:
        async with PostgresStore(DSN, schema=schema) as store:
            for n in range(200):
                await store.create(new_run(agent(), "mail ada", run_id=f"run-{n:03}"))

    asyncio.run(create())
    worker_args = ["worker", *APP, "--store", dsn, "--lease", "2", "--poll", "0.05"]
    workers = [spawn(worker_args, effects) for _ in range(4)]
    killed = False
    try:

        async def steer() -> list[str]:
            nonlocal killed
            async with PostgresStore(DSN, schema=schema) as store:
                deadline = time.monotonic() + 150
                while time.monotonic() < deadline:
                    await decide_waiting(store, effects)
                    statuses = [s.status for s in await store.list()]
                    if not killed and statuses.count("completed") >= 60:
                        workers[0].send_signal(signal.SIGKILL)
                        killed = True
                    if statuses.count("completed") == 200:
                        return statuses
                    await asyncio.sleep(0.1)
                return statuses

        statuses = asyncio.run(steer())
    finally:
        for worker in workers[1:]:
            worker.send_signal(signal.SIGTERM)
        outputs = [worker.communicate(timeout=30) for worker in workers]
    assert killed
    assert statuses.count("completed") == 200, statuses
    assert workers[0].returncode == -signal.SIGKILL
    for worker, (out, err) in zip(workers[1:], outputs[1:], strict=True):
        assert worker.returncode == 0, err
        assert "stopped after advancing" in out
    sent = effects_of(effects)
    assert len(sent) == len(set(sent)) == 200, "every send ran exactly once"

    async def check() -> None:
        async with PostgresStore(DSN, schema=schema) as store:
            for n in range(200):
                state = await store.load(f"run-{n:03}")
                one_result_per_call(state)

    asyncio.run(check())


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_eight_processes_racing_to_resume_one_run_advance_it_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    dsn, open_store = store_of(kind, request, tmp_path)

    async def prepare() -> int:
        async with open_store() as store:
            paused = await Runner(store=store).run(agent(), "mail ada", run_id="race")
            await store.approve("race", paused.interruptions[0])
            return paused.state.version

    paused_version = asyncio.run(prepare())
    racers = [spawn(["resume", "race", *APP, "--store", dsn], effects) for _ in range(8)]
    outputs = [racer.communicate(timeout=60) for racer in racers]
    results = [
        (racer.returncode, out, err) for racer, (out, err) in zip(racers, outputs, strict=True)
    ]
    for code, _, err in results:
        assert "Traceback" not in err
        assert code == 0 or "being run by another worker" in err, err
    assert any(code == 0 for code, _, _ in results)
    assert len(effects_of(effects)) == 1, "the approved call ran once"

    async def final() -> RunState:
        async with open_store() as store:
            return await store.load("race")

    state = asyncio.run(final())
    assert state.status.value == "completed"
    one_result_per_call(state)
    # One advance from the pause: approvals, the tool, the model's answer; nothing twice.
    solo = Runner().run_sync(agent(), "mail ada", run_id="race")
    approved = solo.state.approve(solo.interruptions[0].call_id)
    alone = Runner().run_sync(agent(), approved)
    assert state.version - paused_version == alone.state.version - approved.version


def test_workers_outlive_a_cut_network_and_finish_every_run_once(
    schema: str, tmp_path: Path
) -> None:
    """The network to PostgreSQL is cut twice (every connection dropped, new ones refused
    for 3 s) while 3 workers process 60 runs that need approvals from another process."""
    from urllib.parse import urlsplit

    from tests.tcp_proxy import proxy_to

    effects = tmp_path / "effects.txt"
    target = urlsplit(DSN)

    async def create() -> None:
        async with PostgresStore(DSN, schema=schema) as store:
            for n in range(60):
                await store.create(new_run(agent(), "mail ada", run_id=f"cut-{n:02}"))

    asyncio.run(create())
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        through = DSN.replace(f":{target.port or 5432}/", f":{proxy.port}/")
        worker_args = ["worker", *APP, "--store", f"{through}?agentfsm_schema={schema}"]
        workers = [
            spawn([*worker_args, "--lease", "2", "--poll", "0.05"], effects) for _ in range(3)
        ]
        cuts = 0
        try:

            async def steer() -> list[str]:
                nonlocal cuts
                async with PostgresStore(DSN, schema=schema) as store:  # not through the proxy
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        await decide_waiting(store, effects)
                        statuses = [s.status for s in await store.list()]
                        done = statuses.count("completed")
                        if cuts < 2 and done >= 15 * (cuts + 1):
                            proxy.cut()
                            cuts += 1
                            await asyncio.sleep(3)
                            proxy.restore()
                        if done == 60:
                            return statuses
                        await asyncio.sleep(0.1)
                    return statuses

            statuses = asyncio.run(steer())
            alive = [worker.poll() is None for worker in workers]
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            outputs = [worker.communicate(timeout=30) for worker in workers]
    assert cuts == 2
    assert alive == [True, True, True], [err for _, err in outputs]
    assert any("retrying" in err for _, err in outputs), "no worker met the cut"
    assert statuses.count("completed") == 60, statuses
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    sent = effects_of(effects)
    assert len(sent) == len(set(sent)) == 60, "every send ran exactly once"
