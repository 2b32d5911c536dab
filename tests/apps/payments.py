"""An app for the decision race tests: ``--app tests.apps.payments:agent``. One turn asks for
three payments, each needing approval; every execution of ``pay`` is appended, with its
arguments and idempotency key, to the file named by ``PAYMENTS_EFFECTS``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agentfsm import Agent, ToolContext, tool
from agentfsm.testing import ScriptedModel, call, say

PAYEES = ("ada", "bob", "eve")


@tool(needs_approval=True)
def pay(to: str, amount: int, ctx: ToolContext) -> str:
    """Pay someone.

    Args:
        to: who is paid.
        amount: how much, in euros.
    """
    effects = os.environ.get("PAYMENTS_EFFECTS")
    if effects:
        line = {"run": ctx.run_id, "call": ctx.call_id, "args": {"to": to, "amount": amount}}
        with Path(effects).open("a") as f:
            f.write(json.dumps(line) + "\n")
    return f"paid {amount} to {to}"


def agent() -> Agent:
    model = ScriptedModel(
        [[call("pay", to=name, amount=10 * (n + 1)) for n, name in enumerate(PAYEES)], say("ok")]
    )
    return Agent("payer", "You pay people.", model, tools=[pay])
