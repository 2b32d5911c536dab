"""Deciding from the command line, as separate processes, on SQLite and PostgreSQL: bound to
the digest shown, first decision wins, bad input refused in one line, a renamed tool never
makes a run undecidable, expiry by a worker, and the inbox listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DSN

ROOT = Path(__file__).resolve().parent.parent
APP = ["--app", "tests.apps.mailer:agent"]
RENAMED = ["--app", "tests.apps.mailer_renamed:agent"]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "runs.db")
    else:
        yield f"{DSN}?agentfsm_schema={request.getfixturevalue('schema')}"


def cli(store: str, *args: str | bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentfsm", *args],
        capture_output=True,
        text=True,
        errors="replace",
        cwd=ROOT,
        env={**os.environ, "AGENTFSM_STORE": store},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def paused(store: str, run_id: str) -> str:
    """Start a run that pauses on ``send``; the digest of its arguments."""
    assert cli(store, "run", *APP, "go", "--run-id", run_id).returncode == 3
    shown = json.loads(cli(store, "runs", "show", run_id, "--json").stdout)
    (request,) = shown["waiting"]
    digest: str = request["digest"]
    return digest


def one_line(done: subprocess.CompletedProcess[str], code: int, saying: str) -> None:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert saying in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_two_people_one_call_the_first_wins(store: str) -> None:
    digest = paused(store, "a1")
    ada = cli(store, "approve", "a1", "call_1_0", "--digest", digest, "--as", "ada")
    assert ada.returncode == 0, ada.stderr
    bob = cli(store, "reject", "a1", "call_1_0", "--digest", digest, "--as", "bob")
    one_line(bob, 1, "already decided: approved by ada")
    done = json.loads(cli(store, "resume", "a1", *APP, "--json").stdout)
    assert done["status"] == "completed"
    assert [(d["decision"]["by"], d["outcome"]) for d in done["decisions"]] == [("ada", "applied")]


def test_bad_decisions_are_refused_in_one_line_and_change_nothing(store: str) -> None:
    digest = paused(store, "b1")
    approve = ["approve", "b1", "call_1_0", "--digest", digest]
    one_line(cli(store, *approve[:3], "--digest", "f" * 64), 1, "other arguments")
    one_line(cli(store, *approve, "--arguments", "[1]"), 1, "must be a JSON object")
    one_line(cli(store, *approve, "--arguments", '{"to": "x", "body": 7}'), 1, "$.body")
    broken = b'{"to": "x", "body": "\xff\xfe"}'  # not UTF-8: a lone surrogate in argv
    one_line(cli(store, *approve, "--arguments", broken), 2, "--arguments: not valid UTF-8")
    assert cli(store, "approvals", "--json").stdout.count('"posted":[]') == 1
    hostile = {"to": "<script>alert(1)</script>", "body": "x" * 100_000}
    ok = cli(store, *approve, "--arguments", json.dumps(hostile), "--as", "<b>mallory</b>")
    assert ok.returncode == 0, ok.stderr
    done = json.loads(cli(store, "resume", "b1", *APP, "--json").stdout)
    (record,) = done["decisions"]
    assert record["decision"]["arguments"] == hostile
    assert record["decision"]["by"] == "<b>mallory</b>"


def test_a_renamed_tool_leaves_the_paused_run_decidable(store: str) -> None:
    digest = paused(store, "c1")
    assert cli(store, "approve", "c1", "call_1_0", "--digest", digest).returncode == 0
    again = cli(store, "resume", "c1", *RENAMED, "--json")
    assert again.returncode == 3, again.stderr  # still waiting: the approval was refused
    document = json.loads(again.stdout)
    (record,) = document["decisions"]
    assert record["outcome"] == "refused"
    assert "no longer exists" in record["reason"]
    rejected = cli(store, "reject", "c1", "call_1_0", "--digest", digest, "--message", "gone")
    assert rejected.returncode == 0, rejected.stderr
    done = cli(store, "resume", "c1", *RENAMED, "--json")
    assert done.returncode == 0, done.stderr
    digest = paused(store, "c2")
    assert cli(store, "cancel", "c2").returncode == 0
    assert cli(store, "resume", "c2", *RENAMED).returncode == 5  # cancelled


def test_a_decision_after_the_run_moved_on_is_refused(store: str) -> None:
    digest = paused(store, "d1")
    assert cli(store, "approve", "d1", "call_1_0", "--digest", digest).returncode == 0
    assert cli(store, "resume", "d1", *APP).returncode == 0
    one_line(
        cli(store, "reject", "d1", "call_1_0", "--digest", digest), 1, "takes no more decisions"
    )
    listed = json.loads(cli(store, "runs", "list", "--json").stdout)
    assert [(r["run_id"], r["posted"]) for r in listed["runs"]] == [("d1", 0)]
