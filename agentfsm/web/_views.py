"""The inbox's HTML: pages rendered on the server, every action a plain form.

Everything a model, a tool or a person produced goes through ``html()`` and is escaped.
Elements that live updates may replace carry ``data-live`` (a section) or sit in a
``data-live-list`` (a list of cards, each with ``data-id``), with a ``data-version`` that
changes when their content does: the page's script fetches the page again when the server
says something happened, and swaps in only what changed, so a half-typed form survives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from .._decisions import describe, standing, tally
from .._events import Decision
from .._items import AssistantMessage
from .._outcomes import ApprovalRequest
from .._render import in_doubt
from .._state import RunState
from ._forms import Field, fields_for
from ._html import Markup, html, join

__all__ = [
    "CallView",
    "Page",
    "call_card",
    "edit_page",
    "error_page",
    "hidden",
    "inbox_page",
    "last_said",
    "layout",
    "login_page",
    "pretty",
    "when",
]


@dataclass(frozen=True)
class Page:
    """What every page needs: the path the app is mounted at, who is logged in, and the
    CSRF token of their session's forms."""

    base: str
    identity: str | None = None
    csrf: str = ""

    def url(self, path: str, **query: str | None) -> str:
        given = {k: v for k, v in query.items() if v is not None}
        return self.base + path + (f"?{urlencode(given)}" if given else "")

    def run_url(self, run_id: str, rest: str = "") -> str:
        return self.url(f"/runs/{quote(run_id, safe='')}{rest}")


@dataclass(frozen=True)
class CallView:
    """A waiting call as a card shows it."""

    run_id: str
    request: ApprovalRequest
    since: float | None
    posted: tuple[Decision, ...]
    description: str | None
    said: str | None
    may_decide: bool
    #: False when the viewer started the run and may not approve its calls.
    may_approve: bool = True
    #: Who is looking (their approval of a call needing several may already count).
    viewer: str | None = None

    @property
    def standing(self) -> str | None:
        """``"1 of 2 approvals (alice)"`` for a call that needs several, else None."""
        return standing(self.request, self.posted)


def layout(page: Page, title: str, body: Markup, *, events: str | None = None) -> str:
    nav = Markup("")
    if page.identity is not None:
        nav = html(
            '<nav><a href="{}">Inbox</a> <a href="{}">Runs</a></nav>'
            '<form method="post" action="{}" class="logout">'
            '<input type="hidden" name="csrf" value="{}">'
            '<span class="who">{}</span> <button type="submit">Log out</button></form>',
            page.url("/"),
            page.url("/runs"),
            page.url("/logout"),
            page.csrf,
            page.identity,
        )
    live = html(' data-events="{}"', events) if events is not None else Markup("")
    return html(
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title} · agentfsm</title>"
        '<link rel="stylesheet" href="{css}">'
        '<script src="{js}" defer></script>'
        "</head>"
        '<body{live}><header class="top"><strong>agentfsm</strong> {nav}</header>'
        '<main>{body}</main><footer><span id="live-status" aria-live="polite"></span>'
        "</footer></body></html>\n",
        title=title,
        css=page.url("/static/inbox.css"),
        js=page.url("/static/inbox.js"),
        live=live,
        nav=nav,
        body=body,
    )


def when(seconds: float | None, now: float | None = None) -> Markup:
    """A time as UTC, with how long ago or how far ahead it is."""
    if seconds is None:
        return Markup("")
    moment = datetime.fromtimestamp(seconds, UTC)
    now = time.time() if now is None else now
    delta = seconds - now
    return html(
        '<time datetime="{}">{}</time> <span class="ago">({})</span>',
        moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        moment.strftime("%Y-%m-%d %H:%M:%S UTC"),
        _span(delta),
    )


def _span(delta: float) -> str:
    amount = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if amount >= size:
            text = f"{amount / size:.0f} {unit}"
            break
    else:
        text = f"{amount:.0f} s"
    return f"in {text}" if delta > 0 else f"{text} ago"


def pretty(arguments: Any) -> str:
    """JSON for people: indented, keys sorted, non-ASCII as it is."""
    return json.dumps(arguments, indent=2, sort_keys=True, ensure_ascii=False)


def last_said(state: RunState) -> str | None:
    """The last thing the agent said before it asked, if anything."""
    for item in reversed(state.items):
        if isinstance(item, AssistantMessage) and item.content.strip():
            return item.content
    return None


def hidden(**values: str) -> Markup:
    """Hidden form fields."""
    return join(html('<input type="hidden" name="{}" value="{}">', k, v) for k, v in values.items())


