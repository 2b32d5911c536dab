"""The model protocol the driver talks to."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from ._items import Item, ModelResponse
from ._tools import ToolSpec

__all__ = ["Model", "ModelProvider", "ModelRequest"]


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a model needs for one turn.

    ``turn`` is the number of model responses the run has recorded so far (across all
    agents); ``input`` and ``items`` together are the conversation so far.
    """

    run_id: str
    agent: str
    instructions: str
    input: tuple[Item, ...]
    items: Sequence[Item]
    tools: tuple[ToolSpec, ...]
    output_schema: dict[str, Any] | None
    turn: int

    def conversation(self) -> Iterator[Item]:
        yield from self.input
        yield from self.items


@runtime_checkable
class Model(Protocol):
    """A model: answers one request with one response."""

    async def respond(self, request: ModelRequest) -> ModelResponse: ...


@runtime_checkable
class ModelProvider(Protocol):
    """Turns a model name (``Agent(model="gpt-4.1-mini")``) into a Model."""

    def get_model(self, name: str) -> Model: ...
