"""The driver, end to end with the scripted model: handoffs, structured output, turn limits,
tool failures, bad models, and names that no longer resolve."""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
import time
import uuid
from typing import Any

import msgspec
import pydantic
import pytest

from agentfsm import (
    Agent,
    AssistantMessage,
    Cancelled,
    ConfigurationError,
    ContextError,
    Feedback,
    HandoffItem,
    Injected,
    ModelBehaviorError,
    ModelError,
    ModelRequest,
    ModelResponse,
    ModelToolCall,
    Runner,
    RunState,
    RunStatus,
    Starter,
    ToolCallItem,
    ToolContext,
    ToolError,
    ToolResultItem,
    UnknownAgentError,
    UnknownToolError,
    UserMessage,
    step,
    tool,
)
from agentfsm.testing import ScriptedModel, ScriptExhausted, call, handoff, say


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool
def boom() -> str:
    raise RuntimeError("kaput")


@tool(timeout=0.05)
async def slow_async() -> str:
    await asyncio.sleep(5)
    return "never"


@tool(timeout=0.05)
def slow_sync() -> str:
    time.sleep(0.3)
    return "never"


def results(state: RunState) -> list[ToolResultItem]:
    return [i for i in state.items if isinstance(i, ToolResultItem)]


def test_handoffs_switch_the_current_agent_and_one_script_drives_both() -> None:
    model = ScriptedModel([handoff("billing"), call("add", a=2, b=3), say("5, from billing")])
    billing = Agent("billing", "You do sums.", model, tools=[add])
    triage = Agent("triage", "Route.", model, handoffs=[billing])
    done = Runner().run_sync(triage, "what is 2+3?")
    assert done.status == "completed"
    assert done.final_output == "5, from billing"
    assert done.state.current_agent == "billing"
    assert done.state.starting_agent == "triage"
    assert any(isinstance(i, HandoffItem) and i.target == "billing" for i in done.items)
    assert [r.agent for r in model.requests] == ["triage", "billing", "billing"]
    assert results(done.state)[-1].output == "5"
    assert [t.name for t in model.requests[0].tools] == ["transfer_to_billing"]


def test_a_resumed_run_resolves_every_agent_reachable_from_the_starting_one() -> None:
    model = ScriptedModel([handoff("billing"), call("add", a=1, b=1), say("2")])
    gate = tool(needs_approval=True)(add.fn)
    billing = Agent("billing", "", model, tools=[gate])
    triage = Agent("triage", "", model, handoffs=[billing])
    paused = Runner().run_sync(triage, "go")
    assert paused.status == "interrupted"
    assert paused.interruptions[0].agent == "billing"
    state = RunState.from_json(paused.state.to_json()).approve(paused.interruptions[0].call_id)
    assert Runner().run_sync(triage, state).final_output == "2"


class Answer(pydantic.BaseModel):
    city: str
    population: int


def test_output_type_is_validated_and_failures_go_back_to_the_model() -> None:
    model = ScriptedModel(
        [say("Paris, about two million"), say('{"city": "Paris", "population": 2100000}')]
    )
    agent = Agent("geo", "", model, output_type=Answer)
    done = Runner().run_sync(agent, "biggest French city?")
    assert done.status == "completed"
    assert done.final_output == Answer(city="Paris", population=2100000)
    feedback = [i for i in done.items if isinstance(i, Feedback)]
    assert len(feedback) == 1
    assert "schema" in feedback[0].content
    assert model.requests[1].output_schema == pydantic.TypeAdapter(Answer).json_schema()
    loaded = RunState.from_json(done.state.to_json())
    assert loaded.final_output == {"city": "Paris", "population": 2100000}


def test_max_turns_fails_the_run_which_stays_resumable_with_a_higher_limit() -> None:
    model = ScriptedModel([call("add", a=1, b=1)] * 3 + [say("done")])
    agent = Agent("a", "", model, tools=[add])
    failed = Runner().run_sync(agent, "go", max_turns=2)
    assert failed.status == "failed"
    assert failed.error is not None and "max_turns" in failed.error
    assert failed.state.error is not None and failed.state.error.kind == "max_turns_exceeded"
    loaded = RunState.from_json(failed.state.to_json())
    assert loaded == failed.state
    assert Runner().run_sync(agent, loaded).status == "failed"
    done = Runner().run_sync(agent, loaded, max_turns=10)
    assert done.status == "completed"
    assert done.final_output == "done"
    assert done.state.error is None
    assert len(results(done.state)) == 3


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_a_bad_max_turns_is_a_configuration_error_wherever_it_is_given(bad: Any) -> None:
    from agentfsm import MemoryStore, new_run

    agent = Agent("a", "", ScriptedModel([call("add", a=1, b=1), say("done")]), tools=[add])
    with pytest.raises(ConfigurationError, match="max_turns must be an int of at least 0"):
        new_run(agent, "go", run_id="r", max_turns=bad)
    with pytest.raises(ConfigurationError, match="max_turns must be"):
        Runner().run_sync(agent, "go", max_turns=bad)
    failed = Runner().run_sync(agent, "go", max_turns=0)
    assert failed.status == "failed"
    with pytest.raises(ConfigurationError, match="max_turns must be"):
        Runner().run_sync(agent, failed.state, max_turns=bad)
    store = MemoryStore()
    Runner(store=store).run_sync(agent, "go", run_id="s", max_turns=0)
    with pytest.raises(ConfigurationError, match="max_turns must be"):
        Runner(store=store).resume_sync(agent, "s", max_turns=bad)
    assert Runner(store=store).resume_sync(agent, "s", max_turns=5).status == "completed"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "30"])
