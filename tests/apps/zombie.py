"""An app for the frozen-worker tests: ``--app tests.apps.zombie:agent``.

One turn calls ``charge`` (async, not idempotent, no approval needed); then the model says it
is done. ``charge`` notes ``started KEY TOKEN`` in ``$ZOMBIE_DIR/started.txt`` (KEY: the
call's idempotency key, TOKEN: the lease's fencing token), works a little, then charges
through ``FencedService``, a fake payment service kept in files under ``$ZOMBIE_DIR``: it
refuses a fencing token lower than the highest it has seen for the run, so a writer whose
lease was taken over cannot take effect after its successor did. An accepted charge appends
KEY to ``effects.txt``; a refused one appends ``TOKEN`` to ``refused.txt``.

``$ZOMBIE_FREEZE`` makes the worker stop itself with SIGSTOP, as if frozen (a stopped VM, a
long GC pause, a laptop lid), at a point the test picks, once:

- ``mid-body``: inside ``charge``, after ``started`` and before the charge;
- ``before-body``: right after the store saved the step that records the call as started
  (status ``tools``), before the worker checks its lease and starts the body. Nothing of the
  user's runs in between, so this reaches into the store: it wraps ``SQLiteStore.save``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
from pathlib import Path
from typing import Any

from agentfsm import Agent, RunState, ToolContext, tool
from agentfsm.stores import SQLiteStore
from agentfsm.testing import ScriptedModel, call, say


class StaleToken(Exception):
    """The service saw a newer fencing token for this run."""


class FencedService:
    """A payment service that honours fencing tokens, shared by processes through files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def charge(self, run_id: str, token: int | None, key: str) -> None:
        with (self.folder / "service.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            seen_path = self.folder / "tokens.json"
            seen = json.loads(seen_path.read_text()) if seen_path.exists() else {}
            if token is None or token < seen.get(run_id, 0):
                _append(self.folder / "refused.txt", f"{token}")
                raise StaleToken(f"token {token} is older than {seen.get(run_id)}")
            seen[run_id] = token
            seen_path.write_text(json.dumps(seen))
            _append(self.folder / "effects.txt", key)


def _append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(f"{line}\n")


def _folder() -> Path:
    return Path(os.environ["ZOMBIE_DIR"])


def _freeze(point: str) -> None:
    if os.environ.get("ZOMBIE_FREEZE") == point:
        os.environ["ZOMBIE_FREEZE"] = "done"  # once
        os.kill(os.getpid(), signal.SIGSTOP)


@tool
async def charge(amount: int, ctx: ToolContext) -> str:
    """Charge the customer.

    Args:
        amount: how much, in euros.
    """
    _append(_folder() / "started.txt", f"started {ctx.idempotency_key} {ctx.fencing_token}")
    _freeze("mid-body")
    await asyncio.sleep(0.2)
    FencedService(_folder()).charge(ctx.run_id, ctx.fencing_token, ctx.idempotency_key)
    return f"charged {amount}"


def _freeze_after_saving_tools() -> None:
    save = SQLiteStore.save

    async def saving(self: SQLiteStore, state: RunState, **options: Any) -> int:
        waiting = await save(self, state, **options)
        if state.status.value == "tools":
            _freeze("before-body")
        return waiting

    SQLiteStore.save = saving  # type: ignore[method-assign]


if os.environ.get("ZOMBIE_FREEZE") == "before-body":
    _freeze_after_saving_tools()


def agent() -> Agent:
    model = ScriptedModel([call("charge", amount=5), say("done")])
    return Agent("zombie", "You charge customers.", model, tools=[charge])
