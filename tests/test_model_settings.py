"""Model settings on agents, over the wire to the loopback server: two agents sharing one
model each send their own, a forced tool choice is reset once a tool was called (also in a
run resumed in a new process), and bad settings are refused when declared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from openai_server import Call, OpenAIServer, Reply

from agentfsm import Agent, ConfigurationError, ModelSettings, Runner, tool
from agentfsm.models import OpenAIProvider

HERE = Path(__file__).resolve().parent


@tool
def lookup(order: str) -> str:
    """Look an order up."""
    return "paid"


@tool(needs_approval=True)
def refund(amount: int) -> str:
    """Refund an amount."""
    return f"refunded {amount}"


def _provider(server: OpenAIServer, api: str, **options: Any) -> OpenAIProvider:
    return OpenAIProvider(base_url=server.url, api_key="sk-test", api=api, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_two_agents_sharing_one_model_each_send_their_own_settings(api: str) -> None:
    script = [Reply(calls=(Call("transfer_to_writer"),)), Reply(text="Written.")]
    with OpenAIServer(script) as server:
        provider = _provider(server, api)
        shared = ModelSettings(temperature=0.9, top_p=0.5, extra_body={"user": "m"})
        model = getattr(provider, api)("gpt-test", settings=shared)
        writer = Agent(
            "writer",
            "",
            model,
            tools=[lookup],
            model_settings=ModelSettings(
                reasoning_effort="low", parallel_tool_calls=False, extra_body={"seed_hint": 1}
            ),
        )
        planner = Agent(
            "planner",
            "",
            model,
            handoffs=[writer],
            model_settings=ModelSettings(temperature=0.1, max_tokens=50),
        )
        result = Runner().run_sync(planner, "Write it")
        first, second = (r.body for r in server.requests)
    assert result.final_output == "Written."
    limit = "max_completion_tokens" if api == "chat" else "max_output_tokens"
    # The planner's own settings over the model's.
    assert (first["temperature"], first["top_p"], first[limit]) == (0.1, 0.5, 50)
    assert first["user"] == "m"
    assert "reasoning_effort" not in first and "reasoning" not in first
    # The writer's, over the same model's: nothing of the planner's.
    assert (second["temperature"], second["top_p"]) == (0.9, 0.5)
    assert limit not in second
    assert second["parallel_tool_calls"] is False
    assert (second["user"], second["seed_hint"]) == ("m", 1)
    if api == "chat":
        assert second["reasoning_effort"] == "low"
    else:
        assert second["reasoning"] == {"effort": "low"}


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("reset", [True, False])
def test_a_forced_tool_choice_is_reset_once_the_agent_called_a_tool(api: str, reset: bool) -> None:
    script = [
        Reply(calls=(Call("lookup", '{"order": "A"}'),)),
        Reply(calls=(Call("lookup", '{"order": "B"}'),)),
        Reply(text="Both paid."),
    ]
    with OpenAIServer(script) as server:
        agent = Agent(
            "clerk",
            "",
            "gpt-test",
            tools=[lookup],
            model_settings=ModelSettings(tool_choice="lookup"),
            reset_tool_choice=reset,
        )
        result = Runner(model_provider=_provider(server, api)).run_sync(agent, "Check A and B")
        choices = [r.body["tool_choice"] for r in server.requests]
    assert result.final_output == "Both paid."
    forced = (
        {"type": "function", "function": {"name": "lookup"}}
        if api == "chat"
        else {"type": "function", "name": "lookup"}
    )
    assert choices == ([forced, "auto", "auto"] if reset else [forced, forced, forced])


RESUME = """
import json, sys
sys.path.insert(0, {tests!r})
from agentfsm import Runner, RunState
from agentfsm.models import OpenAIProvider
from test_model_settings import clerk

