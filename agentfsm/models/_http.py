"""The HTTP edge: one httpx.AsyncClient per event loop, retries, timeouts, and the
translation of httpx's exceptions and error statuses into agentfsm's errors.

An httpx.AsyncClient belongs to the event loop it first ran on: its pooled connections are
that loop's sockets. ``Runner.run_sync`` starts a new loop per call, so a provider keeps one
client per running loop and closes it when the loop shuts down (``asyncio.run`` cancels the
remaining tasks before closing the loop; a small task per client waits for that and closes
the client then). A client passed in by the caller is used as it is and never closed here.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import random
import ssl
import threading
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

import httpx
import msgspec

from .._errors import AgentFSMError, ConfigurationError
from ._errors import (
    AuthenticationError,
    BadRequestError,
    ModelConnectionError,
    ModelOutputError,
    ModelStatusError,
    ModelTimeoutError,
    RateLimitError,
    ServerError,
)
from ._wire import ErrorInfo, SSEDecoder, error_info

__all__ = ["Connection", "RetryPolicy", "stream_error"]

log = logging.getLogger("agentfsm.models")

# Transport failures worth another try: the request may not have reached the server, or the
# server dropped it. (UnsupportedProtocol, LocalProtocolError and ProxyError are not.)
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

# How much of an error body is read: enough for any message a server means to send, and a
# body that is larger (a misconfigured proxy's, a hostile server's) is not kept whole.
ERROR_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try a request again: up to ``max_retries`` more times after connection
    errors, timeouts, 429 and 5xx, waiting ``backoff * 2**n`` seconds (at most
    ``max_backoff``, with jitter) or what the server's Retry-After says. A Retry-After
    longer than ``max_retry_after`` is not waited for: the error is raised at once."""

    max_retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if attempt > self.max_retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        base = min(self.backoff * float(2 ** (attempt - 1)), self.max_backoff)
        return base / 2 + random.random() * base / 2


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Built once per process: loading the CA bundle costs tens of milliseconds per client.
    return httpx.create_ssl_context()


