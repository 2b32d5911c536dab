"""ScriptedModel: a model that plays a fixed script, for tests, demos and property tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import msgspec

from .._agents import handoff_tool_name
from .._errors import ModelError
from .._items import ModelResponse, ModelToolCall, Usage
from .._model import ModelRequest

__all__ = ["ScriptExhausted", "ScriptedCall", "ScriptedModel", "Turn", "call", "handoff", "say"]


class ScriptedCall(msgspec.Struct, frozen=True):
    """One scripted tool call: a tool name and raw JSON arguments."""

    name: str
    arguments: str


class _Say(msgspec.Struct, frozen=True):
    text: str


Turn: TypeAlias = (
    "_Say | ScriptedCall | Sequence[ScriptedCall] | ModelResponse | Callable[[ModelRequest], Turn]"
)


def say(text: str) -> _Say:
    """A turn in which the model answers ``text`` and calls nothing (a final message)."""
    return _Say(text)


def call(tool_name: str, /, **arguments: Any) -> ScriptedCall:
    """A turn in which the model calls one tool with these arguments. Put several in a list
    for parallel calls in one turn."""
    return ScriptedCall(tool_name, msgspec.json.encode(arguments).decode())


def handoff(agent_name: str) -> ScriptedCall:
    """A turn in which the model hands off to the agent ``agent_name``."""
    return ScriptedCall(handoff_tool_name(agent_name), "{}")


class ScriptExhausted(ModelError):
    """The run asked a ScriptedModel for a turn past the end of its script."""


class ScriptedModel:
    """A model that answers from a script of turns.

    It picks the turn from the run's own history (``request.turn``: the number of model
    responses the run has recorded, across all agents), not from a counter of its own. So a
    run resumed in a new process with a new ScriptedModel continues the script, and one
    ScriptedModel given to several agents scripts a whole multi-agent run.

    A turn may also be a function of the ModelRequest that returns a turn, for scripts that
    react to the run (to a rejection, say). Call ids are ``call_<turn>_<index>``, stable across
    processes. Each response counts one request and a few tokens in the run's usage.
    """

    def __init__(self, turns: Sequence[Turn]) -> None:
        self.turns = tuple(turns)
        self.requests: list[ModelRequest] = []
        self._ready = tuple(
            None if callable(turn) else _response(turn, index)
            for index, turn in enumerate(self.turns)
        )

    def __len__(self) -> int:
        return len(self.turns)

    async def respond(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        if request.turn >= len(self.turns):
            raise ScriptExhausted(
                f"the script has {len(self.turns)} turns; the run asked for turn {request.turn + 1}"
            )
        ready = self._ready[request.turn]
        if ready is not None:
            return ready
        turn = self.turns[request.turn]
        assert callable(turn)
        return _response(turn(request), request.turn)


_USAGE = Usage(requests=1, input_tokens=10, output_tokens=5)


def _response(turn: Any, index: int) -> ModelResponse:
    if isinstance(turn, ModelResponse):
        return turn
    if isinstance(turn, _Say):
        return ModelResponse(text=turn.text, usage=_USAGE)
    calls = [turn] if isinstance(turn, ScriptedCall) else list(turn)
    if not calls or not all(isinstance(c, ScriptedCall) for c in calls):
        raise TypeError(f"turn {index} is not say(...), call(...), a list of call(...) or handoff")
    return ModelResponse(
        tool_calls=tuple(
            ModelToolCall(call_id=f"call_{index}_{n}", name=c.name, arguments=c.arguments)
            for n, c in enumerate(calls)
        ),
        usage=_USAGE,
    )
