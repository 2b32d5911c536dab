"""Checks of one durable state that hold whatever drove the run there: the pure step (the
project's engine fuzz test), the driver (``AgentMachine``), a process killed and resumed
(``CrashKit``). Each returns the problems it found, as sentences; none means it holds."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from .._items import (
    AssistantMessage,
    Feedback,
    HandoffItem,
    ToolCallItem,
    ToolResultItem,
    UserMessage,
)
from .._machine import RunStatus
from .._state import RunState

__all__ = ["response_of", "round_trip_problems", "status_problems", "transcript_problems"]

_CALL_ID = re.compile(r"c(?:all_)?(\d+)_\d+")


def response_of(call_id: str) -> int | None:
    """The model response a call belongs to, from its id, when the id says it:
    ``call_<response>_<n>`` (ScriptedModel, the kit) or ``c<response>_<n>``."""
    match = _CALL_ID.fullmatch(call_id)
    return int(match.group(1)) if match else None


def transcript_problems(
    state: RunState, response: Callable[[str], int | None] = response_of
) -> list[str]:
    """Every tool call gets exactly one result, before the next model response (or any
    other message) is recorded; results and handoffs belong to earlier calls; the calls
    still without a result are exactly the ledger's uncommitted ones. ``response`` tells
    which model response a call id belongs to (None: unknown, that part is skipped)."""
    found: list[str] = []
    open_calls: dict[str, int | None] = {}
    seen: set[str] = set()
    previous: Any = None
    for item in state.items:
        match item:
            case ToolCallItem(call_id=call_id):
                index = response(call_id)
                if call_id in seen:
                    found.append(f"call id {call_id} recorded twice")
                earlier = [
                    c
                    for c, r in open_calls.items()
                    if r is not None and index is not None and r < index
                ]
                if earlier:
                    found.append(f"{call_id} was recorded while {earlier} had no result")
                seen.add(call_id)
                open_calls[call_id] = index
            case ToolResultItem(call_id=call_id):
                if call_id not in open_calls:
                    found.append(f"a result for {call_id}, which has no open call")
                open_calls.pop(call_id, None)
            case HandoffItem(call_id=call_id):
                if not (isinstance(previous, ToolResultItem) and previous.call_id == call_id):
                    found.append(f"the handoff of {call_id} does not follow its call's result")
            case AssistantMessage() | UserMessage() | Feedback():
                if open_calls:
                    found.append(f"{item!r} recorded while {list(open_calls)} had no result")
        previous = item
    uncommitted = {c.call_id for c in state.ledger if c.status != "committed"}
    if set(open_calls) != uncommitted:
        found.append(
            f"the calls without a result {sorted(open_calls)} are not the ledger's "
            f"uncommitted ones {sorted(uncommitted)}"
        )
    results = {i.call_id for i in state.items if isinstance(i, ToolResultItem)}
    for record in state.ledger:
        if record.call_id not in seen:
            found.append(f"the ledger has {record.call_id}, which the transcript does not")
        if (record.call_id in results) != (record.status == "committed"):
            found.append(
                f"{record.call_id} is {record.status}, with a result: {record.call_id in results}"
            )
    return found


def status_problems(state: RunState) -> list[str]:
    """The state's shape fits its status (a running run has no ledger, a completed one no
    error, a failed one a reason, ...), and decisions wait only on waiting calls."""
    found: list[str] = []
    statuses = Counter(c.status for c in state.ledger)

    def need(condition: bool, what: str) -> None:
        if not condition:
            found.append(f"a {state.status.value} run {what}")

    match state.status:
        case RunStatus.NEW:
            need(state.version == 0, f"is at version {state.version}")
            need(not state.items, "has items")
        case RunStatus.RUNNING:
            need(state.ledger == (), "has calls in its ledger")
            need(state.pending_handoff is None, "has a pending handoff")
            need(state.staged == (), "has staged input")
            need(state.turn < state.max_turns, "has no turns left")
            need(state.error is None, "has an error")
        case RunStatus.TOOLS:
            need(statuses["started"] > 0, "has no started call")
        case RunStatus.INTERRUPTED:
            need(statuses["started"] == 0, "has started calls")
            need(statuses["awaiting_approval"] > 0, "has no call waiting")
        case RunStatus.COMPLETED:
            need(state.ledger == (), "has calls in its ledger")
            need(state.error is None, "has an error")
            need(state.staged == (), "has staged input")
        case RunStatus.FAILED:
            need(state.ledger == (), "has calls in its ledger")
            need(state.error is not None, "has no error")
            if state.error is not None and state.error.kind == "max_turns_exceeded":
                need(state.turn >= state.max_turns, "ran out of turns it had")
        case RunStatus.CANCELLED:
            need(state.error is not None and state.error.kind == "cancelled", "has no reason")
    if not state.status.is_terminal:
        waiting = {c.call_id for c in state.ledger if c.status == "awaiting_approval"}
        stray = {d.call_id for d in state.decisions} - waiting
        need(not stray, f"has decisions on calls that do not wait: {sorted(stray)}")
    return found


def round_trip_problems(state: RunState) -> list[str]:
    """The state goes through ``to_json`` / ``from_json`` unchanged."""
    text = state.to_json()
    loaded = RunState.from_json(text)
    if loaded != state or loaded.to_json() != text:
        return [f"version {state.version} ({state.status.value}) changed through JSON"]
    return []
