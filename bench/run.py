"""agentfsm benchmarks: engine overhead per turn, state codec, pause/approve/resume.

Run with ``make bench`` (or ``.venv/bin/python bench/run.py``). Plain Python, timed with
``time.perf_counter_ns``. Every figure is the median of several repetitions (after one
warm-up), printed with the best repetition beside it and with its goal and PASS or MISS. The
model is a ``ScriptedModel`` and the tools do nothing, so what is measured is agentfsm itself
(the scripted model included: a few µs per turn). The garbage collector stays on, as in production;
one full collection runs before each scenario, not before each repetition (that would evict
the CPU caches and make short runs look slower than they are).

On a shared or small machine the medians move with the neighbours' load; the best column
moves much less. Exits 0 whatever the verdicts (a MISS is information, not a crash);
``--strict`` exits 1 on any MISS, ``--quick`` uses fewer repetitions.
"""

from __future__ import annotations

import asyncio
import gc
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pydantic

# Measure the checkout this file lives in, even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentfsm import (
    Agent,
    AgentSet,
    ModelResponded,
    ModelResponse,
    ModelToolCall,
    Runner,
    RunState,
    Started,
    ToolOutput,
    ToolsFinished,
    Usage,
    new_run,
    step,
    tool,
)
from agentfsm.testing import ScriptedModel, call, say

QUICK = "--quick" in sys.argv
STRICT = "--strict" in sys.argv
LENGTHS = (10, 100, 1_000)
#: The per-turn figures are measured in rounds, each of which runs every length (about the
#: same number of turns for each), so that a burst of load from elsewhere on the machine hits
#: all lengths alike and the 1,000-turn / 10-turn ratio stays honest.
ROUNDS = 5 if QUICK else 15
PER_ROUND = {10: 10, 100: 3, 1_000: 1}
CODEC_REPS = 15 if QUICK else 51
APPROVAL_REPS = 51 if QUICK else 301
KEY = b"bench-signing-key-0123456789abcdef"

# -- goals ------------------------------------------------------------------------------------

TURN_US = 50.0  # engine overhead per turn, µs
RATIO = 1.5  # per-turn cost of a 1,000-turn run within this factor of a 10-turn run's
WRITE_MS = 2.0  # to_json of a 1,000-turn state
READ_MS = 5.0  # from_json of a 1,000-turn state
APPROVAL_MS = 1.0  # pause, approve and resume a fresh run


# -- the agents -------------------------------------------------------------------------------


@tool(name="noop")
async def noop_async(x: int) -> str:
    """Do nothing.

    Args:
        x: ignored.
    """
    return "ok"


@tool(name="noop")
def noop_sync(x: int) -> str:
    """Do nothing.

    Args:
        x: ignored.
    """
    return "ok"


@tool(name="noop", inline=True)
def noop_inline(x: int) -> str:
    """Do nothing, on the event loop.

    Args:
        x: ignored.
    """
    return "ok"


@tool(name="send", needs_approval=True)
async def send(to: str) -> str:
    """Send something; a human approves every call.

    Args:
        to: the recipient.
    """
    return f"sent to {to}"


class Answer(pydantic.BaseModel):
    """A small structured final output."""

    city: str
    temperature_c: float
    notes: list[str] = []


ANSWER = '{"city": "Oslo", "temperature_c": 3.5}'


def script(turns: int, final: str = "done") -> ScriptedModel:
    """``turns - 1`` turns that each call the noop tool once, then a final message."""
    return ScriptedModel([*(call("noop", x=n) for n in range(turns - 1)), say(final)])


# -- timing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Nanoseconds: the median and the best of the repetitions."""

    median: float
    best: float

    def __truediv__(self, n: int) -> Timing:
        return Timing(self.median / n, self.best / n)

    @classmethod
    def of(cls, samples: list[int]) -> Timing:
        return cls(statistics.median(samples), min(samples))


def time_sync(body: Callable[[], object], reps: int) -> Timing:
    """``body()`` timed ``reps`` times after one warm-up."""
    gc.collect()
    samples = []
    for rep in range(reps + 1):
        start = time.perf_counter_ns()
        body()
        elapsed = time.perf_counter_ns() - start
        if rep:
            samples.append(elapsed)
    return Timing.of(samples)


