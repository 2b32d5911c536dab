"""An app for session tests: ``--app tests.apps.chat:agent``. It answers the last user
message and says how much of the conversation it saw; a message that starts with "send"
makes it send an email first, which waits for approval."""

from __future__ import annotations

from typing import Any

from agentfsm import Agent, ModelRequest, UserMessage, tool
from agentfsm.testing import ScriptedModel, call, say


@tool(needs_approval=True)
def send(to: str) -> str:
    """Send an email."""
    return f"sent to {to}"


def _reply(request: ModelRequest) -> Any:
    conversation = list(request.conversation())
    last = [i for i in conversation if isinstance(i, UserMessage)][-1].content
    if last.startswith("send") and request.turn == 0:
        return call("send", to=last.removeprefix("send").strip() or "ada")
    return say(f"{last}: seen {len(conversation)}")


def agent() -> Agent:
    return Agent("chat", "You chat.", ScriptedModel([_reply, _reply]), tools=[send])
