"""Crash safety, by fault injection: a real agent in a child process, with a real store,
killed with SIGKILL at every kind of point, resumed each time by a new process, ends as if it
had never been killed.

The agent (tests/crash_app.py) plays eight model turns over two agents, with a handoff,
parallel calls, an idempotent tool (``lookup``), a non-idempotent one (``charge``) and one
that needs approval (``send_email``). Its tool bodies append to a side-effect file before
they return, so that file is the ground truth of what ran; each process also journals the
checkpoints it saw. A *scenario* runs one stored run through a chain of processes: each dies
at its kill site and the next resumes the run by id, playing the human when the run pauses:
it approves what needs approval and, for a call in doubt, rejects it if the side-effect
file shows it took effect, else approves it.

The kill sites (see crash_app) come from an uninterrupted reference run of the same agent,
which also gives the reference transcript: right after the run is stored, inside the
store's save of each checkpoint (before its COMMIT) and right after it, for each step kind,
inside the model's answer, inside each tool body before and after its side effect, and
right after each of the human's decisions. Every site of the reference run is killed once;
then every site again, followed each time by a second kill at the first site of the process
that recovers from it. Every scenario starts with a kill right after the run is stored and
one right after its first checkpoint. After each scenario:

- the run completed; the stored run equals the last process's final state; its version is
  the number of checkpoints the processes saw, which are versions 1..N in order, each one
  continuing the one before, and each process loaded exactly the last checkpoint saved: no
  step was lost or taken twice;
- the transcript is the reference one: the same messages, calls and handoffs in the same
  order, and every call has exactly one result, in its own turn, equal to the reference
  result, except a call in doubt that the human rejected because it had taken effect, whose
  result is the in-doubt rejection (results of one turn may come in another order: a call in
  doubt commits after its siblings);
- no non-idempotent tool body ran twice; an idempotent one ran again only after the process
  that ran it was killed before committing its result; every body ran with the call's stable
  idempotency key, and every call's result was committed exactly once.

The same scenarios run against PostgreSQL when a server answers and PostgresStore works
(``AGENTFSM_TEST_POSTGRES``, default ``postgresql://postgres@127.0.0.1:5432/test``; a fresh
schema per test, dropped after it).

The processes are forked from a fork server that has imported everything once (an attempt
then costs a fork, not an interpreter start-up); one test repeats a few kills with a fresh
interpreter per process. Another shows that the checks catch a tool run twice, a lost step
and a missing result.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import crash_app
import msgspec
import pytest

from agentfsm import (
    ConfigurationError,
    RunState,
    ToolCallItem,
    ToolResultItem,
    Transcript,
    idempotency_key,
)
from agentfsm._step import IN_DOUBT_REJECTION

DSN = os.environ.get("AGENTFSM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
APP = Path(crash_app.__file__).resolve()

STEP_SITES = [f"step:{kind}" for kind in crash_app.STEP_KINDS.values()]
TOOL_SITES = [
    f"tool_{when}:{name}" for name in crash_app.IDEMPOTENT for when in ("before", "after")
]
ALL_SITES = ["created", "save", *STEP_SITES, "model", *TOOL_SITES, "human"]


#: Scenarios per round; each gets every GROUPS-th site of the reference run.
GROUPS = 6
#: Scenarios played at once (each is a chain of processes, one after the other).
WORKERS = 2


# -- processes --------------------------------------------------------------------------------


class Launcher(Protocol):
    def launch(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one attempt to its end; how it ended: ``pid``, ``signal``, ``code``."""


