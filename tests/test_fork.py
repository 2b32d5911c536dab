"""Forks: the pure part (``agentfsm.fork``) over random runs and hand-made states, and the
``agentfsm fork`` / ``agentfsm runs prune`` commands as real processes on a SQLite file.

The stores' part (every version of a recorded run forked and resumed, on memory, SQLite
and PostgreSQL) is in the conformance suite, ``agentfsm.testing.StoreConformance``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfsm import (
    Agent,
    AgentFSMError,
    AssistantMessage,
    ConfigurationError,
    Decision,
    DecisionRefused,
    ForkOrigin,
    ForkPlan,
    MemoryStore,
    Runner,
    RunState,
    RunStatus,
    SQLiteStore,
    Transcript,
    UserMessage,
    fork,
    new_run,
)
from agentfsm._cli import ExitCode
from agentfsm._cli_json import RunDocument
from agentfsm._items import HandoffItem, ToolCallItem, ToolResultItem
from agentfsm._schemas import schema_text
from agentfsm.testing import ScriptedModel, say
from agentfsm.testing._store_suite import _TURNS, _scripted_agents
from tests.apps import shop
from tests.test_cli import ROOT, cli

# -- the pure part ------------------------------------------------------------------------------


def _recorded(agent: Any, text: str = "buy") -> list[RunState]:
    """Every state of a run of ``agent`` up to where it stops."""
    states: list[RunState] = []
    first = new_run(agent, text, run_id="parent")
    states.append(first)
    asyncio.run(Runner(on_step=states.append).run(agent, first))
    return states


@settings(max_examples=40)
@given(script=st.lists(_TURNS, max_size=5), with_code=st.booleans())
def test_a_fork_of_any_version_of_a_random_run_keeps_the_past_and_asks_before_side_effects(
    script: list[Any], with_code: bool
) -> None:
    agent = _scripted_agents(script)
    for state in _recorded(agent, "go"):
        forked, plan = fork(state, run_id="child", agents=agent if with_code else None)
        assert forked.run_id == "child"
        assert forked.version == 0
        assert forked.forked_from == ForkOrigin(run_id="parent", version=state.version)
        assert forked.items == state.items, "committed results are part of the fork"
        assert [c.call_id for c in forked.ledger] == [c.call_id for c in state.ledger]
        for before, after in zip(state.ledger, forked.ledger, strict=True):
            if before.status == "committed":
                assert after == before
            if before.status == "started":
                # No tool here is idempotent: every call in flight is in doubt.
                assert (after.status, after.reason) == ("awaiting_approval", "in_doubt")
                assert after.started_by is not None
                assert after.idempotency_key == before.idempotency_key
        assert not any(c.status == "started" for c in forked.ledger)
        assert {r.call_id for r in forked.interruptions} == set(plan.asks)
        assert plan.version == state.version
        assert plan.status == forked.status.value
        if state.status is RunStatus.TOOLS:
            assert forked.status is RunStatus.INTERRUPTED
        else:
            assert forked.status is state.status
        # The forked state is a valid state: it round-trips.
        assert RunState.from_json(forked.to_json()) == forked


def test_decisions_pending_at_the_version_are_left_behind_and_the_forks_own_are_checked() -> None:
    states = _recorded(shop.agent())
    waiting = states[-1]
    (request,) = waiting.interruptions
    decided = waiting.approve(request, by="ada")
    forked, plan = fork(decided, run_id="child")
    assert forked.decisions == ()
    assert plan.dropped == decided.decisions
    assert forked.interruptions == [request]

    mine = Decision(call_id=request.call_id, digest=request.digest, approved=False, by="bob")
    forked, plan = fork(decided, run_id="child", decisions=[mine])
    assert forked.decisions == (mine,)
    stale = msgspec.structs.replace(mine, digest="0" * 64)
    with pytest.raises(DecisionRefused, match="other arguments"):
        fork(decided, run_id="child", decisions=[stale])
    with pytest.raises(DecisionRefused):
        fork(decided, run_id="child", decisions=[msgspec.structs.replace(mine, call_id="nope")])


def test_the_fork_of_a_version_in_flight_can_be_decided_at_once() -> None:
    states = _recorded(shop.agent())
    in_flight = next(s for s in states if s.status is RunStatus.TOOLS)
    _, plan = fork(in_flight, run_id="child", agents=shop.agent())
    assert [(h.tool, h.at_fork, h.idempotent, h.asks) for h in plan.hazards] == [
        ("charge", "in_flight", False, True),
        ("fetch", "in_flight", True, False),
    ]
    charge = plan.hazards[0]
    decision = Decision(
        call_id=charge.call_id, digest=_digest(in_flight, charge.call_id), approved=True
    )
    forked, _ = fork(in_flight, run_id="child", agents=shop.agent(), decisions=[decision])
    assert forked.status is RunStatus.TOOLS, "the idempotent fetch still runs again"
    assert forked.decisions == (decision,)


def _digest(state: RunState, call_id: str) -> str:
    return next(c.digest for c in state.ledger if c.call_id == call_id)


def test_new_input_replaces_the_first_message_and_starts_the_run_over() -> None:
    states = _recorded(shop.agent())
    last = states[-1]
    forked, plan = fork(last, run_id="child", input="sell")
    assert forked.status is RunStatus.NEW
    assert forked.input == (UserMessage(content="sell"),)
    assert (len(forked.items), forked.turn, forked.ledger, forked.audit) == (0, 0, (), ())
    assert plan.hazards == ()
    called = [i.call_id for i in last.items if isinstance(i, ToolCallItem)]
    assert list(plan.dropped_calls) == called
    assert last.input == (UserMessage(content="buy"),), "the parent is a value: unchanged"


def test_new_input_replaces_a_later_message_and_drops_what_came_after_it() -> None:
    base = _recorded(shop.agent())[-1]
    items = [
        *base.items,
        UserMessage(content="and ship to bob"),
        AssistantMessage(content="handing over", agent="shop"),
        ToolCallItem(call_id="h1", tool="transfer_to_other", arguments="{}", agent="shop"),
        ToolResultItem(call_id="h1", tool="transfer_to_other", output="ok", agent="shop"),
        HandoffItem(call_id="h1", source="shop", target="other"),
    ]
    later = msgspec.structs.replace(
        base, items=Transcript(items), current_agent="other", status=RunStatus.COMPLETED
    )
    forked, plan = fork(later, run_id="child", input="and ship to eve")
    assert forked.status is RunStatus.RUNNING, "the model answers the new message next"
    assert forked.items == (*base.items, UserMessage(content="and ship to eve"))
    assert forked.current_agent == "shop", "the agent that was answering it"
    assert forked.ledger == ()
    assert plan.dropped_calls == ("h1", *(c.call_id for c in base.ledger))

    staged = msgspec.structs.replace(base, staged=(UserMessage(content="soon"),))
    forked, plan = fork(staged, run_id="child", input="later")
    assert forked.staged == (UserMessage(content="later"),)
    assert forked.items == base.items, "input not seen yet: nothing to drop"
    assert plan.dropped_calls == ()


@pytest.mark.parametrize(
    ("change", "error", "saying"),
    [
        ({"run_id": ""}, ConfigurationError, "needs a run id"),
        ({"run_id": "parent"}, ConfigurationError, "of its own"),
        ({"run_id": 7}, ConfigurationError, "needs a run id"),
        ({"input": 7}, ConfigurationError, "must be text"),
        ({"input": "\ud800"}, AgentFSMError, "input"),
    ],
)
def test_a_fork_that_cannot_be_made_says_why(
    change: dict[str, Any], error: type[Exception], saying: str
) -> None:
    state = _recorded(shop.agent())[-1]
    with pytest.raises(error, match=saying):
        fork(state, **{"run_id": "child", **change})


def test_there_is_no_message_to_replace_in_a_run_without_one() -> None:
    state = new_run(shop.agent(), [AssistantMessage(content="hi", agent="shop")], run_id="p")
    with pytest.raises(ConfigurationError, match="no user message"):
        fork(state, run_id="child", input="x")


def test_a_fork_of_a_session_run_is_outside_the_session_even_while_it_is_busy() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        await store.create(new_run(shop.agent(), "buy", run_id="s1", session="user-42"))
        made = await store.fork("s1", version=0, new_run_id="f1")
        assert made.state.session is None
        assert made.state.input == (await store.load("s1")).input
        assert [r.run_id for r in await store.session_runs("user-42")] == ["s1"]

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_state_from_before_forks_loads_without_an_origin() -> None:
    state = RunState.from_json((ROOT / "tests" / "fixtures" / "state_v3.json").read_text())
    assert state.forked_from is None
    forked, _ = fork(state, run_id="child")
    assert RunState.from_json(forked.to_json()).forked_from == forked.forked_from


# -- the command line -------------------------------------------------------------------------

SHOP = ["--app", "tests.apps.shop:agent"]


def _effects(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_forking_every_version_from_the_command_line_runs_nothing_again_undecided(
    tmp_path: Path,
) -> None:
    effects = tmp_path / "effects.jsonl"
    env = {"SHOP_EFFECTS": str(effects)}
    assert cli(tmp_path, "run", *SHOP, "buy", "--run-id", "r1", env=env).returncode == (
        ExitCode.INTERRUPTED
    )
    # The two calls of one turn run concurrently: their effects come in either order.
    assert sorted(e["tool"] for e in _effects(effects)) == ["charge", "fetch"]
    history = json.loads(cli(tmp_path, "runs", "history", "r1", "--json").stdout)
    for kept in history["versions"]:
        version = kept["version"]
        effects.unlink(missing_ok=True)
        fork_id = f"f{version}"
        done = cli(
            tmp_path, "fork", "r1", "--version", str(version), "--new-id", fork_id, *SHOP, "--json"
        )
        assert done.returncode == 0, done.stderr
        plan = msgspec.json.decode(done.stdout, type=ForkPlan, strict=True)
        assert (plan.run_id, plan.parent, plan.version) == (fork_id, "r1", version)
        shown = msgspec.json.decode(
            cli(tmp_path, "runs", "show", fork_id, "--json").stdout, type=RunDocument
        )
        assert shown.forked_from == ForkOrigin(run_id="r1", version=version)
        assert {c.call_id for c in shown.waiting} == set(plan.asks)
        if plan.status == "new":
            continue
        resumed = cli(tmp_path, "resume", fork_id, "--app", "tests.apps.shop:forked", env=env)
        ran = [e["tool"] for e in _effects(effects)]
        assert ran == ["fetch" for h in plan.hazards if not h.asks], (version, ran)
        if plan.asks:
            assert resumed.returncode == ExitCode.INTERRUPTED, resumed.stderr
        assert all(e["run"] == fork_id for e in _effects(effects))


def test_fork_prints_its_hazards_for_a_person(tmp_path: Path) -> None:
    assert cli(tmp_path, "run", *SHOP, "buy", "--run-id", "r1").returncode == ExitCode.INTERRUPTED
    dry = cli(tmp_path, "fork", "r1", "--version", "2", "--new-id", "d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would fork run r1 at version 2 as run d (status interrupted)")
    assert "idempotent: unknown" in dry.stdout
    assert cli(tmp_path, "runs", "show", "d").returncode == 1, "a dry run stores nothing"

    done = cli(tmp_path, "fork", "r1", "--version", "2", "--new-id", "f", *SHOP)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "forked run r1 at version 2 as run f (status tools)"
    assert "(not idempotent); it may have taken effect" in done.stdout
    assert "(idempotent); it runs again when the fork resumes" in done.stdout
    shown = cli(tmp_path, "runs", "show", "f").stdout
    assert "forked:  from run r1 at version 2" in shown
    history = cli(tmp_path, "runs", "history", "f").stdout.splitlines()
    assert history[0] == "forked from run r1 at version 2"
    assert history[1].split()[0] == "VERSION"
    document = json.loads(cli(tmp_path, "runs", "history", "f", "--json").stdout)
    assert document["forked_from"] == {"run_id": "r1", "version": 2}
    assert (
        json.loads(cli(tmp_path, "runs", "history", "r1", "--json").stdout)["forked_from"] is None
    )
    assert "in doubt: it started and its result was never recorded" in shown

    replaced = cli(tmp_path, "fork", "r1", "--version", "4", "--new-id", "g", "--input", "sell")
    assert replaced.returncode == 0, replaced.stderr
    assert "status new" in replaced.stdout
    assert "calls dropped with the replaced input" in replaced.stdout
    assert "user: sell" in cli(tmp_path, "runs", "show", "g").stdout


@pytest.fixture(scope="module")
def shop_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose store holds one run, r1, waiting for a decision."""
    directory = tmp_path_factory.mktemp("shop")
    done = cli(directory, "run", *SHOP, "buy", "--run-id", "r1")
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    return directory


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fork", "nope", "--version", "0"], "no run 'nope' in the store"),
        (["fork", "r1", "--version", "99"], "run 'r1' has no version 99"),
        (["fork", "r1", "--version", "0", "--new-id", "r1"], "of its own"),
        (["fork", "r1", "--version", "-1"], "--version: must be a whole number"),
        (["fork", "r1"], "required: --version"),
        (["fork", "r1", "--version", "0", "--app", "nope"], "--app must be module:attribute"),
        (["runs", "prune"], "needs --keep-versions, --older-than or --ended-older-than"),
        (["runs", "prune", "--ended-older-than", "1d", "--run", "r1"], "takes no --run"),
        (["runs", "prune", "--ended-older-than", "soon"], "must be a number with a unit"),
        (["runs", "prune", "--keep-versions", "0"], "must be a whole number of at least 1"),
        (["runs", "prune", "--older-than", "30"], "must be a number with a unit"),
        (["runs", "prune", "--older-than=-1d"], "must be a positive age"),
        (["runs", "prune", "--older-than", "infd"], "must be a positive age"),
        (["runs", "prune", "--keep-versions", "1", "--run", "nope"], "no run 'nope'"),
    ],
)
def test_a_bad_fork_or_prune_is_one_line_and_changes_nothing(
    shop_store: Path, args: list[str], message: str
) -> None:
    tmp_path = shop_store
    before = cli(tmp_path, "runs", "history", "r1", "--json").stdout
    done = cli(tmp_path, *args)
    assert done.returncode != 0
    assert done.stderr.startswith("agentfsm: error: ")
    assert message in done.stderr
    assert done.stderr.count("\n") == 1
    assert cli(tmp_path, "runs", "history", "r1", "--json").stdout == before
    assert [line.split()[0] for line in cli(tmp_path, "runs", "list").stdout.splitlines()[1:]] == [
        "r1"
    ]


