"""Agents as tools: what a step of a nested run costs, against a step of a run of its own.

Run with ``make bench`` (or ``.venv/bin/python bench/nested.py``; ``--quick`` for shorter
runs). SQLite store in a temporary directory.

A nested run's state lives in the outer run's state, and the store keeps the outer run's
transcript as rows but the rest of the state (its head) as one document, rewritten at every
step. A nested run's transcript is part of that head: so a step of a nested run costs more
the longer the nested run is, unlike a step of a run of its own. This measures how much, for
nested runs of a few sizes (one model turn with one quick tool call per step pair).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentfsm import Agent, Runner, SQLiteStore, tool
from agentfsm.testing import ScriptedModel, call, say

QUICK = "--quick" in sys.argv
SIZES = (10, 50) if QUICK else (10, 100, 1000)


@tool(inline=True)
def note(text: str) -> str:
    """Write a note."""
    return f"noted {text}"


def worker(turns: int) -> Agent:
    script = [call("note", text=f"n{n}") for n in range(turns)] + [say("done")]
    return Agent("worker", "", ScriptedModel(script), tools=[note])


async def timed(store: SQLiteStore, agent: Agent, run_id: str, turns: int) -> float:
    started = time.perf_counter()
    result = await Runner(store=store).run(agent, "go", run_id=run_id, max_turns=turns + 2)
    assert result.status == "completed", result.error
    return time.perf_counter() - started


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with SQLiteStore(Path(directory) / "runs.db") as store:
            await timed(store, worker(5), "warm-up", 5)
            for turns in SIZES:
                flat = await timed(store, worker(turns), f"flat{turns}", turns)
                boss = Agent(
                    "boss",
                    "",
                    ScriptedModel([call("worker", input="work"), say("ok")]),
                    tools=[worker(turns).as_tool(max_turns=turns + 2)],
                )
                nested = await timed(store, boss, f"nested{turns}", turns)
                steps = 2 * turns + 2  # each turn: the model's answer, then the tool's result
                print(
                    f"nested run of {turns:4d} turns: {nested / steps * 1e3:6.2f} ms a step; "
                    f"as a run of its own: {flat / steps * 1e3:6.2f} ms a step"
                )


if __name__ == "__main__":
    asyncio.run(main())
