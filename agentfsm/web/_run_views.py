"""The pages about runs: the list of runs, and one run with its transcript, its audit trail
and the forms that steer it. The conventions are ``_views``'s (escaped by ``html()``,
``data-live`` sections for live updates)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from .._decisions import DecisionRecord, describe
from .._events import Decision
from .._items import (
    AssistantMessage,
    Feedback,
    GuardrailItem,
    HandoffItem,
    Item,
    ToolCallItem,
    ToolResultItem,
)
from .._state import RunState
from ..stores._base import RunSummary
from ._html import Markup, html, join
from ._views import CallView, Page, call_card, hidden, layout, pretty, when

__all__ = ["run_page", "runs_page"]


def _item(item: Item) -> Markup:
    match item:
        case AssistantMessage(content=content, agent=agent):
            return html(
                '<li class="assistant"><span class="who">{}</span><p>{}</p></li>', agent, content
            )
        case ToolCallItem(tool=name, arguments=arguments, call_id=call_id, agent=agent):
            try:
                shown = pretty(json.loads(arguments))
            except ValueError:
                shown = arguments
            return html(
                '<li class="tool-call"><span class="who">{} calls <code>{}</code> '
                '<code class="id">{}</code></span><pre>{}</pre></li>',
                agent,
                name,
                call_id,
                shown,
            )
        case ToolResultItem(output=output, call_id=call_id, is_error=is_error, arguments=edited):
            ran = html("<pre>ran with {}</pre>", pretty(edited)) if edited is not None else ""
            return html(
                '<li class="tool-result{}"><span class="who">{} of '
                '<code class="id">{}</code></span>'
                "{}<pre>{}</pre></li>",
                " error" if is_error else "",
                "error" if is_error else "result",
                call_id,
                ran,
                output,
            )
        case HandoffItem(source=source, target=target):
            return html('<li class="handoff">handoff from {} to {}</li>', source, target)
        case Feedback(content=content):
            return html(
                '<li class="feedback"><span class="who">feedback</span><p>{}</p></li>', content
            )
        case GuardrailItem(guardrail=name, kind=kind, behavior=behavior, message=message):
            return html(
                '<li class="guardrail"><span class="who">guardrail {} ({})</span><p>{}{}</p></li>',
                name,
                kind,
                behavior,
                f": {message}" if message else "",
            )
        case _:
            return html(
                '<li class="user"><span class="who">user</span><p>{}</p></li>', item.content
            )


def _audit(records: Sequence[DecisionRecord]) -> Markup:
    if not records:
        return Markup("<p>No decision yet.</p>")
    rows = []
    for record in records:
        decision = record.decision
        verb = {"approve": "approved", "edit": "approved with edits", "reject": "rejected"}.get(
            decision.kind, "expired"
        )
        notes = []
        if decision.arguments is not None:
            notes.append(html("<pre>{}</pre>", pretty(decision.arguments)))
        if decision.message:
            notes.append(html("<p>told the agent: {}</p>", decision.message))
        if record.outcome == "refused":
            notes.append(html('<p class="error">refused: {}</p>', record.reason or ""))
        elif record.outcome == "counted":
            notes.append(html('<p class="quorum">{}</p>', record.reason or ""))
        rows.append(
            html(
                '<tr><td>{}</td><td>{}</td><td><code>{}</code> <code class="id">{}</code></td>'
                "<td>{}</td><td>{}</td><td>{}</td></tr>",
                when(decision.at),
                decision.by or "(not recorded)",
                record.tool or "?",
                decision.call_id,
                verb,
                record.outcome,
                join(notes),
            )
        )
    return html(
        "<table><thead><tr><th>When</th><th>Who</th><th>Call</th><th>Decision</th>"
        "<th>Outcome</th><th>Notes</th></tr></thead><tbody>{}</tbody></table>",
        join(rows),
    )


def run_page(
    page: Page,
    state: RunState,
    calls: Sequence[CallView],
    posted: Sequence[Decision],
    cancelling: str | None,
    *,
    events: str | None,
) -> str:
    status = state.status.value
    facts = [
        html('<dt>Status</dt><dd><span class="status {}">{}</span></dd>', status, status),
        html(
            "<dt>Agent</dt><dd>{} (started with {})</dd>", state.current_agent, state.starting_agent
        ),
        html("<dt>Turn</dt><dd>{} of {}</dd>", state.turn, state.max_turns),
        html("<dt>Version</dt><dd>{}</dd>", state.version),
    ]
    if state.error is not None:
        facts.append(html('<dt>Error</dt><dd class="error">{}</dd>', state.error.message))
    if status == "completed":
        facts.append(html("<dt>Output</dt><dd><pre>{}</pre></dd>", pretty(state.final_output)))
    pending = [html("<li><code>{}</code>: {}</li>", d.call_id, describe(d)) for d in posted]
    if cancelling is not None:
        pending.append(html("<li>cancel: {}</li>", cancelling))
    posted_part = (
        html("<h2>Posted, not applied yet</h2><ul>{}</ul>", join(pending)) if pending else ""
    )
    back = page.run_url(state.run_id)
    actions = Markup("")
    if not state.status.is_terminal:
        act = hidden(csrf=page.csrf)
        pause = (
            html(
                '<form method="post" action="{}">{}'
                '<button type="submit">Let workers go on</button></form>',
                page.run_url(state.run_id, "/unpause"),
                act,
            )
            if status == "paused"
            else html(
                '<form method="post" action="{}">{}<button type="submit">Pause</button></form>',
                page.run_url(state.run_id, "/pause"),
                act,
            )
        )
        actions = html(
            '<section class="run-actions"><h2>Steer the run</h2>'
            '<form method="post" action="{input}">{act}<label>Add a message for its next turn'
            '<textarea name="text" rows="2" required></textarea></label>'
            '<button type="submit">Add</button></form>{pause}'
            '<form method="post" action="{cancel}">{act}<label>Reason '
            '<input type="text" name="reason" value="cancelled"></label>'
            '<button type="submit" class="reject">Cancel the run</button></form></section>',
            input=page.run_url(state.run_id, "/input"),
            cancel=page.run_url(state.run_id, "/cancel"),
            act=act,
            pause=pause,
        )
    body = html(
        "<h1>Run <code>{run}</code></h1>"
        '<section data-live="status" data-version="{version}">'
        '<dl class="facts">{facts}</dl>{posted}'
        "</section>"
        "<h2>Waiting for a decision</h2>"
        '<section data-live-list="calls" data-empty="Nothing waits.">{calls}</section>'
        '<section data-live="actions" data-version="{status}">{actions}</section>'
        "<h2>Decisions</h2>"
        '<section data-live="audit" data-version="{audits}">{audit}</section>'
        "<h2>Transcript</h2>"
        '<section data-live="transcript" data-version="{items}">'
        '<ol class="transcript">{transcript}</ol>'
        "</section>",
        run=state.run_id,
        version=f"{state.version}:{len(posted)}:{cancelling is not None}",
        facts=join(facts),
        posted=posted_part,
        calls=join(call_card(page, c, back=back) for c in calls)
        or Markup('<p class="empty">Nothing waits.</p>'),
        status=status,
        actions=actions,
        audits=len(state.audit),
        audit=_audit(state.audit),
        items=len(state.input) + len(state.items),
        transcript=join(_item(i) for i in (*state.input, *state.items)),
    )
    return layout(page, f"Run {state.run_id}", body, events=events)


def runs_page(
    page: Page, runs: Sequence[RunSummary], *, can_start: bool, status: str | None
) -> str:
    rows = join(
        html(
            '<tr><td><a href="{}"><code>{}</code></a></td>'
            '<td><span class="status {}">{}</span></td>'
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            page.run_url(s.run_id),
            s.run_id,
            s.status,
            s.status + (" (parked)" if s.parked else ""),
            s.current_agent,
            s.turn,
            s.waiting or "",
            when(s.updated_at),
        )
        for s in runs
    )
    start = (
        html(
            '<form method="post" action="{}" class="start">{}<label>Start a run: the user says'
            '<textarea name="input" rows="2" required></textarea></label>'
            '<button type="submit">Start</button></form>',
            page.url("/runs"),
            hidden(csrf=page.csrf),
        )
        if can_start
        else ""
    )
    body = html(
        "<h1>Runs</h1>{}"
        '<form method="get" action="{}" class="filters"><label>Status '
        '<input type="text" name="status" value="{}"></label>'
        '<button type="submit">Filter</button></form>'
        "<table><thead><tr><th>Run</th><th>Status</th><th>Agent</th><th>Turn</th><th>Waiting</th>"
        "<th>Updated</th></tr></thead><tbody>{}</tbody></table>",
        start,
        page.url("/runs"),
        status or "",
        rows,
    )
    return layout(page, "Runs", body)
