"""The JSON documents of the inbox's API, and its OpenAPI description.

Requests are msgspec Structs that forbid unknown fields: a body that names who decides
(``by``) is refused, because the decider is always the authenticated identity. Responses
reuse the documents the CLI prints (``RunDocument``, ``RunListDocument``) and the store's
values (``ApprovalRequest``, ``Decision``), so the API and ``agentfsm ... --json`` agree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .._cli_json import RunDocument, RunListDocument
from .._events import Decision
from .._outcomes import ApprovalRequest
from .._run_events import RunEvent
from .._version import __version__
from ._problems import PROBLEM_TYPES, Problem

__all__ = [
    "Accepted",
    "ApprovalsDocument",
    "CallDocument",
    "DecisionBody",
    "DecisionPosted",
    "IdentityDocument",
    "InputBody",
    "ReasonBody",
    "StartBody",
    "StartedDocument",
    "openapi",
]

_Text = Annotated[str, msgspec.Meta(max_length=100_000)]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class _Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class DecisionBody(_Body, frozen=True):
    """A decision on one waiting call, bound to the ``digest`` of the arguments the person
    was shown (the request's, in full). ``approve`` with ``arguments`` runs the call with
    those instead (a JSON object that fits the tool's schema); ``reject`` tells the model
    ``message``. ``always`` also decides later calls of the same tool. Who decides is the
    authenticated identity: the body cannot say."""

    call_id: _Id
    digest: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    action: Literal["approve", "reject"]
    arguments: dict[str, Any] | None = None
    message: _Text | None = None
    always: bool = False


class StartBody(_Body, frozen=True):
    """A new run of the inbox's agent on ``input``; the workers run it. With ``session``, the
    session's next run (docs/sessions.md): refused (409) while the session's last run is
    live or waiting."""

    input: _Text
    context: Any = None
    max_turns: Annotated[int, msgspec.Meta(ge=0, le=10_000)] | None = None
    run_id: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[\w.:-]+$")] | None
    ) = None
    session: _Id | None = None


class ReasonBody(_Body, frozen=True):
    """Why (kept as the run's error for a cancellation)."""

    reason: _Text | None = None


class InputBody(_Body, frozen=True):
    """A user message for the run's next turn."""

    text: _Text


class CallDocument(msgspec.Struct, frozen=True):
    """A call waiting for a decision: the run, the request (tool, agent, arguments, digest,
    schema, deadline), since when it waits, the decisions posted and not applied yet, the
    tool's description (when the inbox knows the agent), what the agent said last before
    it asked, and whether the caller may decide (``may_decide``) and approve (``may_approve``:
    false when they started the run and may not approve its calls). For a call that needs
    several approvals (``request.quorum``), ``approvals`` counts them, such as
    ``"1 of 2 approvals (alice)"``, the posted ones included."""

    run_id: str
    request: ApprovalRequest
    since: float
    posted: tuple[Decision, ...]
    description: str | None
    said: str | None
    may_decide: bool
    may_approve: bool = True
    approvals: str | None = None


class ApprovalsDocument(msgspec.Struct, frozen=True):
    """One page of waiting calls, oldest first; ``next`` is the cursor of the next page."""

    calls: tuple[CallDocument, ...]
    next: str | None


class DecisionPosted(msgspec.Struct, frozen=True):
    """The decision as posted (``posted`` false: nothing changed, as it repeated one posted
    before, or approved again a call whose count already holds the caller's approval).
    ``detail`` says where the call stands, such as ``"1 of 2 approvals (alice)"``."""

    posted: bool
    decision: Decision
    detail: str | None = None


class StartedDocument(msgspec.Struct, frozen=True):
    """A run stored for the workers to start."""

    run_id: str
    status: str
    version: int


class Accepted(msgspec.Struct, frozen=True):
    """A request posted to the run's inbox; the worker driving the run applies it."""

    run_id: str
    detail: str


class IdentityDocument(msgspec.Struct, frozen=True):
    """Who the caller is authenticated as."""

    identity: str


_TYPES = (
    ApprovalsDocument,
    RunListDocument,
    RunDocument,
    DecisionBody,
    DecisionPosted,
    StartBody,
    StartedDocument,
    ReasonBody,
    InputBody,
    Accepted,
    IdentityDocument,
    Problem,
    RunEvent,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "; ".join(title for s, title in PROBLEM_TYPES.values() if s == status),
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for status in sorted({*statuses, 401, 422, 503})
    }


def _operation(
    summary: str,
    ok: int,
    response: str | None,
    *errors: int,
    body: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    responses: dict[str, Any] = _problems(*errors)
    if stream:
        responses[str(ok)] = {
            "description": "Server-Sent Events: each event's data is a RunEvent (or a reset), "
            "its id the event's position",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    else:
        responses[str(ok)] = {"description": summary, "content": _json(response or "Accepted")}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    return operation


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_RUN = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "description": "the run",
    "schema": {"type": "string"},
}
_TEXT = {"type": "string"}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the JSON API."""
    (_, components) = msgspec.json.schema_components(
        _TYPES, ref_template="#/components/schemas/{name}"
    )
    after = _query("after", "the position of the last event seen (as Last-Event-ID)", _TEXT)
    paths: dict[str, Any] = {
        "/api/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": {
                    **_problems(),
                    "200": {
                        "description": "the OpenAPI document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                },
            }
        },
        "/api/me": {"get": _operation("who the caller is", 200, "IdentityDocument")},
        "/api/approvals": {
            "get": _operation(
                "the calls waiting for a decision, across runs, oldest first",
                200,
                "ApprovalsDocument",
                parameters=[
                    _query("tool", "only calls of this tool", _TEXT),
                    _query("agent", "only calls of this agent", _TEXT),
                    _query(
                        "limit",
                        "at most this many",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                    ),
                    _query("after", "the cursor of the page (the previous page's next)", _TEXT),
                ],
            )
        },
        "/api/approvals/events": {
            "get": _operation(
                "approvals requested and decided across runs, as they happen",
                200,
                None,
                stream=True,
                parameters=[
                    _query("tool", "only calls of this tool", _TEXT),
                    _query("agent", "only calls of this agent", _TEXT),
                ],
            )
        },
        "/api/runs": {
            "get": _operation(
                "runs, most recently updated first",
                200,
                "RunListDocument",
                parameters=[
                    _query("status", "only runs in this status", _TEXT),
                    _query(
                        "limit",
                        "at most this many",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                    ),
                ],
            ),
            "post": _operation(
                "store a new run of the inbox's agent, for the workers",
                201,
                "StartedDocument",
                409,
                501,
                body="StartBody",
            ),
        },
        "/api/runs/{run_id}": {
            "get": _operation(
                "a run: status, waiting calls, transcript, audit trail",
                200,
                "RunDocument",
                404,
                parameters=[_RUN],
            ),
        },
        "/api/runs/{run_id}/events": {
            "get": _operation(
                "the run's events, as they happen",
                200,
                None,
                404,
                stream=True,
                parameters=[_RUN, after],
            ),
        },
        "/api/runs/{run_id}/decisions": {
            "post": _operation(
                "decide on a waiting call, as the authenticated identity",
                201,
                "DecisionPosted",
                403,
                404,
                409,
                body="DecisionBody",
                parameters=[_RUN],
            )
        },
        "/api/runs/{run_id}/cancel": {
            "post": _operation(
                "ask the run to cancel",
                202,
                "Accepted",
                404,
                409,
                body="ReasonBody",
                parameters=[_RUN],
            )
        },
        "/api/runs/{run_id}/pause": {
            "post": _operation(
                "ask the run to pause at its next turn",
                202,
                "Accepted",
                404,
                409,
                body="ReasonBody",
                parameters=[_RUN],
            )
        },
        "/api/runs/{run_id}/unpause": {
            "post": _operation(
                "let workers go on with a paused run",
                202,
                "Accepted",
                404,
                409,
                body="ReasonBody",
                parameters=[_RUN],
            )
        },
        "/api/runs/{run_id}/input": {
            "post": _operation(
                "add a user message for the run's next turn",
                202,
                "Accepted",
                404,
                409,
                body="InputBody",
                parameters=[_RUN],
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentfsm approval inbox",
            "version": __version__,
            "description": "Decide on the tool calls that wait for a person, and steer runs. "
            "Authenticate with `Authorization: Bearer TOKEN`. Every error is a problem "
            "document (RFC 9457).",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
