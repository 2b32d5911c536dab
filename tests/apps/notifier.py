"""An app for the database outage test: ``--app tests.apps.notifier:agent``.

One turn calls ``notify`` (not idempotent; it takes about 10 ms), which needs a human's
approval when the run's context is ``{"approval": true}``; then the model says it is done.
Every execution of ``notify`` appends the call's idempotency key, one line, to the file
``$NOTIFIER_EFFECTS``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agentfsm import Agent, ToolContext, tool
from agentfsm.testing import ScriptedModel, call, say


def _asks(context: Any, arguments: dict[str, Any]) -> bool:
    return isinstance(context, dict) and context.get("approval") is True


@tool(needs_approval=_asks)
def notify(to: str, ctx: ToolContext) -> str:
    """Notify someone."""
    time.sleep(0.01)
    effects = os.environ.get("NOTIFIER_EFFECTS")
    if effects:
        with Path(effects).open("a") as f:
            f.write(f"{ctx.idempotency_key}\n")
    return f"notified {to}"


def agent() -> Agent:
    model = ScriptedModel([call("notify", to="ada"), say("done")])
    return Agent("notifier", "You notify people.", model, tools=[notify])
