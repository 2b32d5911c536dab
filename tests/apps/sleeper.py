"""An app for tests that stop a run while its tool runs: ``--app tests.apps.sleeper:agent``.

Its tool ``nap`` (a plain function, run in a thread; no approval needed) sleeps
``$SLEEPER_SECONDS`` (default 2) and notes ``started KEY`` before and ``done KEY`` after, one
line each, in the file ``$SLEEPER_EFFECTS`` (KEY: the call's idempotency key).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from agentfsm import Agent, ToolContext, tool
from agentfsm.testing import ScriptedModel, call, say


def _note(line: str) -> None:
    effects = os.environ.get("SLEEPER_EFFECTS")
    if effects:
        with Path(effects).open("a") as f:
            f.write(f"{line}\n")


@tool
def nap(ctx: ToolContext) -> str:
    """Sleep a while."""
    _note(f"started {ctx.idempotency_key}")
    time.sleep(float(os.environ.get("SLEEPER_SECONDS", "2")))
    _note(f"done {ctx.idempotency_key}")
    return "rested"


def agent() -> Agent:
    return Agent("sleeper", "You rest.", ScriptedModel([call("nap"), say("awake")]), tools=[nap])
