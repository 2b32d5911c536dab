"""The Chat Completions API (``POST /chat/completions``): the protocol nearly every
OpenAI-compatible server speaks (OpenAI, Azure, Ollama, vLLM, LM Studio, llama.cpp, LiteLLM,
OpenRouter)."""

from __future__ import annotations

from typing import Any

import msgspec

from .._items import (
    AssistantMessage,
    Feedback,
    HandoffItem,
    ModelResponse,
    ModelToolCall,
    ToolCallItem,
    ToolResultItem,
    Usage,
    UserMessage,
)
from .._model import ModelRequest, StreamEvent, TextDelta, ToolCallDelta, ToolCallStarted
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
from ._errors import ModelOutputError
from ._http import stream_error
from ._wire import ChatChunk, ChatCompletion, ChatFunction, ChatToolCall, ChatUsage, error_of

__all__ = ["OpenAIChatModel", "chat_messages"]

_COMPLETION = msgspec.json.Decoder(ChatCompletion)
_CHUNK = msgspec.json.Decoder(ChatChunk)


class OpenAIChatModel(OpenAIModel):
    """A model behind the Chat Completions API.

    Args:
        name: the model (``"gpt-4.1-mini"``, ``"llama3.2"``; on Azure with an ``api_version``,
            the deployment).
        provider: where to send requests (default: ``agentfsm.models.default_provider()``,
            configured from the environment).
        settings: sampling and request options, over the provider's.
        stream: whether ``respond`` streams and assembles the answer (default: the
            provider's choice).
        strict: whether to use strict mode for tool schemas and structured output where
            the schema allows it (default: the provider's choice, True unless changed).
    """

    api = "chat"

    def _tool_definition(
        self, spec: ToolSpec, strict_parameters: dict[str, Any] | None
    ) -> dict[str, Any]:
        function: dict[str, Any] = {"name": spec.name}
        if spec.description:
            function["description"] = spec.description
        if strict_parameters is not None:
            function["parameters"] = strict_parameters
            function["strict"] = True
        else:
            function["parameters"] = spec.parameters
        return {"type": "function", "function": function}

    def _build(
        self, request: ModelRequest, settings: ModelSettings, stream: bool
    ) -> tuple[dict[str, Any], set[str]]:
        instructions = request.instructions
        response_format = None
        if request.output_schema is not None:
            response_format = self._format(request.output_schema)
            if response_format is None:
                instructions = "\n\n".join(
                    filter(None, [instructions, schema_instructions(request.output_schema)])
                )
        messages, taken = chat_messages(request, instructions)
        body: dict[str, Any] = {"model": self.name, "messages": messages}
        if request.tools:
            body["tools"] = self._tools_json(request.tools)
        if response_format is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": response_format}
        if settings.temperature is not None:
            body["temperature"] = settings.temperature
        if settings.top_p is not None:
            body["top_p"] = settings.top_p
        if settings.output_limit is not None:
            body["max_completion_tokens"] = settings.output_limit
        if settings.seed is not None:
            body["seed"] = settings.seed
        if settings.stop is not None:
            body["stop"] = list(settings.stop)
        if settings.parallel_tool_calls is not None and request.tools:
            body["parallel_tool_calls"] = settings.parallel_tool_calls
        if settings.tool_choice is not None and request.tools:
            choice = settings.tool_choice
            body["tool_choice"] = (
                choice
                if choice in ("auto", "required", "none")
                else {"type": "function", "function": {"name": choice}}
            )
        if settings.reasoning_effort is not None:
            body["reasoning_effort"] = settings.reasoning_effort
        if settings.store is not None:
            body["store"] = settings.store
        # Said either way: a server that streams by default would otherwise stream `respond`.
        body["stream"] = stream
        if stream and self.provider.stream_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(settings.extra_body)
        return body, taken

    def _parse(self, data: bytes, ids: CallIds) -> ModelResponse:
        return parse_completion(data, ids)

    def _assembler(self, ids: CallIds) -> ChatAssembler:
        return ChatAssembler(ids)


def chat_messages(
    request: ModelRequest, instructions: str | None = None
) -> tuple[list[dict[str, Any]], set[str]]:
    """The conversation as Chat Completions messages, and the tool-call ids it uses.

    The instructions become the system message. An assistant message and the tool calls of
    its turn become one assistant message; each result a ``tool`` message; Feedback a user
    message. HandoffItems are not sent: the handoff is already a tool call and its result.
    """
    instructions = request.instructions if instructions is None else instructions
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    taken: set[str] = set()
    # The assistant message of the current turn, which the turn's tool calls join.
    assistant: dict[str, Any] | None = None
    for item in request.conversation():
        if isinstance(item, ToolCallItem):
            if assistant is None:
                assistant = {"role": "assistant", "content": None}
                messages.append(assistant)
            taken.add(item.call_id)
            assistant.setdefault("tool_calls", []).append(
                {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.tool, "arguments": history_arguments(item.arguments)},
                }
            )
            continue
        if isinstance(item, HandoffItem):
            continue
        if isinstance(item, AssistantMessage):
            assistant = {"role": "assistant", "content": item.content}
            messages.append(assistant)
            continue
        assistant = None
        if isinstance(item, ToolResultItem):
            messages.append(
                {"role": "tool", "tool_call_id": item.call_id, "content": result_text(item)}
            )
        elif isinstance(item, UserMessage | Feedback):
            messages.append({"role": "user", "content": item.content})
    return messages, taken


