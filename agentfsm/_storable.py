"""Events made fit to store: part of the pure core.

A step records what its event brings, so the event is first made storable: text that cannot
be stored as JSON (lone surrogates, from a model's broken output or a tool's file names) is
made valid, and what people and the user's code gave (injected input, a replaced input or
output, a handoff's filtered history, guardrail verdicts) is refused with InvalidEvent unless
it is JSON data.
"""

from __future__ import annotations

import msgspec

from ._errors import InvalidEvent
from ._events import (
    ErrorHandled,
    Event,
    HandedOff,
    Injected,
    ModelResponded,
    Started,
    ToolsFinished,
)
from ._items import Item, ModelResponse
from ._json import check_json_data, valid_text

__all__ = ["storable", "storable_response"]

_replace = msgspec.structs.replace


def storable(event: Event) -> Event:
    """The event with text that cannot be stored as JSON (lone surrogates, from a model's
    broken output or a tool's file names) made valid; input from a person, and what the
    user's guardrails and error handler gave, is refused unless it is JSON data."""
    event = _valid_texts(event)
    match event:
        case Injected(items=items):
            check_json_data(msgspec.to_builtins(list(items)), "injected items", InvalidEvent)
        case Started(input=items, history=history) if items is not None or history is not None:
            if items is not None:
                check_json_data(msgspec.to_builtins(list(items)), "replaced input", InvalidEvent)
            if history is not None:
                check_json_data(msgspec.to_builtins(list(history)), "history", InvalidEvent)
        case HandedOff(input=items) if items is not None:
            data = msgspec.to_builtins(list(items))
            check_json_data(data, "the input filter's history", InvalidEvent)
            try:
                msgspec.convert(data, tuple[Item, ...])  # items are not checked when built
            except msgspec.ValidationError as exc:
                raise InvalidEvent(f"the input filter's history does not fit: {exc}") from None
        case ModelResponded(final_output=output) if output is not None:
            check_json_data(output, "the replaced final output", InvalidEvent)
        case ErrorHandled(output=output):
            check_json_data(output, "the error handler's output", InvalidEvent)
    for verdict in getattr(event, "guardrails", ()):
        check_json_data(
            [verdict.guardrail, verdict.agent, verdict.message, verdict.tool, verdict.call_id],
            "a guardrail verdict",
            InvalidEvent,
        )
        check_json_data(verdict.info, "a guardrail verdict's info", InvalidEvent)
    return event


def storable_response(response: ModelResponse) -> ModelResponse:
    """``response`` with text that cannot be stored as JSON (lone surrogates, from a model's
    broken output) made valid. The driver reads a response through it before it runs the
    user's code on it, so that code sees what the step will record."""
    if _all_valid(
        response.text or "",
        *(text for c in response.tool_calls for text in (c.call_id, c.name, c.arguments)),
    ):
        return response
    text = None if response.text is None else valid_text(response.text)
    calls = tuple(
        _replace(
            call,
            call_id=valid_text(call.call_id),
            name=valid_text(call.name),
            arguments=valid_text(call.arguments),
        )
        for call in response.tool_calls
    )
    return _replace(response, text=text, tool_calls=calls)


def _valid_texts(event: Event) -> Event:
    match event:
        case ModelResponded(response=response) if storable_response(response) is not response:
            return _replace(event, response=storable_response(response))
        case ToolsFinished(results=results) if not _all_valid(*(r.output for r in results)):
            outputs = tuple(_replace(r, output=valid_text(r.output)) for r in results)
            return _replace(event, results=outputs)
    return event


def _all_valid(*texts: str) -> bool:
    return all(text.isascii() or valid_text(text) is text for text in texts)
