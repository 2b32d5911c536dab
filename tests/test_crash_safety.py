"""Crash safety, by fault injection, through agentfsm's crash kit (agentfsm.testing.CrashKit):
a real agent in child processes, with a real store, killed with SIGKILL at every kind of
durable boundary, resumed each time by a new process, ends as if it had never been killed.

The scenarios live in tests/crash_app.py. The main one plays eight model turns over two
agents, with a handoff, parallel calls, an idempotent tool (``lookup``), a non-idempotent
one (``charge``) and one that needs approval (``send_email``). The kit takes the kill sites
from an uninterrupted reference run: right after the run is stored, inside the store's save
of each checkpoint (before its COMMIT) and right after it, for each step kind, inside the
model's answer, around each tool body, and right after each of the person's decisions.
Every site is killed once; then every site again, each followed by a second kill while the
next process recovers. The kit's checks (see agentfsm/testing/_crash.py) then hold for
every scenario: no step lost, taken twice or half stored; the reference transcript; no
non-idempotent body run twice; every result committed once.

The same scenarios run against PostgreSQL when a server answers (``AGENTFSM_TEST_POSTGRES``,
default ``postgresql://postgres@127.0.0.1:5432/test``; a fresh schema per test, dropped
after it), and the demo agent's run too. Seeded bugs show the kit catches what it claims
to: a tool declared idempotent that is not, a store whose save is not atomic, a careless
person, a lost step and a missing result.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agentfsm import ConfigurationError, ToolResultItem
from agentfsm._state import Transcript
from agentfsm.testing import CrashKit, CrashSite

DSN = os.environ.get("AGENTFSM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

STEP_SITES = ["step:Started", "step:ModelResponded", "step:ToolsFinished", "step:ApprovalsDecided"]
TOOL_SITES = [
    f"tool_{when}:{name}"
    for name in ("lookup", "charge", "send_email")
    for when in ("before", "after")
]
ALL_SITES = ["created", "save", *STEP_SITES, "model", *TOOL_SITES, "human"]


@pytest.fixture(scope="module")
def postgres_unavailable() -> str | None:
    """Why the PostgreSQL variant cannot run (None if it can), found out once."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(DSN, connect_timeout=2):
            pass
    except psycopg.Error as exc:
        return "PostgreSQL is not answering: " + " ".join(str(exc).split())
    from agentfsm import PostgresStore

    try:
        store = PostgresStore(DSN, schema="agentfsm_crash_probe", clock=time.time)
    except ConfigurationError as exc:
        return f"PostgresStore is not usable yet: {exc}"
    asyncio.run(store.close())
    return None


@pytest.fixture(params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_unavailable: str | None
) -> Iterator[dict[str, Any]]:
    """Where the runs are stored, as the kit's child processes are told it."""
    if request.param == "sqlite":
        yield {"kind": "sqlite", "path": str(tmp_path / "runs.db")}
        return
    if postgres_unavailable is not None:
        pytest.skip(postgres_unavailable)
    import psycopg

    schema = f"agentfsm_crash_{uuid.uuid4().hex[:12]}"
    yield {"kind": "postgres", "dsn": DSN, "schema": schema}
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def sqlite(tmp_path: Path, kind: str = "sqlite") -> dict[str, Any]:
    return {"kind": kind, "path": str(tmp_path / "runs.db")}


def reference(kit: CrashKit) -> Any:
    """The uninterrupted run: it passes every kind of site, and settles the account."""
    outcome = kit.reference()
    assert outcome.stored is not None
    assert outcome.stored.final_output == "All settled: 65 charged, 4 emails sent."
    assert len(outcome.effects) == 12
    # A store that saved a step in two transactions would add "save:between" sites. No
    # "save" site means the kit no longer sees the store commit.
    assert {site.kind for site in outcome.sites()} - {"save:between"} == set(ALL_SITES)
    return outcome.stored


# -- the tests --------------------------------------------------------------------------------


def test_a_run_killed_at_every_site_once_and_twice_ends_as_if_never_killed(
    store: dict[str, Any], tmp_path: Path
) -> None:
    with CrashKit("crash_app:scenario", store, workdir=tmp_path) as kit:
        reference(kit)
        report = kit.run()
    print(f"\n{store['kind']}: {report.summary()}")
    report.check()
    kills = report.kills
    assert kills.total() >= 150
    assert all(kills[kind] >= 5 for kind in ALL_SITES), kills
    assert len(report.doubts) == 2 and report.reruns > 0, (report.doubts, report.reruns)


