"""The HTML pages and the forms they post. Every action works without JavaScript: a form
posts, the server acts and redirects back (303), or shows what went wrong."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .._errors import DecisionRefused, UnknownCallError
from .._jsonschema import schema_errors
from ._auth import Session, Sessions
from ._forms import WHOLE, fields_for, read_arguments
from ._inbox import Inbox, local_path, query_int, read_form
from ._problems import HTTPProblem
from ._run_views import run_page, runs_page
from ._views import CallView, Page, edit_page, inbox_page, login_page

__all__ = ["page_of", "page_routes", "session_of"]


def _inbox(request: Request) -> Inbox:
    inbox: Inbox = request.app.state.inbox
    return inbox


def base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def page_of(request: Request, session: Session | None) -> Page:
    if session is None:
        return Page(base=base(request))
    return Page(
        base=base(request), identity=session.identity, csrf=_inbox(request).sessions.csrf(session)
    )


class LoginRequired(Exception):
    """A page asked for by someone not logged in: they are sent to the login page."""


async def session_of(request: Request) -> Session:
    """The browser's session; or, when the authentication hook vouches for this request
    (a header a single-sign-on proxy sets, say), a new one, whose cookie the response
    sets. Raises LoginRequired otherwise."""
    inbox = _inbox(request)
    session = inbox.sessions.read(request.cookies.get(Sessions.COOKIE))
    if session is not None:
        return session
    from ._auth import authenticate

    identity = await authenticate(inbox.authenticate, request)
    if identity is None:
        raise LoginRequired
    session, cookie = inbox.sessions.new(identity)
    request.state.new_cookie = cookie
    return session


def _same_origin(request: Request) -> bool:
    """False when the browser says the form comes from another site."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


async def _form_session(request: Request) -> tuple[Session, dict[str, str]]:
    """The session and form of a post from one of our pages: 403 without a matching CSRF
    token (or from another origin), login otherwise."""
    inbox = _inbox(request)
    session = inbox.sessions.read(request.cookies.get(Sessions.COOKIE))
    if session is None:
        raise LoginRequired
    if not _same_origin(request):
        raise HTTPProblem("csrf", "the form was posted from another site")
    form = await read_form(request)
    if not inbox.sessions.check_csrf(session, form.get("csrf")):
        raise HTTPProblem(
            "csrf", "the form's CSRF token does not match your session; reload the page"
        )
    return session, form


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status)


def _back(request: Request, where: str) -> RedirectResponse:
    return RedirectResponse(where, status_code=303)


# -- pages -----------------------------------------------------------------------------------


async def inbox(request: Request) -> Response:
    session = await session_of(request)
    state = _inbox(request)
    query = request.query_params
    tool, agent = query.get("tool") or None, query.get("agent") or None
    calls, following = await state.waiting(
        session.identity,
        tool=tool,
        agent=agent,
        limit=query_int(query, "limit", 25, 1, 100),
        after=query.get("after") or None,
    )
    page = page_of(request, session)
    events = page.url("/api/approvals/events", tool=tool, agent=agent)
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _html(
        inbox_page(
            page,
            calls,
            tool=tool,
            agent=agent,
            following=following,
            events=events,
            back=local_path(back, page.url("/")),
        )
    )


async def runs(request: Request) -> Response:
    session = await session_of(request)
    state = _inbox(request)
    status = request.query_params.get("status") or None
    summaries = await state.store.list(
        status=status, limit=query_int(request.query_params, "limit", 100, 1, 1000)
    )
    return _html(
        runs_page(
            page_of(request, session), summaries, can_start=state.agent is not None, status=status
        )
    )


async def run(request: Request) -> Response:
    session = await session_of(request)
    inbox = _inbox(request)
    state, posted, cancelling = await inbox.run(request.path_params["run_id"])
    page = page_of(request, session)
    calls = inbox.run_calls(session.identity, state, posted)
    events = (
        None
        if state.status.is_terminal
        else page.url(f"/api/runs/{quote(state.run_id, safe='')}/events", after=str(state.version))
    )
    return _html(run_page(page, state, calls, posted, cancelling, events=events))


# -- forms -----------------------------------------------------------------------------------


async def start(request: Request) -> Response:
    session, form = await _form_session(request)
    text = form.get("input", "")
    if not text.strip():
        raise HTTPProblem("invalid-request", "say what the run is about")
    state = await _inbox(request).start(text, started_by=session.identity)
    return _back(request, f"{base(request)}/runs/{quote(state.run_id, safe='')}")


