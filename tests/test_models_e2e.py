"""Agents run end to end against the loopback server: approvals, a pause, the state written
to JSON, the run resumed in a new process and finished there; handoffs and structured output
over the wire; malformed model output handled by the engine's rules; a cancelled run.

The subprocess imports ``build_agents`` from this module, so keep it cheap to import.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pydantic
import pytest
from openai_server import Call, OpenAIServer, Reply

from agentfsm import (
    Agent,
    Feedback,
    ModelRequest,
    Runner,
    RunState,
    ToolCallItem,
    ToolResultItem,
    UserMessage,
    tool,
)
from agentfsm.models import OpenAIProvider, StreamEvent, TextDelta, stream_events
from agentfsm.testing import ScriptedModel, say

HERE = Path(__file__).resolve().parent


class Receipt(pydantic.BaseModel):
    recipient: str
    sent: bool


@tool
def lookup_address(name: str) -> str:
    """Find a person's email address."""
    return f"{name.lower()}@example.com"


@tool(needs_approval=True)
def send_email(to: str, body: str) -> str:
    """Send an email.

    Args:
        to: the recipient's address.
        body: the text.
    """
    return f"sent to {to}"


def build_agents(model: Any = "gpt-test") -> Agent:
    """The mailer, which hands off to the archivist for a structured receipt."""
    archivist = Agent("archivist", "You file receipts as JSON.", model, output_type=Receipt)
    return Agent(
        "mailer",
        "You send emails for the user.",
        model,
        tools=[lookup_address, send_email],
        handoffs=[archivist],
    )


SCRIPT = [
    Reply(
        text="Looking Ada up and writing to her.",
        calls=(
            Call("lookup_address", '{"name": "Ada"}'),
            Call("send_email", '{"to": "ada@example.com", "body": "Hi!"}'),
        ),
        usage=(50, 20, 0, 0),
    ),
    Reply(calls=(Call("transfer_to_archivist", "{}"),), usage=(80, 5, 32, 0)),
    Reply(text='{"recipient": "ada@example.com", "sent": true}', usage=(90, 12, 64, 6)),
]

