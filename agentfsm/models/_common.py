"""What the Chat Completions and Responses clients share: settings, the translation of
agentfsm's items that both formats need, tool-call ids, and the request and stream plumbing.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import msgspec

from .._errors import ConfigurationError
from .._items import ModelResponse, ModelToolCall, ToolResultItem, Usage
from .._model import ModelRequest, ResponseDone, StreamEvent
from .._settings import ModelSettings
from .._tools import ToolSpec
from ._errors import ModelConnectionError, ModelOutputError
from ._schema import strict_schema

if TYPE_CHECKING:
    from ._provider import OpenAIProvider

__all__ = ["Assembler", "CallIds", "ModelSettings", "OpenAIModel"]

log = logging.getLogger("agentfsm.models")


_EMPTY_SETTINGS = ModelSettings()


class CallIds:
    """Ids for the tool calls of one response.

    The engine refuses empty or repeated call ids, and an id that repeats one from earlier in
    the run would let a decision recorded for the old call apply to the new one. A call
    whose id is missing, or already used in the conversation or the response, gets
    ``call_<turn>_<position>``: the same in every process, and the same whether the response
    was streamed or not.
    """

    __slots__ = ("_mine", "_taken", "turn")

    def __init__(self, turn: int, taken: set[str] | frozenset[str]) -> None:
        self.turn = turn
        self._taken = taken
        self._mine: set[str] = set()

    def twin(self) -> CallIds:
        """A fresh allocator for the same turn and conversation."""
        return CallIds(self.turn, self._taken)

    def assign(self, position: int, proposed: str | None) -> str:
        call_id = proposed
        if not call_id or call_id in self._taken or call_id in self._mine:
            call_id = f"call_{self.turn}_{position}"
            n = 1
            while call_id in self._taken or call_id in self._mine:
                call_id, n = f"call_{self.turn}_{position}_{n}", n + 1
        self._mine.add(call_id)
        return call_id


def wire_arguments(arguments: str | dict[str, Any] | None) -> str:
    """A tool call's arguments from the wire as JSON text (a few servers send an object)."""
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    return msgspec.json.encode(arguments).decode()


def history_arguments(raw: str) -> str:
    """A past call's arguments as they are sent back: the model's own text when it is a JSON
    object, else ``{}`` (the call's result already says what was wrong). Servers that parse
    the history (Ollama, vLLM's chat templates) refuse the whole request otherwise."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return "{}"
    return raw if isinstance(value, dict) else "{}"


def result_text(item: ToolResultItem) -> str:
    """A tool result as the model reads it. When a person edited the call's arguments before
    approving it, the model is told, and told what the call really ran with."""
    if item.arguments is None:
        return item.output
    edited = msgspec.json.encode(item.arguments).decode()
    return (
        f"[A person changed the arguments of this call before approving it; it ran with "
        f"{edited}.]\n{item.output}"
    )


def response_of(
    text: str | None, calls: Sequence[ModelToolCall], usage: Usage, finish: str | None
) -> ModelResponse:
    if finish in ("length", "max_output_tokens", "content_filter"):
        log.warning("the model's answer was cut short (%s)", finish)
    return ModelResponse(text=text or None, tool_calls=tuple(calls), usage=usage)


class Assembler(Protocol):
    """Builds one response from the data of a stream's events."""

    def feed(self, data: bytes) -> list[StreamEvent]: ...

    def response(self) -> ModelResponse: ...