def test_a_runner_refuses_a_lease_that_is_not_a_positive_number_of_seconds(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="lease_seconds must be a positive number"):
        Runner(lease_seconds=bad)


def test_tool_errors_and_timeouts_are_results_the_model_sees() -> None:
    model = ScriptedModel([[call("boom"), call("slow_async"), call("slow_sync")], say("sorry")])
    agent = Agent("a", "", model, tools=[boom, slow_async, slow_sync])
    paused = Runner(owner="w1").run_sync(agent, "go")
    by_tool = {r.tool: r for r in results(paused.state)}
    assert all(r.is_error for r in by_tool.values())
    assert "RuntimeError: kaput" in by_tool["boom"].output
    assert "timed out after 0.05 seconds and was stopped" in by_tool["slow_async"].output
    # A sync tool's thread goes on after its timeout: it may yet take effect, so the call is
    # in doubt, never reported as not done.
    assert "slow_sync" not in by_tool
    [doubt] = paused.interruptions
    assert (doubt.tool, doubt.reason) == ("slow_sync", "in_doubt")
    assert doubt.started_by == Starter(worker="w1")  # its body may still run there
    done = Runner().run_sync(agent, paused.state.reject(doubt))
    assert done.status == "completed"


def test_tool_errors_can_raise_instead_and_keep_the_state() -> None:
    agent = Agent("a", "", ScriptedModel([call("boom"), say("x")]), tools=[boom])
    with pytest.raises(ToolError, match="kaput") as caught:
        Runner(tool_errors="raise").run_sync(agent, "go")
    assert caught.value.state is not None
    assert caught.value.state.status is RunStatus.TOOLS


def test_unknown_tools_and_malformed_arguments_are_tool_errors_not_crashes() -> None:
    response = ModelResponse(
        tool_calls=(
            ModelToolCall(call_id="1", name="nope", arguments="{}"),
            ModelToolCall(call_id="2", name="add", arguments='{"a": 1, "b": '),
            ModelToolCall(call_id="3", name="add", arguments='{"a": "x", "b": 2}'),
            ModelToolCall(call_id="4", name="add", arguments='{"a": 1, "b": 2}'),
        )
    )
    agent = Agent("a", "", ScriptedModel([response, say("ok")]), tools=[add])
    done = Runner().run_sync(agent, "go")
    out = {r.call_id: r for r in results(done.state)}
    assert "Unknown tool 'nope'" in out["1"].output and out["1"].is_error
    assert out["2"].is_error and "invalid arguments" in out["2"].output
    assert out["3"].is_error and "a:" in out["3"].output
    assert out["4"].output == "3" and not out["4"].is_error
    with pytest.raises(ModelBehaviorError, match="nope"):
        Runner(tool_errors="raise").run_sync(agent, "go")


class Garbage:
    async def respond(self, request: ModelRequest) -> Any:
        return {"text": "not a response"}


class Broken:
    async def respond(self, request: ModelRequest) -> ModelResponse:
        raise ConnectionError("server went away")


def test_a_model_that_returns_garbage_or_fails_raises_our_error_with_the_state() -> None:
    with pytest.raises(ModelBehaviorError, match="dict") as garbage:
        Runner().run_sync(Agent("a", "", Garbage()), "go")
    assert garbage.value.state is not None
    assert garbage.value.state.status is RunStatus.RUNNING
    with pytest.raises(ModelError, match="server went away") as broken:
        Runner().run_sync(Agent("a", "", Broken()), "go")
    state = broken.value.state
    assert state is not None
    done = Runner().run_sync(Agent("a", "", ScriptedModel([say("back")])), state)
    assert done.final_output == "back"