def call_card(page: Page, call: CallView, *, back: str) -> Markup:
    """One waiting call: what, whose, since when, the arguments, and the decision forms."""
    request = call.request
    decide = page.run_url(call.run_id, "/decide")
    bound = hidden(csrf=page.csrf, call_id=request.call_id, digest=request.digest, next=back)
    meta = [
        html('<dt>Run</dt><dd><a href="{}">{}</a></dd>', page.run_url(call.run_id), call.run_id),
        html("<dt>Agent</dt><dd>{}</dd>", request.agent),
        html("<dt>Call</dt><dd><code>{}</code></dd>", request.call_id),
    ]
    if call.since is not None:
        meta.append(html("<dt>Waiting since</dt><dd>{}</dd>", when(call.since)))
    if request.deadline is not None:
        meta.append(html("<dt>Deadline</dt><dd>{}</dd>", when(request.deadline)))
    meta.append(html("<dt>Digest</dt><dd><code>{}</code></dd>", request.digest[:16]))
    count = call.standing
    if count is not None:
        meta.append(html('<dt>Approvals</dt><dd class="quorum">{}</dd>', count))
    parts = [
        html(
            '<header><h2><code class="tool">{}</code></h2>{}</header>',
            request.tool,
            html('<p class="description">{}</p>', call.description) if call.description else "",
        ),
        html('<dl class="meta">{}</dl>', join(meta)),
    ]
    if request.reason == "in_doubt":
        parts.append(html('<p class="warning">{}</p>', in_doubt(request)))
    if call.said:
        parts.append(
            html(
                '<figure class="said"><figcaption>The agent said</figcaption>'
                "<blockquote>{}</blockquote></figure>",
                call.said,
            )
        )
    parts.append(
        html(
            '<figure><figcaption>Arguments</figcaption><pre class="arguments">{}</pre></figure>',
            pretty(request.arguments),
        )
    )
    approvers, final = tally(request, call.posted)
    if call.posted:
        parts.append(
            html(
                '<p class="posted">{}; it takes effect when a worker resumes the run.</p>',
                "; ".join(describe(d).capitalize() for d in call.posted),
            )
        )
    if final is not None:
        pass
    elif not call.may_decide:
        parts.append(html('<p class="denied">You may not decide on calls of {}.</p>', request.tool))
    elif call.viewer is not None and call.viewer in approvers:
        parts.append(
            html(
                '<p class="counted">Your approval counts ({}); it needs someone else\'s too.</p>',
                count,
            )
        )
    elif not call.may_approve:
        parts.append(
            html(
                '<p class="denied">You started this run, so someone else must approve its '
                'calls.</p><details><summary>Reject</summary><form method="post" '
                'action="{decide}">{bound}<label>What the agent is told (optional)<textarea '
                'name="message" rows="2"></textarea></label><button type="submit" '
                'name="action" value="reject" class="reject">Reject</button></form></details>',
                decide=decide,
                bound=bound,
            )
        )
    else:
        parts.append(
            html(
                '<div class="actions">'
                '<form method="post" action="{decide}">{bound}'
                '<button type="submit" name="action" value="approve" class="approve">'
                "Approve</button>"
                "</form>"
                "<details><summary>Edit, then approve</summary>{edit}</details>"
                '<details><summary>Reject</summary><form method="post" action="{decide}">{bound}'
                '<label>What the agent is told (optional)<textarea name="message" rows="2">'
                "</textarea></label>"
                '<button type="submit" name="action" value="reject" class="reject">Reject</button>'
                "</form></details></div>",
                decide=decide,
                bound=bound,
                edit=edit_form(
                    page, call.run_id, request, fields_for(request.schema, request.arguments), back
                ),
            )
        )
    return html(
        '<article class="call" data-id="{}" data-version="{}">{}</article>',
        f"{call.run_id}/{request.call_id}",
        f"{request.digest}:{len(call.posted)}:{len(request.approved_by)}:{call.may_decide}",
        join(parts),
    )


def edit_form(
    page: Page, run_id: str, request: ApprovalRequest, fields: Sequence[Field], back: str
) -> Markup:
    bound = hidden(csrf=page.csrf, call_id=request.call_id, digest=request.digest, next=back)
    return html(
        '<form method="post" action="{}" class="edit">{}{}'
        '<button type="submit" name="action" value="edit" class="approve">'
        "Approve with these arguments</button></form>",
        page.run_url(run_id, "/decide"),
        bound,
        join(_field(f) for f in fields),
    )


