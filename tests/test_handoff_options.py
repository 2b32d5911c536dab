"""Handoff options (tool name, description, on_handoff, input_filter) by scenario: what the
models see, what the state keeps, a resume in a new process between each step, a process
killed between the filter and the step that records it, and filters that misbehave."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from apps.handoffs import agent as app_agent
from apps.handoffs import read_log
from fleet import ROOT, spawn, wait_until

from agentfsm import (
    Agent,
    AssistantMessage,
    ConfigurationError,
    ConflictError,
    HandedOff,
    HandoffError,
    HandoffInputData,
    InvalidEvent,
    ModelResponded,
    ModelResponse,
    ModelToolCall,
    RetryPolicy,
    Runner,
    RunState,
    SQLiteStore,
    Started,
    ToolCallItem,
    UserMessage,
    handoff,
    new_run,
    remove_tool_calls,
    step,
)
from agentfsm.testing import ScriptedModel, call, say

APP = "tests.apps.handoffs:agent"


def _env(log: Path, **extra: str) -> dict[str, str]:
    return {"HANDOFF_LOG": str(log), "PYTHONPATH": str(ROOT / "tests"), **extra}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    process = spawn(args, {**env, "HANDOFF_MODE": env.get("HANDOFF_MODE", "")})
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _kinds(entries: list[list[Any]], kind: str) -> list[list[Any]]:
    return [e for e in entries if e[0] == kind]


# -- what the models see -------------------------------------------------------------------


def test_the_model_sees_the_tool_name_and_description_and_the_next_agent_the_filtered_history() -> (
    None
):
    seen: list[HandoffInputData] = []
    called: list[Any] = []

    def keep_messages(data: HandoffInputData) -> list[Any]:
        seen.append(data)
        return [*remove_tool_calls(data), UserMessage(content="note")]

    async def noted(context: Any) -> None:
        await asyncio.sleep(0)
        context["touched"] = True  # a copy: the run's context does not change
        called.append(context)

    model = ScriptedModel([call("to_billing"), say("Hello from billing."), say("Again.")])
    billing = Agent("billing", "", model)
    triage = Agent(
        "triage",
        "",
        model,
        handoffs=[
            handoff(
                billing,
                tool_name="to_billing",
                description="Refunds.",
                input_filter=keep_messages,
                on_handoff=noted,
            )
        ],
    )
    result = Runner().run_sync(triage, "I want a refund", context={"user": "ada"})
    assert result.status == "completed"
    assert result.final_output == "Hello from billing."
    first, second = model.requests
    [spec] = first.tools
    assert (spec.name, spec.description) == ("to_billing", "Refunds.")
    # The filter saw the whole history the next agent would have seen; its result is what
    # that agent sees, in place of it.
    [data] = seen
    assert (data.source, data.target, data.context) == ("triage", "billing", {"user": "ada"})
    assert [type(i).__name__ for i in data.history] == [
        "UserMessage",
        "ToolCallItem",
        "ToolResultItem",
        "HandoffItem",
    ]
    assert second.input == (UserMessage(content="I want a refund"), UserMessage(content="note"))
    assert list(second.items) == []
    assert called == [{"user": "ada", "touched": True}]
    state = result.state
    assert state.context == {"user": "ada"}
    assert state.handoff_due is None
    assert state.handoff_input is not None
    assert state.handoff_input.items == second.input
    assert (state.handoff_input.source, state.handoff_input.target) == ("triage", "billing")
    # The audit keeps everything: the transcript is not rewritten.
    assert any(isinstance(i, ToolCallItem) for i in state.items)
    assert RunState.from_json(state.to_json()) == state


def test_a_handoff_without_a_filter_gives_the_whole_history_and_runs_on_handoff_once() -> None:
    calls: list[Any] = []
    model = ScriptedModel([call("transfer_to_billing"), say("done")])
    billing = Agent("billing", "", model)
    triage = Agent("triage", "", model, handoffs=[handoff(billing, on_handoff=calls.append)])
    result = Runner().run_sync(triage, "hi", context=[1])
    assert result.final_output == "done"
    assert calls == [[1]]
    assert result.state.handoff_input is None
    assert len(model.requests[1].items) == 3  # the call, its result, the handoff


def test_options_on_a_later_handoff_filter_what_the_earlier_one_gave() -> None:
    model = ScriptedModel([call("transfer_to_b"), call("transfer_to_c"), say("from c")])
    c = Agent("c", "", model)
    b = Agent(
        "b",
        "",
        model,
        handoffs=[handoff(c, input_filter=lambda d: [*d.history, UserMessage(content="2")])],
    )
    a = Agent(
        "a", "", model, handoffs=[handoff(b, input_filter=lambda d: [UserMessage(content="1")])]
    )
    result = Runner().run_sync(a, "start")
    assert result.final_output == "from c"
    third = model.requests[2]
    assert third.input[0] == UserMessage(content="1")
    assert third.input[-1] == UserMessage(content="2")
    assert len(third.input) == 5  # "1", b's handoff call, its result and handoff item, "2"


# -- resumes in new processes --------------------------------------------------------------


def test_each_step_resumed_in_a_new_process_never_runs_the_filter_again(tmp_path: Path) -> None:
    db, log = tmp_path / "runs.db", tmp_path / "log.jsonl"
    env = _env(log)
    started = _cli(
        [
            "run",
            "--store",
            str(db),
            "--app",
            APP,
            "--run-id",
            "r1",
            "--context",
            '{"u": 1}',
            "--json",
            "refund A-1",
        ],
        env,
    )
    assert started.returncode == 3, started.stderr  # waiting for the refund's approval
    entries = read_log(log)
    assert _kinds(entries, "on_handoff") == [["on_handoff", {"u": 1}]]
    assert _kinds(entries, "filter") == [
        [
            "filter",
            [
                "UserMessage",
                "ToolCallItem",
                "ToolResultItem",
                "ToolCallItem",
                "ToolResultItem",
                "HandoffItem",
            ],
        ]
    ]
    # billing saw the filtered history, and its forced tool choice.
    assert _kinds(entries, "billing") == [
        ["billing", ["UserMessage", "UserMessage"], 0, "required"]
    ]

    document = json.loads(started.stdout)
    [waiting] = document["waiting"]
    decided = _cli(
        ["approve", "--store", str(db), "--digest", waiting["digest"], "r1", waiting["call_id"]],
        env,
    )
    assert decided.returncode == 0, decided.stderr
    resumed = _cli(["resume", "--store", str(db), "--app", APP, "--json", "r1"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["final_output"] == "Refunded 5 EUR."
    entries = read_log(log)
    assert len(_kinds(entries, "filter")) == 1
    assert len(_kinds(entries, "on_handoff")) == 1
    # The resumed process gave billing what the filter gave, kept in the state; billing had
    # called a tool, so its forced choice was reset.
    assert _kinds(entries, "billing")[1] == ["billing", ["UserMessage", "UserMessage"], 2, "auto"]
    state = asyncio.run(SQLiteStore(db).load("r1"))
    assert state.handoff_input is not None
    assert state.handoff_input.items[-1] == UserMessage(content="Handed over by triage.")


def test_a_process_killed_after_the_filter_ran_runs_it_again_on_resume(tmp_path: Path) -> None:
    """At least once: the filter ran, and the step that records it never saved."""
    db, log = tmp_path / "runs.db", tmp_path / "log.jsonl"
    script = (
        "import sys; from agentfsm import Runner, SQLiteStore; "
        "from apps.handoffs import agent; "
        "Runner(store=SQLiteStore(sys.argv[1]), lease_seconds=0.5)"
        ".run_sync(agent(), 'refund A-1', run_id='r1')"
    )
    crashed = subprocess.run(
        [sys.executable, "-c", script, str(db)],
        env={**os.environ, **_env(log, HANDOFF_MODE="crash")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == 17, crashed.stderr
    assert len(_kinds(read_log(log), "filter")) == 1
    store = SQLiteStore(db)
    saved = asyncio.run(store.load("r1"))
    assert saved.status == "running"
    assert saved.handoff_due is not None and saved.handoff_input is None
    assert saved.current_agent == "billing"

    os.environ["HANDOFF_LOG"] = str(log)
    try:
        runner = Runner(store=store, lease_seconds=5)
        results: list[Any] = []

        def resumed() -> bool:
            try:
                results.append(runner.resume_sync(app_agent(), "r1"))
            except ConflictError:  # the dead process's lease has not run out yet
                return False
            return True

        wait_until(resumed, 30, "the dead process's lease to run out")
    finally:
        del os.environ["HANDOFF_LOG"]
    [result] = results
    assert result.status == "interrupted"
    entries = read_log(log)
    assert len(_kinds(entries, "filter")) == 2
    assert len(_kinds(entries, "on_handoff")) == 2
    assert result.state.handoff_input is not None
    assert result.state.handoff_due is None


# -- misbehaving filters -------------------------------------------------------------------


def _bad(result: Any) -> Any:
    return lambda data: result


@pytest.mark.parametrize(
    ("filter_", "says"),
    [
        (_bad("text"), "must return a list of items"),
        (_bad(None), "must return a list of items"),
        (_bad([{"type": "user_message", "content": "hi"}]), "dict at position 0"),
        (_bad([UserMessage(content=5)]), "do not fit"),  # type: ignore[arg-type]
        (_bad([UserMessage(content="\ud800")]), "not valid Unicode"),
        (_bad([AssistantMessage(content="x", agent=object())]), "input_filter"),  # type: ignore[arg-type]
        (lambda data: 1 / 0, "raised ZeroDivisionError"),
    ],
    ids=["str", "none", "dict", "wrong-type", "surrogate", "object", "raises"],
)
def test_a_filter_that_fails_stops_the_run_intact_and_a_fixed_one_resumes_it(
    filter_: Any, says: str, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "runs.db")

    def agents(fixed: bool) -> Agent:
        model = ScriptedModel([call("transfer_to_b"), say("from b")])
        b = Agent("b", "", model)
        good = lambda data: [UserMessage(content="ok")]  # noqa: E731
        return Agent("a", "", model, handoffs=[handoff(b, input_filter=good if fixed else filter_)])

    with pytest.raises(HandoffError, match=says) as raised:
        Runner(store=store).run_sync(agents(False), "hi", run_id="r1")
    assert "input_filter of the handoff from 'a' to 'b'" in str(raised.value)
    assert raised.value.state is not None
    stored = asyncio.run(store.load("r1"))  # loadable: nothing poisoned
    assert stored.status == "running" and stored.handoff_due is not None
    assert stored == raised.value.state
    result = Runner(store=store).resume_sync(agents(True), "r1")
    assert result.final_output == "from b"
    assert result.state.handoff_input is not None
    assert result.state.handoff_input.items == (UserMessage(content="ok"),)


def test_an_on_handoff_that_raises_stops_the_run_before_the_next_turn() -> None:
    model = ScriptedModel([call("transfer_to_b"), say("from b")])

    def broken(context: Any) -> None:
        raise KeyError("missing")

    a = Agent("a", "", model, handoffs=[handoff(Agent("b", "", model), on_handoff=broken)])
    with pytest.raises(HandoffError, match="on_handoff of the handoff from 'a' to 'b' raised"):
        Runner().run_sync(a, "hi")
    assert len(model.requests) == 1


def test_the_cli_says_a_broken_filter_in_one_line_and_a_worker_survives_it(
    tmp_path: Path,
) -> None:
    db, log = tmp_path / "runs.db", tmp_path / "log.jsonl"
    env = _env(log, HANDOFF_MODE="raise")
    failed = _cli(["run", "--store", str(db), "--app", APP, "--run-id", "r1", "hi"], env)
    assert failed.returncode == 1
    assert failed.stderr.strip().count("\n") == 0, failed.stderr
    assert "the filter broke" in failed.stderr and "Traceback" not in failed.stderr
    # A worker counts the failures and goes on; the run is parked after two, intact.
    store = SQLiteStore(db)
    os.environ["HANDOFF_MODE"] = "text"
    try:
        retry = RetryPolicy(attempts=2, backoff=0)
        worked = asyncio.run(Runner(store=store, retry=retry).work(app_agent(), until_idle=True))
    finally:
        del os.environ["HANDOFF_MODE"]
    assert worked == 0
    state = asyncio.run(store.load("r1"))
    assert state.handoff_due is not None
    fixed = _cli(["resume", "--store", str(db), "--app", APP, "r1"], _env(log))
    assert fixed.returncode == 3, fixed.stderr  # on to billing's refund, which waits


# -- the core ------------------------------------------------------------------------------


def test_the_step_waits_for_handed_off_and_keeps_what_it_carries() -> None:
    b = Agent("b")
    a = Agent("a", handoffs=[handoff(b, input_filter=remove_tool_calls)])
    state = step(new_run(a, "hi", run_id="r"), Started(), a).state
    calls = (ModelToolCall(call_id="c1", name="transfer_to_b"),)
    state, outcome = step(state, ModelResponded(response=ModelResponse(tool_calls=calls)), a)
    assert state.handoff_due is not None
    assert (outcome.source, outcome.target) == ("a", "b")  # type: ignore[union-attr]
    with pytest.raises(InvalidEvent, match="step HandedOff first"):
        step(state, ModelResponded(response=ModelResponse(text="x")), a)
    with pytest.raises(InvalidEvent, match="stored as JSON"):
        step(state, HandedOff(input=(UserMessage(content="\ud800"),)), a)
    with pytest.raises(InvalidEvent, match="does not fit"):
        step(state, HandedOff(input=(UserMessage(content=5),)), a)  # type: ignore[arg-type]
    new, outcome = step(state, HandedOff(input=(UserMessage(content="only this"),)), a)
    assert new.handoff_due is None
    assert new.handoff_input is not None and new.handoff_input.start == len(state.items)
    assert new.conversation() == ((UserMessage(content="only this"),), ())
    with pytest.raises(InvalidEvent, match="no handoff"):
        step(new, HandedOff(), a)
    # A plain handoff takes no HandedOff.
    plain = Agent("a", handoffs=[b])
    s = step(new_run(plain, "hi", run_id="r"), Started(), plain).state
    s = step(s, ModelResponded(response=ModelResponse(tool_calls=calls)), plain).state
    assert s.handoff_due is None and s.current_agent == "b"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: handoff(Agent("b"), tool_name="has space"), "tool_name"),
        (lambda: handoff(Agent("b"), tool_name="x" * 65), "tool_name"),
        (lambda: handoff(Agent("b"), input_filter="no"), "input_filter must be a function"),
        (lambda: handoff(Agent("b"), on_handoff=3), "on_handoff must be a function"),
        (lambda: handoff("b"), "takes an Agent"),  # type: ignore[arg-type]
        (lambda: Agent("a", handoffs=["b"]), "handoffs holds agents"),  # type: ignore[list-item]
        (
            lambda: Runner().run_sync(
                Agent("a", handoffs=[Agent("b"), handoff(Agent("c"), tool_name="transfer_to_b")]),
                "hi",
            ),
            "clashes",
        ),
    ],
)
def test_bad_handoff_options_are_refused_when_declared(make: Any, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        make()


def test_a_state_from_before_handoff_options_loads_without_them() -> None:
    fixture = Path(__file__).resolve().parent / "fixtures" / "state_v3.json"
    state = RunState.from_json(fixture.read_text())
    assert (state.handoff_due, state.handoff_input, state.stored_response) == (None, None, None)
    assert RunState.from_json(state.to_json()) == state


def test_a_filter_may_return_the_input_data_as_the_agents_sdks_do() -> None:
    def trim(data: HandoffInputData) -> HandoffInputData:
        return HandoffInputData(
            source=data.source, target=data.target, history=data.history[:1], context=None
        )

    model = ScriptedModel([call("transfer_to_b"), say("b")])
    a = Agent("a", "", model, handoffs=[handoff(Agent("b", "", model), input_filter=trim)])
    Runner().run_sync(a, "only this")
    assert model.requests[1].input == (UserMessage(content="only this"),)


def test_a_run_waiting_for_options_the_code_no_longer_has_goes_on_without_them(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    model = ScriptedModel([call("transfer_to_b"), say("b, with everything")])

    def broken(data: HandoffInputData) -> list[Any]:
        raise RuntimeError("broken")

    a = Agent("a", "", model, handoffs=[handoff(Agent("b", "", model), input_filter=broken)])
    with pytest.raises(HandoffError):
        Runner(store=store).run_sync(a, "hi", run_id="r1")
    plain = Agent("a", "", model, handoffs=[Agent("b", "", model)])  # the filter was removed
    result = Runner(store=store).resume_sync(plain, "r1")
    assert result.final_output == "b, with everything"
    assert result.state.handoff_input is None
    assert len(model.requests[-1].items) == 3
