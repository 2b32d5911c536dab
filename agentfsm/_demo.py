"""The demo: a run pauses for approval, its state goes to a JSON file, and a second process
loads it, decides, resumes and prints the answer and the transcript."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._agents import Agent
from ._cli import exit_code
from ._items import ToolResultItem
from ._model import ModelRequest
from ._outcomes import ApprovalRequest
from ._render import DIGEST_SHOWN, render_run
from ._runner import Runner, RunResult
from ._state import RunState
from ._tools import tool
from .stores import SQLiteStore
from .testing import ScriptedModel, call, say

__all__ = ["build_agent", "resume_from_file", "run_demo", "run_demo_with_file"]


@tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order by its id.

    Args:
        order_id: the order's id, like "A-1001".
    """
    return {"order_id": order_id, "item": "espresso machine", "paid_eur": 249.0}


@tool(needs_approval=True)
def issue_refund(order_id: str, amount_eur: float, reason: str) -> str:
    """Refund money to the customer. A human must approve every refund.

    Args:
        order_id: the order to refund.
        amount_eur: how much to refund, in euros.
        reason: why, in a few words.
    """
    return f"refunded {amount_eur:.2f} EUR on order {order_id}"


def _closing(request: ModelRequest) -> Any:
    last = next(i for i in reversed(request.items) if isinstance(i, ToolResultItem))
    if last.output.startswith("refunded"):
        return say("Done: your refund of 249.00 EUR for order A-1001 is on its way.")
    return say(
        "I could not refund order A-1001 (a reviewer declined it); a colleague will call you."
    )


def build_agent() -> Agent:
    model = ScriptedModel(
        [
            call("lookup_order", order_id="A-1001"),
            call("issue_refund", order_id="A-1001", amount_eur=249.0, reason="arrived broken"),
            _closing,
        ]
    )
    return Agent(
        "support",
        "You help customers with their orders. Refunds need a human's approval.",
        model,
        tools=[lookup_order, issue_refund],
    )


def run_demo(store: str, state_file: Path, *, reject: bool) -> int:
    """Process 1 starts the run, which pauses for approval; then each step is a separate
    process of the CLI, as a person in the loop would use it."""
    print(f"== process 1: start the run (store: {store})")
    result = asyncio.run(_start(store))
    run_id = result.run_id
    print(f"run {run_id}: {result.status}")
    state_file.write_text(result.state.to_json())
    print(f"its state is also written to {state_file} ({state_file.stat().st_size} bytes)")
    cli = [sys.executable, "-m", "agentfsm"]
    where = ["--store", store]

    print(f"\n== process 2: agentfsm runs show {run_id}")
    _call([*cli, "runs", "show", run_id, *where])

    (request,) = result.interruptions
    digest = request.digest[:DIGEST_SHOWN]
    bound = ["--digest", digest, "--as", "demo-reviewer"]
    if _approves(request, reject=reject):
        print(f"\n== process 3: agentfsm approve {run_id} {request.call_id} --digest {digest}")
        _call([*cli, "approve", run_id, request.call_id, *bound, *where])
    else:
        print(f"\n== process 3: agentfsm reject {run_id} {request.call_id} --digest {digest}")
        _call([*cli, "reject", run_id, request.call_id, "--message", REJECTION, *bound, *where])

    print(f"\n== process 4: agentfsm resume {run_id} --app agentfsm._demo:build_agent")
    return _call([*cli, "resume", run_id, "--app", "agentfsm._demo:build_agent", *where])


async def _start(store: str) -> RunResult:
    """Process 1's part: the run, on a store it closes before the other processes go on."""
    async with SQLiteStore(store) as opened:
        return await Runner(store=opened).run(
            build_agent(), "My espresso machine arrived broken. Order A-1001. Refund please?"
        )


REJECTION = "A reviewer declined this refund."


def _approves(request: ApprovalRequest, *, reject: bool) -> bool:
    """The decision: --reject says no; on a terminal the person says; otherwise yes."""
    if reject:
        return False
    if not sys.stdin.isatty():
        return True
    answer = input(f"\napprove {request.tool}({request.arguments})? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _call(command: list[str]) -> int:
    """Run one step of the demo as its own process; the demo stops at the first step that
    does not succeed. Every step's success is exit status 0: the demo's resume always
    completes its run (with the refund or without it)."""
    sys.stdout.flush()
    code = subprocess.call(command)
    if code:
        raise SystemExit(code)
    return code


def run_demo_with_file(state_file: Path, *, reject: bool) -> int:
    """Without a store: process 1 pauses the run and writes its state JSON to a file; a
    second process loads the file, decides, resumes and prints the result."""
    print("== process 1: start the run")
    result = Runner().run_sync(
        build_agent(), "My espresso machine arrived broken. Order A-1001. Refund please?"
    )
    print(f"run {result.run_id}: {result.status}")
    state_file.write_text(result.state.to_json())
    print(f"state written to {state_file} ({state_file.stat().st_size} bytes)")
    command = [sys.executable, "-m", "agentfsm", "demo", "--resume-file", str(state_file)]
    return _call([*command, "--reject"] if reject else command)


def resume_from_file(state_file: Path, *, reject: bool) -> int:
    print(f"\n== process 2: load {state_file}, decide, resume")
    state = RunState.from_json(state_file.read_text())
    for request in state.interruptions:
        approve = _approves(request, reject=reject)
        print(f"{'approved' if approve else 'rejected'}: {request.tool}  [{request.call_id}]")
        state = (
            state.approve(request, by="demo-reviewer")
            if approve
            else state.reject(request, message=REJECTION, by="demo-reviewer")
        )
    result = Runner().run_sync(build_agent(), state)
    print(render_run(result.state))
    return exit_code(result.status)