RESUME = """
import json, sys
sys.path.insert(0, {tests!r})
from agentfsm import Runner, RunState
from agentfsm.models import OpenAIProvider
from test_models_e2e import build_agents

api = sys.argv[2]
# "chat": names resolve through the default provider, configured from the environment.
runner = Runner() if api == "chat" else Runner(
    model_provider=OpenAIProvider(api="responses", stream=True)
)
state = RunState.from_json(open(sys.argv[1]).read())
result = runner.run_sync(build_agents(), state)
print(json.dumps({{
    "status": result.status,
    "final_output": result.final_output.model_dump(),
    "agent": result.state.current_agent,
    "usage": [result.usage.requests, result.usage.input_tokens, result.usage.output_tokens,
              result.usage.cached_tokens, result.usage.reasoning_tokens],
}}))
"""


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_pause_for_approval_then_resume_in_a_new_process(
    api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OpenAIServer(SCRIPT, api_key="sk-test") as server:
        provider = OpenAIProvider(base_url=server.url, api_key="sk-test", api=api)  # type: ignore[arg-type]
        paused = Runner(model_provider=provider).run_sync(build_agents(), "Say hi to Ada")
        assert paused.status == "interrupted"
        [waiting] = paused.interruptions
        assert (waiting.tool, waiting.arguments) == (
            "send_email",
            {"to": "ada@example.com", "body": "Hi!"},
        )
        # A person approves, with a warmer text.
        state = RunState.from_json(paused.state.to_json()).approve(
            waiting.call_id, arguments={"to": "ada@example.com", "body": "Hi Ada!"}
        )
        saved = tmp_path / "state.json"
        saved.write_text(state.to_json())

        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI"))}
        env.update(OPENAI_BASE_URL=server.url, OPENAI_API_KEY="sk-test")
        script = textwrap.dedent(RESUME.format(tests=str(HERE)))
        done = subprocess.run(
            [sys.executable, "-c", script, str(saved), api],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        requests = server.requests

    assert result == {
        "status": "completed",
        "final_output": {"recipient": "ada@example.com", "sent": True},
        "agent": "archivist",
        "usage": [3, 220, 37, 96, 6],  # summed across both processes
    }
    assert len(requests) == 3
    first, second, third = (r.body for r in requests)
    if api == "chat":
        tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
        assert [m["content"] for m in tool_messages] == [
            "ada@example.com",
            "[A person changed the arguments of this call before approving it; it ran with "
            '{"to":"ada@example.com","body":"Hi Ada!"}.]\nsent to ada@example.com',
        ]
        assert "response_format" not in second
        assert third["response_format"]["json_schema"]["name"] == "Receipt"
        assert third["messages"][0] == {"role": "system", "content": "You file receipts as JSON."}
        assert [t["function"]["name"] for t in first["tools"]] == [
            "lookup_address",
            "send_email",
            "transfer_to_archivist",
        ]
    else:
        outputs = [i["output"] for i in second["input"] if i["type"] == "function_call_output"]
        assert outputs[1].endswith("sent to ada@example.com")
        assert third["text"]["format"]["name"] == "Receipt"
        assert third["instructions"] == "You file receipts as JSON."
        assert requests[2].stream  # the subprocess asked for streams
    assert "tools" not in third  # the archivist has none


def test_malformed_model_output_is_handled_by_the_engines_rules() -> None:
    script = [
        # Bad JSON, an unknown tool, and ids a weak local server reuses across turns.
        Reply(
            calls=(
                Call("lookup_address", '{"name": "Ada"', id="call_0"),
                Call("launch_rockets", "{}", id="call_1"),
            )
        ),
        Reply(calls=(Call("lookup_address", '{"name": "Ada"}', id="call_0"),)),
        # An empty message: the run's final output must be a Receipt, so the engine feeds
        # that back and asks again.
        Reply(text=None),
        Reply(text='{"recipient": "ada@example.com", "sent": false}'),
    ]
    agent = Agent("mailer", "", "gpt-test", tools=[lookup_address], output_type=Receipt)
    with OpenAIServer(script) as server:
        provider = OpenAIProvider(base_url=server.url, stream=True)
        result = Runner(model_provider=provider).run_sync(agent, "Find Ada")
    assert result.status == "completed"
    assert result.final_output == Receipt(recipient="ada@example.com", sent=False)
    calls = [i for i in result.items if isinstance(i, ToolCallItem)]
    results = {i.call_id: i for i in result.items if isinstance(i, ToolResultItem)}
    assert [c.call_id for c in calls] == ["call_0", "call_1", "call_1_0"]
    assert results["call_0"].is_error and "not valid JSON" in results["call_0"].output
    assert results["call_1"].output.startswith("Unknown tool 'launch_rockets'")
    assert results["call_1_0"].output == "ada@example.com"
    assert any(isinstance(i, Feedback) for i in result.items)
    assert result.usage.requests == 4


def test_cancelling_a_run_closes_the_stream_and_the_run_can_resume() -> None:
    long = Reply(text="word " * 400, piece=2, gap=0.01)
    agent = Agent("talker", "", "gpt-test")
    checkpoints: list[RunState] = []
    with OpenAIServer([long, Reply(text="Short answer.")]) as server:
        provider = OpenAIProvider(base_url=server.url, stream=True)
        runner = Runner(model_provider=provider, on_step=checkpoints.append)

        async def main() -> float:
            task = asyncio.create_task(runner.run(agent, "Talk"))
            while not server.requests:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic()

        cancelled = asyncio.run(main())
        gone = server.first_disconnect()
        assert gone is not None and gone - cancelled < 0.5
        state = checkpoints[-1]
        assert state.status == "running"
        resumed = Runner(model_provider=provider).run_sync(agent, state)
    assert resumed.final_output == "Short answer."
    assert resumed.usage.requests == 1  # the cancelled answer never arrived


def test_stream_events_falls_back_to_respond() -> None:
    request = ModelRequest(
        run_id="r",
        agent="a",
        instructions="",
        input=(UserMessage(content="hi"),),
        items=(),
        tools=(),
        output_schema=None,
        turn=0,
    )

    async def collect(model: Any) -> list[StreamEvent]:
        return [event async for event in stream_events(model, request)]

    [only] = asyncio.run(collect(ScriptedModel([say("hello")])))
    assert only.response.text == "hello"  # type: ignore[union-attr]
    with OpenAIServer([Reply(text="hello there", piece=3)]) as server:
        model = OpenAIProvider(base_url=server.url).chat("m")
        events = asyncio.run(collect(model))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "hello there"