state = RunState.from_json(open(sys.argv[1]).read())
provider = OpenAIProvider(api=sys.argv[2])
result = Runner(model_provider=provider).run_sync(clerk(), state)
print(json.dumps({{"status": result.status, "output": result.final_output}}))
"""


def clerk() -> Agent:
    return Agent(
        "clerk",
        "",
        "gpt-test",
        tools=[refund],
        model_settings=ModelSettings(tool_choice="required", temperature=0),
    )


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_the_reset_holds_in_a_run_resumed_in_a_new_process(api: str, tmp_path: Path) -> None:
    script = [Reply(calls=(Call("refund", '{"amount": 5}'),)), Reply(text="Refunded.")]
    with OpenAIServer(script, api_key="sk-test") as server:
        paused = Runner(model_provider=_provider(server, api)).run_sync(clerk(), "Refund 5")
        assert paused.status == "interrupted"
        saved = tmp_path / "state.json"
        saved.write_text(paused.state.approve(paused.interruptions[0]).to_json())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_"))}
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
        bodies = [r.body for r in server.requests]
    assert json.loads(done.stdout) == {"status": "completed", "output": "Refunded."}
    assert [b["tool_choice"] for b in bodies] == ["required", "auto"]
    assert [b["temperature"] for b in bodies] == [0, 0]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"temperature": 3}, "temperature must be a number from 0 to 2, not 3"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": -0.1}, "top_p must be a number from 0 to 1"),
        ({"max_tokens": 0}, "max_tokens must be an int of at least 1"),
        ({"max_output_tokens": 1.5}, "max_output_tokens"),
        ({"max_tokens": 10, "max_output_tokens": 20}, "one option by two names"),
        ({"seed": "1"}, "seed"),
        ({"stop": "END"}, "stop must be a tuple of str"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls must be a bool"),
        ({"store": 1}, "store must be a bool"),
        ({"tool_choice": ""}, "tool_choice"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"reasoning_effort": "hgih"}, "reasoning_effort must be one of"),
        ({"extra_body": {"x": object()}}, "extra_body must be JSON data"),
        ({"extra_body": [1]}, "extra_body must be a dict"),
        ({"extra_headers": {"x": 1}}, "extra_headers"),
    ],
)
def test_bad_settings_are_refused_naming_the_option(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says.replace("(", r"\(")):
        ModelSettings(**options)


def test_an_agent_refuses_settings_that_are_not_model_settings() -> None:
    with pytest.raises(ConfigurationError, match="model_settings must be a ModelSettings"):
        Agent("a", model_settings={"temperature": 0})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="reset_tool_choice must be a bool"):
        Agent("a", reset_tool_choice="no")  # type: ignore[arg-type]


def test_settings_merge_option_by_option() -> None:
    base = ModelSettings(temperature=1, max_output_tokens=100, extra_body={"a": 1, "b": 1})
    mine = ModelSettings(max_tokens=10, extra_body={"b": 2})
    merged = mine.over(base)
    assert merged.temperature == 1
    assert merged.output_limit == 10  # either name replaces the other's
    assert merged.extra_body == {"a": 1, "b": 2}
    assert ModelSettings().over(base).output_limit == 100


def test_settings_travel_with_the_request_to_any_model() -> None:
    from agentfsm.testing import ScriptedModel, say

    model = ScriptedModel([say("hi")])
    settings = ModelSettings(temperature=0.3)
    Runner().run_sync(Agent("a", "", model, model_settings=settings), "hi")
    assert model.requests[0].settings == settings


def test_a_forced_tool_the_agent_lacks_is_refused_when_the_run_starts() -> None:
    from agentfsm.testing import ScriptedModel, say

    agent = Agent(
        "a",
        "",
        ScriptedModel([say("x")]),
        tools=[lookup],
        model_settings=ModelSettings(tool_choice="lokup"),
    )
    with pytest.raises(ConfigurationError, match=r"force the tool 'lokup'.*tools: lookup"):
        Runner().run_sync(agent, "hi")
