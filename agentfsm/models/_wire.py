"""What OpenAI-compatible servers send back, as msgspec Structs, and the SSE framing.

The Structs list only the fields agentfsm reads; unknown fields are ignored (servers add them
all the time), while a known field of the wrong type is an error. Fields that some servers
omit or send as null are optional. The exception is ``error``: any value there means the
server reports a failure (an object, or just a string from some servers), so it is taken as
it comes and read by ``error_of``.
"""

from __future__ import annotations

import html
import re
from typing import Any

import msgspec

__all__ = [
    "ChatChunk",
    "ChatCompletion",
    "ErrorInfo",
    "ResponsesEvent",
    "ResponsesResponse",
    "SSEDecoder",
    "error_info",
    "error_of",
    "one_line",
]


class _Struct(msgspec.Struct, frozen=True):
    pass


class ErrorInfo(_Struct, frozen=True):
    """An error as the server describes it (``{"error": {...}}``)."""

    message: str | None = None
    type: str | None = None
    code: str | int | None = None
    param: Any = None


# -- Chat Completions --------------------------------------------------------------------------


class _TextPart(_Struct, frozen=True):
    text: str | None = None
    refusal: str | None = None


class ChatFunction(_Struct, frozen=True):
    name: str | None = None
    # Some servers send the arguments as an object instead of JSON text.
    arguments: str | dict[str, Any] | None = None


class ChatToolCall(_Struct, frozen=True):
    id: str | None = None
    index: int | None = None
    function: ChatFunction | None = None


class ChatMessage(_Struct, frozen=True):
    content: str | list[_TextPart] | None = None
    refusal: str | None = None
    tool_calls: list[ChatToolCall] | None = None


class ChatChoice(_Struct, frozen=True):
    index: int = 0
    message: ChatMessage | None = None
    finish_reason: str | None = None


class PromptTokensDetails(_Struct, frozen=True):
    cached_tokens: int | None = None


class CompletionTokensDetails(_Struct, frozen=True):
    reasoning_tokens: int | None = None


class ChatUsage(_Struct, frozen=True):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class ChatCompletion(_Struct, frozen=True):
    choices: list[ChatChoice] | None = None
    usage: ChatUsage | None = None
    error: Any = None


class ChatDelta(_Struct, frozen=True):
    content: str | list[_TextPart] | None = None
    refusal: str | None = None
    tool_calls: list[ChatToolCall] | None = None


class ChunkChoice(_Struct, frozen=True):
    index: int = 0
    delta: ChatDelta | None = None
    finish_reason: str | None = None


class ChatChunk(_Struct, frozen=True):
    choices: list[ChunkChoice] | None = None
    usage: ChatUsage | None = None
    error: Any = None


# -- Responses ---------------------------------------------------------------------------------


class OutputPart(_Struct, frozen=True):
    type: str = ""
    text: str | None = None
    refusal: str | None = None


class OutputItem(_Struct, frozen=True):
    """Any output item; only ``message`` and ``function_call`` items matter to agentfsm."""

    type: str = ""
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | dict[str, Any] | None = None
    content: list[OutputPart] | None = None


class InputTokensDetails(_Struct, frozen=True):
    cached_tokens: int | None = None


class OutputTokensDetails(_Struct, frozen=True):
    reasoning_tokens: int | None = None


class ResponsesUsage(_Struct, frozen=True):
    input_tokens: int | None = None
    output_tokens: int | None = None
    input_tokens_details: InputTokensDetails | None = None
    output_tokens_details: OutputTokensDetails | None = None


class IncompleteDetails(_Struct, frozen=True):
    reason: str | None = None


class ResponsesResponse(_Struct, frozen=True):
    id: str | None = None
    status: str | None = None
    output: list[OutputItem] | None = None
    usage: ResponsesUsage | None = None
    error: Any = None
    incomplete_details: IncompleteDetails | None = None


class ResponsesEvent(_Struct, frozen=True):
    """Any Responses streaming event, by its ``type``."""

    type: str = ""
    delta: str | None = None
    output_index: int | None = None
    item_id: str | None = None
    item: OutputItem | None = None
    response: ResponsesResponse | None = None
    # An ``error`` event: OpenAI puts these beside the type; other servers send ``error``.
    message: str | None = None
    code: str | int | None = None
    error: Any = None


# -- error bodies ------------------------------------------------------------------------------


def error_info(body: bytes) -> ErrorInfo:
    """What an error body says, in whichever of the common shapes it comes: OpenAI's
    ``{"error": {"message": ...}}``, ``{"error": "text"}``, vLLM's ``{"message": ...}``,
    FastAPI's ``{"detail": ...}``, server-sent events (a server that had started to stream),
    an HTML page (a proxy's), or plain text.

    The message is one line of at most ``MESSAGE_LIMIT`` characters whatever the body holds:
    bytes that are not UTF-8 are replaced, control characters and line breaks become spaces.
    """
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return _text_error(body)
    if isinstance(data, dict):
        return error_of(data.get("error", data))
    return ErrorInfo(message=_short(data))


