"""The approval inbox: a web page and a JSON API where people decide on the tool calls that
wait for them, and watch and steer runs (``pip install "agentfsm[web]"``).

``create_app(store, auth=...)`` is an ASGI application (Starlette) to mount in your own
FastAPI or Starlette service; ``agentfsm serve`` runs it on its own. docs/inbox.md tells
how to run, embed and secure it.
"""

from ._app import CSP, create_app
from ._auth import Authenticate, Permissions, Sessions, TokenAuth, load_tokens
from ._documents import openapi
from ._problems import PROBLEM_TYPES, Problem
from ._watch import Memory, Reset, watch_approvals, watch_run

__all__ = [
    "CSP",
    "PROBLEM_TYPES",
    "Authenticate",
    "Memory",
    "Permissions",
    "Problem",
    "Reset",
    "Sessions",
    "TokenAuth",
    "create_app",
    "load_tokens",
    "openapi",
    "watch_approvals",
    "watch_run",
]
