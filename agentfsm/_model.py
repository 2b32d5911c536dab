"""The model protocol the driver talks to, and the events a streaming model yields."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from ._items import GuardrailItem, Item, ModelResponse
from ._settings import ModelSettings
from ._tools import ToolSpec

__all__ = [
    "Model",
    "ModelProvider",
    "ModelRequest",
    "PreviousResponse",
    "ResponseDone",
    "StreamEvent",
    "StreamingModel",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallStarted",
    "stream_events",
]


class PreviousResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A response the server keeps (asked with ``store=True``), which a request may continue
    instead of sending the whole conversation: its ``id``, and how many of the request's
    ``items`` it holds already (with the request's ``input``)."""

    id: str
    items: int


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a model needs for one turn.

    ``turn`` is the number of model responses the run has recorded so far (across all
    agents); ``input`` and ``items`` together are the conversation so far (after a handoff
    whose input filter rewrote it, ``input`` is what the filter gave). ``settings`` are the
    agent's model settings, which override the model's own; ``previous`` the last response
    the server kept for the run, if any (a model that continues conversations on the server
    sends only the items after it).
    """

    run_id: str
    agent: str
    instructions: str
    input: tuple[Item, ...]
    items: Sequence[Item]
    tools: tuple[ToolSpec, ...]
    output_schema: dict[str, Any] | None
    turn: int
    settings: ModelSettings | None = None
    previous: PreviousResponse | None = None

    def conversation(self) -> Iterator[Item]:
        """The input and the transcript, as the model sees them: guardrail verdicts (kept for
        the audit) are left out."""
        yield from self.input
        for item in self.items:
            if not isinstance(item, GuardrailItem):
                yield item


# -- streaming ---------------------------------------------------------------------------------


class TextDelta(msgspec.Struct, frozen=True, tag="text_delta"):
    """The next piece of the model's text."""

    text: str


class ToolCallStarted(msgspec.Struct, frozen=True, tag="tool_call_started"):
    """The model began a tool call. ``index`` is its position among the response's calls;
    ``call_id`` is the id the call has in the final response."""

    index: int
    call_id: str
    name: str


class ToolCallDelta(msgspec.Struct, frozen=True, tag="tool_call_delta"):
    """The next piece of a tool call's raw JSON arguments."""

    index: int
    call_id: str
    arguments: str


class ResponseDone(msgspec.Struct, frozen=True, tag="response_done"):
    """The last event of a stream: the whole response, exactly what ``respond`` returns."""

    response: ModelResponse


#: What ``StreamingModel.stream`` yields: deltas, then one ``ResponseDone``.
StreamEvent = TextDelta | ToolCallStarted | ToolCallDelta | ResponseDone


@runtime_checkable
class Model(Protocol):
    """A model: answers one request with one response."""

    async def respond(self, request: ModelRequest) -> ModelResponse: ...


@runtime_checkable
class StreamingModel(Model, Protocol):
    """A model that can also answer incrementally.

    ``stream`` yields TextDelta, ToolCallStarted and ToolCallDelta events as they arrive and
    ends with one ResponseDone whose response equals what ``respond`` would return. Close the
    iterator when you stop early (``contextlib.aclosing``): that closes the connection.
    """

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]: ...


async def stream_events(model: Model, request: ModelRequest) -> AsyncIterator[StreamEvent]:
    """The events of ``model``'s answer: its stream if it has one, else one ResponseDone."""
    stream = getattr(model, "stream", None)
    if stream is None:
        yield ResponseDone(await model.respond(request))
        return
    events: AsyncIterator[StreamEvent] = stream(request)
    try:
        async for event in events:
            yield event
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


@runtime_checkable
class ModelProvider(Protocol):
    """Turns a model name (``Agent(model="gpt-4.1-mini")``) into a Model."""

    def get_model(self, name: str) -> Model: ...
