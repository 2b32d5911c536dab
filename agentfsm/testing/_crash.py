"""The crash kit: your agent, your store and your tools, run in child processes that are
killed with SIGKILL at every durable boundary, then checked against an uninterrupted run.

You describe a *scenario* in a function that agentfsm can import by name in a new process::

    # myapp/crash_scenario.py
    def scenario(options: dict) -> CrashScenario:
        return CrashScenario(
            agent=build_agent(model=ScriptedModel(SCRIPT)),
            store=lambda clock: SQLiteStore(options["path"], clock=clock),
            input="Settle customer 42's account.",
        )

and a test plays it::

    with CrashKit("myapp.crash_scenario:scenario", {"path": str(tmp_path / "runs.db")},
                  workdir=tmp_path) as kit:
        report = kit.run()
    assert report.ok, report.failures

``CrashKit.run`` makes an uninterrupted *reference* run, which lists every kill site the
run passes (see ``agentfsm.testing._crash_child`` for the list), then plays scenarios: every
site of the reference run killed once, then every site again, each followed by a second
kill while the next process recovers. Each scenario is one stored run taken through a chain
of processes: each dies at its site, and the next resumes the run by id, playing a careful
person when it pauses (approve what waits for approval; reject a call in doubt whose body
started, approve it otherwise). After each scenario it checks:

- the run completed; the stored run equals the last process's final state; its version is
  the number of checkpoints the processes saw, which are versions 1..N in order, each one
  continuing the one before, and each process loaded exactly the last checkpoint saved: no
  step was lost, taken twice, or half stored;
- the transcript is the reference one: the same messages, calls and handoffs in the same
  order, and every call has exactly one result, in its own turn, equal to the reference
  result, except a call in doubt the person rejected because it had run;
- no tool body that is not declared idempotent ran twice; an idempotent one ran again only
  after the process that ran it was killed before committing its result; every body ran
  with the call's stable idempotency key; and every result was committed exactly once.
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
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from .._agents import Agent, AgentSet
from .._errors import ConfigurationError
from .._items import ToolCallItem, ToolResultItem
from .._state import RunState
from .._step import IN_DOUBT_REJECTION, idempotency_key
from ..stores._base import Store
from ._crash_child import crash_point, load_scenario

__all__ = [
    "CrashKit",
    "CrashOutcome",
    "CrashReport",
    "CrashScenario",
    "CrashSite",
    "crash_point",
]

#: The child entry point; ``-c`` rather than ``-m`` so that the module is imported once, by
#: its own name (``crash_point`` in your code and the attempt then share it).
_CHILD = "import sys; from agentfsm.testing._crash_child import main; sys.exit(main(sys.argv))"


@dataclass
class CrashScenario:
    """What a child process runs: ``agent`` (with its tools, handoffs and a deterministic
    model, such as a ``ScriptedModel``: each process asks it again for the turns it
    replays) on ``input``, kept in the store ``store(clock)`` returns. The kit gives each
    process a clock that runs later than the previous one's, so that the lease of a killed
    worker has expired; pass it to your store."""

    agent: Agent
    store: Callable[[Callable[[], float]], Store]
    input: str = "Hello!"
    context: Any = None
    max_turns: int | None = None
    lease_seconds: float = 30.0
    #: True if the model's later turns depend on what tools returned (a ScriptedModel turn
    #: that is a function of the request, a real model): then, once a call in doubt is
    #: rejected, the run may rightly go another way than the reference, and only the
    #: transcript up to that turn is compared with it (the rest must still answer every
    #: call once, and every tool body still runs at most once).
    model_reacts: bool = False
    #: The tools whose bodies take effect each time they run, so that none may run twice
    #: for one call: by default every tool not declared idempotent. Name a tool declared
    #: idempotent here when the service behind it does not deduplicate on the idempotency
    #: key: the kit then finds it run again after a crash.
    at_most_once: Collection[str] | None = None
    #: Checks of your own, run on each scenario after the kit's (the state of your fake
    #: services against ``outcome.stored``, say): each returns the problems it found.
    checks: Sequence[Callable[[CrashOutcome], list[str]]] = ()


@dataclass(frozen=True)
class CrashSite:
    """Where an attempt kills itself: a kind (``save``, ``tool_after:charge``, ...), the
    run's turn there, and the call for a tool site."""

    kind: str
    turn: int
    call_id: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}@{self.turn}" + (f"/{self.call_id}" if self.call_id else "")