async def decide(request: Request) -> Response:
    session, form = await _form_session(request)
    inbox = _inbox(request)
    run_id = request.path_params["run_id"]
    page = page_of(request, session)
    back = local_path(form.get("next"), page.url("/"))
    call_id, digest, action = form.get("call_id", ""), form.get("digest", ""), form.get("action")
    if action not in ("approve", "reject", "edit"):
        raise HTTPProblem("invalid-request", "the form must say approve, edit or reject")
    arguments = None
    if action == "edit":
        request_shown = await inbox.waiting_call(run_id, call_id)
        if request_shown is None or request_shown.digest != digest:
            raise UnknownCallError(
                f"call {call_id!r} of run {run_id} no longer waits with the arguments you edited"
            )
        arguments, errors = read_arguments(request_shown.schema, request_shown.arguments, form)
        if arguments is not None and request_shown.schema is not None:
            errors = _by_argument(schema_errors(arguments, request_shown.schema))
            arguments = None if errors else arguments
        if arguments is None:
            return _edit_again(request, page, run_id, request_shown, form, errors, None, back)
        try:
            await inbox.decide(
                run_id,
                session.identity,
                call_id=call_id,
                digest=digest,
                approved=True,
                arguments=arguments,
            )
        except DecisionRefused as exc:
            if isinstance(exc, UnknownCallError) or "edited arguments" not in str(exc):
                raise
            return _edit_again(request, page, run_id, request_shown, form, {}, str(exc), back)
        return _back(request, back)
    message = form.get("message", "").strip() or None
    await inbox.decide(
        run_id,
        session.identity,
        call_id=call_id,
        digest=digest,
        approved=action == "approve",
        message=message,
    )
    return _back(request, back)


def _by_argument(errors: list[str]) -> dict[str, str]:
    """Schema errors (``$.name...: problem``) by the argument they are about."""
    found: dict[str, str] = {}
    for error in errors:
        where, _, problem = error.partition(": ")
        name = where[2:].split(".", 1)[0].split("[", 1)[0] if where.startswith("$.") else WHOLE
        found[name] = (
            f"{found[name]}; {problem}" if name in found else (problem if name != WHOLE else error)
        )
    return found


def _edit_again(
    request: Request,
    page: Page,
    run_id: str,
    shown: Any,
    form: dict[str, str],
    errors: dict[str, str],
    problem: str | None,
    back: str,
) -> Response:
    inbox = _inbox(request)
    view = CallView(
        run_id=run_id,
        request=shown,
        since=None,
        posted=(),
        description=inbox.description(shown),
        said=None,
        may_decide=True,
    )
    fields = fields_for(shown.schema, shown.arguments, entered=form, errors=errors)
    if errors and problem is None:
        problem = "Some arguments do not fit the tool; see below."
    return _html(edit_page(page, view, fields, problem, back), 422)


def _steer(verb: str) -> Any:
    async def handler(request: Request) -> Response:
        _, form = await _form_session(request)
        store = _inbox(request).store
        run_id = request.path_params["run_id"]
        if verb == "cancel":
            await store.cancel(run_id, form.get("reason", "").strip() or "cancelled")
        elif verb == "pause":
            await store.pause(run_id, form.get("reason", "").strip() or "paused")
        elif verb == "unpause":
            await store.unpause(run_id)
        else:
            text = form.get("text", "")
            if not text.strip():
                raise HTTPProblem("invalid-request", "the message is empty")
            await store.add_input(run_id, text)
        return _back(request, f"{base(request)}/runs/{quote(run_id, safe='')}")

    handler.__name__ = verb
    return handler


# -- logging in ------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    page = Page(base=base(request))
    next_path = local_path(request.query_params.get("next"), page.url("/"))
    return _html(
        login_page(page, next_path=next_path, problem=None, tokens=_inbox(request).accepts_tokens)
    )


async def log_in(request: Request) -> Response:
    inbox = _inbox(request)
    page = Page(base=base(request))
    if not _same_origin(request):
        raise HTTPProblem("csrf", "the login form was posted from another site")
    form = await read_form(request)
    next_path = local_path(form.get("next"), page.url("/"))
    identity = None
    if inbox.accepts_tokens:
        identity = inbox.authenticate.identity(form.get("token", "").strip())  # type: ignore[attr-defined]
    if identity is None:
        return _html(
            login_page(
                page,
                next_path=next_path,
                problem="That token is not known here.",
                tokens=inbox.accepts_tokens,
            ),
            401,
        )
    _, cookie = inbox.sessions.new(identity)
    response = _back(request, next_path)
    set_session_cookie(request, response, cookie)
    return response


async def log_out(request: Request) -> Response:
    await _form_session(request)
    response = _back(request, f"{base(request)}/login")
    response.delete_cookie(
        Sessions.COOKIE, path=base(request) or "/", httponly=True, samesite="strict"
    )
    return response


def set_session_cookie(request: Request, response: Response, cookie: str) -> None:
    inbox = _inbox(request)
    response.set_cookie(
        Sessions.COOKIE,
        cookie,
        max_age=int(inbox.sessions.seconds),
        path=base(request) or "/",
        httponly=True,
        samesite="strict",
        secure=inbox.cookie_secure(request),
    )


def page_routes() -> list[Route]:
    return [
        Route("/", inbox, methods=["GET"]),
        Route("/login", login, methods=["GET"]),
        Route("/login", log_in, methods=["POST"]),
        Route("/logout", log_out, methods=["POST"]),
        Route("/runs", runs, methods=["GET"]),
        Route("/runs", start, methods=["POST"]),
        Route("/runs/{run_id}", run, methods=["GET"]),
        Route("/runs/{run_id}/decide", decide, methods=["POST"]),
        *(
            Route(f"/runs/{{run_id}}/{verb}", _steer(verb), methods=["POST"])
            for verb in ("cancel", "pause", "unpause", "input")
        ),
    ]