class ForkServer:
    """Attempts as children of one interpreter that has imported everything (crash_app)."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(APP), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=APP.parent.parent,
        )

    def launch(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(job).encode() + b"\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died ({self._process.wait()})")
        report: dict[str, Any] = json.loads(line)
        return report

    def close(self) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.close()
        self._process.wait(timeout=30)
        self._process.stdout.close()


class ForkServers:
    """A few fork servers, for scenarios played side by side in threads."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._free: queue.Queue[ForkServer] = queue.Queue()
        for _ in range(count):
            self._free.put(ForkServer())

    def launch(self, job: dict[str, Any]) -> dict[str, Any]:
        server = self._free.get()
        try:
            return server.launch(job)
        finally:
            self._free.put(server)

    def close(self) -> None:
        for _ in range(self.count):
            self._free.get().close()


class Spawner:
    """Attempts in fresh interpreters: ``sys.executable tests/crash_app.py run JOB``."""

    def launch(self, job: dict[str, Any]) -> dict[str, Any]:
        with (
            open(job["log"], "ab") as log,
            subprocess.Popen(
                [sys.executable, str(APP), "run", json.dumps(job)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=APP.parent.parent,
            ) as process,
        ):
            code = process.wait(timeout=120)
        return {
            "pid": process.pid,
            "signal": -code if code < 0 else None,
            "code": code if code >= 0 else None,
        }


@pytest.fixture(scope="module")
def fork_servers() -> Iterator[ForkServers]:
    servers = ForkServers(WORKERS)
    yield servers
    servers.close()


# -- stores -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """Where the runs are stored, as the child processes are told it."""

    spec: dict[str, Any]

    async def inspect(self, run_id: str) -> tuple[RunState, tuple[int, ...]]:
        """The stored run and its unacknowledged inbox messages, read by a new store."""
        store = crash_app.open_store(self.spec)
        try:
            return await store.load(run_id), (await store.inbox(run_id)).ids
        finally:
            await store.close()


@pytest.fixture(scope="module")
def postgres_unavailable() -> str | None:
    """Why the PostgreSQL variant cannot run (None if it can), found out once."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(DSN, connect_timeout=2):
            pass
    except psycopg.Error as exc:
        return "PostgreSQL is not answering: " + " ".join(str(exc).split())
    from agentfsm import PostgresStore

    try:
        store = PostgresStore(DSN, schema="agentfsm_crash_probe", clock=time.time)
    except ConfigurationError as exc:
        return f"PostgresStore is not usable yet: {exc}"
    except TypeError as exc:
        return f"PostgresStore lacks schema=/clock=, which this test needs: {exc}"
    asyncio.run(store.close())
    return None


@pytest.fixture(params=["sqlite", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_unavailable: str | None
) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend({"kind": "sqlite", "path": str(tmp_path / "runs.db")})
        return
    if postgres_unavailable is not None:
        pytest.skip(postgres_unavailable)
    import psycopg

    schema = f"agentfsm_crash_{uuid.uuid4().hex[:12]}"
    yield Backend({"kind": "postgres", "dsn": DSN, "schema": schema})
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Where an attempt kills itself (see crash_app): a kind, the run's turn there, and the
    call for a tool site."""

    kind: str
    turn: int
    call_id: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}@{self.turn}" + (f"/{self.call_id}" if self.call_id else "")


@dataclass
class Outcome:
    """What one scenario left behind."""

    name: str
    run_id: str
    plan: list[Site]
    processes: list[dict[str, Any]]
    journal: list[dict[str, Any]]
    effects: list[tuple[str, str, str, int]]
    final: RunState | None
    stored: RunState | None
    inbox: tuple[int, ...]
    log: str

    @property
    def kills(self) -> list[dict[str, Any]]:
        return [entry for entry in self.journal if entry["e"] == "kill"]

    @property
    def missed(self) -> int:
        """Kill sites of the plan that no process reached before the run completed."""
        return len(self.plan) - len(self.kills)