def test_a_taken_fork_id_is_refused(tmp_path: Path) -> None:
    assert cli(tmp_path, "run", *SHOP, "buy", "--run-id", "r1").returncode == ExitCode.INTERRUPTED
    assert cli(tmp_path, "fork", "r1", "--version", "1", "--new-id", "f").returncode == 0
    again = cli(tmp_path, "fork", "r1", "--version", "2", "--new-id", "f")
    assert (again.returncode, again.stderr) == (1, "agentfsm: error: run f is already stored\n")
    assert '"version":1' in cli(tmp_path, "runs", "show", "f", "--json").stdout


def test_runs_prune_drops_old_versions_and_keeps_each_runs_current_one(tmp_path: Path) -> None:
    assert cli(tmp_path, "run", *SHOP, "buy", "--run-id", "r1").returncode == ExitCode.INTERRUPTED
    assert cli(tmp_path, "run", *SHOP, "buy", "--run-id", "r2").returncode == ExitCode.INTERRUPTED
    done = cli(tmp_path, "runs", "prune", "--keep-versions", "2", "--run", "r1")
    assert (done.returncode, done.stdout) == (0, "dropped 3 old versions\n")

    async def versions(run_id: str) -> list[int]:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            return [v.version for v in await store.history(run_id)]

    assert asyncio.run(versions("r1")) == [3, 4]
    assert asyncio.run(versions("r2")) == [0, 1, 2, 3, 4], "another run is left alone"
    young = cli(tmp_path, "runs", "prune", "--older-than", "30d")
    assert (young.returncode, young.stdout) == (0, "dropped 0 old versions\n")
    everything = cli(tmp_path, "runs", "prune", "--keep-versions", "1")
    assert everything.stdout == "dropped 5 old versions\n"
    assert asyncio.run(versions("r1")) == asyncio.run(versions("r2")) == [4]
    assert "status:  interrupted" in cli(tmp_path, "runs", "show", "r2").stdout


