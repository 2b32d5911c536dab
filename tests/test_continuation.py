"""Server-side continuation with the Responses API (``ModelSettings(store=True)``), against
the loopback server, which keeps what it is asked to store and forgets on request: only new
items are sent with ``previous_response_id``; a forgotten id falls back to the whole
transcript; the state, not the server, is the record, so a run resumed in a new process
continues either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from openai_server import Call, Fail, OpenAIServer, Reply

from agentfsm import (
    Agent,
    Injected,
    ModelResponse,
    ModelSettings,
    ModelToolCall,
    PreviousResponse,
    Runner,
    StoredResponse,
    UserMessage,
    handoff,
    step,
    tool,
)
from agentfsm.models import BadRequestError, OpenAIProvider
from agentfsm.testing import ScriptedModel, call, say

HERE = Path(__file__).resolve().parent
STORE = ModelSettings(store=True)


@tool
def lookup(order: str) -> str:
    """Look an order up."""
    return f"{order}: paid"


@tool(needs_approval=True)
def refund(amount: int) -> str:
    """Refund an amount."""
    return f"refunded {amount}"


def clerk(settings: ModelSettings | None = STORE) -> Agent:
    return Agent("clerk", "Be brief.", "gpt-test", tools=[lookup, refund], model_settings=settings)


def _provider(server: OpenAIServer, stream: bool) -> OpenAIProvider:
    return OpenAIProvider(base_url=server.url, api_key="sk-test", api="responses", stream=stream)


def _types(items: list[dict[str, Any]]) -> list[str]:
    return [i.get("type", "message") for i in items]


SCRIPT = [
    Reply(text="Looking.", calls=(Call("lookup", '{"order": "A"}'),)),
    Reply(calls=(Call("refund", '{"amount": 5}'),)),
    Reply(text="Refunded."),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_only_the_new_items_are_sent_after_the_first_response(stream: bool) -> None:
    with OpenAIServer(SCRIPT) as server:
        runner = Runner(model_provider=_provider(server, stream))
        paused = runner.run_sync(clerk(), "Refund order A")
        assert paused.status == "interrupted"
        state = paused.state.approve(paused.interruptions[0])
        result = runner.run_sync(clerk(), state)
        requests = list(server.requests)
        kept = dict(server.stored)
    assert result.final_output == "Refunded."
    first, second, third = (r.body for r in requests)
    assert first["store"] is True and "previous_response_id" not in first
    assert _types(first["input"]) == ["message"]
    ids = list(kept)
    assert second["previous_response_id"] == ids[0]
    assert _types(second["input"]) == ["function_call_output"]  # the lookup's result only
    assert third["previous_response_id"] == ids[1]
    assert _types(third["input"]) == ["function_call_output"]  # the refund's result only
    # What the server resolved is the whole conversation.
    assert _types(requests[2].conversation or []) == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "function_call",
        "function_call_output",
    ]
    assert result.state.stored_response is not None
    assert result.state.stored_response.id == ids[2]
    assert result.state.stored_response.items == len(result.state.items)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_forgotten_response_falls_back_to_the_whole_transcript(stream: bool) -> None:
    with OpenAIServer(SCRIPT) as server:
        runner = Runner(model_provider=_provider(server, stream))
        paused = runner.run_sync(clerk(), "Refund order A")
        server.expire()  # the retention period passed while the run waited
        state = paused.state.approve(paused.interruptions[0])
        result = runner.run_sync(clerk(), state)
        requests = [r.body for r in server.requests]
        kept = list(server.stored)
    assert result.final_output == "Refunded."
    assert len(requests) == 4
    refused, again = requests[2], requests[3]
    assert "previous_response_id" in refused
    assert "previous_response_id" not in again
    assert _types(again["input"]) == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "function_call",
        "function_call_output",
    ]
    assert result.state.stored_response is not None
    assert result.state.stored_response.id == kept[0]  # the one the fallback made


def test_other_errors_are_not_taken_for_a_forgotten_response() -> None:
    with OpenAIServer(
        [SCRIPT[0], Fail(400, "bad tool schema", type="invalid_request_error")]
    ) as server:
        runner = Runner(model_provider=_provider(server, False))
        first = runner.run_sync(clerk(), "Look A up", max_turns=1)
        assert first.state.stored_response is not None
        with pytest.raises(BadRequestError, match="bad tool schema"):
            runner.run_sync(clerk(), first.state, max_turns=3)
        assert len(server.requests) == 2


RESUME = """
import json, sys
sys.path.insert(0, {tests!r})
from agentfsm import Runner, RunState
from agentfsm.models import OpenAIProvider
from test_continuation import clerk

state = RunState.from_json(open(sys.argv[1]).read())
result = Runner(model_provider=OpenAIProvider(api="responses")).run_sync(clerk(), state)
print(json.dumps({{"status": result.status, "output": result.final_output,
                   "stored": result.state.stored_response.id}}))
