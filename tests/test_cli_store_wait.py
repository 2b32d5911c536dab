"""The CLI against a PostgreSQL store whose network is cut, as real processes: a command
waits out a short cut (``--store-wait``, default 30 s) and does what was asked; a cut longer
than the wait ends it with one line and exit status 1, having changed nothing.

Skipped when PostgreSQL does not answer."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from conftest import DSN

from agentfsm import PostgresStore, Runner
from agentfsm._cli import ExitCode
from tests.apps.mailer import agent
from tests.tcp_proxy import Proxy

ROOT = Path(__file__).resolve().parent.parent


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentfsm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "AGENTFSM_STORE"},
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def through_cut(proxy: Proxy, seconds: float, *args: str) -> tuple[int, str, str]:
    """Run the command while the network is cut, restoring it after ``seconds``."""
    proxy.cut()
    restore = threading.Timer(seconds, proxy.restore)
    restore.start()
    refused = proxy.refused
    try:
        process = spawn(*args)
        done = finished(process)
    finally:
        restore.cancel()
        proxy.restore()
    assert proxy.refused > refused, "the command did not meet the cut"
    return done


def direct(schema: str) -> PostgresStore:
    return PostgresStore(DSN, schema=schema)


def pause(schema: str) -> tuple[str, str]:
    """A run of the mailer waiting for a decision on its send: (call id, digest)."""

    async def main() -> tuple[str, str]:
        async with direct(schema) as store:
            paused = await Runner(store=store).run(agent(), "mail ada", run_id="m")
            request = paused.interruptions[0]
            return request.call_id, request.digest

    return asyncio.run(main())


def test_commands_wait_out_a_short_cut_and_do_what_was_asked(schema: str, proxy: Proxy) -> None:
    call_id, digest = pause(schema)
    port = urlsplit(DSN).port or 5432
    store = ["--store", f"{DSN.replace(f':{port}/', f':{proxy.port}/')}?agentfsm_schema={schema}"]

    code, out, err = through_cut(proxy, 2, "runs", "list", *store)
    assert (code, err) == (ExitCode.OK, "")
    assert "m" in out.split() and "interrupted" in out

    approve = ["approve", "m", call_id, "--digest", digest, "--as", "ada", *store]
    code, out, err = through_cut(proxy, 2, *approve)
    assert (code, err) == (ExitCode.OK, "")
    assert out.startswith(f"approved {call_id} of run m, as ada")

    code, out, err = through_cut(
        proxy, 2, "resume", "m", "--app", "tests.apps.mailer:agent", *store
    )
    assert code == ExitCode.OK, err
    assert "status:  completed" in out


def test_a_cut_longer_than_the_wait_is_one_line_and_exit_1_and_changes_nothing(
    schema: str, proxy: Proxy
) -> None:
    call_id, digest = pause(schema)
    port = urlsplit(DSN).port or 5432
    store = ["--store", f"{DSN.replace(f':{port}/', f':{proxy.port}/')}?agentfsm_schema={schema}"]
    approve = ["approve", "m", call_id, "--digest", digest, "--as", "ada", *store]

    for command in (["runs", "list", *store], approve):
        code, out, err = through_cut(proxy, 60, *command, "--store-wait", "1")
        assert code == ExitCode.ERROR
        assert out == ""
        assert err.startswith("agentfsm: error: ") and err.count("\n") == 1, err
        assert "gave up after" in err and "Traceback" not in err

    async def unchanged() -> None:
        async with direct(schema) as store:
            state = await store.load("m")
            assert state.status.value == "interrupted"
            assert (await store.inbox("m")).ids == ()  # the approval was not half posted

    asyncio.run(unchanged())
    code, out, err = finished(spawn(*approve))  # the network is back: it goes on
    assert (code, err) == (ExitCode.OK, "")
    code, out, err = finished(spawn("resume", "m", "--app", "tests.apps.mailer:agent", *store))
    assert code == ExitCode.OK, err
    assert "status:  completed" in out
