"""The JSON API: ``/api/...``. Its OpenAPI document is ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .._cli_json import RunListDocument, run_document
from ._documents import (
    Accepted,
    ApprovalsDocument,
    CallDocument,
    DecisionBody,
    DecisionPosted,
    IdentityDocument,
    InputBody,
    ReasonBody,
    StartBody,
    StartedDocument,
    openapi,
)
from ._inbox import Inbox, cursor, query_int, read_json, sse
from ._problems import HTTPProblem
from ._watch import Reset, watch_approvals, watch_run

__all__ = ["api_routes"]

_encoder = msgspec.json.Encoder()


def json_response(
    document: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        _encoder.encode(document),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _inbox(request: Request) -> Inbox:
    inbox: Inbox = request.app.state.inbox
    return inbox


async def _writer(request: Request) -> str:
    """The identity behind an unsafe request; with a browser session, only together with
    the session's CSRF token in ``X-CSRF-Token``."""
    inbox = _inbox(request)
    identity, session = await inbox.caller(request)
    if session is not None and not inbox.sessions.check_csrf(
        session, request.headers.get("x-csrf-token")
    ):
        raise HTTPProblem("csrf", "a request with the session cookie needs its X-CSRF-Token")
    return identity


async def me(request: Request) -> Response:
    identity, _ = await _inbox(request).caller(request)
    return json_response(IdentityDocument(identity=identity))


async def document(request: Request) -> Response:
    await _inbox(request).caller(request)
    return json_response(openapi())


async def approvals(request: Request) -> Response:
    inbox = _inbox(request)
    identity, _ = await inbox.caller(request)
    query = request.query_params
    calls, following = await inbox.waiting(
        identity,
        tool=query.get("tool"),
        agent=query.get("agent"),
        limit=query_int(query, "limit", 50, 1, 1000),
        after=query.get("after"),
    )
    return json_response(
        ApprovalsDocument(
            calls=tuple(
                CallDocument(
                    run_id=c.run_id,
                    request=c.request,
                    since=c.since or 0.0,
                    posted=c.posted,
                    description=c.description,
                    said=c.said,
                    may_decide=c.may_decide,
                    may_approve=c.may_approve,
                    approvals=c.standing,
                )
                for c in calls
            ),
            next=following,
        )
    )


async def runs(request: Request) -> Response:
    inbox = _inbox(request)
    await inbox.caller(request)
    query = request.query_params
    summaries = await inbox.store.list(
        status=query.get("status") or None, limit=query_int(query, "limit", 50, 1, 1000)
    )
    return json_response(RunListDocument(runs=tuple(summaries)))


async def start(request: Request) -> Response:
    inbox = _inbox(request)
    identity = await _writer(request)
    body: StartBody = await read_json(request, StartBody)
    state = await inbox.start(
        body.input,
        started_by=identity,
        context=body.context,
        max_turns=body.max_turns,
        run_id=body.run_id,
        session=body.session,
    )
    root = request.scope.get("root_path", "")
    return json_response(
        StartedDocument(run_id=state.run_id, status=state.status.value, version=state.version),
        201,
        headers={"Location": f"{root}/api/runs/{quote(state.run_id, safe='')}"},
    )


async def run(request: Request) -> Response:
    inbox = _inbox(request)
    await inbox.caller(request)
    state = await inbox.store.load(request.path_params["run_id"])
    messages = await inbox.store.inbox(state.run_id)
    return json_response(run_document(state, [m for m in messages.messages if m is not None]))


async def decide(request: Request) -> Response:
    inbox = _inbox(request)
    identity = await _writer(request)
    body: DecisionBody = await read_json(request, DecisionBody)
    approved = body.action == "approve"
    if approved and body.message is not None:
        raise HTTPProblem("invalid-request", "a message goes with a rejection, not an approval")
    if not approved and body.arguments is not None:
        raise HTTPProblem("invalid-request", "only an approval can carry edited arguments")
    posted, decision, detail = await inbox.decide(
        request.path_params["run_id"],
        identity,
        call_id=body.call_id,
        digest=body.digest,
        approved=approved,
        arguments=body.arguments,
        message=body.message,
        always=body.always,
    )
    return json_response(
        DecisionPosted(posted=posted, decision=decision, detail=detail),
        201 if posted else 200,
    )


def _steer(verb: str) -> Any:
    async def handler(request: Request) -> Response:
        inbox = _inbox(request)
        await _writer(request)
        run_id = request.path_params["run_id"]
        store = inbox.store
        if verb == "input":
            text: InputBody = await read_json(request, InputBody)
            await store.add_input(run_id, text.text)
            detail = "the model sees the message at the run's next turn"
        else:
            body: ReasonBody = await read_json(request, ReasonBody, optional=True)
            if verb == "cancel":
                await store.cancel(run_id, body.reason or "cancelled")
                detail = "the run stops, cancelled, at its next step"
            elif verb == "pause":
                await store.pause(run_id, body.reason or "paused")
                detail = "the run pauses at its next turn"
            else:
                await store.unpause(run_id)
                detail = "a worker goes on with the run"
        return json_response(Accepted(run_id=run_id, detail=detail), 202)

    handler.__name__ = verb
    return handler


def _run_event_id(event: Any) -> str | None:
    return None if isinstance(event, Reset) else str(event.position)


def _feed_event_id(event: Any) -> str | None:
    return None if isinstance(event, Reset) else f"{event.run_id}/{event.position}"


_STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


async def run_events(request: Request) -> Response:
    inbox = _inbox(request)
    await inbox.caller(request)
    after = cursor(request)
    head = await inbox.store.load(request.path_params["run_id"])
    events = watch_run(
        inbox.store,
        head,
        after=after,
        memory=inbox.memory,
        interval=inbox.interval,
        sleep=inbox.sleep,
    )
    return StreamingResponse(
        sse(events, _run_event_id), media_type="text/event-stream", headers=_STREAM_HEADERS
    )


async def approval_events(request: Request) -> Response:
    inbox = _inbox(request)
    await inbox.caller(request)
    resumed = bool(request.headers.get("last-event-id"))
    query = request.query_params

    async def events() -> Any:
        if resumed:
            # The feed keeps no history across runs: a client that comes back is told to
            # reload what it shows, then hears what happens from now on.
            yield Reset("the approvals feed does not replay; reload the waiting calls")
        async for event in watch_approvals(
            inbox.store,
            memory=inbox.memory,
            interval=inbox.interval,
            tool=query.get("tool") or None,
            agent=query.get("agent") or None,
        ):
            yield event

    return StreamingResponse(
        sse(events(), _feed_event_id), media_type="text/event-stream", headers=_STREAM_HEADERS
    )


def api_routes() -> list[Route]:
    return [
        Route("/api/openapi.json", document, methods=["GET"]),
        Route("/api/me", me, methods=["GET"]),
        Route("/api/approvals", approvals, methods=["GET"]),
        Route("/api/approvals/events", approval_events, methods=["GET"]),
        Route("/api/runs", runs, methods=["GET"]),
        Route("/api/runs", start, methods=["POST"]),
        Route("/api/runs/{run_id}", run, methods=["GET"]),
        Route("/api/runs/{run_id}/events", run_events, methods=["GET"]),
        Route("/api/runs/{run_id}/decisions", decide, methods=["POST"]),
        *(
            Route(f"/api/runs/{{run_id}}/{verb}", _steer(verb), methods=["POST"])
            for verb in ("cancel", "pause", "unpause", "input")
        ),
    ]