def decode(decoder: msgspec.json.Decoder[Any], data: bytes, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        excerpt = data[:200].decode("utf-8", "replace")
        raise ModelOutputError(
            f"the server sent {what} that cannot be read: {exc}: {excerpt!r}"
        ) from None


def incomplete(what: str) -> ModelConnectionError:
    return ModelConnectionError(f"the stream ended before {what}; the connection was cut short")


_FORMAT_NAME = re.compile(r"[^A-Za-z0-9_-]")


def format_name(schema: dict[str, Any]) -> str:
    """The name a response format is sent under (``^[A-Za-z0-9_-]{1,64}$``)."""
    title = schema.get("title")
    name = _FORMAT_NAME.sub("_", title)[:64] if isinstance(title, str) else ""
    return name or "output"


def schema_instructions(schema: dict[str, Any]) -> str:
    """For an output type whose schema the APIs cannot take as a response format (one that is
    not an object, such as ``list[int]``): the schema, in words."""
    return (
        "Answer with JSON only, matching this JSON Schema: " + msgspec.json.encode(schema).decode()
    )


class OpenAIModel:
    """What the Chat Completions and Responses clients share."""

    api: ClassVar[Literal["chat", "responses"]]

    def __init__(
        self,
        name: str,
        *,
        provider: OpenAIProvider | None = None,
        settings: ModelSettings | None = None,
        stream: bool | None = None,
        strict: bool | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("a model needs a non-empty name")
        self.name = name
        self._provider = provider
        self._settings = settings
        self._stream = stream
        self._strict = strict
        self._tools: dict[int, tuple[ToolSpec, msgspec.Raw]] = {}
        self._formats: dict[int, tuple[dict[str, Any], dict[str, Any] | None]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def provider(self) -> OpenAIProvider:
        """The provider this model sends through (by default, ``default_provider()``)."""
        if self._provider is None:
            from ._provider import default_provider

            self._provider = default_provider()
        return self._provider

    @property
    def settings(self) -> ModelSettings:
        """This model's settings over its provider's."""
        own = self._settings or _EMPTY_SETTINGS
        return own.over(self.provider.settings)

    @property
    def streams(self) -> bool:
        """Whether ``respond`` asks for a stream and assembles it (see OpenAIProvider)."""
        return self.provider.stream if self._stream is None else self._stream

    @property
    def strict(self) -> bool:
        return self.provider.strict if self._strict is None else self._strict

    @property
    def url(self) -> str:
        return self.provider.url(self.api, self.name)

    def settings_for(self, request: ModelRequest) -> ModelSettings:
        """The settings ``request`` is sent with: its agent's settings over this model's."""
        if request.settings is None:
            return self.settings
        return request.settings.over(self.settings)

    def request_body(self, request: ModelRequest, *, stream: bool = False) -> dict[str, Any]:
        """The JSON body this model sends for ``request``, as data (for inspection)."""
        body, _ = self._build(request, self.settings_for(request), stream)
        decoded: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(body))
        return decoded

    async def respond(self, request: ModelRequest) -> ModelResponse:
        """Ask the server for this turn's response.

        Raises ModelConnectionError / ModelTimeoutError, AuthenticationError,
        RateLimitError, BadRequestError, ServerError (after retries), ModelOutputError for
        an answer that is not what the API defines, ConfigurationError when no API key is
        configured for a server that needs one.
        """
        if self.streams:
            async with contextlib.aclosing(self.stream(request)) as events:
                async for event in events:
                    if isinstance(event, ResponseDone):
                        return event.response
            raise AssertionError("a stream ends with ResponseDone")  # pragma: no cover
        provider = self.provider
        settings = self.settings_for(request)
        body, taken = self._build(request, settings, stream=False)
        data = await provider.connection().post(
            self.url, msgspec.json.encode(body), settings.extra_headers
        )
        return self._parse(data, CallIds(request.turn, taken))

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        """Ask for this turn's response as a stream of events (the StreamingModel protocol):
        text and tool-call deltas as they arrive, then a ResponseDone with the response that
        ``respond`` would give. Raises what ``respond`` raises."""
        provider = self.provider
        settings = self.settings_for(request)
        body, taken = self._build(request, settings, stream=True)
        assembler = self._assembler(CallIds(request.turn, taken))
        payloads = provider.connection().events(
            self.url, msgspec.json.encode(body), settings.extra_headers
        )
        async with contextlib.aclosing(payloads):
            async for data in payloads:
                for event in assembler.feed(data):
                    yield event
        yield ResponseDone(assembler.response())

    # -- shared pieces of the request --------------------------------------------------------

    def _tool(self, spec: ToolSpec) -> msgspec.Raw:
        """The definition of one tool in this API's shape, encoded once per spec."""
        cached = self._tools.get(id(spec))
        if cached is not None and cached[0] is spec:
            return cached[1]
        parameters = strict_schema(spec.parameters) if self.strict else None
        raw = msgspec.Raw(msgspec.json.encode(self._tool_definition(spec, parameters)))
        if len(self._tools) >= 1024:
            self._tools.clear()
        # Keeping the spec keeps its id from being reused by another object.
        self._tools[id(spec)] = (spec, raw)
        return raw

    def _format(self, schema: dict[str, Any]) -> dict[str, Any] | None:
        """The JSON Schema response format for an output schema (None when the schema is
        not an object, which the APIs do not take)."""
        cached = self._formats.get(id(schema))
        if cached is not None and cached[0] is schema:
            return cached[1]
        result: dict[str, Any] | None = None
        if schema.get("type") == "object":
            strict = strict_schema(schema) if self.strict else None
            result = {
                "name": format_name(schema),
                "schema": strict if strict is not None else schema,
                "strict": strict is not None,
            }
        if len(self._formats) >= 256:
            self._formats.clear()
        self._formats[id(schema)] = (schema, result)
        return result

    def _tools_json(self, tools: Iterable[ToolSpec]) -> list[msgspec.Raw]:
        return [self._tool(spec) for spec in tools]

    # -- what each API defines ---------------------------------------------------------------

    def _tool_definition(
        self, spec: ToolSpec, strict_parameters: dict[str, Any] | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _build(
        self, request: ModelRequest, settings: ModelSettings, stream: bool
    ) -> tuple[dict[str, Any], set[str]]:
        raise NotImplementedError

    def _parse(self, data: bytes, ids: CallIds) -> ModelResponse:
        raise NotImplementedError

    def _assembler(self, ids: CallIds) -> Assembler:
        raise NotImplementedError
