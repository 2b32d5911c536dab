"""What the API and the pages share: the store and settings, who is asking, and the
operations both offer (list what waits, decide, start, steer), each done once here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from starlette.requests import HTTPConnection, Request

from .._agents import Agent, AgentSet
from .._decisions import standing
from .._errors import ConfigurationError
from .._events import Decision
from .._outcomes import ApprovalRequest
from .._run_events import Position
from .._state import RunState
from .._step import new_run
from ..stores._base import Store, posted_cancellation, posted_decisions
from ._auth import Authenticate, Permissions, Session, Sessions, TokenAuth, authenticate
from ._problems import HTTPProblem
from ._views import CallView, last_said
from ._watch import Memory, Sleep, Watched

__all__ = ["Inbox", "cursor", "local_path", "query_int", "read_form", "read_json", "sse"]

log = logging.getLogger("agentfsm.web")

#: The largest request body read: a decision with edited arguments fits many times over.
MAX_BODY = 1 << 20


@dataclass
class Inbox:
    store: Store
    authenticate: Authenticate
    sessions: Sessions
    permissions: Permissions
    agent: Agent | None
    interval: float
    sleep: Sleep
    secure_cookies: bool | None
    memory: Memory = field(default_factory=Memory)

    def __post_init__(self) -> None:
        self.agents = AgentSet(self.agent) if self.agent is not None else None

    @property
    def accepts_tokens(self) -> bool:
        """Whether people can log in with a token on the login page."""
        return isinstance(self.authenticate, TokenAuth)

    # -- who is asking -------------------------------------------------------------------

    async def caller(self, request: HTTPConnection) -> tuple[str, Session | None]:
        """The API caller's identity: from the authentication hook (a bearer token), or
        else from a browser session (then with the session, whose CSRF token unsafe
        methods must carry). Raises a 401 problem otherwise."""
        identity = await authenticate(self.authenticate, request)
        if identity is not None:
            return identity, None
        session = self.sessions.read(request.cookies.get(Sessions.COOKIE))
        if session is not None:
            return session.identity, session
        raise HTTPProblem(
            "unauthenticated",
            "send Authorization: Bearer TOKEN (or log in on the inbox's page)",
            headers={"WWW-Authenticate": 'Bearer realm="agentfsm"'},
        )

    def cookie_secure(self, request: HTTPConnection) -> bool:
        if self.secure_cookies is not None:
            return self.secure_cookies
        return request.url.scheme == "https"

    # -- reading -------------------------------------------------------------------------

    def description(self, request: ApprovalRequest) -> str | None:
        if self.agents is None:
            return None
        found = self.agents.tool(request.agent, request.tool)
        return found.description if found is not None else None

    async def waiting(
        self, identity: str, *, tool: str | None, agent: str | None, limit: int, after: str | None
    ) -> tuple[list[CallView], str | None]:
        """A page of the waiting calls (the store's indexed query), each with what a person
        needs to decide: the run's last message (its run is loaded, once per run on the
        page), the tool's description, and whether ``identity`` may decide."""
        page = await self.store.waiting(tool=tool, agent=agent, limit=limit, after=after)
        # The runs load side by side: on PostgreSQL a page costs a few round trips, not one
        # per run (the store bounds how many at once with its pool).
        run_ids = list(dict.fromkeys(call.run_id for call in page.calls))
        said: dict[str, str | None] = {}
        approve: dict[str, bool] = {}
        for state in await asyncio.gather(*map(self.store.load, run_ids)):
            self.memory.remember(state)
            said[state.run_id] = last_said(state)
            approve[state.run_id] = self.permissions.may_approve(identity, state)
        views = [
            CallView(
                run_id=call.run_id,
                request=call.request,
                since=call.since,
                posted=call.posted,
                description=self.description(call.request),
                said=said.get(call.run_id),
                may_decide=self.permissions.may_decide(identity, call.request),
                may_approve=approve.get(call.run_id, True),
                viewer=identity,
            )
            for call in page.calls
        ]
        return views, page.next

    async def run(self, run_id: str) -> tuple[RunState, list[Decision], str | None]:
        """The run, the decisions posted to it and not applied, and a posted cancellation."""
        state = await self.store.load(run_id)
        inbox = await self.store.inbox(run_id)
        messages = [m for m in inbox.messages if m is not None]
        self.memory.remember(state)
        return state, [*state.decisions, *posted_decisions(messages)], posted_cancellation(messages)

    def run_calls(self, identity: str, state: RunState, posted: list[Decision]) -> list[CallView]:
        said = last_said(state)
        return [
            CallView(
                run_id=state.run_id,
                request=request,
                since=None,
                posted=tuple(d for d in posted if d.call_id == request.call_id),
                description=self.description(request),
                said=said,
                may_decide=self.permissions.may_decide(identity, request),
                may_approve=self.permissions.may_approve(identity, state),
                viewer=identity,
            )
            for request in state.interruptions
        ]

    async def waiting_call(self, run_id: str, call_id: str) -> ApprovalRequest | None:
        state = await self.store.load(run_id)
        return next((r for r in state.interruptions if r.call_id == call_id), None)

    # -- acting --------------------------------------------------------------------------

    async def decide(
        self,
        run_id: str,
        identity: str,
        *,
        call_id: str,
        digest: str,
        approved: bool,
        arguments: dict[str, Any] | None = None,
        message: str | None = None,
        always: bool = False,
    ) -> tuple[bool, Decision, str | None]:
        """Post a decision by ``identity`` (never anyone the request names), after checking
        that they may decide on the call's tool, and approve the run's calls (the starter
        rule). The store checks the rest (the call waits with that digest, edits fit the
        schema, the first decision wins, each approver counts once towards a quorum, the
        run's own starter rule) atomically."""
        state = await self.store.load(run_id)
        request = next((r for r in state.interruptions if r.call_id == call_id), None)
        if request is not None and not self.permissions.may_decide(identity, request):
            raise HTTPProblem(
                "forbidden", f"{identity} may not decide on calls of the tool {request.tool!r}"
            )
        if request is not None and approved and not self.permissions.may_approve(identity, state):
            raise HTTPProblem(
                "forbidden",
                f"{identity} started run {run_id}, and may not approve its calls: someone "
                "else must",
            )
        decision = Decision(
            call_id=call_id,
            digest=digest,
            approved=approved,
            always=always,
            message=message if not approved else None,
            arguments=arguments if approved else None,
            by=identity,
        )
        posted = await self.store.decide(run_id, decision)
        detail = None
        if request is not None and request.quorum > 1 and approved:
            now, decisions, _ = await self.run(run_id)
            waiting = next((r for r in now.interruptions if r.call_id == call_id), None)
            if waiting is not None:
                detail = standing(waiting, decisions)
                if not posted:
                    detail = f"{identity}'s approval counts already: {detail}"
        return posted, decision, detail

    async def start(
        self,
        text: str,
        *,
        started_by: str,
        context: Any = None,
        max_turns: int | None = None,
        run_id: str | None = None,
        session: str | None = None,
    ) -> RunState:
        """Store a new run of the inbox's agent for the workers (``agentfsm worker``),
        recording who started it (``started_by``) and the permissions' starter rule; with
        ``session``, as that session's next run (the worker that starts it gives it the
        session's transcript)."""
        if self.agent is None:
            raise HTTPProblem(
                "no-agent",
                "this inbox was started without an agent (--app MODULE:ATTR, or "
                "create_app(agent=...)), so it cannot build new runs",
            )
        state = new_run(
            self.agent,
            text,
            run_id=run_id or uuid.uuid4().hex,
            context=context,
            max_turns=10 if max_turns is None else max_turns,
            started_by=started_by,
            starter_may_approve=self.permissions.starter_may_approve,
            session=session,
        )
        await self.store.create(state)
        self.memory.remember(state)
        return state


