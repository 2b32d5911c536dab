"""``create_app``: the inbox as one ASGI application, and what guards every response.

Every route runs inside ``_guarded``, which turns whatever it raises into an answer: a
problem document under ``/api`` and an HTML page elsewhere, with the status the error
calls for (``_problems``), and never a traceback. Every response gets the security headers
(``SecurityHeaders``): a Content-Security-Policy that allows no inline script and nothing
from elsewhere, no framing, no sniffing, no caching of what it shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from urllib.parse import quote

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._agents import Agent
from .._errors import AgentFSMError
from ..stores._base import Store
from ._api import api_routes
from ._auth import Allow, Authenticate, Permissions, Sessions, as_authenticate, as_permissions
from ._inbox import Inbox, check_config, local_path
from ._pages import LoginRequired, page_of, page_routes, set_session_cookie
from ._problems import HTTPProblem, Problem, make, problem_for
from ._views import error_page
from ._watch import Sleep

__all__ = ["CSP", "create_app"]

log = logging.getLogger("agentfsm.web")

#: The Content-Security-Policy of every response: scripts, styles and connections only from
#: this origin, no inline script or style, no plugins, no framing, forms only to here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the security headers to every response (and ``no-store`` unless a route set
    its own caching)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in _SECURITY_HEADERS if k not in names]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


Handler = Callable[[Request], Awaitable[Response]]


def _is_api(request: Request) -> bool:
    return request.url.path.removeprefix(str(request.scope.get("root_path", ""))).startswith("/api")


def _problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        msgspec.json.encode(problem),
        status_code=problem.status,
        media_type="application/problem+json",
        headers=dict(headers or {}),
    )


def _answer(
    request: Request, problem: Problem, headers: Mapping[str, str] | None = None
) -> Response:
    if _is_api(request):
        return _problem_response(problem, headers)
    page = page_of(request, None)
    referer = request.headers.get("referer", "")
    host = f"{request.url.scheme}://{request.url.netloc}"
    back = local_path(
        referer.removeprefix(host) if referer.startswith(host) else None, page.url("/")
    )
    return HTMLResponse(
        error_page(page, problem.status, problem.title, problem.detail, back),
        status_code=problem.status,
        headers=dict(headers or {}),
    )


def _guarded(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        try:
            response = await handler(request)
        except LoginRequired:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            base = str(request.scope.get("root_path", "")).rstrip("/")
            return RedirectResponse(f"{base}/login?next={_quoted(target)}", status_code=303)
        except HTTPProblem as exc:
            return _answer(request, exc.problem, exc.headers)
        except AgentFSMError as exc:
            return _answer(request, problem_for(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return _answer(request, problem_for(RuntimeError()))
        cookie = getattr(request.state, "new_cookie", None)
        if cookie is not None:
            set_session_cookie(request, response, cookie)
        return response

    guarded.__name__ = getattr(handler, "__name__", "handler")
    return guarded


def _quoted(path: str) -> str:
    return quote(path, safe="/")


def _static(name: str, media_type: str) -> Handler:
    body = resources.files("agentfsm.web").joinpath("static", name).read_bytes()

    async def serve(request: Request) -> Response:
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return serve


async def _no_icon(request: Request) -> Response:
    return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    kind = {404: "not-found", 405: "method-not-allowed"}.get(status, "malformed-request")
    detail = {
        404: f"nothing at {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(status, str(getattr(exc, "detail", "")))
    return _answer(request, make(kind, detail))


def create_app(
    store: Store,
    *,
    auth: Authenticate | Mapping[str, str],
    permissions: Permissions | Mapping[str, Iterable[str]] | Allow | None = None,
    agent: Agent | None = None,
    secret: bytes | str | None = None,
    session_seconds: float = 8 * 3600,
    secure_cookies: bool | None = None,
    poll_interval: float = 0.3,
    sleep: Sleep = asyncio.sleep,
) -> Starlette:
    """The approval inbox as an ASGI app (Starlette): mount it in a FastAPI or Starlette
    application, or serve it with ``agentfsm serve``.

    Args:
        store: where the runs are (the workers' store).
        auth: who is asking: a ``TokenAuth`` (``load_tokens``), a mapping of bearer token
            to identity, or a function of the request returning an identity or None (sync
            or async). Required: the inbox has no anonymous mode.
        permissions: who may decide on which tool's calls: ``Permissions``, a mapping of
            tool to identities, or a function ``(identity, request) -> bool`` (default:
            any authenticated identity decides on anything).
        agent: the starting agent the workers run. With it, the inbox shows the tools'
            descriptions and can start runs; without it, starting runs answers 501.
        secret: signs session cookies and CSRF tokens (default: a random one, so sessions
            end with the process; give every process behind one address the same).
        session_seconds: how long a browser stays logged in.
        secure_cookies: mark the session cookie Secure (default: when the request came
            over HTTPS, as the server or a trusted proxy says).
        poll_interval: the longest wait, in seconds, between two looks at the store for
            live updates: the store's change feed (``Store.changes``) brings them at once.

    Raises ConfigurationError for settings that cannot work.
    """
    check_config(poll_interval)
    inbox = Inbox(
        store=store,
        authenticate=as_authenticate(auth),
        sessions=Sessions(secret, seconds=session_seconds),
        permissions=as_permissions(permissions),
        agent=agent,
        interval=poll_interval,
        sleep=sleep,
        secure_cookies=secure_cookies,
    )
    routes: list[BaseRoute] = [
        Route(route.path, _guarded(route.endpoint), methods=sorted(route.methods or ()))
        for route in (*api_routes(), *page_routes())
    ]
    routes += [
        Route("/static/inbox.js", _static("inbox.js", "text/javascript"), methods=["GET"]),
        Route("/static/inbox.css", _static("inbox.css", "text/css"), methods=["GET"]),
    ]
    routes.append(Route("/favicon.ico", _no_icon, methods=["GET"]))
    app = Starlette(routes=routes, exception_handlers={HTTPException: _not_found})
    app.state.inbox = inbox
    app.add_middleware(SecurityHeaders)
    return app
