"""Tools: schemas from signatures and docstrings, validation, definition errors."""

from __future__ import annotations

from typing import Literal

import pydantic
import pytest

from agentfsm import Agent, Tool, ToolArgumentsError, ToolContext, ToolDefinitionError, tool


def test_schema_comes_from_the_signature_and_the_docstring() -> None:
    @tool
    def search(query: str, limit: int = 5, mode: Literal["fast", "deep"] = "fast") -> list[str]:
        """Search the knowledge base.

        Longer explanation that stays in the description.

        Args:
            query: what to look for; may span
                two lines.
            limit: at most this many hits.
            mode: how hard to look.

        Returns:
            The hits.
        """
        return []

    assert search.name == "search"
    assert search.description.startswith("Search the knowledge base.")
    assert "Longer explanation" in search.description
    assert "Returns" not in search.description
    props = search.parameters["properties"]
    assert props["query"]["type"] == "string"
    assert props["query"]["description"] == "what to look for; may span two lines."
    assert props["limit"]["default"] == 5
    assert props["mode"]["enum"] == ["fast", "deep"]
    assert search.parameters["required"] == ["query"]
    assert search.parameters["additionalProperties"] is False


def test_sphinx_style_parameters_are_read_too() -> None:
    @tool(name="get-weather", description="Weather now.")
    async def weather(city: str) -> str:
        """Ignored.

        :param city: the city's name.
        """
        return "sunny"

    assert weather.name == "get-weather"
    assert weather.description == "Weather now."
    assert weather.is_async
    assert weather.parameters["properties"]["city"]["description"] == "the city's name."


def test_the_tool_context_parameter_is_injected_and_not_in_the_schema() -> None:
    @tool
    def whoami(ctx: ToolContext, prefix: str) -> str:
        return f"{prefix}{ctx.idempotency_key}"

    assert list(whoami.parameters["properties"]) == ["prefix"]
    context = ToolContext(
        run_id="r", call_id="c", tool="whoami", agent="a", idempotency_key="k", context=None
    )
    args, kwargs = whoami.bind({"prefix": ">"}, context)
    assert whoami.fn(*args, **kwargs) == ">k"


def test_validation_returns_json_data_and_explains_failures() -> None:
    class Point(pydantic.BaseModel):
        x: float
        y: float

    @tool
    def move(to: Point, speed: int) -> str:
        return "ok"

    assert move.validate_json('{"to": {"x": 1, "y": 2}, "speed": "3"}') == {
        "to": {"x": 1.0, "y": 2.0},
        "speed": 3,
    }
    with pytest.raises(ToolArgumentsError, match=r"to\.y: Field required"):
        move.validate_json('{"to": {"x": 1}, "speed": 3}')
    with pytest.raises(ToolArgumentsError, match="warp: Extra inputs"):
        move.validate({"to": {"x": 1, "y": 2}, "speed": 3, "warp": True})
    with pytest.raises(ToolArgumentsError, match="move"):
        move.validate_json("not json")


def test_functions_that_cannot_be_tools_are_refused_clearly() -> None:
    def varargs(*items: str) -> None: ...

    with pytest.raises(ToolDefinitionError, match=r"\*items"):
        tool(varargs)

    def fine() -> None: ...

    with pytest.raises(ToolDefinitionError, match="name"):
        tool(name="has space")(fine)
    with pytest.raises(ToolDefinitionError, match="timeout"):
        tool(timeout=0)(fine)
    with pytest.raises(ToolDefinitionError, match="needs_approval"):
        Tool(fine, needs_approval="yes")  # type: ignore[arg-type]


def test_positional_only_parameters_are_passed_positionally() -> None:
    @tool
    def power(base: int, /, exp: int = 2) -> int:
        return int(base**exp)

    context = ToolContext(
        run_id="r", call_id="c", tool="power", agent="a", idempotency_key="k", context=None
    )
    args, kwargs = power.bind({"base": 3, "exp": 3}, context)
    assert power.fn(*args, **kwargs) == 27


def test_agents_accept_plain_functions_as_tools() -> None:
    def shout(text: str) -> str:
        """Shout it."""
        return text.upper()

    agent = Agent("a", tools=[shout])
    assert isinstance(agent.tools[0], Tool)
    assert agent.tools[0].description == "Shout it."


def test_sync_tools_run_in_a_worker_thread_unless_inline() -> None:
    import threading

    from agentfsm import Runner
    from agentfsm.testing import ScriptedModel, call, say

    seen: dict[str, int] = {}

    @tool
    def threaded() -> str:
        seen["threaded"] = threading.get_ident()
        return "ok"

    @tool(inline=True)
    def quick() -> str:
        seen["quick"] = threading.get_ident()
        return "ok"

    model = ScriptedModel([[call("threaded"), call("quick")], say("done")])
    Runner().run_sync(Agent("a", tools=[threaded, quick], model=model), "go")
    assert seen["quick"] == threading.get_ident(), "inline runs on the event loop's thread"
    assert seen["threaded"] != threading.get_ident()


def test_inline_is_for_sync_tools_without_a_timeout() -> None:
    async def coroutine() -> None: ...

    def function() -> None: ...

    with pytest.raises(ToolDefinitionError, match="already run on the event loop"):
        tool(inline=True)(coroutine)
    with pytest.raises(ToolDefinitionError, match="cannot have a timeout"):
        tool(inline=True, timeout=1)(function)
