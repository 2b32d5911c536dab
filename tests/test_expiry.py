"""Approvals that expire: a call waiting past its deadline is settled as expired (it does not
run, the model is told, the audit trail says so), by the runner or by a worker with no one
around, and a decision posted before the expiry is applied wins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentfsm import (
    Agent,
    ConfigurationError,
    Runner,
    SQLiteStore,
    ToolDefinitionError,
    ToolResultItem,
    UndecidedError,
    tool,
)
from agentfsm._step import EXPIRED_REJECTION
from agentfsm.testing import FakeClock, ScriptedModel, call, say

RAN: list[str] = []


@tool(needs_approval=True)
def wire(to: str) -> str:
    RAN.append(to)
    return f"wired {to}"


@tool(needs_approval=True, approval_timeout=5)
def quick_wire(to: str) -> str:
    RAN.append(to)
    return f"wired {to}"


def agent() -> Agent:
    model = ScriptedModel([[call("wire", to="ada"), call("quick_wire", to="bob")], say("ok")])
    return Agent("banker", "", model, tools=[wire, quick_wire])


def results(state: object) -> dict[str, str]:
    items = getattr(state, "items", ())
    return {i.tool: i.output for i in items if isinstance(i, ToolResultItem)}


def test_calls_expire_at_their_deadline_and_never_run() -> None:
    RAN.clear()
    clock = FakeClock()
    runner = Runner(approval_timeout=60, clock=clock)
    paused = runner.run_sync(agent(), "pay")
    deadlines = {r.tool: r.deadline for r in paused.interruptions}
    assert deadlines == {"wire": clock() + 60, "quick_wire": clock() + 5}  # the tool's own
    with pytest.raises(UndecidedError):  # before any deadline, nothing to apply
        Runner(clock=FakeClock(clock() + 1)).run_sync(agent(), paused.state)
    clock.advance(10)
    half = runner.run_sync(agent(), paused.state)  # quick_wire's 5 s have passed
    assert [r.tool for r in half.interruptions] == ["wire"]
    assert results(half.state) == {"quick_wire": EXPIRED_REJECTION}
    (record,) = half.state.audit
    assert (record.decision.kind, record.outcome, record.tool) == (
        "expire",
        "applied",
        "quick_wire",
    )
    assert record.decision.at == clock()
    clock.advance(60)
    done = runner.run_sync(agent(), half.state)
    assert done.status == "completed"
    assert results(done.state)["wire"] == EXPIRED_REJECTION
    assert RAN == []


def test_a_worker_expires_calls_with_no_one_around(tmp_path: Path) -> None:
    RAN.clear()
    clock = FakeClock()

    async def main() -> None:
        store = SQLiteStore(tmp_path / "runs.db", clock=clock)
        try:
            runner = Runner(store=store, approval_timeout=60, clock=clock)
            await runner.run(agent(), "pay", run_id="e1")
            await runner.run(agent(), "pay", run_id="e2")
            worker = Runner(store=store, clock=clock)
            assert await worker.work(agent(), until_idle=True) == 0, "nothing is due yet"
            # Before bob's call expires in e2, someone approves it: that decision wins.
            e2 = await store.load("e2")
            bob = next(r for r in e2.interruptions if r.tool == "quick_wire")
            assert await store.approve("e2", bob, by="ada")
            clock.advance(6)
            assert await worker.work(agent(), until_idle=True) == 2
            e1, e2 = await store.load("e1"), await store.load("e2")
            assert results(e1) == {"quick_wire": EXPIRED_REJECTION}
            assert results(e2) == {"quick_wire": "wired bob"}
            assert [r.decision.kind for r in e2.audit] == ["approve"]
            page = await store.waiting()
            assert {(c.run_id, c.request.tool) for c in page.calls} == {
                ("e1", "wire"),
                ("e2", "wire"),
            }
            assert all(c.request.deadline == e1.interruptions[0].deadline for c in page.calls)
            clock.advance(60)
            assert await worker.work(agent(), until_idle=True) == 2
            assert {(await store.load(r)).status.value for r in ("e1", "e2")} == {"completed"}
            assert (await store.waiting()).calls == ()
        finally:
            await store.close()

    asyncio.run(main())
    assert RAN == ["bob"]


def test_an_expiry_is_a_positive_number_of_seconds() -> None:
    with pytest.raises(ConfigurationError):
        Runner(approval_timeout=0)
    with pytest.raises(ToolDefinitionError):
        tool(needs_approval=True, approval_timeout=-1)(lambda: None)