def play(
    launcher: Launcher,
    backend: Backend,
    name: str,
    plan: list[Site],
    workdir: Path,
    *,
    trace: bool = False,
    human: str = "careful",
) -> Outcome:
    """Run a new run through processes that die at the sites of ``plan``, one site each,
    until one finishes the run."""
    folder = workdir / name
    folder.mkdir()
    run_id = f"{name}-{uuid.uuid4().hex[:8]}"
    job = {
        "store": backend.spec,
        "run_id": run_id,
        "effects": str(folder / "effects"),
        "journal": str(folder / "journal"),
        "out": str(folder / "final.json"),
        "log": str(folder / "log"),
        "trace": trace,
        "human": human,
    }
    pending = list(plan)
    processes = []
    for generation in itertools.count():
        kill = pending[0] if pending else None
        report = launcher.launch(
            {**job, "generation": generation, "kill": None if kill is None else vars(kill)}
        )
        processes.append(report)
        if kill is None or report["signal"] != signal.SIGKILL:
            break
        pending.pop(0)

    def lines(path: str) -> list[str]:
        return Path(path).read_text().splitlines() if Path(path).exists() else []

    effects = [
        (tool, key, call_id, int(pid))
        for tool, key, call_id, pid in (line.split() for line in lines(job["effects"]))
    ]
    final = Path(job["out"])
    try:
        stored, inbox = asyncio.run(backend.inspect(run_id))
    except Exception as exc:
        stored, inbox = None, ()
        with Path(job["log"]).open("a") as log:
            log.write(f"\nthe stored run cannot be read: {exc!r}\n")
    return Outcome(
        name=name,
        run_id=run_id,
        plan=plan,
        processes=processes,
        journal=[json.loads(line) for line in lines(job["journal"])],
        effects=effects,
        final=RunState.from_json(final.read_text()) if final.exists() else None,
        stored=stored,
        inbox=inbox,
        log="\n".join(lines(job["log"])[-40:]),
    )


def trace_of(reference: Outcome) -> list[Site]:
    return [
        Site(entry["kind"], entry["turn"], entry["call_id"])
        for entry in reference.journal
        if entry["e"] == "site"
    ]


#: Kill the next process at the first site it reaches: while it recovers from the last kill.
AGAIN = Site("next", 0)


def plans(trace: list[Site]) -> list[tuple[str, list[Site]]]:
    """Every site of the reference run once; then every site again, each followed by a
    second kill while the next process recovers from it. Each round is spread over GROUPS
    scenarios. Each scenario starts with kills at the two sites a run passes only once:
    right after the run is stored, and right after its first checkpoint."""
    start = [trace[0], next(site for site in trace if site.kind == "step:Started")]
    rest = [site for site in trace if site not in start]
    assert start[0].kind == "created"
    groups = [rest[n::GROUPS] for n in range(GROUPS)]
    once = [(f"once{n}", [*start, *group]) for n, group in enumerate(groups)]
    twice = [
        (f"twice{n}", [*start, *(kill for site in group for kill in (site, AGAIN))])
        for n, group in enumerate(groups)
    ]
    return once + twice


# -- the checks -------------------------------------------------------------------------------