#: Kill the next process at the first site it reaches: while it recovers from the last kill.
AGAIN = CrashSite("next", 0)


@dataclass
class CrashOutcome:
    """What one scenario left behind."""

    name: str
    run_id: str
    plan: list[CrashSite]
    processes: list[dict[str, Any]]
    journal: list[dict[str, Any]]
    #: Every tool body that started: (tool, idempotency key, call id, pid).
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

    def sites(self) -> list[CrashSite]:
        """The kill sites a traced run passed, in order."""
        return [
            CrashSite(entry["kind"], entry["turn"], entry["call_id"])
            for entry in self.journal
            if entry["e"] == "site"
        ]


@dataclass
class CrashReport:
    """What ``CrashKit.run`` found: the reference run, every scenario, and the problems."""

    reference: CrashOutcome
    outcomes: list[CrashOutcome]
    failures: list[str]
    seconds: float
    idempotent: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def kills(self) -> Counter[str]:
        return Counter(kill["kind"] for o in self.outcomes for kill in o.kills)

    @property
    def doubts(self) -> Counter[str]:
        """Calls in doubt, by the person's verdict."""
        return Counter(
            "approved (it had not run)" if entry["approved"] else "rejected (it had run)"
            for o in self.outcomes
            for entry in o.journal
            if entry["e"] == "decide" and entry["reason"] == "in_doubt"
        )

    @property
    def reruns(self) -> int:
        """Bodies of idempotent tools run again after a kill."""
        return sum(
            count - 1
            for o in self.outcomes
            for (tool, _), count in Counter((t, c) for t, _, c, _ in o.effects).items()
            if self.idempotent.get(tool)
        )

    def summary(self) -> str:
        kills = self.kills
        lines = [
            f"{kills.total()} kills in {len(self.outcomes)} scenarios, "
            f"{sum(len(o.processes) for o in self.outcomes)} processes, {self.seconds:.1f} s; "
            f"{sum(o.missed for o in self.outcomes)} planned kills not reached before the run "
            "ended"
        ]
        lines += [f"  killed at {kind:26} {count:4}" for kind, count in sorted(kills.items())]
        lines += [
            f"  calls in doubt {verdict:26} {count:4}"
            for verdict, count in sorted(self.doubts.items())
        ]
        lines.append(f"  idempotent calls run again {self.reruns:19}")
        return "\n".join(lines)

    def check(self) -> None:
        """Raise AssertionError listing every problem found, if any."""
        assert self.ok, "\n\n".join(self.failures)


# -- processes --------------------------------------------------------------------------------


class Launcher(Protocol):
    def launch(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one attempt to its end; how it ended: ``pid``, ``signal``, ``code``."""


def _environment() -> dict[str, str]:
    """The child sees the modules this process sees (the scenario's, the tests')."""
    paths = [p or os.getcwd() for p in sys.path if isinstance(p, str)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


class ForkServer:
    """Attempts as children of one interpreter that has imported everything."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_environment(),
        )

    def launch(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps(job).encode() + b"\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died ({self._process.wait()})")
        report: dict[str, Any] = json.loads(line)
        return report

    def close(self) -> None:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
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
    """Attempts in fresh interpreters (new imports, new hash seed)."""

    def launch(self, job: dict[str, Any]) -> dict[str, Any]:
        with (
            open(job["log"], "ab") as log,
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, "run", json.dumps(job)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_environment(),
            ) as process,
        ):
            try:
                code = process.wait(timeout=int(job.get("timeout", 60)) + 30)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
        return {
            "pid": process.pid,
            "signal": -code if code < 0 else None,
            "code": code if code >= 0 else None,
        }


# -- the kit ----------------------------------------------------------------------------------