def error_of(error: Any) -> ErrorInfo:
    """What the decoded ``error`` of a body or event says: an object with a ``message`` (or
    ``detail``), a plain string, or anything else (its JSON, shortened)."""
    if isinstance(error, str):
        return ErrorInfo(message=one_line(error))
    if isinstance(error, dict):
        message = error.get("message", error.get("detail"))
        code = error.get("code")
        return ErrorInfo(
            message=one_line(message) if isinstance(message, str) else _short(message),
            type=error.get("type") if isinstance(error.get("type"), str) else None,
            code=code if isinstance(code, str | int) and not isinstance(code, bool) else None,
            param=one_line(param, 200) if isinstance(param := error.get("param"), str) else None,
        )
    return ErrorInfo(message=_short(error))


MESSAGE_LIMIT = 1000
_HTML_EXCERPT = 200
_HTML_SCAN = 8192  # an error page's title and first words are near its start


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str | None:
    """``text`` as one printable line of at most ``limit`` characters (None when empty)."""
    cut = len(text) > limit * 4  # enough to fill the line, whatever whitespace it collapses
    line = " ".join("".join(c if c.isprintable() else " " for c in text[: limit * 4]).split())
    if cut or len(line) > limit:
        line = line[: limit - 1].rstrip() + "…"
    return line or None


def _short(value: Any) -> str | None:
    if value is None:
        return None
    return one_line(msgspec.json.encode(value).decode())


_SSE = re.compile(rb"^data:", re.MULTILINE)
_HTML = re.compile(rb"<(!doctype\s+html|html|head|body|title)\b", re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.I | re.S)
_HIDDEN = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.I | re.S)
_TAG = re.compile(r"<[^>]*>")


def _text_error(body: bytes) -> ErrorInfo:
    if _is_html(body):
        text = body[:_HTML_SCAN].decode("utf-8", "replace")
        title = _TITLE.search(text)
        excerpt = one_line(html.unescape(title.group(1)), _HTML_EXCERPT) if title else None
        if excerpt is None:
            visible = html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", text)))
            excerpt = one_line(visible, _HTML_EXCERPT)
        return ErrorInfo(message="an HTML page" + (f": {excerpt}" if excerpt else ""))
    if _SSE.search(body):
        return _sse_error(body)
    return ErrorInfo(message=one_line(body.decode("utf-8", "replace")))


def _is_html(body: bytes) -> bool:
    """Whether the body is a web page: markup from its first character, with an html, head,
    body or title tag (or the doctype) near its start."""
    start = body[:1024].lstrip()
    return start.startswith(b"<") and _HTML.search(start) is not None


def _sse_error(body: bytes) -> ErrorInfo:
    """The error in a body of server-sent events: the first event whose JSON carries a
    message (``{"error": ...}``, a Responses ``error`` or ``response.failed`` event), else
    the first data line as text."""
    decoder = SSEDecoder()
    events = [*decoder.feed(body), *decoder.flush()]
    for data in events:
        try:
            decoded = msgspec.json.decode(data)
        except msgspec.DecodeError:
            continue
        if not isinstance(decoded, dict):
            continue
        error = decoded.get("error")
        response = decoded.get("response")
        if error is None and isinstance(response, dict):
            error = response.get("error")
        if error is not None:
            info = error_of(error)
        else:
            info = error_of(decoded)
            kind = info.type or ""
            if kind == "error" or kind.startswith("response."):
                info = msgspec.structs.replace(info, type=None)  # the event's type, not the error's
        if info.message:
            return info
    first = events[0].split(b"\n", 1)[0] if events else b""
    return ErrorInfo(message=one_line(first.decode("utf-8", "replace")))


# -- server-sent events ------------------------------------------------------------------------


class SSEDecoder:
    """Turns the bytes of a ``text/event-stream`` into the data of its events.

    Only ``data`` fields matter to the OpenAI APIs (the Responses API repeats the ``event``
    name inside the data). Lines may end in LF, CRLF or CR; an event's data lines are joined
    with LF; comments (``:``) and events without data are skipped. Bytes are kept until an
    event is complete, and only new bytes are searched for its end, so an event split over
    many reads costs what it weighs.
    """

    __slots__ = ("_cr", "_ends_with_lf", "_pending")

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._ends_with_lf = False  # the pending bytes end with LF
        self._cr = False  # the last chunk ended with CR (its LF may start the next one)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event that ``chunk`` completes."""
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not chunk:
            return []
        if b"\n\n" not in chunk and not (self._ends_with_lf and chunk.startswith(b"\n")):
            self._pending.append(chunk)
            self._ends_with_lf = chunk.endswith(b"\n")
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
        blocks = chunk.split(b"\n\n")
        rest = blocks.pop()
        self._pending = [rest] if rest else []
        self._ends_with_lf = rest.endswith(b"\n")
        events: list[bytes] = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(block[6:])  # the usual event: one data line
            elif block:
                data = _data_lines(block)
                if data is not None:
                    events.append(data)
        return events

    def flush(self) -> list[bytes]:
        """The data of an event the stream ended without a blank line after."""
        rest = b"".join(self._pending)
        self._pending, self._ends_with_lf, self._cr = [], False, False
        data = _data_lines(rest) if rest else None
        return [] if data is None else [data]


def _data_lines(block: bytes) -> bytes | None:
    data = [
        line[6:] if line.startswith(b"data: ") else line[5:]
        for line in block.split(b"\n")
        if line.startswith(b"data:")
    ]
    return b"\n".join(data) if data else None
