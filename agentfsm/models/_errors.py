"""The errors of the model clients.

Every failure of a model server, or of the network to it, becomes one of these; httpx's and
msgspec's exceptions never reach the caller (they stay chained as ``__cause__``). The tree,
under agentfsm's own::

    ModelError
    ├── ModelConnectionError    the server could not be reached, or the connection broke
    │   └── ModelTimeoutError   connecting or reading took longer than the timeout
    ├── ModelStatusError        the server answered with an error
    │   ├── AuthenticationError 401 or 403: a missing, wrong or unauthorized key
    │   ├── RateLimitError      429, or a rate limit reported in a stream
    │   ├── BadRequestError     any other 4xx: the server refused the request as sent
    │   └── ServerError         5xx, or a failure reported in a stream
    └── ModelBehaviorError
        └── ModelOutputError    a body or a stream event that is not what the API defines

The client retries connection errors, timeouts, 429 and 5xx before raising (see
``OpenAIProvider``); ``attempts`` says how many requests were made.
"""

from __future__ import annotations

from .._errors import ModelBehaviorError, ModelError

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ModelConnectionError",
    "ModelOutputError",
    "ModelStatusError",
    "ModelTimeoutError",
    "RateLimitError",
    "ServerError",
]


class ModelConnectionError(ModelError):
    """The server could not be reached, or the connection broke before the answer was whole."""

    attempts: int = 1


class ModelTimeoutError(ModelConnectionError):
    """Connecting, or waiting for the next bytes of the answer, took longer than allowed."""


class ModelStatusError(ModelError):
    """The server answered with an error.

    ``status_code`` is the HTTP status (None for an error reported inside a stream);
    ``message``, ``code`` and ``type`` come from the server's error body, whatever its shape
    (JSON, server-sent events, an HTML page, text), the message as one line of at most 1,000
    characters; ``param`` the request parameter it names, if any; ``request_id`` is its
    ``x-request-id`` header, for the provider's support.
    """

    attempts: int = 1

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        type: str | None = None,
        request_id: str | None = None,
        param: str | None = None,
    ) -> None:
        self.message = message
        self.param = param
        self.status_code = status_code
        self.code = code
        self.type = type
        self.request_id = request_id
        where = f"the server answered {status_code}" if status_code else "the server reported"
        text = f"{where}: {message}"
        if request_id:
            text += f" (request id {request_id})"
        super().__init__(text)


class AuthenticationError(ModelStatusError):
    """401 or 403: the API key is missing, wrong, or not allowed to use this model."""


class RateLimitError(ModelStatusError):
    """429: too many requests or tokens, or the quota is used up.

    ``retry_after`` is the number of seconds the server asked to wait, when it said; the run's
    state is intact, so it can be resumed after that.
    """

    retry_after: float | None = None


class BadRequestError(ModelStatusError):
    """A 4xx other than 401, 403 and 429: the server refused the request (an unknown model, a
    schema it does not accept, a context too long). ``message`` is the server's explanation."""


class ServerError(ModelStatusError):
    """A 5xx that persisted through the retries, or a failure the server reported mid-stream."""


class ModelOutputError(ModelBehaviorError):
    """The server's answer is not what the API defines: a body that is not JSON, a response
    without choices, a stream that breaks the protocol."""
