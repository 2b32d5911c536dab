"""Running a handoff's options: the user's ``on_handoff`` and ``input_filter``, awaited by
the driver, their result turned into the ``HandedOff`` event the step takes. Part of the
driver."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import msgspec

from ._agents import AgentSet
from ._errors import AgentFSMError, HandoffError
from ._events import HandedOff
from ._handoffs import HandoffInputData
from ._items import GuardrailItem, Item
from ._json import check_json_data, copy_json
from ._state import RunState
from ._toolrun import carrying

__all__ = ["take_handoff"]

_ITEM_TYPES = Item.__args__


async def take_handoff(agents: AgentSet, state: RunState) -> HandedOff:
    """The options of the handoff ``state`` has taken, run: ``on_handoff`` with a copy of
    the context, then the input filter on the history the next agent would see. Raises
    HandoffError (carrying ``state``) when either raises or the filter gives no list of
    items."""
    due = state.handoff_due
    assert due is not None
    spec = agents.handoff_spec(due.source, due.target)
    if spec is None:
        return HandedOff()  # the handoff lost its options since it was taken
    where = f"the handoff from {due.source!r} to {due.target!r}"
    if spec.on_handoff is not None:
        await _call(spec.on_handoff, copy_json(state.context), f"on_handoff of {where}", state)
    if spec.input_filter is None:
        return HandedOff()
    given, items = state.conversation()
    history = (*given, *(i for i in items if not isinstance(i, GuardrailItem)))
    data = HandoffInputData(
        source=due.source, target=due.target, history=history, context=copy_json(state.context)
    )
    result = await _call(spec.input_filter, data, f"the input_filter of {where}", state)
    if isinstance(result, HandoffInputData):
        result = result.history
    return HandedOff(input=_items(result, f"the input_filter of {where}", state))


async def _call(function: Any, argument: Any, what: str, state: RunState) -> Any:
    try:
        result = function(argument)
        if inspect.isawaitable(result):
            result = await result
    except AgentFSMError as exc:
        exc.state = exc.state or state
        raise
    except Exception as exc:
        raise carrying(HandoffError(f"{what} raised {exc!r}"), state) from exc
    return result


def _items(result: Any, what: str, state: RunState) -> tuple[Item, ...]:
    """The filter's result as items, or HandoffError saying what is wrong with it."""
    if isinstance(result, str | bytes) or not isinstance(result, Sequence):
        raise carrying(
            HandoffError(
                f"{what} must return a list of items (UserMessage, AssistantMessage, ...), "
                f"not {type(result).__name__}"
            ),
            state,
        )
    for index, item in enumerate(result):
        if not isinstance(item, _ITEM_TYPES):
            raise carrying(
                HandoffError(
                    f"{what} returned {type(item).__name__} at position {index}, which is not "
                    "an item (UserMessage, AssistantMessage, ToolCallItem, ...)"
                ),
                state,
            )
    items = tuple(result)
    try:
        check_json_data(msgspec.to_builtins(list(items)), what, HandoffError)
        # Items are not checked when they are built: a field of the wrong type would make
        # the state unreadable once stored. Read back, they are checked.
        return _DECODER.decode(msgspec.json.encode(items))
    except HandoffError as exc:
        raise carrying(exc, state) from None
    except (TypeError, ValueError, msgspec.MsgspecError) as exc:
        raise carrying(
            HandoffError(f"{what} returned items that do not fit: {exc}"), state
        ) from None


_DECODER = msgspec.json.Decoder(tuple[Item, ...])
