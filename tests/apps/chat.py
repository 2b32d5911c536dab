"""An app for session tests: ``--app tests.apps.chat:agent``. It answers the last user
message and says how much of the conversation it saw; a message that starts with "send"
makes it send an email first, which waits for approval; one that starts with "wait" makes it
call ``pause_here``, which notes ``started`` in ``$CHAT_EFFECTS`` and sleeps (not idempotent,
no approval), for tests that kill the process mid-call."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from agentfsm import Agent, ModelRequest, UserMessage, tool
from agentfsm.testing import ScriptedModel, call, say


@tool(needs_approval=True)
def send(to: str) -> str:
    """Send an email."""
    return f"sent to {to}"


@tool
async def pause_here() -> str:
    """Take a while."""
    with Path(os.environ["CHAT_EFFECTS"]).open("a") as f:
        f.write("started\n")
    await asyncio.sleep(60)
    return "waited"


def _reply(request: ModelRequest) -> Any:
    conversation = list(request.conversation())
    last = [i for i in conversation if isinstance(i, UserMessage)][-1].content
    if last.startswith("send") and request.turn == 0:
        return call("send", to=last.removeprefix("send").strip() or "ada")
    if last.startswith("wait") and request.turn == 0:
        return call("pause_here")
    return say(f"{last}: seen {len(conversation)}")


def agent() -> Agent:
    return Agent("chat", "You chat.", ScriptedModel([_reply, _reply]), tools=[send, pause_here])