"""


@pytest.mark.parametrize("expired", [False, True], ids=["kept", "expired"])
def test_a_run_resumed_in_a_new_process_continues_either_way(expired: bool, tmp_path: Path) -> None:
    with OpenAIServer(SCRIPT, api_key="sk-test") as server:
        paused = Runner(model_provider=_provider(server, False)).run_sync(clerk(), "Refund A")
        state = paused.state.approve(paused.interruptions[0])
        assert state.stored_response is not None
        before = state.stored_response.id
        if expired:
            server.expire()
        saved = tmp_path / "state.json"
        saved.write_text(state.to_json())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_"))}
        env.update(OPENAI_BASE_URL=server.url, OPENAI_API_KEY="sk-test")
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(RESUME.format(tests=str(HERE))), str(saved)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        bodies = [r.body for r in server.requests]
    out = json.loads(done.stdout)
    assert (out["status"], out["output"]) == ("completed", "Refunded.")
    last = bodies[-1]
    if expired:
        assert len(bodies) == 4
        assert bodies[-2]["previous_response_id"] == before
        assert "previous_response_id" not in last
        assert _types(last["input"])[0] == "message"
    else:
        assert len(bodies) == 3
        assert last["previous_response_id"] == before
        assert _types(last["input"]) == ["function_call_output"]
    assert out["stored"] != before


def test_without_store_the_whole_transcript_is_sent_and_nothing_kept() -> None:
    with OpenAIServer(SCRIPT) as server:
        runner = Runner(model_provider=_provider(server, False))
        paused = runner.run_sync(clerk(None), "Refund order A")
        result = runner.run_sync(clerk(None), paused.state.approve(paused.interruptions[0]))
        bodies = [r.body for r in server.requests]
        assert server.stored == {}
    assert result.state.stored_response is None
    assert all(b["store"] is False and "previous_response_id" not in b for b in bodies)
    assert _types(bodies[2]["input"])[0] == "message"


def test_a_filtered_handoff_sends_the_next_agent_its_whole_history() -> None:
    script = [Reply(calls=(Call("to_b"),)), Reply(text="B here.")]
    with OpenAIServer(script) as server:
        b = Agent("b", "", "gpt-test", model_settings=STORE)
        a = Agent(
            "a",
            "",
            "gpt-test",
            model_settings=STORE,
            handoffs=[handoff(b, tool_name="to_b", input_filter=lambda d: d.history[:1])],
        )
        result = Runner(model_provider=_provider(server, False)).run_sync(a, "hi")
        second = server.requests[1].body
    assert result.final_output == "B here."
    # The server's copy holds the handoff call; the filter took it out of what b is given.
    assert "previous_response_id" not in second
    assert second["input"] == [{"type": "message", "role": "user", "content": "hi"}]


def test_the_state_counts_what_a_kept_response_holds() -> None:
    """The message and the call are in the server's copy; the lookup's result is new."""
    model = ScriptedModel(
        [
            ModelResponse(
                text="Looking.",
                tool_calls=(ModelToolCall(call_id="c1", name="lookup", arguments='{"order":"A"}'),),
                response_id="resp_a",
            ),
            ModelResponse(text="Paid.", response_id="resp_b"),
        ]
    )
    result = Runner().run_sync(Agent("a", "", model, tools=[lookup]), "hi")
    first, second = model.requests
    assert first.previous is None
    assert second.previous == PreviousResponse(id="resp_a", items=2)
    assert result.state.stored_response == StoredResponse(id="resp_b", items=4)
    # A model that keeps nothing leaves the record as it was.
    plain = ScriptedModel([call("lookup", order="A"), say("done")])
    assert (
        Runner().run_sync(Agent("a", "", plain, tools=[lookup]), "hi").state.stored_response is None
    )


def test_input_injected_while_a_call_waited_is_sent_as_new() -> None:
    model = ScriptedModel(
        [
            ModelResponse(
                tool_calls=(ModelToolCall(call_id="c1", name="refund", arguments='{"amount":5}'),),
                response_id="resp_a",
            ),
            ModelResponse(text="Refunded, and noted.", response_id="resp_b"),
        ]
    )
    agent = Agent("a", "", model, tools=[refund])
    paused = Runner().run_sync(agent, "Refund 5")
    state = step(paused.state, Injected(items=(UserMessage(content="Also note it."),)), agent).state
    result = Runner().run_sync(agent, state.approve(state.interruptions[0]))
    assert result.final_output == "Refunded, and noted."
    request = model.requests[1]
    assert request.previous == PreviousResponse(id="resp_a", items=1)
    new = list(request.items[request.previous.items :])
    assert [type(i).__name__ for i in new] == ["ToolResultItem", "UserMessage"]


@pytest.mark.parametrize(
    ("error", "forgotten"),
    [
        (BadRequestError("x", status_code=400, code="previous_response_not_found"), True),
        (BadRequestError("x", status_code=400, param="previous_response_id"), True),
        (BadRequestError("no previous_response_id 'r'", status_code=404), True),
        (BadRequestError("bad schema", status_code=400, param="tools"), False),
        (BadRequestError("x", status_code=401, param="previous_response_id"), False),
    ],
)
def test_what_counts_as_a_forgotten_response(error: BadRequestError, forgotten: bool) -> None:
    from agentfsm.models._responses import unknown_response

    assert unknown_response(error) is forgotten
