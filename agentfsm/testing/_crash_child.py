"""The child side of the crash kit (``agentfsm.testing.CrashKit``): one *attempt* runs (or
resumes) one stored run of a ``CrashScenario`` in this process and SIGKILLs itself at the
*kill site* it was given, if it gets there.

    python -m agentfsm.testing._crash_child run JOB_JSON   # one attempt, in this process
    python -m agentfsm.testing._crash_child serve          # a fork server: imports once,
                                                           # then forks a child per job line

The fork server makes an attempt cost a fork (a few ms) instead of an interpreter start-up
with every import. Each child is a separate process with its own memory, store connection
and event loop, killed with SIGKILL; nothing of it survives but what it wrote to files and
to the store.

Ground truth lives in two append-only files a SIGKILL cannot take back:

- the side-effect file: every tool body appends ``tool key call_id pid`` (flushed and
  fsynced) when it starts, so it lists every tool body that may have taken effect;
- the journal: JSON lines, each with the writer's pid, for every checkpoint the process saw
  (``step``: version, step kind, statuses, the calls whose results it committed), the state
  it loaded (``load``), the run's creation (``created``), the person's decisions
  (``decide``), the kill itself (``kill``) and the end (``done``); with ``trace``, also every
  kill site passed (``site``).

Kill sites (``kind``, the run's ``turn`` there, and ``call_id`` for tools):

- ``created``: right after the new run is stored, before its first step;
- ``save``: inside the store's save of a checkpoint, right before its transaction commits
  (SQLiteStore and PostgresStore), and ``save:between`` before each transaction after the
  first, should a save take more than one; ``point:<name>`` where a store (or a tool) of
  your own calls ``crash_point(name)``;
- ``step:<Started|ModelResponded|ToolsFinished|ApprovalsDecided>``: right after the store
  saved a step (in the runner's ``on_step``);
- ``model``: inside the model's ``respond``, after computing the answer, before returning it;
- ``tool_before:<tool>`` / ``tool_after:<tool>``: around each tool body: before it starts,
  and after it returned (its result not committed yet);
- ``human``: right after a person's decision reached the store, before resuming.

A job kills at the first site of its kind at or after its turn (for a tool site in that same
turn, only for its call id): "at or after" so that a site the run never passes again (a call
rejected after a crash, say) moves the kill to the next site of that kind instead of losing
it. The kind ``next`` kills at the first site the process reaches, whatever it is: right in
the middle of recovering from the previous kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._agents import Agent
from .._errors import ConfigurationError, UnknownRunError
from .._items import ToolResultItem
from .._model import ModelRequest
from .._runner import Runner
from .._state import RunState
from .._step import new_run
from .._tools import Tool, ToolContext
from ..stores._base import Store
from ._kit_world import copy_agents, wrap_tool

__all__ = ["STEP_KINDS", "Attempt", "crash_point", "load_scenario", "main"]

#: The step a checkpoint records, by the status of the state it was taken from.
STEP_KINDS = {
    "new": "Started",
    "running": "ModelResponded",
    "tools": "ToolsFinished",
    "interrupted": "ApprovalsDecided",
}

#: Each new attempt's store clock runs this much later than the previous one's: the killed
#: worker's lease has expired by then, as it would in real life after the wait, without the
#: test waiting.
CLOCK_STEP = 3600.0


def load_scenario(target: str, options: dict[str, Any]) -> Any:
    """Call the scenario function named ``module:function`` with ``options``."""
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        raise ConfigurationError(f"a scenario is named 'module:function', not {target!r}")
    function = getattr(importlib.import_module(module_name), name, None)
    if not callable(function):
        raise ConfigurationError(f"{target!r} names no function")
    return function(options)


class Attempt:
    """This process's part of the run: where it writes, and where it dies."""

    current: Attempt | None = None

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.pid = os.getpid()
        self.kill = job.get("kill")
        self.trace = bool(job.get("trace"))
        self.careless = job.get("human") == "careless"
        self.effects = Path(job["effects"])
        self._journal = os.open(job["journal"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.last: RunState | None = None
        #: The state being saved, while a save is under way.
        self.saving: RunState | None = None
        self.committed = 0

    def note(self, **entry: Any) -> None:
        # One write(2) per line on an O_APPEND file: lines from threads and processes never
        # interleave, and a SIGKILL cannot undo a write that returned.
        os.write(self._journal, (json.dumps({"pid": self.pid, **entry}) + "\n").encode())

    def turn(self) -> int:
        state = self.saving or self.last
        return state.turn if state is not None else 0

    def site(self, kind: str, turn: int, call_id: str | None = None) -> None:
        if self.trace:
            self.note(e="site", kind=kind, turn=turn, call_id=call_id)
        if self.kill is not None and _matches(self.kill, kind, turn, call_id):
            self.note(e="kill", kind=kind, turn=turn, call_id=call_id)
            os.kill(self.pid, signal.SIGKILL)
            while True:  # pragma: no cover (the signal is on its way)
                time.sleep(1)

    def effect(self, name: str, ctx: ToolContext) -> None:
        line = f"{name} {ctx.idempotency_key} {ctx.call_id} {self.pid}\n".encode()
        fd = os.open(self.effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def effect_seen(self, key: str) -> bool:
        if not self.effects.exists():
            return False
        return any(line.split()[1] == key for line in self.effects.read_text().splitlines())

    def on_step(self, state: RunState) -> None:
        previous = self.last
        assert previous is not None
        kind = STEP_KINDS.get(previous.status.value, previous.status.value)
        committed = [
            item.call_id
            for item in state.items[len(previous.items) :]
            if isinstance(item, ToolResultItem)
        ]
        self.note(
            e="step",
            version=state.version,
            kind=kind,
            source=previous.status.value,
            target=state.status.value,
            turn=state.turn,
            commits=committed,
        )
        self.last = state
        self.site(f"step:{kind}", state.turn)

    # -- inside a save --------------------------------------------------------------------

    def begin(self) -> None:
        if self.saving is not None and self.committed:
            self.site("save:between", self.saving.turn)

    def commit(self) -> None:
        if self.saving is not None:
            self.site("save", self.saving.turn)


def crash_point(name: str) -> None:
    """A durable boundary inside your own code (between two writes of your store's
    ``save``, say): under ``CrashKit`` the process may be killed here (site
    ``point:<name>``). Anywhere else it does nothing."""
    attempt = Attempt.current
    if attempt is not None:
        attempt.site(f"point:{name}", attempt.turn())


def _matches(kill: dict[str, Any], kind: str, turn: int, call_id: str | None) -> bool:
    if kill["kind"] == "next":
        return True
    if kind != kill["kind"]:
        return False
    if turn != kill["turn"]:
        return turn > int(kill["turn"])
    return kill.get("call_id") in (None, call_id)


def _turn_of(call_id: str, fallback: int) -> int:
    """The run's turn when the call was made: ScriptedModel names calls ``call_<i>_<n>``
    after the model response ``i`` (0-based), which makes the run's turn ``i + 1``."""
    parts = call_id.split("_")
    if len(parts) == 3 and parts[0] == "call" and parts[1].isdigit():
        return int(parts[1]) + 1
    return fallback


# -- the agents, their tools and models, with kill sites --------------------------------------


def _crashing_tool(attempt: Attempt, tool: Tool) -> Tool:
    async def run(
        original: Tool, body: Callable[..., Any], ctx: ToolContext, args: Any, kwargs: Any
    ) -> Any:
        turn = _turn_of(ctx.call_id, attempt.turn())
        attempt.site(f"tool_before:{original.name}", turn, ctx.call_id)
        attempt.effect(original.name, ctx)
        output = body(*args, **kwargs)
        if inspect.isawaitable(output):
            output = await output
        attempt.site(f"tool_after:{original.name}", turn, ctx.call_id)
        return output

    return wrap_tool(tool, tool.fn, run)


class _CrashingModel:
    """The agent's own model, with a kill site inside ``respond``."""

    def __init__(self, attempt: Attempt, model: Any) -> None:
        self.attempt = attempt
        self.model = model

    async def respond(self, request: ModelRequest) -> Any:
        response = await self.model.respond(request)
        self.attempt.site("model", request.turn)
        return response


def crashing_agents(attempt: Attempt, start: Agent) -> Agent:
    """A copy of the agent graph from ``start`` with kill sites around every tool body and
    inside every model's answer."""
    return copy_agents(
        start,
        lambda tool: _crashing_tool(attempt, tool),
        lambda agent: _CrashingModel(attempt, agent.model) if agent.model is not None else None,
    )


# -- the store, with kill sites -----------------------------------------------------------------


class _DyingConnection:
    """SQLiteStore's connection, telling the attempt about its transactions."""

    def __init__(self, db: Any, attempt: Attempt) -> None:
        self._db = db
        self._attempt = attempt

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("BEGIN"):
            self._attempt.begin()
        elif sql == "COMMIT":
            self._attempt.commit()
        result = self._db.execute(sql, *args)
        if sql == "COMMIT":
            self._attempt.committed += 1
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _patch_psycopg_transactions(attempt: Attempt) -> None:
    """psycopg's transaction blocks (PostgresStore's only way to commit), telling the
    attempt about them. Patched in this child process only."""
    from psycopg import AsyncTransaction

    enter, exit = AsyncTransaction.__aenter__, AsyncTransaction.__aexit__

    async def aenter(self: Any) -> Any:
        attempt.begin()
        return await enter(self)

    async def aexit(self: Any, kind: Any, error: Any, trace: Any) -> Any:
        if kind is None:
            attempt.commit()
        result = await exit(self, kind, error, trace)
        if kind is None:
            attempt.committed += 1
        return result

    AsyncTransaction.__aenter__ = aenter  # type: ignore[method-assign]
    AsyncTransaction.__aexit__ = aexit  # type: ignore[method-assign,assignment]


def _add_store_sites(store: Store, attempt: Attempt) -> None:
    """The ``created`` site, and the ``save`` sites: for agentfsm's SQLite and PostgreSQL
    stores this reaches below the Store API (into the connection, or into psycopg); a store
    of your own marks its boundaries with ``crash_point``."""
    create, save = store.create, store.save

    async def create_then_site(state: RunState) -> None:
        await create(state)
        attempt.note(e="created", version=state.version, status=state.status.value)
        attempt.site("created", state.turn)

    async def save_with_sites(state: RunState, **options: Any) -> int:
        attempt.saving, attempt.committed = state, 0
        try:
            return await save(state, **options)
        finally:
            attempt.saving = None

    store.create = create_then_site  # type: ignore[method-assign]
    store.save = save_with_sites  # type: ignore[method-assign]
    from ..stores._sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        store._db = _DyingConnection(store._db, attempt)  # type: ignore[assignment]
    elif any(kind.__name__ == "PostgresStore" for kind in type(store).__mro__):
        _patch_psycopg_transactions(attempt)


# -- one attempt -------------------------------------------------------------------------------


async def _decide(attempt: Attempt, store: Store, state: RunState) -> None:
    """The person: approve what waits for approval; for a call in doubt, look at the
    side-effect file: reject it if its body started (it must not run twice), else approve
    it. A careless person approves every call in doubt without looking."""
    for request in state.interruptions:
        approved = True
        if request.reason == "in_doubt" and not attempt.careless:
            approved = not attempt.effect_seen(request.idempotency_key)
        if approved:
            await store.approve(state.run_id, request)
        else:
            await store.reject(state.run_id, request)
        attempt.note(e="decide", call_id=request.call_id, reason=request.reason, approved=approved)
        attempt.site("human", state.turn)


async def run_attempt(job: dict[str, Any]) -> None:
    attempt = Attempt.current = Attempt(job)
    scenario = load_scenario(job["scenario"], job["options"])
    offset = job["generation"] * CLOCK_STEP
    store = scenario.store(lambda: time.time() + offset)
    try:
        _add_store_sites(store, attempt)
        runner = Runner(store=store, on_step=attempt.on_step, lease_seconds=scenario.lease_seconds)
        agent = crashing_agents(attempt, scenario.agent)
        run_id = job["run_id"]
        try:
            loaded: RunState | None = await store.load(run_id)
        except UnknownRunError:
            loaded = None
        if loaded is None:
            attempt.note(e="load", version=None, status=None)
            turns = {} if scenario.max_turns is None else {"max_turns": scenario.max_turns}
            attempt.last = new_run(
                agent, scenario.input, run_id=run_id, context=scenario.context, **turns
            )
            result = await runner.run(
                agent, scenario.input, run_id=run_id, context=scenario.context, **turns
            )
        else:
            attempt.note(e="load", version=loaded.version, status=loaded.status.value)
            attempt.last = loaded
            result = await runner.resume(agent, run_id)
        for _ in range(100):
            if result.status != "interrupted":
                break
            await _decide(attempt, store, result.state)
            result = await runner.resume(agent, run_id)
        attempt.note(e="done", status=result.status, version=result.state.version)
        Path(job["out"]).write_text(result.state.to_json())
    finally:
        await store.close()


# -- processes -------------------------------------------------------------------------------


def _child(job: dict[str, Any]) -> int:
    # A stuck child must not hang the test: SIGALRM ends it (and is told apart from SIGKILL).
    signal.alarm(int(job.get("timeout", 60)))
    try:
        asyncio.run(run_attempt(job))
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def serve() -> None:
    """Fork a child per job line on stdin; answer each with a JSON line saying how it ended.
    This process only imports: no threads, connections or event loops cross the fork."""
    with contextlib.suppress(ImportError):
        import psycopg  # noqa: F401 (PostgresStore imports it when built: do it once, here)
    imported: set[str] = set()
    while line := sys.stdin.buffer.readline():
        job = json.loads(line)
        module = job["scenario"].partition(":")[0]
        if module not in imported:
            # Import the scenario's module once, here, so each child only forks.
            with contextlib.suppress(Exception):
                importlib.import_module(module)
            imported.add(module)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                log = os.open(job["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                code = _child(job)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        report = {
            "pid": pid,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        }
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    if argv[1:] == ["serve"]:
        serve()
        return 0
    if len(argv) == 3 and argv[1] == "run":
        return _child(json.loads(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