def test_runs_prune_deletes_the_runs_that_ended_long_ago_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    async def store_runs() -> None:
        two_days_ago = lambda: time.time() - 2 * 86400  # noqa: E731
        async with SQLiteStore(tmp_path / "runs.db", clock=two_days_ago) as store:
            runner = Runner(store=store)
            await runner.run(Agent("old", "", ScriptedModel([say("done")])), "hi", run_id="old")
            paused = await runner.run(shop.agent(), "buy", run_id="waits")
            assert paused.status == "interrupted"
        async with SQLiteStore(tmp_path / "runs.db") as store:
            await Runner(store=store).run(
                Agent("new", "", ScriptedModel([say("done")])), "hi", run_id="new"
            )

    asyncio.run(asyncio.wait_for(store_runs(), 30))
    done = cli(tmp_path, "runs", "prune", "--ended-older-than", "1d")
    assert (done.returncode, done.stdout) == (0, "deleted 1 run that ended\n"), done.stderr
    listed = cli(tmp_path, "runs", "list").stdout
    assert "waits" in listed and "new" in listed and "old" not in listed


def test_prune_and_fork_never_create_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for args in (["runs", "prune", "--keep-versions", "1"], ["fork", "r1", "--version", "0"]):
        done = cli(tmp_path, *args, "--store", str(missing))
        assert done.returncode == 1
        assert "does not exist" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_fork_documents_schema_is_the_one_in_schemas() -> None:
    assert (ROOT / "schemas" / "cli_fork.schema.json").read_text() == schema_text(
        ForkPlan, "ForkPlan"
    )


def test_a_fork_drops_the_parents_deadlines_so_nothing_expires_undecided() -> None:
    waiting = _recorded(shop.agent())[-1]
    ledger = tuple(msgspec.structs.replace(c, deadline=1.0) for c in waiting.ledger)
    late = msgspec.structs.replace(waiting, ledger=ledger)
    assert [r.deadline for r in late.interruptions] == [1.0]
    forked, _ = fork(late, run_id="child")
    assert [r.deadline for r in forked.interruptions] == [None]