class Connection:
    """Sends requests for one provider: its headers, timeouts and retry policy."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        retries: RetryPolicy,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.headers = dict(headers)
        self.timeout = timeout
        self.retries = retries
        self._shared = http_client
        self._lock = threading.Lock()
        # The entry of a loop goes when the loop shuts down (see _close_with_loop): a weak
        # mapping would not let go, since the keeper task refers to its loop.
        self._clients: dict[
            asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, asyncio.Task[None]]
        ] = {}

    def client(self) -> httpx.AsyncClient:
        """The client for the running event loop."""
        if self._shared is not None:
            return self._shared
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.get(loop)
            if entry is None or entry[0].is_closed:
                client = httpx.AsyncClient(timeout=self.timeout, verify=_ssl_context())
                keeper = loop.create_task(
                    self._close_with_loop(loop, client), name="agentfsm-http-client"
                )
                entry = self._clients[loop] = (client, keeper)
        return entry[0]

    async def _close_with_loop(
        self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient
    ) -> None:
        """Wait until the loop shuts down (``asyncio.run`` cancels what is left), then close
        the loop's client."""
        try:
            await loop.create_future()
        finally:
            with self._lock:
                if self._clients.get(loop, (None,))[0] is client:
                    del self._clients[loop]
            await client.aclose()

    async def aclose(self) -> None:
        """Close the running loop's client (a caller's own client stays open)."""
        with self._lock:
            entry = self._clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            client, keeper = entry
            keeper.cancel()
            await asyncio.wait([keeper])
            await client.aclose()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        """POST ``body`` and return the body of the successful answer."""
        response = await self._send(url, body, headers, stream=False)
        return response.content

    async def events(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> AsyncGenerator[bytes, None]:
        """POST ``body`` and yield the data of each server-sent event of the answer.

        Failures before the first byte of the answer are retried; a connection that breaks
        mid-stream raises ModelConnectionError (what was streamed cannot be taken back).
        Closing the iterator, or cancelling the task that reads it, closes the connection.
        """
        response = await self._send(url, body, {**headers, "accept": "text/event-stream"}, True)
        try:
            kind = response.headers.get("content-type", "")
            if "event-stream" not in kind:
                try:
                    data = await _head(response)
                except httpx.HTTPError as exc:
                    raise _connection_error(exc, url) from exc
                if _has_error(data):
                    raise stream_error(error_info(data))
                raise ModelOutputError(
                    f"asked {url} for a stream of events and got {kind or 'no content type'}"
                )
            decoder = SSEDecoder()
            chunks = response.aiter_bytes()
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except httpx.HTTPError as exc:
                    raise _connection_error(exc, url, streaming=True) from exc
                for data in decoder.feed(chunk):
                    yield data
            for data in decoder.flush():
                yield data
        finally:
            await response.aclose()

    async def _send(
        self, url: str, body: bytes, headers: Mapping[str, str], stream: bool
    ) -> httpx.Response:
        client = self.client()
        all_headers = {**self.headers, **headers}
        attempt = 1
        while True:
            try:
                request = client.build_request("POST", url, content=body, headers=all_headers)
            except httpx.InvalidURL as exc:
                raise ConfigurationError(f"invalid model server URL {url!r}: {exc}") from None
            except UnicodeEncodeError:
                raise ConfigurationError(
                    "a request header (the API key?) has characters that are not ASCII"
                ) from None
            error: AgentFSMError
            cause: BaseException
            retry_after: float | None = None
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                error, cause, retryable = _connection_error(exc, url), exc, _transient(exc)
            else:
                if response.is_success and stream:
                    return response
                try:
                    if response.is_success:
                        await response.aread()
                        return response
                    body = await _head(response)
                except httpx.HTTPError as exc:
                    await response.aclose()
                    error, cause, retryable = _connection_error(exc, url), exc, _transient(exc)
                except BaseException:
                    await response.aclose()
                    raise
                else:
                    error = _status_error(response, body)
                    cause, retryable = error, _retryable_status(response, error)
                    retry_after = _retry_after(response.headers)
                    if isinstance(error, RateLimitError):
                        error.retry_after = retry_after
            delay = self.retries.delay(attempt, retry_after) if retryable else None
            if delay is None:
                if isinstance(error, ModelConnectionError | ModelStatusError):
                    error.attempts = attempt
                raise error from (None if cause is error else cause)
            log.info(
                "model request to %s failed (%s); retry %d in %.2fs", url, error, attempt, delay
            )
            await asyncio.sleep(delay)
            attempt += 1


async def _head(response: httpx.Response) -> bytes:
    """The first ERROR_BODY_LIMIT bytes of the body; the response is closed after them."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_LIMIT:
                break
    finally:
        await response.aclose()
    return b"".join(chunks)[:ERROR_BODY_LIMIT]


def _has_error(data: bytes) -> bool:
    try:
        decoded = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False
    return isinstance(decoded, dict) and "error" in decoded


def _transient(exc: httpx.HTTPError) -> bool:
    return isinstance(exc, _TRANSIENT)


def _connection_error(exc: httpx.HTTPError, url: str, streaming: bool = False) -> AgentFSMError:
    where = "while streaming the answer" if streaming else "before the answer was complete"
    if isinstance(exc, httpx.ConnectTimeout):
        return ModelTimeoutError(f"connecting to {url} timed out")
    if isinstance(exc, httpx.TimeoutException):
        return ModelTimeoutError(f"the model server at {url} took too long to answer ({where})")
    if isinstance(exc, httpx.ConnectError):
        return ModelConnectionError(f"cannot connect to the model server at {url}: {exc}")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ConfigurationError(f"the model server URL {url!r} is not http or https: {exc}")
    reason = str(exc) or type(exc).__name__
    return ModelConnectionError(f"the connection to {url} broke {where}: {reason}")


def _status_error(response: httpx.Response, body: bytes) -> ModelStatusError:
    status = response.status_code
    info = error_info(body)
    message = info.message or response.reason_phrase or "no explanation given"
    if info.param:
        message += f" (parameter {info.param!r})"
    kind: type[ModelStatusError]
    if status in (401, 403):
        kind = AuthenticationError
    elif status == 429:
        kind = RateLimitError
    elif 400 <= status < 500:
        kind = BadRequestError
    elif status >= 500:
        kind = ServerError
    else:
        kind = ModelStatusError
    return kind(
        message,
        status_code=status,
        code=None if info.code is None else str(info.code),
        type=info.type,
        request_id=response.headers.get("x-request-id"),
        param=info.param if isinstance(info.param, str) else None,
    )


def _retryable_status(response: httpx.Response, error: ModelStatusError) -> bool:
    should = response.headers.get("x-should-retry")
    if should in ("true", "false"):
        return bool(should == "true")
    if error.code == "insufficient_quota":
        return False  # a 429 that waiting does not cure
    return response.status_code == 429 or response.status_code >= 500


def _retry_after(headers: httpx.Headers) -> float | None:
    """The wait the server asked for, in seconds (``retry-after-ms``, or ``Retry-After`` as
    seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


_RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded", "insufficient_quota", "rate_limit_error"})
_BAD_REQUEST = frozenset(
    {
        "invalid_request_error",
        "invalid_prompt",
        "context_length_exceeded",
        "invalid_value",
        "model_not_found",
    }
)


def stream_error(info: ErrorInfo) -> ModelStatusError:
    """An error the server reported in a body or stream event that had a 2xx status."""
    code = None if info.code is None else str(info.code)
    kind: type[ModelStatusError] = ServerError
    if code in _RATE_LIMIT_CODES or info.type in _RATE_LIMIT_CODES:
        kind = RateLimitError
    elif code in _BAD_REQUEST or info.type in _BAD_REQUEST:
        kind = BadRequestError
    return kind(
        info.message or "an error without a message",
        code=code,
        type=info.type,
        param=info.param if isinstance(info.param, str) else None,
    )