class CrashKit:
    """Plays a ``CrashScenario`` through processes killed with SIGKILL at its durable
    boundaries, and checks what they left behind.

    ``scenario`` names a function ``module:function`` that takes ``options`` (JSON data:
    where your store lives, say) and returns a ``CrashScenario``; it is called in every
    child process and once in this one (to read the stored runs and the tools'
    declarations). The module must be importable from ``sys.path`` as it is here.
    ``workdir`` holds each scenario's journal, side-effect file and logs. ``workers``
    scenarios are played at once; ``groups`` is how many scenarios share the reference
    run's sites in each round. ``timeout`` bounds each process, in seconds.

    Use it as a context manager (it keeps fork servers), or call ``close``.
    """

    def __init__(
        self,
        scenario: str,
        options: dict[str, Any] | None = None,
        *,
        workdir: str | os.PathLike[str],
        workers: int = 2,
        groups: int = 6,
        timeout: int = 60,
    ) -> None:
        self.scenario = scenario
        self.options = dict(options or {})
        self.workdir = Path(workdir)
        self.workers = workers
        self.groups = groups
        self.timeout = timeout
        built = load_scenario(scenario, self.options)
        if not isinstance(built, CrashScenario):
            raise ConfigurationError(f"{scenario} must return a CrashScenario, not {built!r}")
        self._scenario = built
        agents = AgentSet(built.agent)
        #: Each tool's ``idempotent`` declaration, by name.
        self.idempotent = {
            tool.name: tool.idempotent for agent in agents.values() for tool in agent.tools
        }
        #: The tools none of whose bodies may run twice for one call.
        self.at_most_once = (
            set(built.at_most_once)
            if built.at_most_once is not None
            else {name for name, safe in self.idempotent.items() if not safe}
        )
        self._servers: ForkServers | None = None
        self._reference: CrashOutcome | None = None

    def __enter__(self) -> CrashKit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._servers is not None:
            self._servers.close()
            self._servers = None

    @property
    def launcher(self) -> Launcher:
        if self._servers is None:
            self._servers = ForkServers(self.workers)
        return self._servers

    # -- playing ------------------------------------------------------------------------

    def reference(self) -> CrashOutcome:
        """An uninterrupted run, traced: the sites to kill at, and the run to compare to.
        AssertionError if it does not complete cleanly."""
        outcome = self.play("reference", [], trace=True)
        assert outcome.stored is not None, f"the reference run failed:\n{outcome.log}"
        found = self.problems(outcome, outcome.stored)
        assert not found, "the reference run:\n" + "\n".join(found)
        self._reference = outcome
        return outcome

    def play(
        self,
        name: str,
        plan: Sequence[CrashSite],
        *,
        trace: bool = False,
        human: Literal["careful", "careless"] = "careful",
        fresh: bool = False,
    ) -> CrashOutcome:
        """Run a new run through processes that die at the sites of ``plan``, one site
        each, until one finishes the run (in fresh interpreters with ``fresh``)."""
        folder = self.workdir / name
        for again in itertools.count(2):
            try:
                folder.mkdir(parents=True)
                break
            except FileExistsError:
                folder = self.workdir / f"{name}-{again}"
        run_id = f"{name}-{uuid.uuid4().hex[:8]}"
        job: dict[str, Any] = {
            "scenario": self.scenario,
            "options": self.options,
            "run_id": run_id,
            "effects": str(folder / "effects"),
            "journal": str(folder / "journal"),
            "out": str(folder / "final.json"),
            "log": str(folder / "log"),
            "trace": trace,
            "human": human,
            "timeout": self.timeout,
        }
        launcher: Launcher = Spawner() if fresh else self.launcher
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
            stored, inbox = asyncio.run(self._inspect(run_id))
        except Exception as exc:
            stored, inbox = None, ()
            with Path(job["log"]).open("a") as log:
                log.write(f"\nthe stored run cannot be read: {exc!r}\n")
        return CrashOutcome(
            name=name,
            run_id=run_id,
            plan=list(plan),
            processes=processes,
            journal=[json.loads(line) for line in lines(job["journal"])],
            effects=effects,
            final=RunState.from_json(final.read_text()) if final.exists() else None,
            stored=stored,
            inbox=inbox,
            log="\n".join(lines(job["log"])[-40:]),
        )

    async def _inspect(self, run_id: str) -> tuple[RunState, tuple[int, ...]]:
        """The stored run and its unacknowledged inbox messages, read by a new store."""
        store = self._scenario.store(time.time)
        try:
            return await store.load(run_id), (await store.inbox(run_id)).ids
        finally:
            await store.close()

    def plans(
        self, sites: Sequence[CrashSite], *, twice: bool = True
    ) -> list[tuple[str, list[CrashSite]]]:
        """Every site of the reference run once; then (``twice``) every site again, each
        followed by a second kill while the next process recovers from it. Each round is
        spread over ``groups`` scenarios, each of which starts with kills at the two sites
        a run passes only once: right after the run is stored, and right after its first
        checkpoint."""
        start = [sites[0], next(site for site in sites if site.kind == "step:Started")]
        rest = [site for site in sites if site not in start]
        groups = [rest[n :: self.groups] for n in range(self.groups)]
        once = [(f"once{n}", [*start, *group]) for n, group in enumerate(groups)]
        if not twice:
            return once
        again = [
            (f"twice{n}", [*start, *(kill for site in group for kill in (site, AGAIN))])
            for n, group in enumerate(groups)
        ]
        return once + again

    def run(self, *, twice: bool = True) -> CrashReport:
        """The reference run (the last one ``reference`` made, or a new one), then every
        scenario of ``plans``; the problems of each."""
        started = time.monotonic()
        reference = self._reference or self.reference()
        assert reference.stored is not None
        expected = reference.stored
        with ThreadPoolExecutor(self.workers) as pool:
            outcomes = list(
                pool.map(
                    lambda scenario: self.play(*scenario),
                    self.plans(reference.sites(), twice=twice),
                )
            )
        failures = [
            f"scenario {o.name}, plan {list(map(str, o.plan))}:\n" + "\n".join(found)
            for o in outcomes
            if (found := self.problems(o, expected))
        ]
        return CrashReport(
            reference=reference,
            outcomes=outcomes,
            failures=failures,
            seconds=time.monotonic() - started,
            idempotent=self.idempotent,
        )

    # -- the checks ---------------------------------------------------------------------

    def problems(self, outcome: CrashOutcome, reference: RunState) -> list[str]:
        """Everything wrong with a scenario, compared with the reference run's final
        state."""
        found = problems(
            outcome,
            reference,
            self.idempotent,
            at_most_once=self.at_most_once,
            model_reacts=self._scenario.model_reacts,
        )
        for check in self._scenario.checks:
            found += check(outcome)
        return found

    def check(self, outcome: CrashOutcome, reference: RunState) -> None:
        found = self.problems(outcome, reference)
        assert not found, f"scenario {outcome.name}, plan {list(map(str, outcome.plan))}:\n" + (
            "\n".join(found)
        )


