"""A worker frozen with SIGSTOP while it runs a run, and continued after another worker took
the run over: what the engine promises, with real ``agentfsm worker`` processes on one SQLite
file and 2 s leases.

Worker A freezes itself (tests/apps/zombie.py) at a point the test picks; its lease runs out;
worker B takes the run over and finds the non-idempotent call in doubt; a careful person
approves it, since its effect did not happen; B runs it and completes the run; then A is
continued (SIGCONT). Either way the run ends with exactly one recorded result for the call,
B's, the effect happens exactly once, and A's late write of the run is refused (fenced).

- Frozen before the tool body starts (the call recorded as started, its body not begun): A
  does not start the body after it is continued, because its lease check, by its own
  monotonic clock, fails. The body runs once overall.
- Frozen in the middle of the body: no engine can stop a body that already started, so the
  body runs on in A. The engine's promise there is the fencing token it passes the tool
  (``ToolContext.fencing_token``): the service, which refuses a token lower than the highest
  it has seen, refuses A's late charge, so the effect still happens once.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentfsm import RunState, SQLiteStore, ToolResultItem, new_run
from tests.apps.zombie import agent
from tests.fleet import (
    decide_waiting,
    effects_of,
    one_result_per_call,
    spawn,
    stop,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads whether a process is stopped from /proc"
)

RUN = "zombie"


@dataclass
class Ending:
    state: RunState
    reasons: list[str]  # why the run waited, each time the person looked
    started: list[tuple[str, int]]  # (idempotency key, fencing token) of each body started
    effects: list[str]
    refused: list[int]  # the fencing tokens the service refused
    a_err: str
    b_err: str


def _stopped(process: subprocess.Popen[str]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"worker A exited ({process.returncode}) instead of freezing")
    stat = Path(f"/proc/{process.pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _freeze_and_take_over(tmp_path: Path, freeze: str) -> Ending:
    """A freezes at ``freeze``, B finishes the run, then A is continued; returns once A has
    given the run up (its stderr says why), and both workers stopped."""
    db = tmp_path / "runs.db"
    effects = tmp_path / "effects.txt"

    async def create() -> None:
        async with SQLiteStore(db) as store:
            await store.create(new_run(agent(), "charge ada 5 euros", run_id=RUN))

    asyncio.run(create())
    args = ["worker", "--app", "tests.apps.zombie:agent", "--store", str(db)]
    args += ["--lease", "2", "--poll", "0.05"]
    env = {"ZOMBIE_DIR": str(tmp_path)}
    logs = {name: (tmp_path / f"{name}.out", tmp_path / f"{name}.err") for name in ("a", "b")}
    opened = [path.open("w") for pair in logs.values() for path in pair]
    a = spawn(args, {**env, "ZOMBIE_FREEZE": freeze}, stdout=opened[0], stderr=opened[1])
    workers = [a]
    reasons: list[str] = []
    try:
        wait_until(lambda: _stopped(a), 30, f"worker A to freeze {freeze}")
        b = spawn(args, env, stdout=opened[2], stderr=opened[3])
        workers.append(b)

        async def decide_until_completed() -> None:
            async with SQLiteStore(db) as store:
                for _ in range(3000):  # 30 s
                    state = await store.load(RUN)
                    if state.status.value == "completed":
                        return
                    reasons.extend(r.reason for r in state.interruptions)
                    await decide_waiting(store, effects)
                    await asyncio.sleep(0.01)
                raise AssertionError(f"run {RUN} did not complete: {state.status.value}")

        asyncio.run(decide_until_completed())
        assert _stopped(a), "A stayed frozen while B finished the run"
        a.send_signal(signal.SIGCONT)
        gave_up = "gave it up"  # how a worker logs a run it had to leave
        wait_until(lambda: gave_up in logs["a"][1].read_text(), 30, "A to give the run up")
    finally:
        stop(workers, thaw=True)
        for file in opened:
            file.close()
    for name, worker in zip("ab", workers, strict=True):
        err = logs[name][1].read_text()
        assert worker.returncode == 0, f"worker {name}: {err[-2000:]}"
        assert "Traceback" not in err, f"worker {name}: {err[-4000:]}"
        assert "stopped after advancing" in logs[name][0].read_text()

    async def final() -> RunState:
        async with SQLiteStore(db) as store:
            return await store.load(RUN)

    started = [line.split()[1:] for line in _lines(tmp_path / "started.txt")]
    return Ending(
        state=asyncio.run(final()),
        reasons=reasons,
        started=[(key, int(token)) for key, token in started],
        effects=effects_of(effects),
        refused=[int(token) for token in _lines(tmp_path / "refused.txt")],
        a_err=logs["a"][1].read_text(),
        b_err=logs["b"][1].read_text(),
    )


def _one_result_b_gave(ending: Ending) -> None:
    state = ending.state
    assert state.status.value == "completed"
    assert state.final_output == "done"
    one_result_per_call(state)
    results = [i for i in state.items if isinstance(i, ToolResultItem)]
    assert [r.output for r in results] == ["charged 5"]
    assert "in_doubt" in ending.reasons, "B found the call in doubt"
    keys = {key for key, _ in ending.started}
    assert len(keys) == 1, "every start of the body was the one call"
    assert ending.effects == [*keys], "the charge took effect exactly once"


def test_a_worker_frozen_before_the_tool_body_does_not_start_it_when_continued(
    tmp_path: Path,
) -> None:
    ending = _freeze_and_take_over(tmp_path, "before-body")
    _one_result_b_gave(ending)
    assert len(ending.started) == 1, "the body started once overall: in B, never in A"
    assert ending.refused == [], "A never reached the service: its own lease check stopped it"
    assert "the lease may have run out" in ending.a_err
    assert "call_0_0 did not start" in ending.a_err


def test_a_worker_frozen_mid_tool_body_is_fenced_by_the_service_and_the_store(
    tmp_path: Path,
) -> None:
    ending = _freeze_and_take_over(tmp_path, "mid-body")
    _one_result_b_gave(ending)
    # The body had begun in A, so it ran on when A was continued: the engine cannot stop it.
    (a_key, a_token), (b_key, b_token) = ending.started
    assert a_key == b_key
    assert a_token < b_token, "B's lease fences A's"
    assert ending.refused == [a_token], "the service refused A's late charge"
    # A's late result is not recorded either: the store refused its write.
    assert "is no longer held" in ending.a_err