def parse_completion(data: bytes, ids: CallIds) -> ModelResponse:
    """A ModelResponse from a ``chat.completion`` body. Raises ModelOutputError."""
    completion: ChatCompletion = decode(_COMPLETION, data, "a chat completion")
    if completion.error is not None:
        raise stream_error(error_of(completion.error))
    if not completion.choices:
        raise ModelOutputError("the server sent a chat completion without choices")
    choice = min(completion.choices, key=lambda c: c.index)
    message = choice.message
    if message is None:
        return response_of(None, (), chat_usage(completion.usage), choice.finish_reason)
    calls = [
        ModelToolCall(
            call_id=ids.assign(position, call.id),
            name=function.name or "",
            arguments=wire_arguments(function.arguments),
        )
        for position, (call, function) in enumerate(_function_calls(message.tool_calls))
    ]
    text = _text(message.content) or message.refusal
    return response_of(text, calls, chat_usage(completion.usage), choice.finish_reason)


def _function_calls(calls: list[ChatToolCall] | None) -> list[tuple[ChatToolCall, ChatFunction]]:
    return [(c, c.function) for c in calls or () if c.function is not None]


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    return "".join(part.text or "" for part in content)


def chat_usage(usage: ChatUsage | None) -> Usage:
    if usage is None:
        return Usage(requests=1)
    prompt = usage.prompt_tokens_details
    completion = usage.completion_tokens_details
    return Usage(
        requests=1,
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cached_tokens=(prompt.cached_tokens or 0) if prompt else 0,
        reasoning_tokens=(completion.reasoning_tokens or 0) if completion else 0,
    )


class _Call:
    __slots__ = ("arguments", "call_id", "index", "name")

    def __init__(self, index: int, call_id: str, name: str) -> None:
        self.index = index
        self.call_id = call_id
        self.name = name
        self.arguments: list[str] = []


class ChatAssembler:
    """Builds a response from ``chat.completion.chunk`` events."""

    __slots__ = ("_by_index", "_calls", "_done", "_finish", "_ids", "_refusal", "_text", "_usage")

    def __init__(self, ids: CallIds) -> None:
        self._ids = ids
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._calls: list[_Call] = []
        self._by_index: dict[int, _Call] = {}
        self._usage: ChatUsage | None = None
        self._finish: str | None = None
        self._done = False

    def feed(self, data: bytes) -> list[StreamEvent]:
        if data == b"[DONE]":
            self._done = True
            return []
        try:
            chunk = _CHUNK.decode(data)
        except msgspec.DecodeError:
            decode(_CHUNK, data, "a chat completion chunk")  # raises ModelOutputError
            raise
        if chunk.error is not None:
            raise stream_error(error_of(chunk.error))
        if chunk.usage is not None:
            self._usage = chunk.usage
        events: list[StreamEvent] = []
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            if choice.finish_reason:
                self._finish = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            text = _text(delta.content)
            if text:
                self._text.append(text)
                events.append(TextDelta(text))
            if delta.refusal:
                self._refusal.append(delta.refusal)
                events.append(TextDelta(delta.refusal))
            for call in delta.tool_calls or ():
                self._call_delta(call, events)
        return events

    def _call_delta(self, wire: ChatToolCall, events: list[StreamEvent]) -> None:
        function = wire.function
        name = function.name if function else None
        call = self._find(wire)
        if call is None:
            if function is None:
                return  # not a function call
            position = len(self._calls)
            call = _Call(position, self._ids.assign(position, wire.id), name or "")
            self._calls.append(call)
            self._by_index[position if wire.index is None else wire.index] = call
            events.append(ToolCallStarted(call.index, call.call_id, call.name))
        elif name and name != call.name:
            call.name = name if not call.name else call.name + name
        if function is not None and function.arguments:
            piece = wire_arguments(function.arguments)
            call.arguments.append(piece)
            events.append(ToolCallDelta(call.index, call.call_id, piece))

    def _find(self, wire: ChatToolCall) -> _Call | None:
        if wire.index is not None:
            return self._by_index.get(wire.index)
        # No index (a few servers): the call with this id, or else the last one, unless
        # this delta names a new function.
        if wire.id:
            return next((c for c in self._calls if c.call_id == wire.id), None)
        if wire.function is not None and wire.function.name:
            return None
        return self._calls[-1] if self._calls else None

    def response(self) -> ModelResponse:
        if not self._done and self._finish is None:
            raise incomplete("the chat completion finished")
        calls = [
            ModelToolCall(call_id=c.call_id, name=c.name, arguments="".join(c.arguments))
            for c in self._calls
        ]
        text = "".join(self._text) or "".join(self._refusal)
        return response_of(text, calls, chat_usage(self._usage), self._finish)
