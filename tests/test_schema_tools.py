"""Tools built from a given JSON Schema (Tool.from_schema), pinned tools on resume, and a
tool that says its call is in doubt (ToolInDoubt)."""

from __future__ import annotations

from typing import Any

import pytest

from agentfsm import (
    Agent,
    Runner,
    Tool,
    ToolArgumentsError,
    ToolChangedError,
    ToolContext,
    ToolDefinitionError,
    ToolInDoubt,
)
from agentfsm.testing import ScriptedModel, call, say

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"path": {"type": "string"}, "lines": {"type": "integer", "minimum": 1}},
    "required": ["path"],
    "additionalProperties": False,
}


def reader(schema: dict[str, Any] = SCHEMA, **options: Any) -> Tool:
    def read(arguments: dict[str, Any], context: ToolContext) -> str:
        return f"{arguments['path']} for {context.call_id}"

    return Tool.from_schema(read, schema, name="read", description="Read a file.", **options)


def test_a_schema_tool_validates_against_its_schema_and_gets_the_arguments_as_a_dict() -> None:
    read = reader()
    assert read.spec.parameters == SCHEMA
    assert read.description == "Read a file."
    assert read.validate({"path": "a", "lines": 2}) == {"path": "a", "lines": 2}
    with pytest.raises(ToolArgumentsError, match=r"\$\.path: required"):
        read.validate({})
    with pytest.raises(ToolArgumentsError, match="not an argument"):
        read.validate_json('{"path": "a", "mode": "w"}')
    with pytest.raises(ToolArgumentsError, match=">= 1"):
        read.validate({"path": "a", "lines": 0})
    model = ScriptedModel([call("read", path="x"), say("done")])
    result = Runner().run_sync(Agent("a", "", model, tools=[read]), "go")
    assert result.final_output == "done"
    outputs = [getattr(i, "output", "") for i in result.state.items]
    assert any(str(o).startswith("x for ") for o in outputs)


def test_a_schema_must_describe_an_object() -> None:
    with pytest.raises(ToolDefinitionError, match="object"):
        reader({"type": "string"})
    assert reader({"type": "object"}).parameters == {"type": "object", "properties": {}}


def test_a_pinned_tool_that_changed_or_went_away_while_a_run_paused_is_a_clear_error() -> None:
    model = ScriptedModel([call("read", path="x"), say("done")])
    paused = Runner().run_sync(
        Agent("a", "", model, tools=[reader(needs_approval=True, pinned=True)]), "go"
    )
    assert paused.status == "interrupted"
    (request,) = paused.interruptions
    approved = paused.state.approve(request)
    wider = {**SCHEMA, "properties": {**SCHEMA["properties"], "mode": {"type": "string"}}}
    changed = Agent("a", "", model, tools=[reader(wider, needs_approval=True, pinned=True)])
    with pytest.raises(ToolChangedError, match="added: mode") as info:
        Runner().run_sync(changed, approved)
    assert info.value.tool == "read"
    with pytest.raises(ToolChangedError, match="gone"):
        Runner().run_sync(Agent("a", "", model, tools=[]), approved)
    same = Agent("a", "", model, tools=[reader(needs_approval=True, pinned=True)])
    assert Runner().run_sync(same, approved).final_output == "done"


def test_a_tool_that_raises_tool_in_doubt_leaves_its_call_in_doubt() -> None:
    async def send(arguments: dict[str, Any], context: ToolContext) -> str:
        raise ToolInDoubt("the server went away mid-call")

    send_tool = Tool.from_schema(send, {"type": "object"}, name="send")
    model = ScriptedModel([call("send"), say("done")])
    result = Runner().run_sync(Agent("a", "", model, tools=[send_tool]), "go")
    assert result.status == "interrupted"
    (request,) = result.interruptions
    assert request.reason == "in_doubt"
