"""The app the worker benchmark runs: five turns of a trivial tool, then an answer."""

from __future__ import annotations

from agentfsm import Agent, tool
from agentfsm.testing import ScriptedModel, call, say


@tool
async def noop(x: int) -> str:
    """Do nothing."""
    return "ok"


def agent() -> Agent:
    return Agent(
        "workload",
        "",
        ScriptedModel([call("noop", x=n) for n in range(5)] + [say("done")]),
        tools=[noop],
    )