def time_async(
    body: Callable[[Any], Awaitable[object]], reps: int, setup: Callable[[], Any]
) -> Timing:
    """``await body(setup())`` timed ``reps`` times after one warm-up, on one event loop;
    ``setup`` is not timed."""

    async def main() -> Timing:
        gc.collect()
        samples = []
        for rep in range(reps + 1):
            arg = setup()
            start = time.perf_counter_ns()
            await body(arg)
            elapsed = time.perf_counter_ns() - start
            if rep:
                samples.append(elapsed)
        return Timing.of(samples)

    return asyncio.run(main())


def schedule(lengths: tuple[int, ...]) -> Iterator[int]:
    """The run lengths to time, round after round."""
    for _ in range(ROUNDS):
        for n in lengths:
            yield from [n] * PER_ROUND[n]


def per_turn_sync(
    run_once: Callable[[int], int], lengths: tuple[int, ...] = LENGTHS
) -> dict[int, Timing]:
    """``run_once(n)`` returns the ns one ``n``-turn run took; per turn, by length."""
    for n in lengths:
        run_once(n)  # warm-up
    gc.collect()
    samples: dict[int, list[int]] = {n: [] for n in lengths}
    for n in schedule(lengths):
        samples[n].append(run_once(n))
    return {n: Timing.of(xs) / n for n, xs in samples.items()}


def per_turn_async(
    run_once: Callable[[int], Awaitable[int]], lengths: tuple[int, ...] = LENGTHS
) -> dict[int, Timing]:
    """``per_turn_sync`` for a coroutine function, on one event loop."""

    async def main() -> dict[int, Timing]:
        for n in lengths:
            await run_once(n)  # warm-up
        gc.collect()
        samples: dict[int, list[int]] = {n: [] for n in lengths}
        for n in schedule(lengths):
            samples[n].append(await run_once(n))
        return {n: Timing.of(xs) / n for n, xs in samples.items()}

    return asyncio.run(main())


# -- the report -------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    value: str
    best: str = ""
    goal: str = ""
    ok: bool | None = None


class Report:
    def __init__(self) -> None:
        self.misses: list[str] = []

    def section(self, title: str, rows: list[Row]) -> None:
        width = max(len(r.label) for r in rows)
        print(f"\n{title}")
        print(f"  {'measure':<{width}}  {'median':>12}  {'best':>12}  {'goal':<9}  verdict")
        print(f"  {'-' * width}  {'-' * 12}  {'-' * 12}  {'-' * 9}  -------")
        for r in rows:
            verdict = "" if r.ok is None else ("PASS" if r.ok else "MISS")
            if r.ok is False:
                self.misses.append(r.label.strip())
            line = f"  {r.label:<{width}}  {r.value:>12}  {r.best:>12}  {r.goal:<9}  {verdict}"
            print(line.rstrip())
        sys.stdout.flush()


def us(ns: float) -> str:
    return f"{ns / 1e3:,.1f} µs"


def ms(ns: float) -> str:
    return f"{ns / 1e6:,.3f} ms"


def turn_row(label: str, timing: Timing) -> Row:
    ok = timing.median <= TURN_US * 1e3
    return Row(label, us(timing.median), us(timing.best), f"≤ {TURN_US:g} µs", ok)


# -- 1. engine overhead per turn --------------------------------------------------------------


def runner_per_turn(
    noop: Any, output_type: Any = None, lengths: tuple[int, ...] = LENGTHS
) -> dict[int, Timing]:
    """``Runner().run`` of whole runs, per turn, by run length."""
    runner = Runner()
    final = "done" if output_type is None else ANSWER

    async def run_once(turns: int) -> int:
        model = script(turns, final)
        agent = Agent(name="bench", model=model, tools=[noop], output_type=output_type)
        start = time.perf_counter_ns()
        result = await runner.run(agent, "go", max_turns=turns, run_id="bench")
        elapsed = time.perf_counter_ns() - start
        assert result.status == "completed", result.error
        assert result.state.turn == turns
        return elapsed

    return per_turn_async(run_once, lengths)


def step_events(turns: int) -> list[Any]:
    """The events of a ``turns``-turn run, built ahead so that only ``step`` is timed."""
    usage = Usage(requests=1, input_tokens=10, output_tokens=5)
    events: list[Any] = []
    for n in range(turns - 1):
        tool_call = ModelToolCall(call_id=f"call_{n}_0", name="noop", arguments=f'{{"x": {n}}}')
        response = ModelResponse(tool_calls=(tool_call,), usage=usage)
        events.append(ModelResponded(response=response))
        events.append(ToolsFinished(results=(ToolOutput(call_id=tool_call.call_id, output="ok"),)))
    events.append(ModelResponded(response=ModelResponse(text="done", usage=usage)))
    return events


