"""An app for the quorum tests: ``--app tests.apps.quorum:agent``. One turn asks for one
transfer, which two distinct people must approve; every execution of ``transfer`` is
appended, with its arguments, to the file named by ``QUORUM_EFFECTS``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agentfsm import Agent, ToolContext, tool
from agentfsm.testing import ScriptedModel, call, say


@tool(needs_approval=True, quorum=2)
def transfer(to: str, amount: int, ctx: ToolContext) -> str:
    """Move money out of the company account.

    Args:
        to: the account paid.
        amount: how much, in euros.
    """
    effects = os.environ.get("QUORUM_EFFECTS")
    if effects:
        line = {"run": ctx.run_id, "call": ctx.call_id, "args": {"to": to, "amount": amount}}
        with Path(effects).open("a") as f:
            f.write(json.dumps(line) + "\n")
    return f"moved {amount} to {to}"


def agent() -> Agent:
    model = ScriptedModel([[call("transfer", to="acme", amount=900)], say("done")])
    return Agent("treasurer", "You move money.", model, tools=[transfer])
