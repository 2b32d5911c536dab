"""A small OpenAI-compatible server on loopback, for tests and benchmarks.

A real HTTP/1.1 server (``http.server`` in a thread, keep-alive, chunked server-sent events),
not a mock transport, so the client under test goes through httpx, httpcore and the socket
as it would against OpenAI or vLLM. It plays a script: each request to
``/v1/chat/completions`` or ``/v1/responses`` takes the next entry, and a ``Reply`` is
rendered in the format and mode (streamed or not) that the request asked for. Replies are
built with the official ``openai`` package's response types, so what the client parses is
what OpenAI's own SDK considers well-formed.

Script entries:

- ``Reply(text=..., calls=(Call(...), ...), usage=...)``: a model turn;
- ``Fail(status, message, headers=...)``: an error status (429 with Retry-After, 500, 401...);
- ``Drop(after=n)``: close the connection without an answer (``after=None``), or after ``n``
  events of a stream;
- ``Raw(body, status=..., content_type=...)``: these exact bytes (malformed bodies);
- a function of the ``Received`` request returning one of the above.

The Responses API keeps what it is asked to store (``"store": true``): each stored response
gets its own id (``resp_1``, ``resp_2``...), and a request with ``previous_response_id``
continues that conversation (``Received.conversation`` is the whole input the server
resolved). ``expire(id)`` forgets a response, as OpenAI does after its retention period; a
request that continues an unknown id gets OpenAI's 400 ``previous_response_not_found``.

``Reply.delay`` holds the answer back (for read timeouts); ``Reply.gap`` paces a stream's
events (for cancellation), and the server records in ``disconnects`` when a client went away
mid-stream. With ``api_key`` set, requests without it get a 401. With
``stream_by_default=True`` a request that does not say ``"stream"`` is streamed, as LiteLLM's
proxy and ``transformers serve`` do.

Run as a script (``python tests/openai_server.py``), it serves forever on a free port,
answering every request with ``bench_reply`` (the benchmarks use this), and prints its URL.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import socket
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Call",
    "Drop",
    "Fail",
    "OpenAIServer",
    "Raw",
    "Received",
    "Reply",
    "bench_reply",
    "chat_chunks",
    "response_events",
]

AUTO = "auto"


@dataclass(frozen=True)
class Call:
    """A tool call in a reply. ``id=AUTO`` gives ``call_<n>``; ``None`` sends no id."""

    name: str
    arguments: str = "{}"
    id: str | None = AUTO


@dataclass(frozen=True)
class Reply:
    """A model turn: text, tool calls, or both."""

    text: str | None = None
    calls: tuple[Call, ...] = ()
    #: input, output, cached and reasoning tokens
    usage: tuple[int, int, int, int] = (12, 7, 0, 0)
    #: characters per text or arguments delta when streamed
    piece: int = 4
    #: seconds before the answer starts
    delay: float = 0.0
    #: seconds between streamed events
    gap: float = 0.0
    finish: str | None = None
    #: when set, a stream sends its first two events (with chat, the role and the first
    #: text), then waits (up to 10 s) for this to be set
    #: before the rest; the server records in ``released`` whether it was set in time
    hold: threading.Event | None = None


@dataclass(frozen=True)
class Fail:
    """An error answer in OpenAI's shape."""

    status: int
    message: str = "scripted failure"
    headers: tuple[tuple[str, str], ...] = ()
    code: str | None = None
    type: str = "server_error"


@dataclass(frozen=True)
class Drop:
    """Close the connection: before answering (``after=None``) or after ``after`` events of a
    stream (a non-streamed request is dropped before its answer either way)."""

    after: int | None = None


@dataclass(frozen=True)
class Raw:
    """An answer of exactly these bytes."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"


@dataclass
class Received:
    """A request the server got."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    #: whether a request that does not say ``"stream"`` is streamed
    stream_default: bool = False
    #: Responses API: the whole input, with what ``previous_response_id`` stood for
    conversation: list[Any] | None = None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream", self.stream_default))


Entry = Reply | Fail | Drop | Raw | Callable[[Received], Any]


def bench_reply(received: Received) -> Reply:
    """The benchmarks' answers: a short text, or 1,000 one-character deltas for the model
    named ``deltas-1000``."""
    if received.body.get("model") == "deltas-1000":
        return Reply(text="x" * 1_000, piece=1, usage=(50, 1_000, 0, 0))
    return Reply(text="Hello! How can I help you today?", usage=(25, 9, 0, 0))