def _field(field: Field) -> Markup:
    name = field.input_name
    attributes = join(html(' {}="{}"', k, v) for k, v in field.attributes)
    if field.kind == "boolean":
        widget = html(
            '<input type="checkbox" name="{}" value="true"{}{}>',
            name,
            Markup(" checked") if field.checked else "",
            attributes,
        )
    elif field.kind == "choice":
        options = join(
            html(
                '<option value="{}"{}>{}</option>',
                o,
                Markup(" selected") if o == field.value else "",
                o,
            )
            for o in field.options
        )
        widget = html('<select name="{}"{}>{}</select>', name, attributes, options)
    elif field.kind in ("integer", "number"):
        widget = html('<input type="number" name="{}" value="{}"{}>', name, field.value, attributes)
    elif field.kind == "text":
        widget = html('<input type="text" name="{}" value="{}"{}>', name, field.value, attributes)
    else:
        rows = min(max(field.value.count("\n") + 2, 3), 20)
        json_class = Markup(' class="json"') if field.kind == "json" else Markup("")
        widget = html(
            '<textarea name="{}" rows="{}"{}{}>{}</textarea>',
            name,
            rows,
            json_class,
            attributes,
            field.value,
        )
    extra = [html('<small class="hint">{}</small>', field.description)] if field.description else []
    if field.kind == "json" and field.name != "*":
        extra.append(Markup('<small class="hint">as JSON</small>'))
    if field.error:
        extra.append(html('<small class="error">{}</small>', field.error))
    return html(
        '<label class="field{}"><span class="name">{}{}</span>{}{}</label>',
        " invalid" if field.error else "",
        field.label,
        Markup(' <abbr title="required">*</abbr>') if field.required else "",
        widget,
        join(extra),
    )


def inbox_page(
    page: Page,
    calls: Sequence[CallView],
    *,
    tool: str | None,
    agent: str | None,
    following: str | None,
    events: str,
    back: str,
) -> str:
    filters = html(
        '<form method="get" action="{}" class="filters">'
        '<label>Tool <input type="text" name="tool" value="{}"></label>'
        '<label>Agent <input type="text" name="agent" value="{}"></label>'
        '<button type="submit">Filter</button></form>',
        page.url("/"),
        tool or "",
        agent or "",
    )
    cards = join(call_card(page, c, back=back) for c in calls)
    empty = Markup('<p class="empty">Nothing waits for a decision.</p>') if not calls else ""
    more = (
        html(
            '<p><a href="{}" rel="next">Next page</a></p>',
            page.url("/", tool=tool, agent=agent, after=following),
        )
        if following
        else ""
    )
    body = html(
        "<h1>Waiting for a decision</h1>{}"
        '<section data-live-list="calls" data-empty="Nothing waits for a decision.">'
        "{}{}</section>{}",
        filters,
        empty,
        cards,
        more,
    )
    return layout(page, "Inbox", body, events=events)


def edit_page(
    page: Page, call: CallView, fields: Sequence[Field], problem: str | None, back: str
) -> str:
    body = html(
        "<h1>Edit the arguments of <code>{}</code></h1>{}"
        "<figure><figcaption>As the agent asked</figcaption>"
        '<pre class="arguments">{}</pre></figure>'
        '{}<p><a href="{}">Back</a></p>',
        call.request.tool,
        html('<p class="error">{}</p>', problem) if problem else "",
        pretty(call.request.arguments),
        edit_form(page, call.run_id, call.request, fields, back),
        back,
    )
    return layout(page, "Edit arguments", body)


def login_page(page: Page, *, next_path: str, problem: str | None, tokens: bool) -> str:
    if not tokens:
        form = Markup(
            "<p>This inbox signs people in through the application that embeds it; "
            "there is no token to enter here.</p>"
        )
    else:
        form = html(
            '<form method="post" action="{}" class="login">{}'
            '<label>Your access token <input type="password" name="token" '
            'autocomplete="current-password" required autofocus></label>'
            '<button type="submit">Log in</button></form>',
            page.url("/login"),
            hidden(next=next_path),
        )
    body = html(
        "<h1>Log in</h1>{}{}",
        html('<p class="error">{}</p>', problem) if problem else "",
        form,
    )
    return layout(page, "Log in", body)


def error_page(page: Page, status: int, title: str, detail: str, back: str | None) -> str:
    body = html(
        '<h1>{}</h1><p class="error">{}</p>{}',
        title,
        detail,
        html('<p><a href="{}">Back</a></p>', back) if back else "",
    )
    return layout(page, f"{status} {title}", body)
