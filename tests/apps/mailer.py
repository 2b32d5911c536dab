"""An app for CLI and worker tests: ``--app tests.apps.mailer:agent``."""

from __future__ import annotations

import os
from pathlib import Path

from agentfsm import Agent, ToolContext, tool
from agentfsm.testing import ScriptedModel, call, say


@tool(needs_approval=True)
def send(to: str, body: str, ctx: ToolContext) -> str:
    """Send an email."""
    effects = os.environ.get("MAILER_EFFECTS")
    if effects:
        with Path(effects).open("a") as f:
            f.write(f"{ctx.idempotency_key}\n")
    return f"sent to {to}"


@tool
def lookup(name: str) -> str:
    """Find an address."""
    return f"{name}@example.com"


def agent() -> Agent:
    model = ScriptedModel(
        [call("lookup", name="ada"), call("send", to="ada@example.com", body="hi"), say("sent")]
    )
    return Agent("mailer", "You send mail.", model, tools=[lookup, send])
