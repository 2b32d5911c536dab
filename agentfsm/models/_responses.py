"""The Responses API (``POST /responses``): OpenAI's newer protocol, also served by Azure
and by some local servers.

agentfsm keeps the conversation itself, so by default every request carries the whole input
and asks the server not to store the response (``store: false``). With
``ModelSettings(store=True)`` the server keeps each response, and a request that continues
one (``ModelRequest.previous``) sends only the items after it, with
``previous_response_id``. When the server no longer knows that id (it expired, or another
account or server made it), the request is sent again with the whole conversation: the run's
state, not the server, is the record.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from .._errors import ConfigurationError
from .._items import (
    AssistantMessage,
    Feedback,
    GuardrailItem,
    HandoffItem,
    ModelResponse,
    ModelToolCall,
    ToolCallItem,
    ToolResultItem,
    Usage,
    UserMessage,
)
from .._model import (
    ModelRequest,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStarted,
)
from .._tools import ToolSpec
from ._common import (
    CallIds,
    ModelSettings,
    OpenAIModel,
    decode,
    history_arguments,
    incomplete,
    response_of,
    result_text,
    schema_instructions,
    wire_arguments,
)
from ._errors import ModelOutputError, ModelStatusError
from ._http import stream_error
from ._wire import (
    ErrorInfo,
    OutputItem,
    ResponsesEvent,
    ResponsesResponse,
    ResponsesUsage,
    error_of,
)

__all__ = ["OpenAIResponsesModel", "responses_input"]

log = logging.getLogger("agentfsm.models")

_RESPONSE = msgspec.json.Decoder(ResponsesResponse)
_EVENT = msgspec.json.Decoder(ResponsesEvent)


class OpenAIResponsesModel(OpenAIModel):
    """A model behind the Responses API. Takes the same arguments as OpenAIChatModel
    (``seed`` and ``stop`` settings excepted: the Responses API has neither)."""

    api = "responses"

    async def respond(self, request: ModelRequest) -> ModelResponse:
        if self.streams:
            return await super().respond(request)  # through stream(), which falls back
        settings = self.settings_for(request)
        try:
            response = await super().respond(request)
        except ModelStatusError as exc:
            if not _continues(request, settings) or not unknown_response(exc):
                raise
            _forgotten(request, exc)
            response = await super().respond(_whole(request))
        return _kept(response, settings)

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        settings = self.settings_for(request)
        events = super().stream(request)
        try:
            first = await anext(events)
        except ModelStatusError as exc:
            await events.aclose()
            if not _continues(request, settings) or not unknown_response(exc):
                raise
            _forgotten(request, exc)
            events = super().stream(_whole(request))
            first = await anext(events)
        async with contextlib.aclosing(events):
            event: StreamEvent | None = first
            while event is not None:
                if isinstance(event, ResponseDone):
                    event = ResponseDone(_kept(event.response, settings))
                yield event
                event = await anext(events, None)

    def _tool_definition(
        self, spec: ToolSpec, strict_parameters: dict[str, Any] | None
    ) -> dict[str, Any]:
        definition: dict[str, Any] = {
            "type": "function",
            "name": spec.name,
            "parameters": spec.parameters if strict_parameters is None else strict_parameters,
            "strict": strict_parameters is not None,
        }
        if spec.description:
            definition["description"] = spec.description
        return definition

    def _build(
        self, request: ModelRequest, settings: ModelSettings, stream: bool
    ) -> tuple[dict[str, Any], set[str]]:
        if settings.seed is not None or settings.stop is not None:
            raise ConfigurationError(
                "the Responses API has no seed or stop settings; use the Chat Completions API"
            )
        instructions = request.instructions
        text_format = None
        if request.output_schema is not None:
            text_format = self._format(request.output_schema)
            if text_format is None:
                instructions = "\n\n".join(
                    filter(None, [instructions, schema_instructions(request.output_schema)])
                )
        previous = request.previous if _continues(request, settings) else None
        items, taken = responses_input(request, None if previous is None else previous.items)
        body: dict[str, Any] = {"model": self.name, "input": items, "store": bool(settings.store)}
        if previous is not None:
            body["previous_response_id"] = previous.id
        if instructions:
            body["instructions"] = instructions
        if request.tools:
            body["tools"] = self._tools_json(request.tools)
        if text_format is not None:
            body["text"] = {"format": {"type": "json_schema", **text_format}}
        if settings.temperature is not None:
            body["temperature"] = settings.temperature
        if settings.top_p is not None:
            body["top_p"] = settings.top_p
        if settings.output_limit is not None:
            body["max_output_tokens"] = settings.output_limit
        if settings.parallel_tool_calls is not None and request.tools:
            body["parallel_tool_calls"] = settings.parallel_tool_calls
        if settings.tool_choice is not None and request.tools:
            choice = settings.tool_choice
            body["tool_choice"] = (
                choice
                if choice in ("auto", "required", "none")
                else {"type": "function", "name": choice}
            )
        if settings.reasoning_effort is not None:
            body["reasoning"] = {"effort": settings.reasoning_effort}
        # Said either way: LiteLLM's proxy and `transformers serve` stream when it is left out.
        body["stream"] = stream
        body.update(settings.extra_body)
        return body, taken

    def _parse(self, data: bytes, ids: CallIds) -> ModelResponse:
        response: ResponsesResponse = decode(_RESPONSE, data, "a response")
        return parse_response(response, ids, identify=True)

    def _assembler(self, ids: CallIds) -> ResponsesAssembler:
        return ResponsesAssembler(ids, identify=True)


def responses_input(
    request: ModelRequest, start: int | None = None
) -> tuple[list[dict[str, Any]], set[str]]:
    """The conversation as Responses input items, and the tool-call ids it uses.
    HandoffItems are not sent (the handoff is already a call and its result); Feedback is a
    user message. With ``start``, only the request's items from there on are sent (the
    server holds the input and the items before), though the ids of all are counted."""
    items: list[dict[str, Any]] = []
    taken: set[str] = set()
    conversation: Any = request.conversation()
    if start is not None:
        taken.update(i.call_id for i in request.input if isinstance(i, ToolCallItem))
        taken.update(i.call_id for i in request.items[:start] if isinstance(i, ToolCallItem))
        conversation = (i for i in request.items[start:] if not isinstance(i, GuardrailItem))
    for item in conversation:
        if isinstance(item, ToolCallItem):
            taken.add(item.call_id)
            items.append(
                {
                    "type": "function_call",
                    "call_id": item.call_id,
                    "name": item.tool,
                    "arguments": history_arguments(item.arguments),
                }
            )
        elif isinstance(item, ToolResultItem):
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": item.call_id,
                    "output": result_text(item),
                }
            )
        elif isinstance(item, AssistantMessage):
            items.append({"type": "message", "role": "assistant", "content": item.content})
        elif isinstance(item, UserMessage | Feedback):
            items.append({"type": "message", "role": "user", "content": item.content})
        else:
            assert isinstance(item, HandoffItem)
    return items, taken


def parse_response(
    response: ResponsesResponse, ids: CallIds, *, identify: bool = False
) -> ModelResponse:
    """A ModelResponse from a ``response`` object (with the server's id for it when
    ``identify``). Raises ModelOutputError, or the server's error for a failed response."""
    if response.status == "failed" or (response.error is not None and not response.output):
        raise stream_error(_failure(response.error))
    parsed = _from_output(response.output or (), response.usage, ids, _finish(response))
    return _identified(parsed, response) if identify else parsed