def problems(
    outcome: CrashOutcome,
    reference: RunState,
    idempotent: dict[str, bool],
    *,
    at_most_once: Collection[str] | None = None,
    model_reacts: bool = False,
) -> list[str]:
    """Everything wrong with ``outcome``, compared with the reference run's final state
    (see the module's docstring)."""
    once = (
        set(at_most_once)
        if at_most_once is not None
        else {name for name, safe in idempotent.items() if not safe}
    )
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
    doubts = [e for e in journal if e["e"] == "decide" and e["reason"] == "in_doubt"]
    rejected = {entry["call_id"] for entry in doubts if not entry["approved"]}
    diverged = model_reacts and bool(rejected)
    same = ("input", "current_agent", "policies") if diverged else _SAME
    for name in same:
        if getattr(stored, name) != getattr(reference, name):
            found.append(f"{name} is {getattr(stored, name)!r}, not {getattr(reference, name)!r}")

    tools = {i.call_id: i.tool for i in stored.items if isinstance(i, ToolCallItem)}
    found += [
        f"{entry['call_id']} of the idempotent {tools[entry['call_id']]} was put in doubt "
        "instead of being run again"
        for entry in doubts
        if idempotent.get(tools.get(entry["call_id"], ""))
    ]
    if diverged:
        found += transcript_problems(
            _up_to_turn_of(stored.items, rejected),
            _up_to_turn_of(reference.items, rejected),
            rejected,
        )
        found += [f"call {c} has {n} results" for c, n in _answers(stored.items).items() if n != 1]
        found += effect_problems(outcome, stored, killed, rejected, idempotent, once)
    else:
        found += transcript_problems(stored.items, reference.items, rejected)
        found += effect_problems(outcome, reference, killed, rejected, idempotent, once)
    return found


