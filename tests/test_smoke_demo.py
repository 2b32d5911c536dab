"""The README's demo, end to end: each step is a separate process of the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import agentfsm


def _demo(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agentfsm",
            "demo",
            "--store",
            str(tmp_path / "runs.db"),
            "--state-file",
            str(tmp_path / "s.json"),
            *flags,
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )


def test_demo_pauses_then_approves_and_resumes_in_other_processes(tmp_path: Path) -> None:
    done = _demo(tmp_path)
    assert done.returncode == 0, done.stderr
    assert ": interrupted" in done.stdout
    assert "waiting for a decision:" in done.stdout
    assert "approved call_1_0" in done.stdout
    assert "refunded 249.00 EUR on order A-1001" in done.stdout
    assert "status:  completed" in done.stdout
    saved = agentfsm.RunState.from_json((tmp_path / "s.json").read_text())
    assert saved.status is agentfsm.RunStatus.INTERRUPTED


def test_demo_with_reject_tells_the_model_and_never_runs_the_refund(tmp_path: Path) -> None:
    done = _demo(tmp_path, "--reject")
    assert done.returncode == 0, done.stderr
    assert "rejected call_1_0" in done.stdout
    assert "refunded 249.00" not in done.stdout
    assert "A reviewer declined this refund." in done.stdout
    assert "status:  completed" in done.stdout


def test_demo_without_a_store_hands_the_state_over_in_a_json_file(tmp_path: Path) -> None:
    done = _demo(tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    assert "== process 2: load" in done.stdout
    assert "approved: issue_refund" in done.stdout
    assert "refunded 249.00 EUR on order A-1001" in done.stdout
    assert "status:  completed" in done.stdout
    assert not (tmp_path / "runs.db").exists()
    rejected = _demo(tmp_path, "--json", "--reject")
    assert "rejected: issue_refund" in rejected.stdout
    assert "refunded 249.00" not in rejected.stdout