def _identified(parsed: ModelResponse, response: ResponsesResponse) -> ModelResponse:
    if not response.id:
        return parsed
    return msgspec.structs.replace(parsed, response_id=response.id)


def unknown_response(exc: ModelStatusError) -> bool:
    """Whether the server refused a request because it does not know (any more) the
    response it continues: OpenAI answers 400 with ``previous_response_not_found``; others
    say 404, or name the parameter."""
    if exc.code == "previous_response_not_found":
        return True
    return exc.status_code in (400, 404) and (
        exc.param == "previous_response_id" or "previous_response_id" in exc.message
    )


def _continues(request: ModelRequest, settings: ModelSettings) -> bool:
    return bool(settings.store) and request.previous is not None


def _whole(request: ModelRequest) -> ModelRequest:
    return msgspec.structs.replace(request, previous=None)


def _forgotten(request: ModelRequest, exc: ModelStatusError) -> None:
    assert request.previous is not None
    log.info(
        "run %s: the server no longer knows response %s (%s); sending the whole conversation",
        request.run_id,
        request.previous.id,
        exc.message,
    )


def _kept(response: ModelResponse, settings: ModelSettings) -> ModelResponse:
    """The response, with the id under which the server keeps it only if it does."""
    if settings.store or response.response_id is None:
        return response
    return msgspec.structs.replace(response, response_id=None)


def _from_output(
    output: Any, usage: ResponsesUsage | None, ids: CallIds, finish: str | None
) -> ModelResponse:
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[ModelToolCall] = []
    for item in output:
        if item.type == "message":
            for part in item.content or ():
                if part.type == "output_text" and part.text:
                    texts.append(part.text)
                elif part.type == "refusal" and part.refusal:
                    refusals.append(part.refusal)
        elif item.type == "function_call":
            calls.append(
                ModelToolCall(
                    call_id=ids.assign(len(calls), item.call_id),
                    name=item.name or "",
                    arguments=wire_arguments(item.arguments),
                )
            )
    return response_of("".join(texts) or "".join(refusals), calls, responses_usage(usage), finish)


def _failure(error: Any) -> ErrorInfo:
    return ErrorInfo(message="the response failed") if error is None else error_of(error)


def _event_error(event: ResponsesEvent) -> ErrorInfo:
    """An ``error`` event: OpenAI's ``message`` and ``code`` beside the type, or an ``error``
    object or string (other servers), or both."""
    nested = ErrorInfo() if event.error is None else error_of(event.error)
    return msgspec.structs.replace(
        nested,
        message=event.message or nested.message,
        code=nested.code if event.code is None else event.code,
    )


