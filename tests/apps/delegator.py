"""An app whose agents call other agents as tools (nested runs), for the CLI, crash and
inbox tests: ``--app tests.apps.delegator:agent`` (the inner agent's ``send`` needs approval),
``:billing`` (the inner ``charge`` is not idempotent; ``DELEGATOR_KILL=charge`` makes its
process SIGKILL itself right after the charge took effect), ``:deep`` (two levels)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from agentfsm import Agent, ToolContext, tool
from agentfsm.testing import ScriptedModel, call, say


def _effect(line: str) -> None:
    effects = os.environ.get("DELEGATOR_EFFECTS")
    if effects:
        with Path(effects).open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


@tool(needs_approval=True)
def send(to: str, ctx: ToolContext) -> str:
    """Send an email."""
    _effect(f"send {to} {ctx.idempotency_key}")
    return f"sent to {to}"


@tool
def charge(cents: int, ctx: ToolContext) -> str:
    """Charge the customer's card (not idempotent)."""
    _effect(f"charge {cents} {ctx.idempotency_key}")
    if os.environ.get("DELEGATOR_KILL") == "charge":
        os.kill(os.getpid(), signal.SIGKILL)
    return f"charged {cents}"


def mailer() -> Agent:
    model = ScriptedModel([call("send", to="ada"), say("mail sent to ada")])
    return Agent("mailer", "You send mail.", model, tools=[send])


def agent() -> Agent:
    model = ScriptedModel([call("mailer", input="mail ada"), say("done: mail sent")])
    return Agent("boss", "Delegate.", model, tools=[mailer().as_tool(description="Sends mail.")])


def billing() -> Agent:
    biller = Agent(
        "biller",
        "You charge cards.",
        ScriptedModel([call("charge", cents=500), say("charged 500")]),
        tools=[charge],
    )
    model = ScriptedModel([call("biller", input="charge 5 dollars"), say("billed")])
    return Agent("boss", "Delegate.", model, tools=[biller.as_tool()])


def deep() -> Agent:
    manager = Agent(
        "manager",
        "Delegate mail.",
        ScriptedModel([call("mailer", input="mail ada"), say("the mailer says it is done")]),
        tools=[mailer().as_tool()],
    )
    model = ScriptedModel([call("manager", input="get ada mailed"), say("all done")])
    return Agent("boss", "Delegate.", model, tools=[manager.as_tool()])


if __name__ == "__main__":
    # python tests/apps/delegator.py STORE APP RUN_ID: start the run ``APP`` (a function of
    # this module) under a one-second lease, so that a process killed with it holds the run
    # only briefly.
    import asyncio
    import sys

    from agentfsm import Runner, open_store

    async def main(store_spec: str, app: str, run_id: str) -> None:
        async with open_store(store_spec) as store:
            await Runner(store=store, lease_seconds=1).run(globals()[app](), "go", run_id=run_id)

    asyncio.run(main(*sys.argv[1:4]))
