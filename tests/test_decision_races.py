"""People deciding at once, as separate processes, on SQLite and PostgreSQL, while a worker
applies what they decide. The first decision on a call wins, everyone is told the truth,
nothing runs with arguments nobody approved, nothing runs twice, and the worker survives."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DSN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfsm import Decision, Runner, RunState, ToolCallItem, open_store
from agentfsm._decisions import same_decision
from tests.apps.payments import PAYEES, agent

ROOT = Path(__file__).resolve().parent.parent
APP = ["--app", "tests.apps.payments:agent"]
CALLS = [f"call_0_{n}" for n in range(len(PAYEES))]


@pytest.fixture(params=["sqlite", "postgres"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "runs.db")
    else:
        yield f"{DSN}?agentfsm_schema={request.getfixturevalue('schema')}"


def pause(dsn: str, *run_ids: str) -> list[RunState]:
    async def main() -> list[RunState]:
        store = open_store(dsn)
        try:
            runner = Runner(store=store)
            return [(await runner.run(agent(), "pay", run_id=r)).state for r in run_ids]
        finally:
            await store.close()

    return asyncio.run(main())


def stored(dsn: str, run_id: str) -> RunState:
    async def main() -> RunState:
        store = open_store(dsn)
        try:
            return await store.load(run_id)
        finally:
            await store.close()

    return asyncio.run(main())


def agentfsm(*args: str, effects: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentfsm", *args],
        cwd=ROOT,
        env={**os.environ, "PAYMENTS_EFFECTS": str(effects)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def executions(effects: Path) -> list[dict[str, Any]]:
    if not effects.exists():
        return []
    return [json.loads(line) for line in effects.read_text().splitlines()]


def test_eight_people_deciding_one_call_at_once(dsn: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.jsonl"
    (paused,) = pause(dsn, "r8")
    request = paused.interruptions[0]
    people = [
        agentfsm(
            "approve" if n % 2 else "reject",
            "r8",
            request.call_id,
            "--digest",
            request.digest,
            "--as",
            f"person{n}",
            "--store",
            dsn,
            effects=effects,
        )
        for n in range(8)
    ]
    told = [finish(p) for p in people]
    winners = [n for n, (code, out, err) in enumerate(told) if code == 0]
    assert len(winners) == 1, told
    (winner,) = winners
    verb = "approved" if winner % 2 else "rejected"
    assert f"{verb} {request.call_id} of run r8, as person{winner}" in told[winner][1]
    for n, (code, _, err) in enumerate(told):
        if n != winner:
            assert code == 1
            assert f"already decided: {verb} by person{winner} at " in err
            assert err.count("\n") == 1 and "Traceback" not in err
    # Decide the other two calls, then let the run finish.
    for other in paused.interruptions[1:]:
        code, _, err = finish(
            agentfsm(
                "reject",
                "r8",
                other.call_id,
                "--digest",
                other.digest,
                "--store",
                dsn,
                effects=effects,
            )
        )
        assert code == 0, err
    code, _, err = finish(agentfsm("resume", "r8", *APP, "--store", dsn, effects=effects))
    assert code == 0, err
    final = stored(dsn, "r8")
    applied = [r for r in final.audit if r.decision.call_id == request.call_id]
    assert [(r.outcome, r.decision.by) for r in applied] == [("applied", f"person{winner}")]
    ran = [e for e in executions(effects) if e["call"] == request.call_id]
    assert len(ran) == (1 if winner % 2 else 0)


# -- random decisions from several processes against a worker --------------------------------

people = st.sampled_from(["ada", "bob", "eve"])
verdicts = st.sampled_from(["approve", "edit", "bad edit", "reject", "always"])
decisions = st.fixed_dictionaries(
    {
        "run": st.sampled_from(["a", "b"]),
        "call": st.sampled_from(CALLS),
        "verdict": verdicts,
        "by": people,
        "stale": st.booleans(),
        "amount": st.integers(1, 5),
    }
)
plans = st.lists(st.lists(decisions, min_size=1, max_size=5), min_size=2, max_size=3)


def as_plan(entry: dict[str, Any]) -> dict[str, Any]:
    verdict = entry["verdict"]
    arguments = None
    if verdict == "edit":
        arguments = {"to": "carol", "amount": entry["amount"]}
    elif verdict == "bad edit":
        arguments = {"to": "carol", "amount": "lots"}
    return {
        "run": entry["run"],
        "call": entry["call"],
        "verdict": "reject" if verdict == "reject" else "approve",
        "always": verdict == "always",
        "by": entry["by"],
        "stale": entry["stale"],
        "arguments": arguments,
    }


def settle(dsn: str, run_ids: list[str], deadline: float) -> list[RunState]:
    """The runs once the worker has applied everything posted to them."""

    async def main() -> list[RunState] | None:
        store = open_store(dsn)
        try:
            states = []
            for run_id in run_ids:
                if (await store.inbox(run_id)).ids:
                    return None
                state = await store.load(run_id)
                if state.status.value not in ("interrupted", "completed"):
                    return None
                states.append(state)
            return states
        finally:
            await store.close()

    while time.monotonic() < deadline:
        states = asyncio.run(main())
        if states is not None:
            return states
        time.sleep(0.1)
    raise AssertionError("the worker did not apply what was posted in time")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans)
def test_random_decisions_from_several_processes_against_a_worker(
    kind: str,
    plan: list[list[dict[str, Any]]],
    tmp_path_factory: pytest.TempPathFactory,
    postgres_down: str | None,
) -> None:
    where = tmp_path_factory.mktemp("race")
    if kind == "sqlite":
        dsn = str(where / "runs.db")
    else:
        if postgres_down is not None:
            pytest.skip(postgres_down)
        dsn = f"{DSN}?agentfsm_schema=race_{uuid.uuid4().hex[:12]}"
    effects = where / "effects.jsonl"
    paused = {state.run_id: state for state in pause(dsn, "a", "b")}
    worker = agentfsm("worker", *APP, "--poll", "0.05", "--store", dsn, effects=effects)
    assert worker.stdout is not None
    assert "started" in worker.stdout.readline(), "the worker did not start"
    try:
        deciders = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "tests" / "decider.py"),
                    dsn,
                    json.dumps(list(map(as_plan, part))),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for part in ([as_plan(entry) for entry in person] for person in plan)
        ]
        told = []
        for decider in deciders:
            out, err = decider.communicate(timeout=60)
            assert decider.returncode == 0, err
            told += [json.loads(line) for line in out.splitlines()]
        finals = {s.run_id: s for s in settle(dsn, ["a", "b"], time.monotonic() + 30)}
        assert worker.poll() is None, "the worker died"
    finally:
        worker.send_signal(signal.SIGTERM)
        _, worker_err = worker.communicate(timeout=30)
        if kind == "postgres":
            _drop_schema(dsn)
    assert worker.returncode == 0, worker_err
    assert "Traceback" not in worker_err

    ran_log = executions(effects)
    ran = Counter((e["run"], e["call"]) for e in ran_log)
    assert all(count == 1 for count in ran.values()), f"a call ran twice: {ran}"
    for run_id, final in finals.items():
        applied: dict[str, Decision] = {}
        for record in final.audit:
            if record.outcome == "applied":
                assert record.decision.call_id not in applied, "two decisions took effect"
                applied[record.decision.call_id] = record.decision
                assert record.shown == _asked(paused[run_id], record.decision.call_id)
        for call_id in CALLS:
            decision = applied.get(call_id)
            execution = [
                e for e in executions(effects) if (e["run"], e["call"]) == (run_id, call_id)
            ]
            if decision is not None:
                # Exactly what was approved ran: the edited arguments, or those shown.
                expected = decision.arguments or _asked(paused[run_id], call_id)
                assert [e["args"] for e in execution] == ([expected] if decision.approved else [])
            elif execution:
                # Settled by someone's sticky approval: the arguments the model asked for.
                assert any(p.approved and p.tool == "pay" for p in final.policies)
                assert execution[0]["args"] == _asked(paused[run_id], call_id)
    # Everyone was told the truth: what was posted took effect, and what repeated a posted
    # decision did too.
    for answer in told:
        entry = answer["entry"]
        if answer["told"] in ("posted", "repeated"):
            final = finals[entry["run"]]
            records = [
                r.decision
                for r in final.audit
                if r.outcome == "applied" and r.decision.call_id == entry["call"]
            ]
            mine = Decision(
                call_id=entry["call"],
                digest=records[0].digest if records else "",
                approved=entry["verdict"] != "reject",
                always=entry["always"],
                arguments=entry["arguments"],
                by=entry["by"],
            )
            assert records and same_decision(records[0], mine), answer
        else:
            assert answer["told"] == "refused"
            assert answer["reason"].split(":")[0] in (
                "DecisionRefused",
                "UnknownCallError",
                "ConflictError",
            ), answer


def _asked(state: RunState, call_id: str) -> dict[str, Any]:
    item = next(i for i in state.items if isinstance(i, ToolCallItem) and i.call_id == call_id)
    arguments: dict[str, Any] = json.loads(item.arguments)
    return arguments


def _drop_schema(dsn: str) -> None:
    import psycopg

    schema = dsn.split("agentfsm_schema=")[1]
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