def _finish(response: ResponsesResponse) -> str | None:
    if response.status == "incomplete":
        details = response.incomplete_details
        return (details.reason if details else None) or "incomplete"
    return None


def responses_usage(usage: ResponsesUsage | None) -> Usage:
    if usage is None:
        return Usage(requests=1)
    cached = usage.input_tokens_details
    reasoning = usage.output_tokens_details
    return Usage(
        requests=1,
        input_tokens=usage.input_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        cached_tokens=(cached.cached_tokens or 0) if cached else 0,
        reasoning_tokens=(reasoning.reasoning_tokens or 0) if reasoning else 0,
    )


class _Call:
    __slots__ = ("arguments", "call_id", "index", "name")

    def __init__(self, index: int, call_id: str, name: str) -> None:
        self.index = index
        self.call_id = call_id
        self.name = name
        self.arguments: list[str] = []


class ResponsesAssembler:
    """Builds a response from Responses streaming events.

    The final ``response.completed`` event carries the whole response, which is what
    ``respond`` would parse; the deltas before it are passed on as they come. A server that
    sends a final response without its output gets one assembled from the items and deltas
    it streamed.
    """

    __slots__ = (
        "_calls",
        "_done",
        "_final",
        "_identify",
        "_ids",
        "_items",
        "_refusal",
        "_stream_ids",
        "_text",
    )

    def __init__(self, ids: CallIds, *, identify: bool = False) -> None:
        self._ids = ids
        self._identify = identify
        # The ids announced while streaming are assigned by a twin of ``ids``, so that the
        # final response, assigned by ``ids``, gets exactly the same ones.
        self._stream_ids = ids.twin()
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int | str | None, _Call] = {}
        self._items: dict[int | str | None, OutputItem] = {}
        self._final: ResponsesResponse | None = None
        self._done = False

    def feed(self, data: bytes) -> list[StreamEvent]:
        if data == b"[DONE]":
            return []
        event: ResponsesEvent = decode(_EVENT, data, "a response event")
        kind = event.type
        if kind == "response.output_text.delta":
            if event.delta:
                self._text.append(event.delta)
                return [TextDelta(event.delta)]
        elif kind == "response.function_call_arguments.delta":
            call = self._calls.get(_key(event))
            if call is not None and event.delta:
                call.arguments.append(event.delta)
                return [ToolCallDelta(call.index, call.call_id, event.delta)]
        elif kind == "response.output_item.added":
            item = event.item
            if item is not None and item.type == "function_call":
                position = len(self._calls)
                call_id = self._stream_ids.assign(position, item.call_id)
                call = self._calls[_key(event)] = _Call(position, call_id, item.name or "")
                events: list[StreamEvent] = [ToolCallStarted(position, call_id, call.name)]
                arguments = wire_arguments(item.arguments)
                if arguments:
                    call.arguments.append(arguments)
                    events.append(ToolCallDelta(position, call_id, arguments))
                return events
        elif kind == "response.refusal.delta":
            if event.delta:
                self._refusal.append(event.delta)
                return [TextDelta(event.delta)]
        elif kind == "response.output_item.done":
            if event.item is not None:
                self._items[_key(event)] = event.item
        elif kind in ("response.completed", "response.incomplete"):
            self._final = event.response
            self._done = True
        elif kind == "response.failed":
            response = event.response
            error = response.error if response is not None else None
            raise stream_error(_failure(event.error if error is None else error))
        elif kind == "error" or (not kind and event.error is not None):
            raise stream_error(_event_error(event))
        elif not kind:
            raise ModelOutputError(f"the server sent a response event without a type: {data!r}")
        return []

    def response(self) -> ModelResponse:
        if not self._done:
            raise incomplete("response.completed")
        final = self._final or ResponsesResponse()
        if final.output:
            return parse_response(final, self._ids, identify=self._identify)
        if self._items:
            output = [self._items[key] for key in sorted(self._items, key=_order)]
            parsed = _from_output(output, final.usage, self._ids, _finish(final))
            return _identified(parsed, final) if self._identify else parsed
        calls = [
            ModelToolCall(
                call_id=self._ids.assign(call.index, call.call_id),
                name=call.name,
                arguments="".join(call.arguments),
            )
            for call in self._calls.values()
        ]
        text = "".join(self._text) or "".join(self._refusal)
        parsed = response_of(text, calls, responses_usage(final.usage), _finish(final))
        return _identified(parsed, final) if self._identify else parsed


def _key(event: ResponsesEvent) -> int | str | None:
    """Which output item an event is about: its ``output_index``, else the item's id."""
    if event.output_index is not None:
        return event.output_index
    return event.item_id or (event.item.id if event.item is not None else None)


def _order(key: int | str | None) -> tuple[int, str]:
    return (key, "") if isinstance(key, int) else (1 << 62, key or "")
