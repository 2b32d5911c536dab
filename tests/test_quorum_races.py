"""People deciding a call that needs two approvals at once, as separate processes (the CLI),
on a real SQLite file and on PostgreSQL: each person counts once, a rejection settles the
call whoever came first, everyone is told the truth in one line, and the body runs once or
never."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fleet import spawn, stop, store_of, wait_until

from agentfsm import Runner, RunState, Store, new_run
from tests.apps.quorum import agent

APP = ["--app", "tests.apps.quorum:agent"]


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Callable[[], Store]]:
    return store_of(request.param, request, tmp_path)


def pause(open_store: Callable[[], Store], run_id: str) -> RunState:
    async def main() -> RunState:
        async with open_store() as store:
            return (await Runner(store=store).run(agent(), "pay acme", run_id=run_id)).state

    return asyncio.run(asyncio.wait_for(main(), 30))


def stored(open_store: Callable[[], Store], run_id: str) -> RunState:
    async def main() -> RunState:
        async with open_store() as store:
            state: RunState = await store.load(run_id)
            return state

    return asyncio.run(asyncio.wait_for(main(), 30))


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def ran(effects: Path) -> list[dict[str, object]]:
    if not effects.exists():
        return []
    return [json.loads(line) for line in effects.read_text().splitlines()]


def test_two_people_approving_at_once_run_the_call_once_and_a_repeat_counts_once(
    where: tuple[str, Callable[[], Store]], tmp_path: Path
) -> None:
    dsn, open_store = where
    effects = tmp_path / "effects.jsonl"
    env = {"QUORUM_EFFECTS": str(effects)}
    (request,) = pause(open_store, "q").interruptions
    people = ["alice", "bob", "alice"]
    bound = ["q", request.call_id, "--digest", request.digest, "--store", dsn]
    told = [finish(p) for p in [spawn(["approve", *bound, "--as", who], env) for who in people]]
    for code, out, err in told:
        assert code == 0, err
        assert "of 2 approvals" in out
    alices = [out for (_, out, _), who in zip(told, people, strict=True) if who == "alice"]
    assert sum("no change" in out for out in alices) == 1, alices
    assert "no change" not in told[1][1]
    # Both approvals are posted, not applied: the call has not run.
    assert ran(effects) == []
    code, _, err = finish(spawn(["resume", "q", *APP, "--store", dsn], env))
    assert code == 0, err
    final = stored(open_store, "q")
    assert final.status.value == "completed"
    assert len(ran(effects)) == 1
    records = [(r.outcome, r.decision.by) for r in final.audit]
    assert sorted(by for _, by in records) == ["alice", "bob"]
    assert [outcome for outcome, _ in records] == ["counted", "applied"]


def test_approvals_short_of_the_quorum_and_a_rejection_at_once_reject(
    where: tuple[str, Callable[[], Store]], tmp_path: Path
) -> None:
    dsn, open_store = where
    effects = tmp_path / "effects.jsonl"
    env = {"QUORUM_EFFECTS": str(effects)}
    (request,) = pause(open_store, "r").interruptions
    worker = spawn(["worker", *APP, "--poll", "0.05", "--store", dsn], env)
    try:
        assert worker.stdout is not None
        assert "started" in worker.stdout.readline(), "the worker did not start"
        bound = ["r", request.call_id, "--digest", request.digest, "--store", dsn]
        deciders = [
            spawn(["approve", *bound, "--as", "alice"], env),
            spawn(["reject", *bound, "--as", "bob", "--message", "no"], env),
            spawn(["approve", *bound, "--as", "alice"], env),
        ]
        told = [finish(p) for p in deciders]
        wait_until(
            lambda: stored(open_store, "r").status.value == "completed", 30, "the run to end"
        )
        assert worker.poll() is None, "the worker died"
    finally:
        stop([worker])
        _, worker_err = worker.communicate(timeout=30)
    assert "Traceback" not in worker_err
    for code, out, err in told:
        assert "Traceback" not in err
        assert code == 0 or (code == 1 and err.count("\n") == 1), (code, out, err)
    # One approver can never make the count, so the rejection is posted whoever came first.
    assert told[1][0] == 0, told[1]
    final = stored(open_store, "r")
    assert ran(effects) == []
    applied = [r for r in final.audit if r.outcome == "applied"]
    assert len(applied) == 1 and not applied[0].decision.approved


def test_the_cli_shows_the_count_and_says_when_an_approval_changes_nothing(
    where: tuple[str, Callable[[], Store]], tmp_path: Path
) -> None:
    dsn, _ = where
    effects = tmp_path / "effects.jsonl"
    env = {"QUORUM_EFFECTS": str(effects), "AGENTFSM_STORE": dsn}

    def cli(*args: str) -> tuple[int, str, str]:
        return finish(spawn(list(args), env))

    assert cli("run", *APP, "pay acme", "--run-id", "c1")[0] == 3
    code, out, _ = cli("runs", "show", "c1", "--json")
    (request,) = json.loads(out)["waiting"]
    assert (request["quorum"], request["approved_by"]) == (2, [])
    assert "0 of 2 approvals" in cli("runs", "show", "c1")[1]
    bound = ["c1", request["call_id"], "--digest", request["digest"]]
    code, out, err = cli("approve", *bound, "--as", "alice")
    assert code == 0, err
    assert "1 of 2 approvals (alice)" in out
    assert "1 of 2 approvals (alice)" in cli("approvals")[1]
    code, out, err = cli("approve", *bound, "--as", "alice")
    assert code == 0 and "no change" in out and "1 of 2 approvals (alice)" in out, (out, err)
    assert cli("resume", "c1", *APP)[0] == 3  # still waiting for a second person
    shown = cli("runs", "show", "c1")[1]
    assert "counted: 1 of 2 approvals (alice)" in shown and ran(effects) == []
    code, out, err = cli("approve", *bound, "--as", "bob")
    assert code == 0 and "2 of 2 approvals (alice, bob)" in out, (out, err)
    code, _, err = cli("resume", "c1", *APP)
    assert code == 0, err
    assert len(ran(effects)) == 1


def test_the_cli_refuses_the_starters_approval_in_one_line(
    where: tuple[str, Callable[[], Store]], tmp_path: Path
) -> None:
    dsn, open_store = where

    async def start() -> RunState:
        async with open_store() as store:
            await store.create(
                new_run(agent(), "pay", run_id="s1", started_by="alice", starter_may_approve=False)
            )
            return (await Runner(store=store).resume(agent(), "s1")).state

    (request,) = asyncio.run(asyncio.wait_for(start(), 30)).interruptions
    env = {"AGENTFSM_STORE": dsn}
    bound = ["s1", request.call_id, "--digest", request.digest]
    code, out, err = finish(spawn(["approve", *bound, "--as", "alice"], env))
    assert code == 1 and "alice started run s1, and may not approve" in err, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "started by: alice" in finish(spawn(["runs", "show", "s1"], env))[1]
    code, out, err = finish(spawn(["reject", *bound, "--as", "alice"], env))
    assert code == 0, err