_SAME = ("input", "final_output", "usage", "turn", "current_agent", "policies")


def _up_to_turn_of(items: Sequence[Any], calls: set[str]) -> list[Any]:
    """``items`` up to the end of the turn in which one of ``calls`` got its result."""
    first = next(
        (n for n, i in enumerate(items) if isinstance(i, ToolResultItem) and i.call_id in calls),
        len(items),
    )
    end = next(
        (n for n in range(first, len(items)) if not isinstance(items[n], ToolResultItem)),
        len(items),
    )
    return list(items[:end])


def _answers(items: Sequence[Any]) -> Counter[str]:
    """How many results each call of ``items`` has."""
    answers: Counter[str] = Counter()
    for item in items:
        if isinstance(item, ToolCallItem):
            answers[item.call_id] += 0
        elif isinstance(item, ToolResultItem):
            answers[item.call_id] += 1
    return answers


def transcript_problems(
    items: Sequence[Any], reference: Sequence[Any], rejected: set[str]
) -> list[str]:
    """How ``items`` differ from the reference transcript: results of one turn may come
    in another order (a call in doubt commits after its siblings), and a call in doubt
    that was rejected has the in-doubt rejection as its result."""

    def layout(
        items: Sequence[Any],
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
        if call_id not in expected_results:
            found.append(f"call {call_id} is not in the reference run")
            continue
        (place, result), [(expected_place, expected)] = got[0], expected_results[call_id]
        if call_id in rejected:
            expected = msgspec.structs.replace(expected, output=IN_DOUBT_REJECTION)
        if place != expected_place:
            found.append(f"the result of {call_id} is in another turn than in the reference")
        if result != expected:
            found.append(f"the result of {call_id} is {result}, not {expected}")
    return found


def _turn_of(call_id: str) -> int | None:
    parts = call_id.split("_")
    if len(parts) == 3 and parts[0] == "call" and parts[1].isdigit():
        return int(parts[1]) + 1
    return None


def effect_problems(
    outcome: CrashOutcome,
    reference: RunState,
    killed: list[int],
    rejected: set[str],
    idempotent: dict[str, bool],
    once: Collection[str],
) -> list[str]:
    """What the side-effect file says went wrong: a body run twice, run again without a
    kill, with another idempotency key, or a result committed other than once."""
    found = []
    calls = {
        item.call_id: item.tool
        for item in reference.items
        if isinstance(item, ToolCallItem) and item.tool in idempotent
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
        turn = _turn_of(call_id)
        keys = {k for k, _ in runs[call_id]}
        if turn is not None:
            keys.add(idempotency_key(outcome.run_id, turn, call_id))
        pids = [pid for _, pid in runs[call_id]]
        committers = commits[call_id]
        if len(keys) > 1:
            found.append(f"{tool} {call_id} ran with more than one idempotency key: {keys}")
        if len(committers) != 1:
            found.append(f"the result of {call_id} was committed {len(committers)} times")
        if not pids:
            found.append(f"{tool} {call_id} never ran")
        elif tool in once:
            if len(pids) != 1 and idempotent[tool]:
                found.append(
                    f"{tool} {call_id} is declared idempotent, but takes effect each time it "
                    f"runs, and ran {len(pids)} times: declare it idempotent=False (a person "
                    "then decides on a call in doubt), or have its service deduplicate on "
                    "ctx.idempotency_key"
                )
            elif len(pids) != 1:
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
