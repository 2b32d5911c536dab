"""A real agent for the crash-safety test, run in child processes that kill themselves.

One *attempt* runs (or resumes) one stored run in this process, with ``Runner(store=...)``, and
SIGKILLs itself at the *kill site* it was given, if it gets there. The test starts attempt
after attempt on the same run until one finishes it, then checks what happened.

    python tests/crash_app.py run JOB_JSON   # one attempt, in this process
    python tests/crash_app.py serve          # a fork server: imports everything once, then
                                             # forks a new child process per job line read
                                             # from stdin, and reports how each one ended

The fork server makes an attempt cost a fork (a few ms) instead of an interpreter start-up
with every import (~0.4 s), so the test can afford a couple of hundred kills. Each child is a
separate process with its own memory, store connection and event loop, killed with SIGKILL;
nothing of it survives except what it wrote to files and to the store.

Ground truth lives in two append-only files a SIGKILL cannot take back:

- the side-effect file: every tool body appends ``tool key call_id pid`` (flushed and
  fsynced) before it returns, so it lists exactly the tool bodies that took effect;
- the journal: JSON lines, each with the writer's pid, for every checkpoint the process saw
  (``step``: version, step kind, statuses, the calls whose results it committed), the state it
  loaded (``load``), the run's creation (``created``), the human's decisions (``decide``),
  the kill itself (``kill``) and the end (``done``); with ``trace``, also every kill site
  passed (``site``).

Kill sites (``kind``, the run's ``turn`` there, and ``call_id`` for tools):

- ``created``: right after ``Runner.run`` stored the new run, before its first step;
- ``save``: inside the store's save of a checkpoint, with the step's rows written, right
  before the transaction's COMMIT (``save:between``: between two of its transactions,
  should a save ever take more than one; it must not, a kill there would store half a step);
- ``step:<Started|ModelResponded|ToolsFinished|ApprovalsDecided>``: in ``on_step``, which the
  runner calls right after the store saved the step;
- ``model``: inside the model's ``respond``, after computing the answer, before returning it;
- ``tool_before:<tool>`` / ``tool_after:<tool>``: inside a tool body, before its side effect,
  or after it (the result is not committed yet);
- ``human``: right after the human posted a decision to the store (so possibly between two
  decisions of one pause), before resuming.

A job kills at the first site of its kind at or after its turn (for a tool site in that same
turn, only for its call id): "at or after" so that a site the run never passes again (a call
rejected after a crash, say) moves the kill to the next site of that kind instead of losing it.
The kind ``next`` kills at the first site the process reaches, whatever it is: right in the
middle of recovering from the previous kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from agentfsm import (
    Agent,
    ModelRequest,
    ModelResponse,
    ModelToolCall,
    Runner,
    RunState,
    SQLiteStore,
    Store,
    ToolContext,
    ToolResultItem,
    UnknownRunError,
    Usage,
    new_run,
    tool,
)
from agentfsm.testing import ScriptedModel, call, handoff, say

INPUT = "Settle customer 42's account and keep them informed."

#: The tools, and whether each may run again after a crash without asking anyone.
IDEMPOTENT = {"lookup": True, "charge": False, "send_email": False}

#: Each new attempt's store clock runs this much later than the previous one's: the killed
#: worker's lease (``LEASE_SECONDS``) has expired by then, as it would in real life after
#: the wait, without the test waiting.
LEASE_SECONDS = 30.0
CLOCK_STEP = 120.0

STEP_KINDS = {
    "new": "Started",
    "running": "ModelResponded",
    "tools": "ToolsFinished",
    "interrupted": "ApprovalsDecided",
}


def _said(turn: int, text: str, *calls: tuple[str, str]) -> ModelResponse:
    """A scripted turn with text and tool calls (ScriptedModel's call ids)."""
    return ModelResponse(
        text=text,
        tool_calls=tuple(
            ModelToolCall(call_id=f"call_{turn}_{n}", name=name, arguments=arguments)
            for n, (name, arguments) in enumerate(calls)
        ),
        usage=Usage(requests=1, input_tokens=10, output_tokens=5),
    )


#: Eight model turns over two agents. Turn 2: an idempotent and a non-idempotent call in
#: parallel. Turn 3: a call that needs no approval next to one that does. Turn 4: a tool call
#: and a handoff in one turn. Turn 5: two calls needing approval next to two that do not.
SCRIPT = [
    call("lookup", query="customer 42"),
    [call("lookup", query="open invoices"), call("charge", amount=5, item="late fee")],
    [call("charge", amount=10, item="invoice 7"), call("send_email", to="ada", subject="7 paid")],
    _said(
        3,
        "Passing you to billing.",
        ("lookup", '{"query": "billing plan"}'),
        (handoff("billing").name, "{}"),
    ),
    [
        call("send_email", to="bob", subject="refund"),
        call("send_email", to="eve", subject="audit"),
        call("charge", amount=20, item="plan upgrade"),
        call("lookup", query="refund policy"),
    ],
    _said(5, "Charging the balance.", ("charge", '{"amount": 30, "item": "balance"}')),
    call("send_email", to="ada", subject="all settled"),
    say("All settled: 65 charged, 4 emails sent."),
]


# -- one attempt ------------------------------------------------------------------------------


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

    def note(self, **entry: Any) -> None:
        # One write(2) per line on an O_APPEND file: lines from threads and processes never
        # interleave, and a SIGKILL cannot undo a write that returned.
        os.write(self._journal, (json.dumps({"pid": self.pid, **entry}) + "\n").encode())

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
        kind = STEP_KINDS[previous.status.value]
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


def _matches(kill: dict[str, Any], kind: str, turn: int, call_id: str | None) -> bool:
    if kill["kind"] == "next":
        return True
    if kind != kill["kind"]:
        return False
    if turn != kill["turn"]:
        return turn > kill["turn"]
    return kill.get("call_id") in (None, call_id)


def turn_of(call_id: str) -> int:
    """The run's turn when the call was made: ScriptedModel names calls ``call_<i>_<n>``
    after the model response ``i`` (0-based), which makes the run's turn ``i + 1``."""
    return int(call_id.split("_")[1]) + 1


def _attempt() -> Attempt:
    assert Attempt.current is not None
    return Attempt.current


def _body(name: str, ctx: ToolContext, result: str) -> str:
    attempt = _attempt()
    turn = turn_of(ctx.call_id)
    attempt.site(f"tool_before:{name}", turn, ctx.call_id)
    attempt.effect(name, ctx)
    attempt.site(f"tool_after:{name}", turn, ctx.call_id)
    return result


@tool(idempotent=True)
async def lookup(query: str, ctx: ToolContext) -> str:
    """Look a record up (reads only: safe to run again)."""
    await asyncio.sleep(0)
    return _body("lookup", ctx, f"record of {query}")


@tool
def charge(amount: int, item: str, ctx: ToolContext) -> str:
    """Charge the customer's card (a sync tool: it runs in a worker thread)."""
    return _body("charge", ctx, f"charged {amount} for {item}")


@tool(needs_approval=True)
def send_email(to: str, subject: str, ctx: ToolContext) -> str:
    """Email someone (a human approves every email)."""
    return _body("send_email", ctx, f"emailed {to}: {subject}")


class CrashingModel:
    """The scripted model, with a kill site inside ``respond``."""

    def __init__(self) -> None:
        self.script = ScriptedModel(SCRIPT)

    async def respond(self, request: ModelRequest) -> ModelResponse:
        response = await self.script.respond(request)
        _attempt().site("model", request.turn)
        return response


def build_agent() -> Agent:
    model = CrashingModel()
    tools = [lookup, charge, send_email]
    billing = Agent("billing", "You settle accounts.", model, tools=tools)
    return Agent("triage", "You sort requests out.", model, tools=tools, handoffs=[billing])


def open_store(spec: dict[str, Any], clock: Any = None) -> Store:
    if spec["kind"] == "sqlite":
        return SQLiteStore(spec["path"], **({"clock": clock} if clock else {}))
    from agentfsm import PostgresStore

    store: Store = PostgresStore(
        spec["dsn"], schema=spec["schema"], **({"clock": clock} if clock else {})
    )
    return store


async def _decide(attempt: Attempt, store: Store, state: RunState) -> None:
    """The human: approve what waits for approval; for a call in doubt, look at the
    side-effect file: reject it if it took effect (it must not run twice), else approve."""
    for request in state.interruptions:
        approved = True
        if request.reason == "in_doubt" and not attempt.careless:
            key = next(c.idempotency_key for c in state.ledger if c.call_id == request.call_id)
            approved = not attempt.effect_seen(key)
        if approved:
            await store.approve(state.run_id, request)
        else:
            await store.reject(state.run_id, request)
        attempt.note(e="decide", call_id=request.call_id, reason=request.reason, approved=approved)
        attempt.site("human", state.turn)


class _Saving:
    """Kill sites inside the store's save of a checkpoint: ``save`` right before a COMMIT
    (the step's rows are written, not committed; on PostgreSQL the run's row is locked), and
    ``save:between`` before each transaction after the first, should a save ever take more
    than one (it must not: a kill there would leave half a step stored)."""

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.state: RunState | None = None
        self.committed = 0

    def begin(self) -> None:
        if self.state is not None and self.committed:
            self.attempt.site("save:between", self.state.turn)

    def commit(self) -> None:
        if self.state is not None:
            self.attempt.site("save", self.state.turn)

    def committed_one(self) -> None:
        self.committed += 1


class _DyingConnection:
    """SQLiteStore's connection, telling ``_Saving`` about its transactions."""

    def __init__(self, db: Any, saving: _Saving) -> None:
        self._db = db
        self._saving = saving

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("BEGIN"):
            self._saving.begin()
        elif sql == "COMMIT":
            self._saving.commit()
        result = self._db.execute(sql, *args)
        if sql == "COMMIT":
            self._saving.committed_one()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _patch_psycopg_transactions(saving: _Saving) -> None:
    """psycopg's transaction blocks (PostgresStore's only way to commit), telling
    ``_Saving`` about them. Patched in this child process only."""
    from psycopg import AsyncTransaction

    enter, exit = AsyncTransaction.__aenter__, AsyncTransaction.__aexit__

    async def aenter(self: Any) -> Any:
        saving.begin()
        return await enter(self)

    async def aexit(self: Any, kind: Any, error: Any, trace: Any) -> Any:
        if kind is None:
            saving.commit()
        result = await exit(self, kind, error, trace)
        if kind is None:
            saving.committed_one()
        return result

    AsyncTransaction.__aenter__ = aenter  # type: ignore[method-assign]
    AsyncTransaction.__aexit__ = aexit  # type: ignore[method-assign]


def _add_store_sites(store: Store, attempt: Attempt) -> None:
    """The ``created`` site, and the ``save`` sites. This reaches below the Store API: into
    SQLiteStore's connection, or into psycopg."""
    create, save = store.create, store.save
    saving = _Saving(attempt)

    async def create_then_site(state: RunState) -> None:
        await create(state)
        attempt.note(e="created", version=state.version, status=state.status.value)
        attempt.site("created", state.turn)

    async def save_with_sites(state: RunState, **options: Any) -> int:
        saving.state, saving.committed = state, 0
        try:
            return await save(state, **options)
        finally:
            saving.state = None

    store.create = create_then_site  # type: ignore[method-assign]
    store.save = save_with_sites  # type: ignore[method-assign]
    if isinstance(store, SQLiteStore):
        store._db = _DyingConnection(store._db, saving)  # type: ignore[assignment]
    else:
        _patch_psycopg_transactions(saving)


async def run_attempt(job: dict[str, Any]) -> None:
    attempt = Attempt.current = Attempt(job)
    offset = job["generation"] * CLOCK_STEP
    store = open_store(job["store"], clock=lambda: time.time() + offset)
    try:
        _add_store_sites(store, attempt)
        runner = Runner(store=store, on_step=attempt.on_step, lease_seconds=LEASE_SECONDS)
        agent = build_agent()
        run_id = job["run_id"]
        try:
            loaded: RunState | None = await store.load(run_id)
        except UnknownRunError:
            loaded = None
        if loaded is None:
            attempt.note(e="load", version=None, status=None)
            attempt.last = new_run(agent, INPUT, run_id=run_id)
            result = await runner.run(agent, INPUT, run_id=run_id)
        else:
            attempt.note(e="load", version=loaded.version, status=loaded.status.value)
            attempt.last = loaded
            result = await runner.resume(agent, run_id)
        for _ in range(20):
            if result.status != "interrupted":
                break
            await _decide(attempt, store, result.state)
            result = await runner.resume(agent, run_id)
        attempt.note(e="done", status=result.status, version=result.state.version)
        Path(job["out"]).write_text(result.state.to_json())
    finally:
        await store.close()


# -- processes --------------------------------------------------------------------------------


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
    while line := sys.stdin.buffer.readline():
        job = json.loads(line)
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
