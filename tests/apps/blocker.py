"""An app for the test of a tool that blocks the event loop: ``--app tests.apps.blocker:agent``.

Its tool ``hog`` is an ``async def`` that calls ``time.sleep`` (a common mistake in users'
code): it blocks its worker's event loop for ``$BLOCKER_SECONDS`` (default 6). It is not
idempotent and needs no approval, and notes ``started KEY`` before and ``done KEY`` after,
one line each, in the file ``$BLOCKER_EFFECTS`` (KEY: the call's idempotency key).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from agentfsm import Agent, ToolContext, tool
from agentfsm.testing import ScriptedModel, call, say


def _note(line: str) -> None:
    with Path(os.environ["BLOCKER_EFFECTS"]).open("a") as f:
        f.write(f"{line}\n")


@tool
async def hog(ctx: ToolContext) -> str:
    """Crunch numbers."""
    _note(f"started {ctx.idempotency_key}")
    time.sleep(float(os.environ.get("BLOCKER_SECONDS", "6")))  # blocks the event loop
    _note(f"done {ctx.idempotency_key}")
    return "crunched"


def agent() -> Agent:
    return Agent("blocker", "You crunch.", ScriptedModel([call("hog"), say("done")]), tools=[hog])