class OpenAIServer:
    """The server. Use it as a context manager; ``url`` is the base URL (ending in ``/v1``)."""

    def __init__(
        self,
        script: Iterable[Entry] = (),
        *,
        api_key: str | None = None,
        default: Entry | None = None,
        stream_by_default: bool = False,
    ) -> None:
        self.script: deque[Entry] = deque(script)
        self.api_key = api_key
        self.stream_by_default = stream_by_default
        self.default = default
        self.requests: list[Received] = []
        #: Responses kept for ``previous_response_id``: id -> the conversation up to its end
        self.stored: dict[str, list[Any]] = {}
        self.disconnects: list[float] = []
        self.released: list[bool] = []
        self.lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, *entries: Entry) -> None:
        with self.lock:
            self.script.extend(entries)

    def expire(self, *response_ids: str) -> None:
        """Forget stored responses (all of them when none is named)."""
        with self.lock:
            for response_id in response_ids or list(self.stored):
                self.stored.pop(response_id, None)

    def resolve(self, received: Received) -> str | None:
        """Set the whole conversation of a Responses request; the id it continues if the
        server does not know it."""
        body = received.body
        previous = body.get("previous_response_id")
        items = body.get("input")
        items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
        with self.lock:
            if previous is None:
                received.conversation = list(items)
                return None
            if previous not in self.stored:
                self.requests.append(received)
                return str(previous)
            received.conversation = [*self.stored[previous], *items]
        return None

    def keep(self, received: Received, reply: Reply) -> str:
        """Store a Responses reply if asked to; the id of the response."""
        if not received.body.get("store"):
            return "resp_test"
        with self.lock:
            response_id = f"resp_{len(self.stored) + 1}_{len(self.requests)}"
            output: list[Any] = []
            if reply.text:
                output.append({"type": "message", "role": "assistant", "content": reply.text})
            for call, call_id in zip(reply.calls, _call_ids(reply), strict=True):
                output.append(
                    {
                        "type": "function_call",
                        "call_id": call_id,
                        "name": call.name,
                        "arguments": call.arguments,
                    }
                )
            self.stored[response_id] = [*(received.conversation or []), *output]
        return response_id

    @property
    def url(self) -> str:
        assert self._httpd is not None, "the server is not running"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> OpenAIServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def first_disconnect(self, timeout: float = 2.0) -> float | None:
        """When the first client went away (``time.monotonic``), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.disconnects and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.disconnects[0] if self.disconnects else None

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            assert self._thread is not None
            self._thread.join()
            self._httpd = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_entry(self, received: Received) -> Entry:
        with self.lock:
            self.requests.append(received)
            if self.script:
                entry = self.script.popleft()
            elif self.default is not None:
                entry = self.default
            else:
                return Fail(400, "the test script has no more replies", type="test_error")
        while callable(entry):
            entry = entry(received)
        return entry


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: OpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away is not the server's problem


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on, the second
    # waits for the client's delayed ACK (40 ms on Linux).
    disable_nagle_algorithm = True
    server: _HTTPServer
    timeout = 30  # seconds an idle keep-alive connection is kept

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            self._json(400, _error("the body is not JSON", "invalid_request_error"))
            return
        owner = self.server.owner
        if owner.api_key is not None and owner.api_key not in (
            headers.get("authorization", "").removeprefix("Bearer "),
            headers.get("api-key"),
        ):
            with owner.lock:
                owner.requests.append(Received(self.path, headers, body))
            self._json(401, _error("Incorrect API key provided.", "invalid_request_error"))
            return
        path = self.path.split("?")[0]
        if path.endswith("/chat/completions"):
            api = "chat"
        elif path.endswith("/responses"):
            api = "responses"
        else:
            self._json(404, _error(f"no route {self.path}", "invalid_request_error"))
            return
        received = Received(self.path, headers, body, owner.stream_by_default)
        if api == "responses":
            unknown = owner.resolve(received)
            if unknown is not None:
                error = _error(
                    f"Previous response with id '{unknown}' not found.",
                    "invalid_request_error",
                    "previous_response_not_found",
                )
                error["error"]["param"] = "previous_response_id"
                self._json(400, error)
                return
        entry = owner.next_entry(received)
        match entry:
            case Fail():
                error = _error(entry.message, entry.type, entry.code)
                self._json(entry.status, error, entry.headers)
            case Raw():
                self._send(entry.status, entry.body, entry.content_type)
            case Drop(after=None):
                self._drop()
            case Drop(after=after):
                if not received.stream:
                    self._drop()
                else:
                    events = _render(api, _DROPPED, received.stream, body.get("model", ""))
                    assert isinstance(events, tuple)
                    self._stream(events[: after or 0], 0.0, drop=True)
            case Reply():
                if entry.delay:
                    time.sleep(entry.delay)
                response_id = owner.keep(received, entry) if api == "responses" else ""
                rendered = _render(
                    api, entry, received.stream, body.get("model", ""), response_id or "resp_test"
                )
                if isinstance(rendered, bytes):
                    self._send(200, rendered, "application/json")
                else:
                    self._stream(rendered, entry.gap, hold=entry.hold)
            case _:
                raise TypeError(f"not a script entry: {entry!r}")

    def _json(
        self, status: int, data: dict[str, Any], headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-request-id", "req_test")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _stream(
        self,
        events: tuple[bytes, ...],
        gap: float,
        drop: bool = False,
        hold: threading.Event | None = None,
    ) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        try:
            for n, event in enumerate(events):
                if gap:
                    time.sleep(gap)
                if n == 2 and hold is not None:
                    released = hold.wait(10)
                    with self.server.owner.lock:
                        self.server.owner.released.append(released)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            if drop:
                self._drop()
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            with self.server.owner.lock:
                self.server.owner.disconnects.append(time.monotonic())
            self.close_connection = True

    def _drop(self) -> None:
        self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


def _error(message: str, type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


# -- rendering with the openai package's types --------------------------------------------------


@functools.cache
def _openai() -> types.SimpleNamespace:
    """The openai package's types, imported on first use, so that importing this module
    stays cheap (the end-to-end test's subprocess imports it only for Reply and Call)."""
    from openai.types import CompletionUsage
    from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice
    from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
    from openai.types.chat.chat_completion_chunk import (
        ChoiceDelta,
        ChoiceDeltaToolCall,
        ChoiceDeltaToolCallFunction,
    )
    from openai.types.chat.chat_completion_message_function_tool_call import (
        ChatCompletionMessageFunctionToolCall,
        Function,
    )
    from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails
    from openai.types.responses import (
        Response,
        ResponseCompletedEvent,
        ResponseCreatedEvent,
        ResponseFunctionCallArgumentsDeltaEvent,
        ResponseFunctionCallArgumentsDoneEvent,
        ResponseFunctionToolCall,
        ResponseOutputItemAddedEvent,
        ResponseOutputItemDoneEvent,
        ResponseOutputMessage,
        ResponseOutputText,
        ResponseTextDeltaEvent,
        ResponseTextDoneEvent,
        ResponseUsage,
    )
    from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

    return types.SimpleNamespace(
        CompletionUsage=CompletionUsage,
        ChatCompletion=ChatCompletion,
        ChatCompletionChunk=ChatCompletionChunk,
        ChatCompletionMessage=ChatCompletionMessage,
        Choice=Choice,
        ChunkChoice=ChunkChoice,
        ChoiceDelta=ChoiceDelta,
        ChoiceDeltaToolCall=ChoiceDeltaToolCall,
        ChoiceDeltaToolCallFunction=ChoiceDeltaToolCallFunction,
        ChatCompletionMessageFunctionToolCall=ChatCompletionMessageFunctionToolCall,
        Function=Function,
        CompletionTokensDetails=CompletionTokensDetails,
        PromptTokensDetails=PromptTokensDetails,
        Response=Response,
        ResponseCompletedEvent=ResponseCompletedEvent,
        ResponseCreatedEvent=ResponseCreatedEvent,
        ResponseFunctionCallArgumentsDeltaEvent=ResponseFunctionCallArgumentsDeltaEvent,
        ResponseFunctionCallArgumentsDoneEvent=ResponseFunctionCallArgumentsDoneEvent,
        ResponseFunctionToolCall=ResponseFunctionToolCall,
        ResponseOutputItemAddedEvent=ResponseOutputItemAddedEvent,
        ResponseOutputItemDoneEvent=ResponseOutputItemDoneEvent,
        ResponseOutputMessage=ResponseOutputMessage,
        ResponseOutputText=ResponseOutputText,
        ResponseTextDeltaEvent=ResponseTextDeltaEvent,
        ResponseTextDoneEvent=ResponseTextDoneEvent,
        ResponseUsage=ResponseUsage,
        InputTokensDetails=InputTokensDetails,
        OutputTokensDetails=OutputTokensDetails,
    )


class _Types:
    def __getattr__(self, name: str) -> Any:
        return getattr(_openai(), name)


oa = _Types()

_DROPPED = Reply(text="This answer will be cut short by a dropped connection.", piece=8)


@functools.lru_cache(maxsize=256)
def _render(
    api: str, reply: Reply, stream: bool, model: str, response_id: str = "resp_test"
) -> bytes | tuple[bytes, ...]:
    if api == "chat":
        if not stream:
            return chat_completion(reply, model)
        chunks = [b"data: " + chunk + b"\n\n" for chunk in chat_chunks(reply, model)]
        return (*chunks, b"data: [DONE]\n\n")
    if not stream:
        return _json(_response(reply, model, response_id=response_id))
    return tuple(
        b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        for kind, data in response_events(reply, model, response_id)
    )


def _json(value: Any) -> bytes:
    """``value`` as JSON, without the ``call_id`` of calls scripted with ``id=None``."""
    return json.dumps(_without_empty_ids(value.model_dump(mode="json", exclude_none=True))).encode()


def _without_empty_ids(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_empty_ids(v) for k, v in data.items() if (k, v) != ("call_id", "")}
    if isinstance(data, list):
        return [_without_empty_ids(v) for v in data]
    return data


def _call_ids(reply: Reply) -> list[str | None]:
    return [f"call_{n}" if c.id == AUTO else c.id for n, c in enumerate(reply.calls)]


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _chat_usage(reply: Reply) -> Any:
    prompt, completion, cached, reasoning = reply.usage
    return oa.CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=oa.PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=oa.CompletionTokensDetails(reasoning_tokens=reasoning),
    )