def drive(agents: AgentSet, turns: int, events: list[Any]) -> RunState:
    """A whole run through ``step`` alone: Started, then ModelResponded / ToolsFinished."""
    state = step(new_run("bench", "go", run_id="bench", max_turns=turns), Started(), agents).state
    for event in events:
        state = step(state, event, agents).state
    return state


def step_per_turn() -> dict[int, Timing]:
    """Whole runs through ``step`` alone, per turn, by run length."""
    agents = AgentSet(Agent(name="bench", tools=[noop_async]))
    events = {n: step_events(n) for n in LENGTHS}

    def run_once(turns: int) -> int:
        start = time.perf_counter_ns()
        state = drive(agents, turns, events[turns])
        elapsed = time.perf_counter_ns() - start
        assert state.status == "completed"
        assert state.turn == turns
        return elapsed

    return per_turn_sync(run_once)


def engine(report: Report) -> None:
    rows: list[Row] = []
    ratios: list[Row] = []
    paths: list[tuple[str, Callable[[], dict[int, Timing]]]] = [
        ("Runner, async tool", lambda: runner_per_turn(noop_async)),
        ("Runner, sync tool (to_thread)", lambda: runner_per_turn(noop_sync)),
        ("Runner, sync tool (inline=True)", lambda: runner_per_turn(noop_inline)),
        ("step only (pure core)", step_per_turn),
    ]
    for name, measure in paths:
        figures = measure()
        rows.extend(turn_row(f"{name}, {n:,} turns", t) for n, t in figures.items())
        ratio = figures[1_000].median / figures[10].median
        best = figures[1_000].best / figures[10].best
        ratios.append(
            Row(f"{name}", f"{ratio:.2f}x", f"{best:.2f}x", f"≤ {RATIO:g}x", ratio <= RATIO)
        )
    structured = runner_per_turn(noop_async, output_type=Answer, lengths=(100,))[100]
    rows.append(turn_row("Runner, async tool, pydantic output_type, 100 turns", structured))
    report.section("1. Engine overhead per turn (one turn = a model call + one tool call)", rows)
    report.section("   Per-turn cost of a 1,000-turn run / of a 10-turn run", ratios)


# -- 2. codec -----------------------------------------------------------------------------------


def codec(report: Report) -> None:
    agents = AgentSet(Agent(name="bench", tools=[noop_async]))
    state = drive(agents, 1_000, step_events(1_000))
    text = state.to_json()
    signed = state.to_json(signing_key=KEY)
    assert RunState.from_json(text) == state
    assert RunState.from_json(signed, signing_key=KEY) == state
    data = text.encode()

    def row(label: str, body: Callable[[], object], limit_ms: float) -> Row:
        t = time_sync(body, CODEC_REPS)
        ok = t.median <= limit_ms * 1e6
        return Row(label, ms(t.median), ms(t.best), f"≤ {limit_ms:g} ms", ok)

    report.section(
        f"2. State codec, a 1,000-turn completed state ({len(state.items):,} items)",
        [
            row("to_json", state.to_json, WRITE_MS),
            row("from_json (str)", lambda: RunState.from_json(text), READ_MS),
            row("from_json (bytes)", lambda: RunState.from_json(data), READ_MS),
            row("to_json, signed (HMAC-SHA256)", lambda: state.to_json(signing_key=KEY), WRITE_MS),
            row("from_json, signed", lambda: RunState.from_json(signed, signing_key=KEY), READ_MS),
            Row("size", f"{len(data):,} B"),
            Row("size, signed", f"{len(signed.encode()):,} B"),
        ],
    )


# -- 3. pause, approve, resume ------------------------------------------------------------------