def test_attempts_in_fresh_interpreters_end_the_same(store: dict[str, Any], tmp_path: Path) -> None:
    """A few kills with a new interpreter per attempt (new imports, new hash seed), in case
    forking from one interpreter hid something."""
    with CrashKit("crash_app:scenario", store, workdir=tmp_path) as kit:
        expected = reference(kit)
        plan = [
            CrashSite("step:Started", 0),
            CrashSite("tool_after:charge", 2, "call_1_1"),
            CrashSite("step:ToolsFinished", 3),
            CrashSite("human", 5),
            CrashSite("tool_before:send_email", 5, "call_4_1"),
            CrashSite("model", 7),
        ]
        outcome = kit.play("fresh", plan, fresh=True)
        kit.check(outcome, expected)
        assert len(outcome.kills) == len(plan)


def test_the_demo_agent_survives_every_kill(tmp_path: Path) -> None:
    with CrashKit("crash_app:demo", sqlite(tmp_path), workdir=tmp_path) as kit:
        report = kit.run(twice=False)
    report.check()
    assert report.reference.stored is not None
    assert "refund of 249.00 EUR" in str(report.reference.stored.final_output)
    assert report.kills["tool_after:issue_refund"] >= 1, report.kills
    assert report.kills["human"] >= 1, report.kills
    # The scenario's own check runs with the kit's: a second refund would be reported.
    outcome = report.outcomes[0]
    refund = next(effect for effect in outcome.effects if effect[0] == "issue_refund")
    outcome.effects.append(refund)
    assert report.reference.stored is not None
    assert "the customer was refunded 2 times" in kit.problems(outcome, report.reference.stored)


def test_the_kit_catches_a_tool_declared_idempotent_that_is_not(tmp_path: Path) -> None:
    """``charge`` declared idempotent, while its service charges each time: a kill after
    a charge and before its result was committed makes the next process charge again."""
    with CrashKit("crash_app:false_idempotency", sqlite(tmp_path), workdir=tmp_path) as kit:
        report = kit.run(twice=False)
    assert not report.ok
    found = "\n".join(report.failures)
    assert "charge call_1_1 is declared idempotent, but takes effect each time it runs" in found
    problems = [line for f in report.failures for line in f.splitlines()[1:]]
    assert all(line.startswith("charge ") for line in problems), problems


def test_the_kit_catches_a_store_whose_save_is_not_atomic(tmp_path: Path) -> None:
    with CrashKit("crash_app:scenario", sqlite(tmp_path, "torn"), workdir=tmp_path) as kit:
        report = kit.run(twice=False)
    assert not report.ok
    print("\n\n".join(report.failures))
    torn = [o for o in report.outcomes if any(k["kind"] == "point:torn save" for k in o.kills)]
    assert torn, report.kills
    assert report.reference.stored is not None
    assert all(kit.problems(o, report.reference.stored) for o in torn)


def test_the_checks_catch_a_careless_person_a_lost_step_and_a_missing_result(
    tmp_path: Path,
) -> None:
    with CrashKit("crash_app:scenario", sqlite(tmp_path), workdir=tmp_path) as kit:
        expected = reference(kit)

        # A careless person approves a call in doubt without looking: charge runs twice.
        careless = kit.play(
            "careless", [CrashSite("tool_after:charge", 2, "call_1_1")], human="careless"
        )
        assert "charge call_1_1 is not idempotent and ran 2 times" in kit.problems(
            careless, expected
        )

        # The same scenario with a careful person passes; then break its records.
        careful = kit.play("careful", [CrashSite("tool_after:charge", 2, "call_1_1")])
        assert kit.problems(careful, expected) == []
        assert careful.stored is not None
        first = careful.processes[0]["pid"]
        lost = [e for e in careful.journal if e["e"] == "step" and e["pid"] == first][-1]
        careful.journal.remove(lost)
        found = kit.problems(careful, expected)
        assert any("not versions 1..N" in problem for problem in found), found
        assert any("but the last checkpoint saved was" in problem for problem in found), found
        items = [
            i
            for i in careful.stored.items
            if not (isinstance(i, ToolResultItem) and i.call_id == "call_4_2")
        ]
        careful.stored = msgspec.structs.replace(careful.stored, items=Transcript(items))
        found = kit.problems(careful, expected)
        assert "call call_4_2 has 0 results: []" in found, found