def test_duplicate_call_ids_from_the_model_are_refused() -> None:
    twice = ModelResponse(
        tool_calls=(ModelToolCall(call_id="x", name="add"), ModelToolCall(call_id="x", name="add"))
    )
    with pytest.raises(ModelBehaviorError, match="distinct"):
        Runner().run_sync(Agent("a", "", ScriptedModel([twice]), tools=[add]), "go")


def test_a_script_that_runs_out_says_so() -> None:
    with pytest.raises(ScriptExhausted, match="1 turns"):
        Runner().run_sync(Agent("a", "", ScriptedModel([call("add", a=1, b=2)]), tools=[add]), "go")


def test_names_that_no_longer_resolve_are_clear_errors() -> None:
    gate = tool(needs_approval=True)(add.fn)
    model = ScriptedModel([call("add", a=1, b=1), say("2")])
    paused = Runner().run_sync(Agent("a", "", model, tools=[gate]), "go")
    with pytest.raises(UnknownAgentError, match="'a'"):
        Runner().run_sync(Agent("b", "", model, tools=[gate]), paused.state)
    # A waiting call whose tool is gone stays decidable: approving it is refused (and
    # recorded), rejecting it needs no code.
    renamed = Agent("a", "", model, tools=[])
    (request,) = paused.interruptions
    refused = Runner().run_sync(renamed, paused.state.approve(request))
    assert refused.status == "interrupted"
    assert refused.state.audit[-1].outcome == "refused"
    assert "tool 'add' of agent 'a' no longer exists" in (refused.state.audit[-1].reason or "")
    done = Runner().run_sync(renamed, refused.state.reject(request, message="gone"))
    assert done.status == "completed"
    # A call that must run needs its tool.
    running = msgspec.structs.replace(
        refused.state,
        status=RunStatus.TOOLS,
        ledger=tuple(msgspec.structs.replace(c, status="started") for c in refused.state.ledger),
    )
    with pytest.raises(UnknownToolError, match="'add'"):
        Runner().run_sync(renamed, running)


def test_context_must_be_json_and_reaches_the_instructions() -> None:
    seen: list[Any] = []

    def instructions(context: Any) -> str:
        seen.append(context)
        return f"The user is {context['user']}."

    model = ScriptedModel([say("hi")])
    agent = Agent("a", instructions, model)
    Runner().run_sync(agent, "go", context={"user": "ada"})
    assert model.requests[0].instructions == "The user is ada."
    assert seen == [{"user": "ada"}]
    with pytest.raises(ContextError, match=r"\$\.when"):
        Runner().run_sync(agent, "go", context={"when": time})


def test_injected_input_waits_for_the_resume_and_reaches_the_model() -> None:
    gate = tool(needs_approval=True)(add.fn)
    model = ScriptedModel([call("add", a=1, b=1), say("done")])
    agent = Agent("a", "", model, tools=[gate])
    paused = Runner().run_sync(agent, "go")
    state, _ = step(paused.state, Injected(items=(UserMessage(content="also, hurry"),)), agent)
    assert state.status is RunStatus.INTERRUPTED
    assert state.staged
    done = Runner().run_sync(agent, state.approve("call_0_0"))
    assert done.status == "completed"
    assert UserMessage(content="also, hurry") in list(model.requests[-1].items)
    assert not done.state.staged


def test_a_cancelled_run_is_over() -> None:
    gate = tool(needs_approval=True)(add.fn)
    agent = Agent("a", "", ScriptedModel([call("add", a=1, b=1)]), tools=[gate])
    paused = Runner().run_sync(agent, "go")
    cancelled, outcome = step(paused.state, Cancelled(reason="user gave up"), agent)
    assert outcome.error is not None and outcome.error.kind == "cancelled"
    assert cancelled.status is RunStatus.CANCELLED
    result = Runner().run_sync(agent, cancelled)
    assert result.status == "cancelled"
    assert result.error == "user gave up"


def test_run_sync_inside_an_event_loop_is_a_clear_error() -> None:
    async def inside() -> None:
        Runner().run_sync(Agent("a", "", ScriptedModel([say("x")])), "go")

    with pytest.raises(ConfigurationError, match="event loop"):
        asyncio.run(inside())


def test_final_answer_is_recorded_as_an_assistant_message() -> None:
    done = Runner().run_sync(Agent("a", "", ScriptedModel([say("hello")])), "hi")
    assert done.items == [AssistantMessage(content="hello", agent="a")]
    assert done.usage.requests == 1


def test_an_interrupted_run_can_resume_with_a_new_turn_limit() -> None:
    gate = tool(needs_approval=True)(add.fn)
    model = ScriptedModel([call("add", a=1, b=1), call("add", a=2, b=2), say("done")])
    agent = Agent("a", "", model, tools=[gate])
    paused = Runner().run_sync(agent, "go", max_turns=1)
    assert paused.status == "interrupted"
    approved = paused.state.approve("call_0_0", always=True)
    assert Runner().run_sync(agent, approved).status == "failed"
    done = Runner().run_sync(agent, approved, max_turns=5)
    assert done.status == "completed"
    assert done.state.max_turns == 5