def approval(report: Report) -> None:
    runner = Runner()

    def setup() -> Agent:
        model = ScriptedModel([call("send", to="a"), say("sent")])
        return Agent(name="bench", model=model, tools=[send])

    async def in_memory(agent: Agent) -> None:
        paused = await runner.run(agent, "go", run_id="bench")
        assert paused.status == "interrupted"
        state = paused.state.approve(paused.interruptions[0].call_id)
        done = await runner.run(agent, state)
        assert done.status == "completed"
        assert done.final_output == "sent"

    async def through_json(agent: Agent) -> None:
        paused = await runner.run(agent, "go", run_id="bench")
        assert paused.status == "interrupted"
        loaded = RunState.from_json(paused.state.to_json())
        state = loaded.approve(loaded.interruptions[0].call_id)
        done = await runner.run(agent, state)
        assert done.status == "completed"
        assert done.final_output == "sent"

    def row(label: str, body: Callable[[Agent], Awaitable[None]]) -> Row:
        t = time_async(body, APPROVAL_REPS, setup)
        ok = t.median < APPROVAL_MS * 1e6
        return Row(label, ms(t.median), ms(t.best), f"< {APPROVAL_MS:g} ms", ok)

    report.section(
        "3. Pause for approval, approve, resume to the end (a fresh run, 2 model turns)",
        [
            row("in memory", in_memory),
            row("with to_json / from_json in between", through_json),
        ],
    )


# -- 4. for reference ---------------------------------------------------------------------------


def reference(report: Report) -> None:
    """What persisting the whole state after every step costs (a Runner whose on_step calls
    to_json): it grows with the history, which is why the design keeps a delta log."""

    def persist(state: RunState) -> None:
        state.to_json()

    runner = Runner(on_step=persist)

    async def run_once(turns: int) -> int:
        agent = Agent(name="bench", model=script(turns), tools=[noop_async])
        start = time.perf_counter_ns()
        await runner.run(agent, "go", max_turns=turns, run_id="bench")
        return time.perf_counter_ns() - start

    figures = per_turn_async(run_once)
    rows = [Row(f"{n:,} turns, per turn", us(t.median), us(t.best)) for n, t in figures.items()]
    ratio = figures[1_000].median / figures[10].median
    best = figures[1_000].best / figures[10].best
    rows.append(Row("1,000 / 10", f"{ratio:.1f}x", f"{best:.1f}x"))
    report.section(
        "4. For reference, no goal: Runner with on_step = to_json (whole state every step)", rows
    )


# -- 5. the event stream ---------------------------------------------------------------------


def streamed_per_turn(turns: int = 100) -> tuple[dict[int, Timing], int]:
    """``Runner().run_streamed`` of whole runs with a consumer reading every event, per
    turn; and how many events a run of ``turns`` turns yields."""
    runner = Runner()
    counted: list[int] = []

    async def run_once(n: int) -> int:
        agent = Agent(name="bench", model=script(n), tools=[noop_async])
        start = time.perf_counter_ns()
        handle = runner.run_streamed(agent, "go", max_turns=n, run_id="bench")
        events = 0
        async for _ in handle.events():
            events += 1
        result = await handle.result()
        elapsed = time.perf_counter_ns() - start
        assert result.status == "completed", result.error
        counted.append(events)
        return elapsed

    return per_turn_async(run_once, (turns,)), counted[-1]


def stream(report: Report) -> None:
    quiet = runner_per_turn(noop_async, lengths=(100,))[100]
    loud, events = streamed_per_turn(100)
    per_event = (loud[100].median - quiet.median) * 100 / events
    best_per_event = (loud[100].best - quiet.best) * 100 / events
    rows = [
        Row("Runner.run, no consumer, per turn", us(quiet.median), us(quiet.best)),
        Row("run_streamed, every event read, per turn", us(loud[100].median), us(loud[100].best)),
        Row(
            f"added per event ({events / 100:.1f} events a turn)", us(per_event), us(best_per_event)
        ),
    ]
    report.section("5. The event stream (100-turn runs, async tool)", rows)


def main() -> int:
    started = time.perf_counter()
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("msgspec", "pydantic"))
    print(
        f"agentfsm bench: Python {platform.python_version()} on {platform.machine()}, "
        f"{versions}\nmedians (and best) of {ROUNDS * PER_ROUND[10]}/{ROUNDS * PER_ROUND[100]}/"
        f"{ROUNDS * PER_ROUND[1_000]} runs of 10/100/1,000 turns (interleaved), {CODEC_REPS} "
        f"for the codec, {APPROVAL_REPS} for approvals"
    )
    report = Report()
    engine(report)
    codec(report)
    approval(report)
    reference(report)
    stream(report)
    elapsed = time.perf_counter() - started
    if report.misses:
        print(f"\n{len(report.misses)} goal(s) missed: {'; '.join(report.misses)}")
    else:
        print("\nevery goal met")
    print(f"took {elapsed:.1f} s")
    return 1 if STRICT and report.misses else 0


if __name__ == "__main__":
    sys.exit(main())