def _finish(reply: Reply) -> Any:
    return reply.finish or ("tool_calls" if reply.calls else "stop")


def chat_completion(reply: Reply, model: str) -> bytes:
    ids = _call_ids(reply)
    message = oa.ChatCompletionMessage(
        role="assistant",
        content=reply.text,
        tool_calls=[
            oa.ChatCompletionMessageFunctionToolCall(
                id=call_id or "",
                type="function",
                function=oa.Function(name=call.name, arguments=call.arguments),
            )
            for call, call_id in zip(reply.calls, ids, strict=True)
        ]
        or None,
    )
    completion = oa.ChatCompletion(
        id="chatcmpl-test",
        object="chat.completion",
        created=1_700_000_000,
        model=model,
        choices=[oa.Choice(index=0, message=message, finish_reason=_finish(reply))],
        usage=_chat_usage(reply),
    )
    data = completion.model_dump(mode="json", exclude_none=True)
    for call, call_id in zip(data["choices"][0]["message"].get("tool_calls", ()), ids, strict=True):
        if call_id is None:
            del call["id"]
    return json.dumps(data).encode()


def chat_chunks(reply: Reply, model: str) -> list[bytes]:
    """The ``chat.completion.chunk`` events of a streamed reply, as JSON."""

    def chunk(delta: Any, finish: Any = None, usage: Any = None) -> bytes:
        choices = (
            [] if delta is None else [oa.ChunkChoice(index=0, delta=delta, finish_reason=finish)]
        )
        data = oa.ChatCompletionChunk(
            id="chatcmpl-test",
            object="chat.completion.chunk",
            created=1_700_000_000,
            model=model,
            choices=choices,
            usage=usage,
        )
        return data.model_dump_json(exclude_none=True).encode()

    chunks = [chunk(oa.ChoiceDelta(role="assistant", content=""))]
    if reply.text:
        chunks.extend(chunk(oa.ChoiceDelta(content=p)) for p in _pieces(reply.text, reply.piece))
    for index, (call, call_id) in enumerate(zip(reply.calls, _call_ids(reply), strict=True)):
        start = oa.ChoiceDeltaToolCall(
            index=index,
            id=call_id,
            type="function",
            function=oa.ChoiceDeltaToolCallFunction(name=call.name, arguments=""),
        )
        chunks.append(chunk(oa.ChoiceDelta(tool_calls=[start])))
        for piece in _pieces(call.arguments, reply.piece):
            delta = oa.ChoiceDeltaToolCall(
                index=index, function=oa.ChoiceDeltaToolCallFunction(arguments=piece)
            )
            chunks.append(chunk(oa.ChoiceDelta(tool_calls=[delta])))
    chunks.append(chunk(oa.ChoiceDelta(), finish=_finish(reply)))
    chunks.append(chunk(None, usage=_chat_usage(reply)))
    return chunks


