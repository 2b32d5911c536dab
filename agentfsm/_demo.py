"""The demo: a run pauses for approval, its state goes to a JSON file, and a second process
loads it, decides, resumes and prints the answer and the transcript."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from ._agents import Agent
from ._items import AssistantMessage, HandoffItem, Item, ToolCallItem, ToolResultItem
from ._model import ModelRequest
from ._runner import Runner
from ._state import RunState
from ._tools import tool
from .testing import ScriptedModel, call, say

__all__ = ["build_agent", "render_transcript", "run_demo"]


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


def render_transcript(state: RunState) -> str:
    lines = []
    for item in (*state.input, *state.items):
        lines.append(_line(item))
    return "\n".join(lines)


def _line(item: Item) -> str:
    match item:
        case AssistantMessage(content=content, agent=agent):
            return f"  {agent}: {content}"
        case ToolCallItem(tool=name, arguments=arguments, call_id=call_id):
            return f"  -> call {name}({arguments})  [{call_id}]"
        case ToolResultItem(output=output, call_id=call_id, is_error=is_error):
            return f"  <- {'error' if is_error else 'result'} [{call_id}]: {output}"
        case HandoffItem(source=source, target=target):
            return f"  == handoff {source} -> {target}"
        case _:
            return f"  {type(item).__name__}: {item.content}"


def run_demo(state_file: Path, *, reject: bool) -> int:
    """Part one: start the run, pause, write the state, hand over to a second process."""
    print("== process 1: starting the run")
    result = Runner().run_sync(
        build_agent(), "My espresso machine arrived broken. Order A-1001. Refund please?"
    )
    print(f"status: {result.status}")
    for request in result.interruptions:
        print(f"waiting for approval: {request.tool}({request.arguments})  [{request.call_id}]")
    state_file.write_text(result.state.to_json())
    print(f"state written to {state_file} ({state_file.stat().st_size} bytes)\n")
    command = [sys.executable, "-m", "agentfsm", "demo", "--resume", str(state_file)]
    if reject:
        command.append("--reject")
    return subprocess.call(command)


def resume_demo(state_file: Path, *, reject: bool) -> int:
    """Part two, in a new process: load, decide, resume, print."""
    print("== process 2: loading the paused run")
    state = RunState.from_json(state_file.read_text())
    print(f"run {state.run_id}: status {state.status.value}")
    for request in state.interruptions:
        approve = not reject
        if sys.stdin.isatty() and not reject:
            answer = input(f"approve {request.tool}({request.arguments})? [y/N] ")
            approve = answer.strip().lower() in ("y", "yes")
        verb = "approved" if approve else "rejected"
        print(f"{verb}: {request.tool}({request.arguments})")
        state = (
            state.approve(request.call_id)
            if approve
            else state.reject(request.call_id, message="A reviewer declined this refund.")
        )
    result = Runner().run_sync(build_agent(), state)
    print(f"\nstatus: {result.status}")
    print(f"final answer: {result.final_output}")
    print("transcript:")
    print(render_transcript(result.state))
    return 0 if result.status == "completed" else 1
