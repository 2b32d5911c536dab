"""``agentfsm run``, ``resume`` and ``worker`` stopped by SIGINT or SIGTERM, as real
processes: the first signal lets the running tool finish and keeps its result, the second
exits at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentfsm._cli import ExitCode

ROOT = Path(__file__).resolve().parent.parent
APP = ["--app", "tests.apps.sleeper:agent"]


def agentfsm(tmp_path: Path, *args: str, seconds: float = 2) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentfsm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "AGENTFSM_STORE": str(tmp_path / "runs.db"),
            "SLEEPER_EFFECTS": str(tmp_path / "effects.txt"),
            "SLEEPER_SECONDS": str(seconds),
        },
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def effects(tmp_path: Path) -> list[str]:
    path = tmp_path / "effects.txt"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def when_the_tool_runs(tmp_path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while "started" not in effects(tmp_path):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the tool did not start within 30 s"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, ExitCode.KEYBOARD_INTERRUPT), (signal.SIGTERM, ExitCode.TERMINATED)],
)
@pytest.mark.parametrize("command", ["run", "resume"])
def test_a_signal_stops_the_run_after_the_running_tool_and_keeps_its_result(
    tmp_path: Path, sig: signal.Signals, code: ExitCode, command: str
) -> None:
    if command == "resume":  # a stored run that has not started yet
        created = agentfsm(tmp_path, "run", *APP, "go", "--run-id", "s1", "--max-turns", "0")
        assert finished(created)[0] == ExitCode.FAILED
        process = agentfsm(tmp_path, "resume", "s1", *APP, "--max-turns", "5")
    else:
        process = agentfsm(tmp_path, "run", *APP, "go", "--run-id", "s1")
    when_the_tool_runs(tmp_path, process)
    process.send_signal(sig)
    sent = time.monotonic()
    returncode, out, err = finished(process)
    assert time.monotonic() - sent < 10  # the tool's 2 s, and the step saved
    assert returncode == code == 128 + sig
    assert err == (
        f"agentfsm: stopped run s1 after its current step ({sig.name}); "
        "`agentfsm resume s1 --app tests.apps.sleeper:agent` continues it\n"
    )
    assert "status:  running" in out
    assert effects(tmp_path) == ["started", "done"]  # it ran once, to the end

    shown = subprocess.run(
        [sys.executable, "-m", "agentfsm", "runs", "show", "s1", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENTFSM_STORE": str(tmp_path / "runs.db")},
        timeout=60,
        check=True,
    )
    run = json.loads(shown.stdout)
    assert run["status"] == "running"
    assert [i["output"] for i in run["items"] if i["type"] == "tool_result"] == ["rested"]

    # The lease was released: resuming at once works, and runs nothing again.
    returncode, out, err = finished(agentfsm(tmp_path, "resume", "s1", *APP))
    assert (returncode, err) == (ExitCode.OK, "")
    assert "status:  completed" in out
    assert effects(tmp_path) == ["started", "done"]


def test_a_second_signal_exits_at_once_leaving_the_call_in_doubt(tmp_path: Path) -> None:
    process = agentfsm(tmp_path, "run", *APP, "go", "--run-id", "s2", seconds=60)
    when_the_tool_runs(tmp_path, process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    returncode, out, err = finished(process)
    assert time.monotonic() - sent < 5, "it waited for the tool"
    assert returncode == ExitCode.KEYBOARD_INTERRUPT
    assert err.startswith("agentfsm: stopped run s2 at once (SIGINT); a call that was running ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""
    assert effects(tmp_path) == ["started"]


def test_a_second_signal_stops_a_worker_at_once(tmp_path: Path) -> None:
    import asyncio

    from agentfsm import SQLiteStore, new_run
    from tests.apps.sleeper import agent

    async def create() -> None:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            await store.create(new_run(agent(), "go", run_id="w1"))

    asyncio.run(create())
    # The tool sleeps far longer than finished() waits: only exiting at once gets done.
    process = agentfsm(tmp_path, "worker", *APP, seconds=600)
    try:
        when_the_tool_runs(tmp_path, process)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        returncode, out, err = finished(process)
    finally:
        process.kill()
    assert returncode == ExitCode.TERMINATED
    assert err.startswith("agentfsm: worker ") and " stopped at once (SIGTERM); " in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out.startswith("worker ") and out.count("\n") == 1  # "started", and nothing after
    assert effects(tmp_path) == ["started"]
