"""Plain-text views of runs, for the CLI and the demo."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from ._decisions import describe, standing
from ._fork import ForkPlan
from ._items import (
    AssistantMessage,
    Feedback,
    GuardrailItem,
    HandoffItem,
    Item,
    ToolCallItem,
    ToolResultItem,
)
from ._outcomes import ApprovalRequest
from ._state import ForkOrigin, RunState
from .stores._base import (
    InboxMessage,
    RunSummary,
    RunVersion,
    SessionRun,
    SessionSummary,
    WaitingPage,
    posted_cancellation,
    posted_decisions,
)

__all__ = [
    "DIGEST_SHOWN",
    "in_doubt",
    "render_fork",
    "render_history",
    "render_run",
    "render_session",
    "render_sessions",
    "render_summaries",
    "render_transcript",
    "render_waiting",
]


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
        case GuardrailItem(guardrail=name, kind=kind, behavior=behavior, message=message):
            about = f" [{item.call_id}]" if item.call_id is not None else ""
            why = f": {message}" if message else ""
            return f"  (guardrail {name}, {kind}{about}) {behavior}{why}"
        case _:
            return f"  user: {item.content}"


def render_run(state: RunState, posted: Sequence[InboxMessage] = ()) -> str:
    """The run for a person: status, the calls waiting (with the digest a decision must
    name), what was posted and not applied yet, the decisions taken, the transcript."""
    lines = [
        f"run {state.run_id}",
        f"  status:  {state.status.value}",
        f"  agent:   {state.current_agent} (started with {state.starting_agent})",
        f"  turn:    {state.turn} of {state.max_turns}   version: {state.version}",
    ]
    if state.forked_from is not None:
        origin = state.forked_from
        lines.append(f"  forked:  from run {origin.run_id} at version {origin.version}")
    if state.error is not None:
        lines.append(f"  error:   {state.error.message}")
    if state.status.value == "completed":
        lines.append(f"  output:  {json.dumps(state.final_output)}")
    requests = state.interruptions
    pending = (*state.decisions, *posted_decisions(posted))
    if state.started_by:
        rule = "" if state.starter_may_approve else " (who may not approve its calls)"
        lines.insert(4, f"  started by: {state.started_by}{rule}")
    if requests:
        lines.append("waiting for a decision:")
        for request in requests:
            arguments = json.dumps(request.arguments, sort_keys=True)
            lines.append(
                f"  {request.call_id}  {request.tool}({arguments})  digest "
                f"{request.digest[:DIGEST_SHOWN]}"
            )
            if request.reason == "in_doubt":
                lines.append(f"    {in_doubt(request)}")
            count = standing(request, pending)
            if count is not None:
                lines.append(f"    {count}")
    cancel = posted_cancellation(posted)
    if pending or cancel is not None:
        lines.append("posted, not applied yet:")
        lines += [f"  {d.call_id}  {describe(d)}" for d in pending]
        if cancel is not None:
            lines.append(f"  cancel: {cancel}")
    if state.audit:
        lines.append("decisions:")
        for record in state.audit:
            what = f"  {record.decision.call_id}  {record.tool or '?'}: {describe(record.decision)}"
            if record.outcome == "refused":
                what += f"; refused: {record.reason}"
            elif record.outcome == "counted":
                what += f"; counted: {record.reason}"
            lines.append(what)
    lines.append("transcript:")
    lines.append(render_transcript(state))
    return "\n".join(lines)


#: How many hex digits of a digest ``runs show`` prints (``approve --digest`` takes them).
DIGEST_SHOWN = 16


def render_summaries(summaries: list[RunSummary]) -> str:
    if not summaries:
        return "no runs"
    rows = [("RUN", "STATUS", "AGENT", "TURN", "WAITING", "POSTED")]
    rows += [
        (
            s.run_id,
            s.status if s.parked is None else f"{s.status} (parked)",
            s.current_agent,
            str(s.turn),
            str(s.waiting) if s.waiting else "",
            str(s.posted) if s.posted else "",
        )
        for s in summaries
    ]
    return _table(rows)


def render_history(versions: Sequence[RunVersion], origin: ForkOrigin | None = None) -> str:
    if not versions:
        return "no versions kept"
    forked = [f"forked from run {origin.run_id} at version {origin.version}"] if origin else []
    rows = [("VERSION", "STATUS", "EVENT", "SAVED", "ITEMS")]
    rows += [
        (
            str(v.version),
            v.status,
            v.event or "-",
            _when(v.at),
            str(v.n_items),
        )
        for v in versions
    ]
    return "\n".join([*forked, _table(rows)])


def render_fork(plan: ForkPlan, *, stored: bool = True) -> str:
    """A fork's plan for a person: the new run, then each call it inherits unfinished and
    what the fork does with it."""
    did = "forked" if stored else "would fork"
    lines = [
        f"{did} run {plan.parent} at version {plan.version} as run {plan.run_id} "
        f"(status {plan.status})"
    ]
    if plan.hazards:
        lines.append("calls unfinished at that version:")
    for hazard in plan.hazards:
        arguments = json.dumps(hazard.arguments, sort_keys=True)
        lines.append(f"  {hazard.call_id}  {hazard.tool}({arguments})")
        kind = {True: "idempotent", False: "not idempotent", None: "idempotent: unknown"}
        if hazard.at_fork == "waiting":
            what = "was waiting for a decision; it waits in the fork"
        elif hazard.asks:
            what = (
                f"was in flight ({kind[hazard.idempotent]}); it may have taken effect: in "
                f"doubt, it waits for a person; look for its idempotency key "
                f"{hazard.idempotency_key} first"
            )
        else:
            what = "was in flight (idempotent); it runs again when the fork resumes"
        lines.append(f"    {what}")
    if plan.dropped:
        lines.append("decisions pending at that version, left behind:")
        lines += [f"  {d.call_id}  {describe(d)}" for d in plan.dropped]
    if plan.dropped_calls:
        lines.append(
            "calls dropped with the replaced input (the model may ask for them again): "
            + ", ".join(plan.dropped_calls)
        )
    if not plan.hazards:
        lines.append("no call is unfinished: nothing runs again")
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as columns padded to the widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def in_doubt(request: ApprovalRequest) -> str:
    """What a person needs to know before deciding on a call in doubt."""
    text = (
        "in doubt: it started and its result was never recorded, so it may have taken "
        f"effect; look for its idempotency key {request.idempotency_key} first"
    )
    starter = request.started_by
    if starter is not None:
        text += f". Worker {starter.worker} started it"
        if starter.lease_until is not None:
            text += f", and its lease ran until {_when(starter.lease_until)}"
        text += (
            ": if that worker may still be running (frozen or cut off rather than dead), "
            "make sure it is gone, or wait past the tool's timeout, before approving again"
        )
    return text


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_waiting(page: WaitingPage) -> str:
    """The inbox query as a table, and how to get the next page."""
    if not page.calls:
        return "no calls waiting"
    rows = [("RUN", "CALL", "TOOL", "AGENT", "SINCE", "DIGEST", "ARGUMENTS", "POSTED")]
    for call in page.calls:
        request = call.request
        arguments = json.dumps(request.arguments, sort_keys=True)
        if len(arguments) > 60:
            arguments = arguments[:57] + "..."
        since = _when(call.since)
        if request.reason == "in_doubt":
            starter = request.started_by
            since += " (in doubt" + (f", worker {starter.worker})" if starter else ")")
        posted = "; ".join(describe(d) for d in call.posted)
        count = standing(request, call.posted)
        if count is not None:
            posted = f"{count}; {posted}" if posted else count
        rows.append(
            (
                call.run_id,
                request.call_id,
                request.tool,
                request.agent,
                since,
                request.digest[:DIGEST_SHOWN],
                arguments,
                posted,
            )
        )
    lines = _table(rows)
    if page.next is not None:
        lines += f"\nmore: agentfsm approvals --after {page.next}"
    return lines


def render_sessions(found: Sequence[SessionSummary]) -> str:
    """Sessions, the one whose last run joined latest first."""
    if not found:
        return "no sessions"
    rows = [("SESSION", "RUNS", "LAST RUN", "STATUS", "SINCE")]
    rows += [(s.session, str(s.runs), s.last_run, s.status, _when(s.updated_at)) for s in found]
    return _table(rows)


def render_session(session: str, runs: Sequence[SessionRun], transcript: Sequence[Item]) -> str:
    """A session: its runs in order, then its conversation."""
    rows = [("#", "RUN", "STATUS", "JOINED")]
    rows += [(str(r.position), r.run_id, r.status, _when(r.at)) for r in runs]
    lines = [f"session {session}", _table(rows), "transcript:"]
    lines += [_line(item) for item in transcript]
    return "\n".join(lines)
