"""Opt-in: agentfsm against a real model server.

Skipped unless ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` is set (then the provider is
configured from them, as ``default_provider()`` is). ``AGENTFSM_TEST_MODEL`` names the model
(default ``gpt-4.1-mini``), ``AGENTFSM_TEST_API`` the API (``chat``, the default, or
``responses``). The model must support tool calls. For example::

    OPENAI_BASE_URL=http://localhost:11434/v1 AGENTFSM_TEST_MODEL=qwen2.5:7b \\
        .venv/bin/python -m pytest tests/test_models_live.py -v
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import pydantic
import pytest

from agentfsm import Agent, ModelRequest, Runner, ToolCallItem, UserMessage, tool
from agentfsm.models import OpenAIProvider, ResponseDone, StreamEvent, TextDelta

pytestmark = pytest.mark.skipif(
    not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")),
    reason="set OPENAI_API_KEY or OPENAI_BASE_URL to run against a real server",
)

MODEL = os.environ.get("AGENTFSM_TEST_MODEL", "gpt-4.1-mini")
API: Any = os.environ.get("AGENTFSM_TEST_API", "chat")


def provider(**options: Any) -> OpenAIProvider:
    return OpenAIProvider(api=API, read_timeout=120, **options)


@tool
def add(a: int, b: int) -> int:
    """Add two integers exactly.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


@pytest.mark.parametrize("stream", [False, True])
def test_a_real_model_calls_a_tool_and_answers(stream: bool) -> None:
    agent = Agent(
        "calculator",
        "You do arithmetic only with the add tool, then state the result.",
        MODEL,
        tools=[add],
    )
    runner = Runner(model_provider=provider(stream=stream))
    result = runner.run_sync(agent, "What is 1234 + 4321? Use the tool.", max_turns=4)
    assert result.status == "completed", result.error
    assert any(isinstance(i, ToolCallItem) and i.tool == "add" for i in result.items)
    assert "5555" in str(result.final_output).replace(",", "")
    assert result.usage.requests >= 2 and result.usage.input_tokens > 0


class City(pydantic.BaseModel):
    name: str
    country: str


def test_structured_output_from_a_real_model() -> None:
    agent = Agent("geo", "Answer with the city asked about.", MODEL, output_type=City)
    result = Runner(model_provider=provider()).run_sync(agent, "The capital of Norway?")
    assert result.status == "completed", result.error
    assert isinstance(result.final_output, City)
    assert result.final_output.name.lower() == "oslo"


def test_a_real_stream() -> None:
    model = provider().get_model(MODEL)
    request = ModelRequest(
        run_id="live",
        agent="a",
        instructions="Answer in one short sentence.",
        input=(UserMessage(content="Say hello."),),
        items=(),
        tools=(),
        output_schema=None,
        turn=0,
    )

    async def collect() -> list[StreamEvent]:
        async with contextlib.aclosing(model.stream(request)) as events:
            return [event async for event in events]

    events = asyncio.run(collect())
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == done.response.text
