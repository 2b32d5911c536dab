"""The mailer app after a deploy that renamed its ``send`` tool: a run paused on ``send``
must stay decidable (``--app tests.apps.mailer_renamed:agent``)."""

from __future__ import annotations

from agentfsm import Agent, tool
from agentfsm.testing import ScriptedModel, say
from tests.apps.mailer import lookup


@tool(needs_approval=True)
def send_mail(to: str, body: str) -> str:
    """Send an email."""
    return f"sent to {to}"


def agent() -> Agent:
    # The script answers whatever turn the paused run has reached.
    model = ScriptedModel([say("ok")] * 3)
    return Agent("mailer", "You send mail.", model, tools=[lookup, send_mail])
