"""An app for the handoff option tests: ``--app tests.apps.handoffs:agent``.

``triage`` looks an order up, then hands off to ``billing`` through ``to_billing``, a handoff
with a custom name and description, an ``on_handoff`` callback and an input filter that
leaves only the messages, plus a note. ``billing`` forces a tool call (``tool_choice`` is
``"required"`` in its model settings), asks to refund (which needs approval), then answers.

What the user's code did goes to the file ``$HANDOFF_LOG``, one JSON document a line:
``["on_handoff", context]``, ``["filter", history item types]``, and for each of billing's
turns ``["billing", input item types, number of items, tool_choice]``. ``$HANDOFF_MODE``
makes the filter misbehave: ``crash`` ends the process right after it ran (as a killed
worker would, before the step that records it is saved), ``raise`` raises, ``text`` returns a
str instead of items.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agentfsm import (
    Agent,
    HandoffInputData,
    Item,
    ModelRequest,
    ModelSettings,
    UserMessage,
    handoff,
    remove_tool_calls,
    tool,
)
from agentfsm.testing import ScriptedCall, ScriptedModel, call, say


def log(*entry: Any) -> None:
    path = os.environ.get("HANDOFF_LOG")
    if path:
        with Path(path).open("a") as f:
            f.write(json.dumps(entry) + "\n")


def read_log(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@tool
def lookup(order: str) -> str:
    """Look an order up."""
    return f"order {order}: paid 5 EUR"


@tool(needs_approval=True)
def refund(amount: int) -> str:
    """Refund an amount."""
    return f"refunded {amount}"


def on_handoff(context: Any) -> None:
    log("on_handoff", context)


async def keep_messages(data: HandoffInputData) -> list[Item]:
    log("filter", [type(i).__name__ for i in data.history])
    mode = os.environ.get("HANDOFF_MODE")
    if mode == "crash":
        os._exit(17)
    if mode == "raise":
        raise RuntimeError("the filter broke")
    if mode == "text":
        return "not items"  # type: ignore[return-value]
    return [*remove_tool_calls(data), UserMessage(content=f"Handed over by {data.source}.")]


def _billing_turn(then: ScriptedCall | Any) -> Any:
    def turn(request: ModelRequest) -> Any:
        choice = request.settings.tool_choice if request.settings is not None else None
        log("billing", [type(i).__name__ for i in request.input], len(request.items), choice)
        return then

    return turn


def agent() -> Agent:
    model = ScriptedModel(
        [
            call("lookup", order="A-1"),
            call("to_billing"),
            _billing_turn(call("refund", amount=5)),
            _billing_turn(say("Refunded 5 EUR.")),
        ]
    )
    billing = Agent(
        "billing",
        "You refund orders.",
        model,
        tools=[refund],
        model_settings=ModelSettings(tool_choice="required", temperature=0.1),
    )
    return Agent(
        "triage",
        "You route questions.",
        model,
        tools=[lookup],
        handoffs=[
            handoff(
                billing,
                tool_name="to_billing",
                description="Refunds and payments.",
                input_filter=keep_messages,
                on_handoff=on_handoff,
            )
        ],
    )