def problems(outcome: Outcome, reference: RunState) -> list[str]:
    """Everything wrong with a scenario, compared with the reference run's final state."""
    found: list[str] = []
    processes, journal = outcome.processes, outcome.journal

    # Every attempt but the last died by SIGKILL at its kill site; the last one finished.
    killed = [p["pid"] for p in processes if p["signal"] == signal.SIGKILL]
    if [k["pid"] for k in outcome.kills] != killed or processes[:-1] != [
        p for p in processes if p["pid"] in killed
    ]:
        found.append(f"not every attempt but the last was killed at its site: {processes}")
    if processes[-1]["code"] != 0:
        found.append(f"the last attempt ended with {processes[-1]}; its log:\n{outcome.log}")

    # No step lost: checkpoints 1..N in order, each continuing the previous one, and each
    # process started from the last checkpoint saved before it.
    steps = [entry for entry in journal if entry["e"] == "step"]
    versions = [s["version"] for s in steps]
    if versions != list(range(1, len(steps) + 1)):
        found.append(f"the checkpoints are not versions 1..N, each once, in order: {versions}")
    for before, after in itertools.pairwise(steps):
        if after["source"] != before["target"]:
            found.append(f"checkpoint {after} does not continue {before}")
    saved: tuple[int | None, str | None] = (None, None)
    for entry in journal:
        if entry["e"] == "load" and (entry["version"], entry["status"]) != saved:
            found.append(
                f"process {entry['pid']} loaded version {entry['version']} "
                f"({entry['status']}), but the last checkpoint saved was {saved}"
            )
        elif entry["e"] == "created":
            saved = (entry["version"], entry["status"])
        elif entry["e"] == "step":
            saved = (entry["version"], entry["target"])

    stored, final = outcome.stored, outcome.final
    if stored is None or final is None:
        found.append(
            f"the run was not finished (stored: {stored is not None}); log:\n{outcome.log}"
        )
        return found
    if stored != final:
        found.append("loading the run does not give the final state of the last attempt")
    if stored.version != len(steps):
        found.append(f"the run is at version {stored.version} after {len(steps)} checkpoints")
    if outcome.inbox:
        found.append(f"messages left in the run's inbox: {outcome.inbox}")
    if stored.status.value != "completed" or stored.ledger or stored.decisions:
        found.append(f"the run ended {stored.status.value} with ledger {stored.ledger}")
    for field in ("input", "final_output", "usage", "turn", "current_agent", "policies"):
        if getattr(stored, field) != getattr(reference, field):
            found.append(
                f"{field} is {getattr(stored, field)!r}, not {getattr(reference, field)!r}"
            )

    tools = {i.call_id: i.tool for i in reference.items if isinstance(i, ToolCallItem)}
    doubts = [e for e in journal if e["e"] == "decide" and e["reason"] == "in_doubt"]
    rejected = {entry["call_id"] for entry in doubts if not entry["approved"]}
    found += [
        f"{entry['call_id']} of the idempotent {tools[entry['call_id']]} was put in doubt "
        "instead of being run again"
        for entry in doubts
        if crash_app.IDEMPOTENT.get(tools.get(entry["call_id"], ""))
    ]
    found += transcript_problems(stored.items, reference.items, rejected)
    found += effect_problems(outcome, reference, killed, rejected)
    return found


def transcript_problems(items: Transcript, reference: Transcript, rejected: set[str]) -> list[str]:
    def layout(
        items: Transcript,
    ) -> tuple[list[Any], dict[str, list[tuple[int, ToolResultItem]]]]:
        """The items without results, and each call's results with the number of
        non-result items before them (the same for every result of one turn)."""
        skeleton: list[Any] = []
        results: dict[str, list[tuple[int, ToolResultItem]]] = defaultdict(list)
        for item in items:
            if isinstance(item, ToolResultItem):
                results[item.call_id].append((len(skeleton), item))
            else:
                skeleton.append(item)
        return skeleton, results

    found = []
    skeleton, results = layout(items)
    expected_skeleton, expected_results = layout(reference)
    if skeleton != expected_skeleton:
        first = next(
            (
                n
                for n, (a, b) in enumerate(zip(skeleton, expected_skeleton, strict=False))
                if a != b
            ),
            min(len(skeleton), len(expected_skeleton)),
        )
        found.append(
            f"the messages, calls and handoffs differ from item {first} of "
            f"{len(expected_skeleton)}: {skeleton[first : first + 2]} instead of "
            f"{expected_skeleton[first : first + 2]}"
        )
    for call_id in sorted(results.keys() | expected_results.keys()):
        got = results.get(call_id, [])
        if len(got) != 1:
            found.append(f"call {call_id} has {len(got)} results: {got}")
            continue
        (place, result), [(expected_place, expected)] = got[0], expected_results[call_id]
        if call_id in rejected:
            expected = msgspec.structs.replace(expected, output=IN_DOUBT_REJECTION)
        if place != expected_place:
            found.append(f"the result of {call_id} is in another turn than in the reference")
        if result != expected:
            found.append(f"the result of {call_id} is {result}, not {expected}")
    return found


