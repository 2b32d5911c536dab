"""Test-kit benchmark: how fast ``agentfsm.testing.AgentMachine`` explores the demo agent.

Run with ``make bench`` (or ``.venv/bin/python bench/kit.py``; ``--quick`` for fewer
examples). Each figure is one hypothesis run of the demo agent (agentfsm/_demo.py), with no
example database, in memory (MemoryStore) and with SQLite (a file in a temporary folder),
each run both through the store and through JSON, as the kit draws them:

* examples per second: whole hypothesis examples (one run of the agent each, up to 12
  rules: people's decisions and stretches of the run up to its next stop);
* steps per second: the run's durable steps (checkpoints: every step the driver saved, and
  every state a person's decision produced), summed over every example;
* rules per second: the kit's rules hypothesis ran.

And the crash kit (``agentfsm.testing.CrashKit``) on the demo agent with SQLite: processes
started and killed (SIGKILL, at every durable boundary, once and twice) per second.

The goal: hundreds of steps per second in memory. What is measured is everything an
example costs: hypothesis drawing and recording the choices, the driver, the store, the
kit's wrappers and its invariants after every rule (each state's JSON round trip included).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from agentfsm import SQLiteStore
from agentfsm._demo import build_agent
from agentfsm.testing import AgentMachine, CrashKit, CrashScenario

QUICK = "--quick" in sys.argv
EXAMPLES = 100 if QUICK else 500
STEPS_GOAL = 200.0  # durable steps per second, in memory


class Tally:
    examples = 0
    steps = 0
    rules = 0


class Demo(AgentMachine):
    agent = build_agent()
    tally: ClassVar[Tally] = Tally()

    def teardown(self) -> None:
        self.tally.examples += 1
        self.tally.steps += max(len(self.checkpoints) - 1, 0)
        self.tally.rules += self.rules_run
        super().teardown()

    rules_run = 0

    def _act(self) -> bool:
        self.rules_run += 1
        return super()._act()


class SQLiteDemo(Demo):
    store = "sqlite"
    tally: ClassVar[Tally] = Tally()


def measure(machine: type[Demo]) -> tuple[float, float, float, float]:
    machine.tally = Tally()
    began = time.perf_counter()
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=12,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    took = time.perf_counter() - began
    tally = machine.tally
    return took, tally.examples / took, tally.steps / took, tally.rules / took


def demo_scenario(options: dict[str, str]) -> CrashScenario:
    """The demo agent for the crash kit (imported by name in each child process)."""
    return CrashScenario(
        agent=build_agent(),
        store=lambda clock: SQLiteStore(options["path"], clock=clock),
        input="My espresso machine arrived broken. Order A-1001. Refund please.",
        model_reacts=True,
    )


def measure_crashes() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="agentfsm-crash-bench-") as folder:
        options = {"path": f"{folder}/runs.db"}
        with CrashKit(f"{Path(__file__).stem}:demo_scenario", options, workdir=folder) as kit:
            report = kit.run()
    report.check()
    processes = sum(len(o.processes) for o in report.outcomes) + 1
    kills = report.kills.total()
    print("CrashKit on the demo agent, SQLite, every site killed once and twice")
    print(f"  {'seconds':>8} {'processes':>10} {'kills':>6} {'processes/s':>12}")
    print(
        f"  {report.seconds:>8.2f} {processes:>10} {kills:>6} {processes / report.seconds:>12.1f}"
    )


def main() -> int:
    print(f"AgentMachine on the demo agent, {EXAMPLES} examples")
    print(f"  {'store':<8} {'seconds':>8} {'examples/s':>11} {'steps/s':>9} {'rules/s':>9}")
    results = {}
    for name, machine in (("memory", Demo), ("sqlite", SQLiteDemo)):
        measure(machine)  # warm-up: imports, strategies, the store's schema
        took, examples, steps, rules = measure(machine)
        results[name] = steps
        print(f"  {name:<8} {took:>8.2f} {examples:>11.0f} {steps:>9.0f} {rules:>9.0f}")
    met = results["memory"] >= STEPS_GOAL
    print(f"  goal: at least {STEPS_GOAL:.0f} steps/s in memory: {'met' if met else 'MISSED'}")
    measure_crashes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
