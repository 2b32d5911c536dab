"""Agents as tools: a call that runs another agent as a nested run inside the calling run.

Its approvals are decided through the outer run from another process (the CLI, the store,
the web inbox), a process killed inside it leaves its non-idempotent call in doubt and never
runs it twice, its state round-trips with the outer one, two levels nest, bad output and
endless recursion end in a result the model sees, never a crashed run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from conftest import DSN
from fleet import wait_until

from agentfsm import (
    Agent,
    AgentTool,
    DecisionRefused,
    MemoryStore,
    Runner,
    RunState,
    RunStatus,
    SQLiteStore,
    StateFormatError,
    ToolDefinitionError,
    ToolError,
    ToolResultItem,
    UnknownCallError,
    tool,
)
from agentfsm._jsonschema import schema_errors
from agentfsm.testing import ScriptedModel, call, say
from tests.apps import delegator

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "runs.db")
    else:
        yield f"{DSN}?agentfsm_schema={request.getfixturevalue('schema')}"


def cli(store: str, effects: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentfsm", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENTFSM_STORE": store, "DELEGATOR_EFFECTS": str(effects)},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def results(state: RunState) -> list[ToolResultItem]:
    return [i for i in state.items if isinstance(i, ToolResultItem)]


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


# -- across processes ------------------------------------------------------------------------


def test_an_inner_approval_is_decided_from_the_cli_and_a_new_process_finishes(
    store: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects"
    app = ["--app", "tests.apps.delegator:agent"]
    started = cli(store, effects, "run", *app, "go", "--run-id", "n1")
    assert started.returncode == 3, started.stderr  # interrupted
    shown = json.loads(cli(store, effects, "runs", "show", "n1", "--json").stdout)
    (request,) = shown["waiting"]
    assert (request["call_id"], request["tool"], request["agent"]) == (
        "call_0_0/call_0_0",
        "send",
        "mailer",
    )
    listed = json.loads(cli(store, effects, "approvals", "--json").stdout)
    assert [c["request"]["call_id"] for c in listed["calls"]] == ["call_0_0/call_0_0"]
    assert lines(effects) == []

    stale = cli(store, effects, "approve", "n1", request["call_id"], "--digest", "f" * 64)
    assert stale.returncode == 1 and "other arguments" in stale.stderr
    assert stale.stderr.count("\n") == 1 and "Traceback" not in stale.stderr
    outer_only = cli(store, effects, "approve", "n1", "call_0_0", "--digest", request["digest"])
    assert outer_only.returncode == 1 and "no call 'call_0_0' awaiting" in outer_only.stderr
    approved = cli(
        store, effects, "approve", "n1", request["call_id"], "--digest", request["digest"],
        "--as", "ada",
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr

    done = cli(store, effects, "resume", "n1", *app, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["status"] == "completed"
    assert document["final_output"] == "done: mail sent"
    assert [(d["decision"]["by"], d["tool"], d["outcome"]) for d in document["decisions"]] == [
        ("ada", "send", "applied")
    ]
    (sent,) = lines(effects)  # the inner tool body ran once
    assert sent.startswith("send ada ")
    # The inner run's final output is the call's result in the outer transcript.
    outputs = [i["output"] for i in document["items"] if i["type"] == "tool_result"]
    assert outputs == ["mail sent to ada"]


def test_a_process_killed_inside_an_inner_tool_leaves_the_call_in_doubt(
    store: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects"
    env = {**os.environ, "DELEGATOR_EFFECTS": str(effects), "DELEGATOR_KILL": "charge"}
    killed = subprocess.run(
        [sys.executable, str(ROOT / "tests/apps/delegator.py"), store, "billing", "k1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(lines(effects)) == 1
    app = ["--app", "tests.apps.delegator:billing"]
    resumed: list[subprocess.CompletedProcess[str]] = []

    def resumes() -> bool:
        # The dead process's one-second lease must run out first.
        resumed.append(cli(store, effects, "resume", "k1", *app, "--json"))
        return resumed[-1].returncode != 6 and "another worker" not in resumed[-1].stderr

    wait_until(resumes, 30, "the killed process's lease to run out")
    assert resumed[-1].returncode == 3, resumed[-1].stderr
    (request,) = json.loads(resumed[-1].stdout)["waiting"]
    assert (request["call_id"], request["tool"], request["reason"]) == (
        "call_0_0/call_0_0",
        "charge",
        "in_doubt",
    )
    assert len(lines(effects)) == 1  # not run again
    rejected = cli(
        store, effects, "reject", "k1", request["call_id"], "--digest", request["digest"],
        "--message", "it went through: do not charge again",
    )  # fmt: skip
    assert rejected.returncode == 0, rejected.stderr
    done = cli(store, effects, "resume", "k1", *app, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["final_output"] == "billed"
    assert len(lines(effects)) == 1


# -- in one process, through the store and the state ----------------------------------------


def test_two_levels_nest_and_the_state_round_trips_through_json_and_a_store(
    tmp_path: Path,
) -> None:
    effects = tmp_path / "effects"
    os.environ["DELEGATOR_EFFECTS"] = str(effects)

    async def test() -> None:
        async with SQLiteStore(tmp_path / "runs.db") as db:
            paused = await Runner(store=db).run(delegator.deep(), "go", run_id="d1")
            assert paused.status == "interrupted"
            (request,) = paused.interruptions
            assert request.call_id == "call_0_0/call_0_0/call_0_0"
            state = paused.state
            manager = state.nested["call_0_0"]
            assert manager.run_id == "d1/call_0_0"
            assert manager.nested["call_0_0"].status is RunStatus.INTERRUPTED
            # The state, nested runs and all, is one JSON document, and one stored run.
            again = RunState.from_json(state.to_json())
            assert again == state
            assert again.nested["call_0_0"].nested["call_0_0"].items == (
                manager.nested["call_0_0"].items
            )
            assert await db.load("d1") == state
            # The nested runs are part of the published schema of a state.
            schema = json.loads((ROOT / "schemas/run_state.schema.json").read_text())
            document = json.loads(state.to_json())
            assert schema_errors(document, schema) == []
            document["nested"]["call_0_0"]["nested"]["call_0_0"]["status"] = "bogus"
            assert schema_errors(document, schema) != []
            with pytest.raises(StateFormatError, match="nested"):
                RunState.from_json(json.dumps(document))
            assert (await db.list())[0].waiting == 1
            await db.approve("d1", request, by="ada")
            done = await Runner(store=db).resume(delegator.deep(), "d1")
            assert done.status == "completed" and done.final_output == "all done"
            assert [r.output for r in results(done.state)] == ["the mailer says it is done"]
            assert done.state.nested == {}
            assert [(r.decision.by, r.tool, r.outcome) for r in done.state.audit] == [
                ("ada", "send", "applied")
            ]

    try:
        run(test())
    finally:
        del os.environ["DELEGATOR_EFFECTS"]
    assert [line.split()[:2] for line in lines(effects)] == [["send", "ada"]]


def test_decisions_on_inner_calls_are_checked_like_any_other() -> None:
    paused = Runner().run_sync(delegator.agent(), "go")
    (request,) = paused.interruptions
    with pytest.raises(DecisionRefused, match="other arguments"):
        paused.state.approve(request.call_id, digest="0" * 64)
    with pytest.raises(UnknownCallError):
        paused.state.approve("call_0_0")  # the outer call waits for its nested run
    with pytest.raises(UnknownCallError):
        paused.state.approve("call_0_0/nope")
    with pytest.raises(DecisionRefused, match="fit"):
        paused.state.approve(request, arguments={"to": 7})
    rejected = paused.state.reject(request, message="not today")
    with pytest.raises(DecisionRefused, match="first decision wins"):
        rejected.approve(request)
    done = Runner().run_sync(delegator.agent(), rejected)
    assert done.status == "completed"
    inner_result = results(done.state)[0]
    assert inner_result.output == "mail sent to ada"  # the script goes on regardless


def test_an_edited_approval_reaches_the_inner_call() -> None:
    sent: list[str] = []

    @tool(needs_approval=True)
    def send(to: str) -> str:
        """Send."""
        sent.append(to)
        return f"sent to {to}"

    inner = Agent("mailer", "", ScriptedModel([call("send", to="ada"), say("ok")]), tools=[send])
    outer = Agent(
        "boss", "", ScriptedModel([call("mailer", input="x"), say("done")]), tools=[inner.as_tool()]
    )
    paused = Runner().run_sync(outer, "go")
    (request,) = paused.interruptions
    done = Runner().run_sync(outer, paused.state.approve(request, arguments={"to": "bob"}))
    assert done.status == "completed" and sent == ["bob"]


# -- the web inbox ---------------------------------------------------------------------------


def test_the_web_inbox_lists_the_inner_call_and_decides_it() -> None:
    pytest.importorskip("starlette", reason="the inbox needs the web extra")
    from agentfsm.web import create_app
    from tests.inboxkit import ADA, TOKENS, client

    async def test() -> None:
        store = MemoryStore()
        paused = await Runner(store=store).run(delegator.agent(), "go", run_id="w1")
        (request,) = paused.interruptions
        async with client(create_app(store, auth=TOKENS)) as http:
            listed = (await http.get("/api/approvals", headers=ADA)).json()
            assert [(c["run_id"], c["request"]["call_id"]) for c in listed["calls"]] == [
                ("w1", "call_0_0/call_0_0")
            ]
            page = await http.get("/", headers=ADA)
            assert page.status_code == 200 and "call_0_0/call_0_0" in page.text
            response = await http.post(
                "/api/runs/w1/decisions",
                headers=ADA,
                json={"call_id": request.call_id, "digest": request.digest, "action": "approve"},
            )
            assert response.status_code == 201, response.text
        done = await Runner(store=store).resume(delegator.agent(), "w1")
        assert done.status == "completed"
        assert [r.decision.by for r in done.state.audit] == ["ada"]

    run(test())


# -- what the inner run gives back ------------------------------------------------------------


class Verdict(pydantic.BaseModel):
    ok: bool
    why: str


def judged(turns: list[Any], **options: Any) -> tuple[Agent, ScriptedModel]:
    judge = Agent("judge", "Judge.", ScriptedModel(turns), output_type=Verdict)
    outer_model = ScriptedModel([call("judge", input="is it ok?"), say("noted")])
    outer = Agent("boss", "", outer_model, tools=[judge.as_tool(**options)])
    return outer, outer_model


def test_malformed_inner_output_is_sent_back_to_the_inner_model_then_given_as_json() -> None:
    outer, _ = judged([say("not json at all"), say('{"ok": true, "why": "fine"}')])
    done = Runner().run_sync(outer, "go")
    assert done.status == "completed"
    (result,) = results(done.state)
    assert json.loads(result.output) == {"ok": True, "why": "fine"} and not result.is_error


def test_an_inner_run_that_never_answers_well_is_an_error_result() -> None:
    outer, outer_model = judged([say("nope")] * 3, max_turns=3)
    done = Runner().run_sync(outer, "go")
    assert done.status == "completed"
    (result,) = results(done.state)
    assert result.is_error and "ended failed" in result.output and "3 of its turns" in result.output
    assert "ended failed" in str(outer_model.requests[-1].items[-1])
    with pytest.raises(ToolError, match="ended failed") as raised:
        Runner(tool_errors="raise").run_sync(judged([say("nope")] * 3, max_turns=3)[0], "go")
    assert raised.value.state is not None and raised.value.state.status is RunStatus.TOOLS


def test_an_output_extractor_shapes_the_result_and_its_failure_is_an_error_result() -> None:
    fine = [say('{"ok": true, "why": "fine"}')]
    outer, _ = judged(fine, output_extractor=lambda r: f"ok={r.final_output.ok}")
    assert results(Runner().run_sync(outer, "go").state)[0].output == "ok=True"

    async def later(result: Any) -> str:
        return result.final_output.why

    outer, _ = judged(fine, output_extractor=later)
    assert results(Runner().run_sync(outer, "go").state)[0].output == "fine"
    for bad in (lambda r: 1 / 0, lambda r: 42):
        outer, _ = judged(fine, output_extractor=bad)
        done = Runner().run_sync(outer, "go")
        assert done.status == "completed"
        (result,) = results(done.state)
        assert result.is_error and "output_extractor" in result.output


def test_agent_tool_options_are_checked() -> None:
    agent = Agent("a", "")
    assert isinstance(agent.as_tool(), AgentTool) and agent.as_tool().name == "a"
    assert Agent("data team!", "").as_tool().name == "data_team_"
    with pytest.raises(ToolDefinitionError):
        agent.as_tool(max_turns=0)
    with pytest.raises(ToolDefinitionError):
        agent.as_tool(output_extractor="nope")  # type: ignore[arg-type]
    with pytest.raises(ToolDefinitionError):
        agent.as_tool("bad name")


# -- recursion -----------------------------------------------------------------------------


def test_an_agent_that_calls_itself_without_end_is_stopped_with_a_clear_error() -> None:
    from agentfsm._nested import MAX_DEPTH

    model = ScriptedModel([call("echo", input="again"), say("back")])
    echo = Agent("echo", "", model)
    echo.tools.append(echo.as_tool())
    done = Runner().run_sync(echo, "go")
    assert done.status == "completed" and done.final_output == "back"
    assert done.state.nested == {}
    # The deepest run was told why its call did not run; every level above completed.
    refused = [
        item
        for request in model.requests
        for item in request.items
        if isinstance(item, ToolResultItem) and item.is_error
    ]
    assert len(refused) == 1 and f"at most {MAX_DEPTH} levels" in refused[0].output
    assert len(model.requests) == 2 * (MAX_DEPTH + 1)
    with pytest.raises(ToolError, match=f"at most {MAX_DEPTH} levels"):
        Runner(tool_errors="raise").run_sync(echo, "go")


# -- several agent tools, partial decisions, expiry ----------------------------------------


@tool(needs_approval=True)
def post(to: str) -> str:
    """Post a letter."""
    POSTED.append(to)
    return f"posted to {to}"


POSTED: list[str] = []


def two_clerks() -> Agent:
    one = Agent("one", "", ScriptedModel([call("post", to="a"), say("one done")]), tools=[post])
    two = Agent(
        "two",
        "",
        ScriptedModel([[call("post", to="b"), call("post", to="c")], say("two done")]),
        tools=[post],
    )
    model = ScriptedModel([[call("one", input="x"), call("two", input="y")], say("all done")])
    return Agent("boss", "", model, tools=[one.as_tool(), two.as_tool()])


def test_calls_of_two_nested_runs_are_decided_separately_and_partially() -> None:
    POSTED.clear()
    paused = Runner().run_sync(two_clerks(), "go")
    assert [r.call_id for r in paused.interruptions] == [
        "call_0_0/call_0_0",
        "call_0_1/call_0_0",
        "call_0_1/call_0_1",
    ]
    partly = Runner().run_sync(two_clerks(), paused.state.approve("call_0_1/call_0_0"))
    assert partly.status == "interrupted" and POSTED == ["b"]
    assert [r.call_id for r in partly.interruptions] == ["call_0_0/call_0_0", "call_0_1/call_0_1"]
    state = partly.state.reject("call_0_0/call_0_0", message="not a").approve("call_0_1/call_0_1")
    done = Runner().run_sync(two_clerks(), state)
    assert done.status == "completed" and done.final_output == "all done"
    assert POSTED == ["b", "c"]
    assert [r.output for r in results(done.state)] == ["one done", "two done"]


def test_an_inner_call_expires_through_the_outer_run() -> None:
    POSTED.clear()
    now = [1000.0]

    def runner(store: MemoryStore) -> Runner:
        return Runner(store=store, approval_timeout=60, clock=lambda: now[0])

    told: list[str] = []

    def answer(request: Any) -> Any:
        told.append(request.items[-1].output)
        return say("gave up")

    async def test() -> None:
        store = MemoryStore()
        clerk = Agent("clerk", "", ScriptedModel([call("post", to="a"), answer]), tools=[post])
        boss = Agent(
            "boss",
            "",
            ScriptedModel([call("clerk", input="x"), say("ok")]),
            tools=[clerk.as_tool()],
        )
        paused = await runner(store).run(boss, "go", run_id="e1")
        (request,) = paused.interruptions
        assert request.deadline == 1060.0
        (waiting,) = (await store.waiting()).calls
        assert waiting.request.deadline == 1060.0
        now[0] += 120
        done = await runner(store).resume(boss, "e1")
        assert done.status == "completed"
        assert [(r.decision.kind, r.outcome) for r in done.state.audit] == [("expire", "applied")]

    run(test())
    assert POSTED == [] and told == ["No one decided on this tool call in time; it was not run."]


def test_a_hostile_document_nesting_states_without_end_is_refused_cleanly() -> None:
    state = Runner().run_sync(delegator.agent(), "go").state
    document = json.loads(state.to_json())
    inner_document = document.pop("nested")["call_0_0"]
    assert inner_document.pop("nested") == {}
    inner = json.dumps(inner_document)
    # Each level: a state whose nested run is the next level.
    depth = 5000
    nested = inner[:-1] + ',"nested":{"x":'
    text = nested * depth + inner + "}}" * depth
    outer = json.dumps(document)[:-1] + ',"nested":{"call_0_0":' + text + "}}"
    with pytest.raises(StateFormatError, match="nested too deeply"):
        RunState.from_json(outer)


# -- the pure core ---------------------------------------------------------------------------


def test_the_core_refuses_nested_steps_and_reports_that_do_not_fit() -> None:
    from agentfsm import ApprovalsDecided, InvalidEvent, ToolsFinished, step
    from agentfsm._nested import absorb

    paused = Runner().run_sync(delegator.agent(), "go").state
    inner = paused.nested["call_0_0"]
    with pytest.raises(InvalidEvent, match="only a run whose tools are running"):
        absorb(paused, "call_0_0", inner)
    running = paused.approve(paused.interruptions[0])
    agents = delegator.agent()
    tools = step(running, ApprovalsDecided(), agents).state
    assert tools.status is RunStatus.TOOLS
    assert tools.nested["call_0_0"].decisions  # handed to the nested run
    with pytest.raises(InvalidEvent, match="no started call"):
        absorb(tools, "call_9", inner)
    with pytest.raises(InvalidEvent, match="is not the nested run"):
        absorb(tools, "call_0_0", paused)
    moved = absorb(tools, "call_0_0", inner)
    assert moved.version == tools.version + 1 and moved.status is RunStatus.TOOLS
    # A report that the call waits for a nested run that does not wait is refused.
    working = step(tools.nested["call_0_0"], ApprovalsDecided(), delegator.mailer()).state
    assert working.status is RunStatus.TOOLS
    done = absorb(tools, "call_0_0", working)
    with pytest.raises(InvalidEvent, match="no call waiting"):
        step(done, ToolsFinished(nested=("call_0_0",)), agents)
    with pytest.raises(InvalidEvent, match="exactly once"):
        step(done, ToolsFinished(nested=("call_0_0", "call_0_0")), agents)


def test_a_model_error_inside_the_nested_run_stops_the_outer_run_which_resumes_it() -> None:
    from agentfsm.testing import ScriptExhausted

    POSTED.clear()

    @tool
    def note(to: str) -> str:
        """Note an address."""
        POSTED.append(to)
        return "noted"

    def boss(inner_turns: list[Any]) -> Agent:
        clerk = Agent("clerk", "", ScriptedModel(inner_turns), tools=[note])
        return Agent(
            "boss",
            "",
            ScriptedModel([call("clerk", input="x"), say("ok")]),
            tools=[clerk.as_tool()],
        )

    short = [call("note", to="a")]  # the inner model fails on its second turn
    with pytest.raises(ScriptExhausted) as raised:
        Runner().run_sync(boss(short), "go")
    state = raised.value.state
    assert state is not None and state.status is RunStatus.TOOLS  # the outer run's state
    assert state.nested["call_0_0"].status is RunStatus.RUNNING and POSTED == ["a"]
    done = Runner().run_sync(boss([*short, say("noted")]), RunState.from_json(state.to_json()))
    assert done.status == "completed" and [r.output for r in results(done.state)] == ["noted"]
    assert POSTED == ["a"]  # the inner run went on from its state: nothing ran twice


def test_an_agent_tool_that_needs_approval_starts_its_nested_run_only_when_approved() -> None:
    def boss() -> Agent:
        clerk = Agent("clerk", "", ScriptedModel([say("on it")]))
        model = ScriptedModel([call("clerk", input="x"), say("ok")])
        return Agent("boss", "", model, tools=[clerk.as_tool(needs_approval=True)])

    paused = Runner().run_sync(boss(), "go")
    (request,) = paused.interruptions
    assert (request.call_id, request.tool, request.arguments) == (
        "call_0_0",
        "clerk",
        {"input": "x"},
    )
    assert paused.state.nested == {}
    approved = Runner().run_sync(boss(), paused.state.approve(request))
    assert [r.output for r in results(approved.state)] == ["on it"]
    rejected = Runner().run_sync(boss(), paused.state.reject(request, message="no"))
    assert [r.output for r in results(rejected.state)] == ["no"]
    assert rejected.state.nested == {}