def effect_problems(
    outcome: Outcome, reference: RunState, killed: list[int], rejected: set[str]
) -> list[str]:
    found = []
    calls = {
        item.call_id: item.tool
        for item in reference.items
        if isinstance(item, ToolCallItem) and item.tool in crash_app.IDEMPOTENT
    }
    runs: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for tool, key, call_id, pid in outcome.effects:
        runs[call_id].append((key, pid))
        if calls.get(call_id) != tool:
            found.append(f"{tool} ran for a call {call_id} that the run does not have")
    commits: dict[str, list[int]] = defaultdict(list)
    for entry in outcome.journal:
        for call_id in entry.get("commits", ()):
            commits[call_id].append(entry["pid"])
    for call_id, tool in sorted(calls.items()):
        key = idempotency_key(outcome.run_id, crash_app.turn_of(call_id), call_id)
        pids = [pid for _, pid in runs[call_id]]
        committers = commits[call_id]
        if any(k != key for k, _ in runs[call_id]):
            found.append(f"{tool} {call_id} ran with another idempotency key than {key}")
        if len(committers) != 1:
            found.append(f"the result of {call_id} was committed {len(committers)} times")
        if not pids:
            found.append(f"{tool} {call_id} never ran")
        elif not crash_app.IDEMPOTENT[tool]:
            if len(pids) != 1:
                found.append(f"{tool} {call_id} is not idempotent and ran {len(pids)} times")
            elif call_id in rejected and pids[0] not in killed:
                found.append(f"{call_id} was in doubt, but its process {pids[0]} was not killed")
            elif call_id not in rejected and committers != pids:
                found.append(f"{call_id} ran in {pids} but was committed by {committers}")
        else:
            # Run again only by a later process, after the one that ran it died before
            # committing; the last run is the committed one.
            again = [p for p in pids[:-1] if p not in killed or p in committers]
            if len(set(pids)) != len(pids) or again or committers[-1:] != pids[-1:]:
                found.append(
                    f"{tool} {call_id} ran in processes {pids} (killed: {killed}), "
                    f"committed by {committers}"
                )
    return found


def check(outcome: Outcome, reference: RunState) -> None:
    found = problems(outcome, reference)
    assert not found, f"scenario {outcome.name}, plan {list(map(str, outcome.plan))}:\n" + (
        "\n".join(found)
    )


def reference_run(launcher: Launcher, backend: Backend, workdir: Path) -> Outcome:
    reference = play(launcher, backend, "reference", [], workdir, trace=True)
    assert reference.stored is not None, reference.log
    check(reference, reference.stored)
    assert reference.stored.final_output == "All settled: 65 charged, 4 emails sent."
    assert len(reference.effects) == 12
    # A store that saved a step in two transactions would add "save:between" sites. No
    # "save" site means crash_app no longer sees the store commit (see _add_store_sites).
    assert {site.kind for site in trace_of(reference)} - {"save:between"} == set(ALL_SITES)
    return reference


# -- the tests --------------------------------------------------------------------------------