def _response_usage(reply: Reply) -> Any:
    prompt, completion, cached, reasoning = reply.usage
    return oa.ResponseUsage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=prompt + completion,
        input_tokens_details=oa.InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
        output_tokens_details=oa.OutputTokensDetails(reasoning_tokens=reasoning),
    )


def _message(reply: Reply, text: str, status: Any = "completed") -> Any:
    return oa.ResponseOutputMessage(
        id="msg_0",
        type="message",
        role="assistant",
        status=status,
        content=[oa.ResponseOutputText(type="output_text", text=text, annotations=[])]
        if text
        else [],
    )


def _function_call(call: Call, call_id: str | None, n: int, arguments: str) -> Any:
    return oa.ResponseFunctionToolCall(
        type="function_call",
        id=f"fc_{n}",
        call_id=call_id or "",
        name=call.name,
        arguments=arguments,
        status="completed",
    )


def _response(
    reply: Reply, model: str, status: Any = "completed", response_id: str = "resp_test"
) -> Any:
    output: list[Any] = []
    if reply.text:
        output.append(_message(reply, reply.text))
    for n, (call, call_id) in enumerate(zip(reply.calls, _call_ids(reply), strict=True)):
        output.append(_function_call(call, call_id, n, call.arguments))
    return oa.Response(
        id=response_id,
        object="response",
        created_at=1_700_000_000,
        model=model,
        status=status,
        output=output if status == "completed" else [],
        parallel_tool_calls=True,
        tool_choice="auto",
        tools=[],
        usage=_response_usage(reply) if status == "completed" else None,
    )


