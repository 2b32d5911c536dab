"""Plain-text views of runs, for the CLI and the demo."""

from __future__ import annotations

import json

from ._items import AssistantMessage, Feedback, HandoffItem, Item, ToolCallItem, ToolResultItem
from ._state import RunState
from .stores._base import RunSummary

__all__ = ["render_run", "render_summaries", "render_transcript"]


def render_transcript(state: RunState) -> str:
    return "\n".join(_line(item) for item in (*state.input, *state.items))


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
        case Feedback(content=content):
            return f"  (feedback) {content}"
        case _:
            return f"  user: {item.content}"


def render_run(state: RunState) -> str:
    lines = [
        f"run {state.run_id}",
        f"  status:  {state.status.value}",
        f"  agent:   {state.current_agent} (started with {state.starting_agent})",
        f"  turn:    {state.turn} of {state.max_turns}   version: {state.version}",
    ]
    if state.error is not None:
        lines.append(f"  error:   {state.error.message}")
    if state.status.value == "completed":
        lines.append(f"  output:  {json.dumps(state.final_output)}")
    requests = state.interruptions
    if requests:
        lines.append("waiting for a decision:")
        for request in requests:
            why = ""
            if request.reason == "in_doubt":
                why = f" (in doubt: it may have run already; key {request.idempotency_key})"
            arguments = json.dumps(request.arguments, sort_keys=True)
            lines.append(f"  {request.call_id}  {request.tool}({arguments}){why}")
    lines.append("transcript:")
    lines.append(render_transcript(state))
    return "\n".join(lines)


def render_summaries(summaries: list[RunSummary]) -> str:
    if not summaries:
        return "no runs"
    rows = [("RUN", "STATUS", "AGENT", "TURN", "WAITING")]
    rows += [
        (s.run_id, s.status, s.current_agent, str(s.turn), str(s.waiting) if s.waiting else "")
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