def test_a_run_killed_at_every_site_once_and_twice_ends_as_if_never_killed(
    backend: Backend, fork_servers: ForkServers, tmp_path: Path
) -> None:
    started = time.monotonic()
    reference = reference_run(fork_servers, backend, tmp_path)
    assert reference.stored is not None
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(
            pool.map(
                lambda scenario: play(fork_servers, backend, *scenario, tmp_path),
                plans(trace_of(reference)),
            )
        )
    failures = [
        f"scenario {o.name}, plan {list(map(str, o.plan))}:\n" + "\n".join(found)
        for o in outcomes
        if (found := problems(o, reference.stored))
    ]
    assert not failures, "\n\n".join(failures)

    # What the kills made the runs go through.
    kills = Counter(kill["kind"] for o in outcomes for kill in o.kills)
    processes = sum(len(o.processes) for o in outcomes)
    doubts = Counter(
        "approved (it had not run)" if entry["approved"] else "rejected (it had run)"
        for o in outcomes
        for entry in o.journal
        if entry["e"] == "decide" and entry["reason"] == "in_doubt"
    )
    reruns = sum(
        count - 1
        for o in outcomes
        for (tool, _), count in Counter((tool, call) for tool, _, call, _ in o.effects).items()
        if crash_app.IDEMPOTENT[tool]
    )
    print(
        f"\n{backend.spec['kind']}: {kills.total()} kills in {len(outcomes)} scenarios, "
        f"{processes} processes, {time.monotonic() - started:.1f} s; "
        f"{sum(o.missed for o in outcomes)} planned kills not reached before the run ended"
    )
    for kind in ALL_SITES:
        print(f"  killed at {kind:26} {kills[kind]:4}")
    for verdict, count in sorted(doubts.items()):
        print(f"  calls in doubt {verdict:26} {count:4}")
    print(f"  idempotent calls run again {reruns:19}")
    assert kills.total() >= 150
    assert all(kills[kind] >= 5 for kind in ALL_SITES), kills
    assert len(doubts) == 2 and reruns > 0, (doubts, reruns)


def test_attempts_in_fresh_interpreters_end_the_same(
    backend: Backend, fork_servers: ForkServers, tmp_path: Path
) -> None:
    """A few kills with a new interpreter per attempt (new imports, new hash seed), in case
    forking from one interpreter hid something."""
    reference = reference_run(fork_servers, backend, tmp_path)
    assert reference.stored is not None
    plan = [
        Site("step:Started", 0),
        Site("tool_after:charge", 2, "call_1_1"),
        Site("step:ToolsFinished", 3),
        Site("human", 5),
        Site("tool_before:send_email", 5, "call_4_1"),
        Site("model", 7),
    ]
    outcome = play(Spawner(), backend, "fresh", plan, tmp_path)
    check(outcome, reference.stored)
    assert len(outcome.kills) == len(plan)


def test_the_checks_catch_a_tool_run_twice_a_lost_step_and_a_missing_result(
    fork_servers: ForkServers, tmp_path: Path
) -> None:
    backend = Backend({"kind": "sqlite", "path": str(tmp_path / "runs.db")})
    reference = reference_run(fork_servers, backend, tmp_path)
    assert reference.stored is not None

    # A careless human approves a call in doubt without looking: charge runs twice.
    careless = play(
        fork_servers,
        backend,
        "careless",
        [Site("tool_after:charge", 2, "call_1_1")],
        tmp_path,
        human="careless",
    )
    assert "charge call_1_1 is not idempotent and ran 2 times" in problems(
        careless, reference.stored
    )

    # The same scenario with a careful human passes; then break its records.
    careful = play(
        fork_servers, backend, "careful", [Site("tool_after:charge", 2, "call_1_1")], tmp_path
    )
    assert problems(careful, reference.stored) == []
    assert careful.stored is not None
    first = careful.processes[0]["pid"]
    lost = [e for e in careful.journal if e["e"] == "step" and e["pid"] == first][-1]
    careful.journal.remove(lost)
    found = problems(careful, reference.stored)
    assert any("not versions 1..N" in problem for problem in found), found
    assert any("but the last checkpoint saved was" in problem for problem in found), found
    items = [
        i
        for i in careful.stored.items
        if not (isinstance(i, ToolResultItem) and i.call_id == "call_4_2")
    ]
    careful.stored = msgspec.structs.replace(careful.stored, items=Transcript(items))
    found = problems(careful, reference.stored)
    assert "call call_4_2 has 0 results: []" in found, found