def response_events(
    reply: Reply, model: str, response_id: str = "resp_test"
) -> list[tuple[str, bytes]]:
    """The events of a streamed Responses reply: (type, JSON data)."""
    events: list[Any] = [
        oa.ResponseCreatedEvent(
            type="response.created",
            sequence_number=0,
            response=_response(reply, model, status="in_progress", response_id=response_id),
        )
    ]

    def add(event_type: type[Any], **fields: Any) -> None:
        events.append(event_type(sequence_number=len(events), **fields))

    index = 0
    if reply.text:
        add(
            oa.ResponseOutputItemAddedEvent,
            type="response.output_item.added",
            output_index=index,
            item=_message(reply, "", status="in_progress"),
        )
        for piece in _pieces(reply.text, reply.piece):
            add(
                oa.ResponseTextDeltaEvent,
                type="response.output_text.delta",
                item_id="msg_0",
                output_index=index,
                content_index=0,
                delta=piece,
                logprobs=[],
            )
        add(
            oa.ResponseTextDoneEvent,
            type="response.output_text.done",
            item_id="msg_0",
            output_index=index,
            content_index=0,
            text=reply.text,
            logprobs=[],
        )
        add(
            oa.ResponseOutputItemDoneEvent,
            type="response.output_item.done",
            output_index=index,
            item=_message(reply, reply.text),
        )
        index += 1
    for n, (call, call_id) in enumerate(zip(reply.calls, _call_ids(reply), strict=True)):
        add(
            oa.ResponseOutputItemAddedEvent,
            type="response.output_item.added",
            output_index=index,
            item=_function_call(call, call_id, n, ""),
        )
        for piece in _pieces(call.arguments, reply.piece):
            add(
                oa.ResponseFunctionCallArgumentsDeltaEvent,
                type="response.function_call_arguments.delta",
                item_id=f"fc_{n}",
                output_index=index,
                delta=piece,
            )
        add(
            oa.ResponseFunctionCallArgumentsDoneEvent,
            type="response.function_call_arguments.done",
            item_id=f"fc_{n}",
            output_index=index,
            arguments=call.arguments,
        )
        add(
            oa.ResponseOutputItemDoneEvent,
            type="response.output_item.done",
            output_index=index,
            item=_function_call(call, call_id, n, call.arguments),
        )
        index += 1
    add(
        oa.ResponseCompletedEvent,
        type="response.completed",
        response=_response(reply, model, response_id=response_id),
    )
    return [(e.type, _json(e)) for e in events]


def main() -> None:
    server = OpenAIServer(default=bench_reply).start()
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