# -- reading requests ------------------------------------------------------------------------


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request's body, refused with a 413 problem past ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPProblem("too-large", f"the body may be {limit} bytes at most")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem("too-large", f"the body may be {limit} bytes at most")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, kind: type[Any], *, optional: bool = False) -> Any:
    """The JSON body as ``kind``: 415 unless it is sent as JSON, 400 when it cannot be
    read, 422 when it does not fit. ``optional``: an empty body is an empty object."""
    body = await read_body(request)
    if optional and not body.strip():
        body = b"{}"
    elif _media_type(request) != "application/json":
        raise HTTPProblem("unsupported-media-type", "send the body as application/json")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise HTTPProblem("invalid-request", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise HTTPProblem("malformed-request", f"the body is not JSON: {exc}") from None


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form (what the pages' forms send); the first value of each name."""
    if _media_type(request) != "application/x-www-form-urlencoded":
        raise HTTPProblem("unsupported-media-type", "send the form urlencoded")
    body = await read_body(request)
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=1000, errors="strict"
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPProblem("malformed-request", f"the form cannot be read: {exc}") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


def query_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise HTTPProblem("invalid-request", f"{name} must be a whole number from {low} to {high}")
    return value


def cursor(request: HTTPConnection) -> Position | None:
    """Where a client's event stream resumes: ``Last-Event-ID`` (as the browser sends it
    on reconnecting), or ``?after=``: a position, or a bare version (every event of that
    version and before was seen)."""
    text = request.headers.get("last-event-id") or request.query_params.get("after")
    if not text:
        return None
    text = text.rsplit("/", 1)[-1]
    if text.isdigit():
        return Position(int(text), 1 << 62, 0)
    try:
        return Position.parse(text)
    except ValueError as exc:
        raise HTTPProblem("invalid-request", str(exc)) from None


async def sse(
    events: AsyncIterator[Watched], ident: Any, *, keepalive: float = 15.0
) -> AsyncIterator[bytes]:
    """``events`` as Server-Sent Events, with a comment every ``keepalive`` seconds of
    silence (so proxies keep the connection, and a gone client is noticed). ``ident``
    gives each event's id (None: none)."""
    queue: asyncio.Queue[Watched | None] = asyncio.Queue(maxsize=256)

    async def pump() -> None:
        try:
            async for event in events:
                await queue.put(event)
        except Exception:
            log.exception("an event stream failed; it ends here (the client reconnects)")
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    task = asyncio.ensure_future(pump())
    try:
        yield b"retry: 2000\n\n"
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event is None:
                break
            data = msgspec.json.encode(event)
            kind = type(event).__struct_config__.tag
            name = ident(event)
            head = f"id: {name}\n" if name is not None else ""
            yield f"{head}event: {kind}\ndata: ".encode() + data + b"\n\n"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def local_path(value: str | None, default: str) -> str:
    """``value`` if it is a path on this site (no scheme, no host), else ``default``: a
    form's ``next`` can send no one elsewhere."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(c) < 32 for c in value):
        return default
    return value


def check_config(interval: float) -> None:
    if not 0 < interval <= 60:
        raise ConfigurationError("poll_interval must be from 0 to 60 seconds")
