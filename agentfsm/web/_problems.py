"""Errors as RFC 9457 problem documents.

Every error the inbox's API answers is a ``Problem`` (``application/problem+json``): a
``type`` that names the kind of problem (stable, for code to branch on), a ``title`` for it,
the HTTP ``status``, and a ``detail`` that says what went wrong this time. agentfsm's own
errors are translated here, in one table, so that a refused decision is always a 409 and an
unknown run always a 404, whichever route raised them; anything else is a 500 whose detail
names no internals (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import msgspec

from .._errors import (
    AgentFSMError,
    ConflictError,
    DecisionRefused,
    StoreError,
    UnknownCallError,
    UnknownRunError,
)

__all__ = ["PROBLEM_TYPES", "HTTPProblem", "Problem", "problem_for"]

_PREFIX = "urn:agentfsm:problem:"

#: Every problem type the API answers with: its status and title.
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "malformed-request": (400, "The request cannot be read"),
    "unauthenticated": (401, "Authentication required"),
    "forbidden": (403, "Not allowed"),
    "csrf": (403, "The form's CSRF token is missing or wrong"),
    "not-found": (404, "Not found"),
    "unknown-run": (404, "No such run"),
    "method-not-allowed": (405, "Method not allowed"),
    "decision-refused": (409, "The decision was refused"),
    "call-not-waiting": (409, "The call does not wait for a decision"),
    "conflict": (409, "The run cannot take this now"),
    "too-large": (413, "The request body is too large"),
    "unsupported-media-type": (415, "Send application/json"),
    "invalid-request": (422, "The request is not valid"),
    "no-agent": (501, "This inbox cannot start runs"),
    "store-unavailable": (503, "The store cannot be reached"),
    "internal": (500, "Internal error"),
}


class Problem(msgspec.Struct, frozen=True):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str


class HTTPProblem(Exception):
    """Raised by a route to answer with a problem of ``kind`` (a key of PROBLEM_TYPES)."""

    def __init__(self, kind: str, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.problem = make(kind, detail)
        self.headers = headers or {}


def make(kind: str, detail: str) -> Problem:
    status, title = PROBLEM_TYPES[kind]
    return Problem(type=_PREFIX + kind, title=title, status=status, detail=detail)


def problem_for(exc: BaseException) -> Problem:
    """The problem document that answers ``exc``."""
    if isinstance(exc, HTTPProblem):
        return exc.problem
    kind = _kind(exc)
    if kind == "internal":
        return make(kind, "the inbox failed to answer this request; its log says why")
    return make(kind, str(exc) or type(exc).__name__)


def _kind(exc: BaseException) -> str:
    match exc:
        case UnknownCallError():
            return "call-not-waiting"
        case DecisionRefused():
            return "decision-refused"
        case UnknownRunError():
            return "unknown-run"
        case ConflictError():
            return "conflict"
        case StoreError():
            return "store-unavailable"
        case AgentFSMError():  # bad input: a limit, a cursor, a context, arguments
            return "invalid-request"
        case _:
            return "internal"
