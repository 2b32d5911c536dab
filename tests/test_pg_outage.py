"""Workers outlive PostgreSQL itself going away: the server is restarted, and later stopped for
20 s, while 4 ``agentfsm worker`` processes work through 200 runs, 100 of which wait for
approvals that this test posts (as a careful person would, deciding calls found in doubt by
whether their effect happened). Every worker is still alive afterwards and stops cleanly on
SIGTERM, every run completes, and no non-idempotent tool body runs twice.

This test stops the local PostgreSQL server (with ``pg_ctlcluster``, as root) and always
starts it again: in a ``finally``, in the fixture's teardown, and, should this process die
before either runs, from a watchdog process of its own. It is skipped when it may not do so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import DSN

from agentfsm import PostgresStore, StoreError, new_run
from tests.apps.notifier import agent
from tests.fleet import decide_waiting, effects_of, one_result_per_call, spawn, store_dsn

RUNS = 200
OUTAGE = 20.0  # seconds the server stays stopped

# Started in a session of its own (so a Ctrl-C at the terminal does not reach it), it waits
# until the test's process closes its stdin, by exiting or dying, then starts the server if
# it does not answer.
_WATCHDOG = """
import json, subprocess, sys, time
start, ready = json.loads(sys.argv[1])
sys.stdin.read()
deadline = time.monotonic() + 90
while subprocess.run(ready, capture_output=True).returncode != 0:
    if time.monotonic() > deadline:
        sys.exit(1)
    subprocess.run(start, capture_output=True)
    time.sleep(1)
"""


@dataclass(frozen=True)
class Cluster:
    """The local PostgreSQL cluster the tests' DSN points at."""

    version: str
    name: str
    host: str
    port: int

    def _ctl(self, action: str) -> list[str]:
        return ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action]

    def _ready(self) -> list[str]:
        return ["pg_isready", "-q", "-h", self.host, "-p", str(self.port), "-t", "2"]

    def answers(self) -> bool:
        return subprocess.run(self._ready(), capture_output=True, timeout=10).returncode == 0

    def restart(self) -> None:
        subprocess.run(self._ctl("restart"), check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        subprocess.run(self._ctl("stop"), check=True, capture_output=True, timeout=60)

    def bring_back(self) -> None:
        """Start the server unless it answers, and wait until it does. A Ctrl-C meanwhile
        waits until it is done, so that no interrupt leaves the server down."""
        with _interrupts_deferred():
            deadline = time.monotonic() + 60
            while not self.answers():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL on port {self.port} did not come back")
                subprocess.run(self._ctl("start"), capture_output=True, timeout=60)
                time.sleep(0.2)

    def watchdog(self) -> subprocess.Popen[str]:
        commands = json.dumps([self._ctl("start"), self._ready()])
        return subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, commands],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _local_cluster() -> Cluster | str:
    """The cluster serving the tests' DSN, or why this test may not stop and start it."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_isready") is None:
        return "pg_ctlcluster or pg_isready is not installed"
    if os.geteuid() != 0:
        return "stopping PostgreSQL with pg_ctlcluster needs root"
    target = urlsplit(DSN)
    host, port = target.hostname or "localhost", target.port or 5432
    if host not in ("127.0.0.1", "localhost", "::1"):
        return f"PostgreSQL at {host} is not local"
    listed = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30
    )
    for line in listed.stdout.splitlines():
        version, name, cluster_port, *_ = [*line.split(), "", "", ""]
        if cluster_port == str(port):
            return Cluster(version, name, host, port)
    return f"no local cluster listed by pg_lsclusters serves port {port}"


@pytest.fixture
def cluster(schema: str) -> Iterator[Cluster]:
    """The local cluster, for a test that stops it; it answers again after the test."""
    found = _local_cluster()
    if isinstance(found, str):
        pytest.skip(found)
    watchdog = found.watchdog()
    try:
        yield found
    finally:
        try:
            found.bring_back()
        finally:
            assert watchdog.stdin is not None
            watchdog.stdin.close()
            watchdog.wait(timeout=120)
    assert found.answers(), "PostgreSQL does not answer after the test"


def _stop(workers: list[subprocess.Popen[str]]) -> list[tuple[str, str]]:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    outputs = []
    for worker in workers:
        try:
            outputs.append(worker.communicate(timeout=30))
        except subprocess.TimeoutExpired:
            worker.kill()
            outputs.append(worker.communicate())
    return outputs


def test_workers_outlive_a_postgres_restart_and_outage_and_run_every_tool_once(
    cluster: Cluster, schema: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"

    async def create() -> None:
        async with PostgresStore(DSN, schema=schema) as store:
            for n in range(RUNS):
                context = {"approval": n % 2 == 0}
                await store.create(
                    new_run(agent(), "notify ada", run_id=f"pg-{n:03}", context=context)
                )

    asyncio.run(create())
    worker_args = ["worker", "--app", "tests.apps.notifier:agent", "--store", store_dsn(schema)]
    env = {"NOTIFIER_EFFECTS": str(effects)}
    workers = [spawn([*worker_args, "--lease", "3", "--poll", "0.05"], env) for _ in range(4)]
    faults: list[str] = []
    try:

        async def steer() -> list[str]:
            statuses: list[str] = []
            async with PostgresStore(DSN, schema=schema) as store:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        await decide_waiting(store, effects)
                        statuses = [s.status for s in await store.list()]
                    except StoreError:  # the server is coming back; the person waits too
                        await asyncio.sleep(0.2)
                        continue
                    done = statuses.count("completed")
                    if not faults and done >= 30:
                        await asyncio.to_thread(cluster.restart)
                        faults.append("restarted")
                    elif faults == ["restarted"] and done >= 70:
                        await asyncio.to_thread(cluster.stop)
                        faults.append("stopped")
                        await asyncio.sleep(OUTAGE)
                        await asyncio.to_thread(cluster.bring_back)
                    if done == RUNS:
                        return statuses
                    await asyncio.sleep(0.1)
            return statuses

        statuses = asyncio.run(steer())
        alive = [worker.poll() is None for worker in workers]
    finally:
        try:
            cluster.bring_back()
        finally:
            outputs = _stop(workers)
    errors = [err for _, err in outputs]
    assert faults == ["restarted", "stopped"], (faults, statuses.count("completed"))
    assert alive == [True] * 4, [err[-2000:] for err in errors]
    assert statuses.count("completed") == RUNS, statuses
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]
        assert "Traceback" not in err, err[-4000:]
        assert "unexpected error" not in err, err[-4000:]
        assert "stopped after advancing" in out
        # Every worker met the outage (looking for work, or inside a run, where it waits
        # the outage out: store_wait), and got over it.
        assert "the store fails, retrying" in err or "the store is unavailable, retrying" in err
        assert "the store answers again" in err
    sent = effects_of(effects)
    assert len(sent) == len(set(sent)) == RUNS, "every notify ran exactly once"

    async def check() -> None:
        async with PostgresStore(DSN, schema=schema) as store:
            for n in range(RUNS):
                state = await store.load(f"pg-{n:03}")
                assert state.final_output == "done", state.run_id
                one_result_per_call(state)

    asyncio.run(check())