def test_a_run_caught_mid_turn_keeps_its_turn_limit() -> None:
    agent = Agent("a", "", Broken())
    with pytest.raises(ModelError) as caught:
        Runner().run_sync(agent, "go")
    assert caught.value.state is not None
    with pytest.raises(ConfigurationError, match="keeps its max_turns"):
        Runner().run_sync(agent, caught.value.state, max_turns=99)


def test_non_finite_numbers_from_the_model_never_reach_the_state() -> None:
    @tool
    def scale(factor: float, payload: Any = None) -> str:
        return "scaled"

    class Reading(pydantic.BaseModel):
        value: float

    bad_args = ModelResponse(
        tool_calls=(
            ModelToolCall(call_id="1", name="scale", arguments='{"factor": NaN}'),
            ModelToolCall(
                call_id="2", name="scale", arguments='{"factor": 1, "payload": Infinity}'
            ),
        )
    )
    model = ScriptedModel([bad_args, say('{"value": Infinity}'), say('{"value": 1.5}')])
    done = Runner().run_sync(Agent("a", "", model, tools=[scale], output_type=Reading), "go")
    assert done.status == "completed"
    assert done.final_output == Reading(value=1.5)
    for result in results(done.state):
        assert result.is_error
        assert "not valid JSON" in result.output
    assert any(isinstance(i, Feedback) for i in done.items)
    assert RunState.from_json(done.state.to_json()) == done.state


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Line(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, frozen=True)
    sku: uuid.UUID
    due: datetime.date


class Ticket(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, frozen=True)
    opened: datetime.datetime
    priority: Priority
    lines: tuple[Line, ...]


def test_strict_structured_output_comes_back_as_the_same_value_after_json_and_a_store(
    tmp_path: Any,
) -> None:
    from agentfsm import SQLiteStore

    ticket = Ticket(
        opened=datetime.datetime(2026, 11, 29, 12, 30, tzinfo=datetime.UTC),
        priority=Priority.HIGH,
        lines=(Line(sku=uuid.UUID(int=7), due=datetime.date(2026, 12, 1)),),
    )

    def agent() -> Agent:
        return Agent("a", "", ScriptedModel([say(ticket.model_dump_json())]), output_type=Ticket)

    store = SQLiteStore(tmp_path / "runs.db")
    try:
        done = Runner(store=store).run_sync(agent(), "open a ticket", run_id="t1")
        assert done.status == "completed"
        assert done.final_output == ticket
        again = Runner().run_sync(agent(), RunState.from_json(done.state.to_json()))
        assert again.final_output == ticket
        resumed = Runner(store=store).resume_sync(agent(), "t1")
        assert (resumed.status, resumed.final_output) == ("completed", ticket)
    finally:
        asyncio.run(store.close())


def test_a_completed_run_stays_completed_when_its_output_type_changed() -> None:
    done = Runner().run_sync(
        Agent("a", "", ScriptedModel([say('{"n": 1}')]), output_type=dict[str, int]), "go"
    )
    changed = Agent("a", "", ScriptedModel([]), output_type=Ticket)
    again = Runner().run_sync(changed, done.state)
    assert again.status == "completed"
    assert again.final_output == {"n": 1}  # the JSON data it was stored as


def test_what_tools_and_callbacks_do_to_the_context_changes_no_state() -> None:
    seen: list[RunState] = []

    def instructions(context: Any) -> str:
        context["poked"] = True
        return "help"

    async def rule(context: Any, arguments: dict[str, Any]) -> bool:
        context["n"] += 100
        arguments["tags"].append("rule")
        return False

    @tool(needs_approval=rule)
    def count(tags: list[str], ctx: ToolContext) -> str:
        ctx.context["n"] += 1
        ctx.context["seen"] = {1, 2}  # not even JSON
        tags.append("tool")
        return "counted"

    model = ScriptedModel([call("count", tags=["a"]), say("ok")])
    agent = Agent("a", instructions, model, tools=[count])
    done = Runner(on_step=seen.append).run_sync(agent, "go", context={"n": 0})
    assert done.status == "completed"
    assert all(state.context == {"n": 0} for state in seen)
    assert done.state.context == {"n": 0}
    assert RunState.from_json(done.state.to_json()) == done.state
    (tool_call,) = [i for i in done.state.items if isinstance(i, ToolCallItem)]
    assert json.loads(tool_call.arguments) == {"tags": ["a"]}
