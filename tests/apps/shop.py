"""An app for the fork tests: ``--app tests.apps.shop:agent``. A charge that needs no
approval and is not idempotent, an idempotent fetch, and a shipment that needs approval;
every execution of a tool is appended, with its run, to the file named by ``SHOP_EFFECTS``.
``tests.apps.shop:forked`` is the same agent with a model that only answers "done"."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agentfsm import Agent, ToolContext, tool
from agentfsm.testing import ScriptedModel, call, say


def _effect(tool: str, ctx: ToolContext) -> None:
    effects = os.environ.get("SHOP_EFFECTS")
    if effects:
        with Path(effects).open("a") as f:
            f.write(json.dumps({"tool": tool, "run": ctx.run_id, "call": ctx.call_id}) + "\n")


@tool
def charge(card: str, ctx: ToolContext) -> str:
    """Charge a card."""
    _effect("charge", ctx)
    return f"charged {card}"


@tool(idempotent=True)
def fetch(key: str, ctx: ToolContext) -> str:
    """Read a value."""
    _effect("fetch", ctx)
    return f"value of {key}"


@tool(needs_approval=True)
def ship(to: str, ctx: ToolContext) -> str:
    """Ship the order."""
    _effect("ship", ctx)
    return f"shipped to {to}"


def agent() -> Agent:
    model = ScriptedModel(
        [
            [call("charge", card="4242"), call("fetch", key="stock")],
            call("ship", to="ada"),
            say("ok"),
        ]
    )
    return Agent("shop", "You sell things.", model, tools=[charge, fetch, ship])


def forked() -> Agent:
    return Agent(
        "shop", "You sell things.", ScriptedModel([say("done")] * 10), tools=[charge, fetch, ship]
    )
