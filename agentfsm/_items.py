"""Items: what a run's transcript is made of, and the model's answers.

Every persisted type is a frozen msgspec Struct with an explicit tag in the ``type`` field, so
a stored transcript says what each entry is and an unknown tag is an error, never a silent
dict.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "AssistantMessage",
    "Feedback",
    "GuardrailItem",
    "HandoffItem",
    "Item",
    "ModelResponse",
    "ModelToolCall",
    "Record",
    "ToolCallItem",
    "ToolResultItem",
    "Usage",
    "UserMessage",
]

#: JSON data: dicts with str keys, lists, str, int, float, bool, None.
JSON = Any


class Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every persisted value: frozen, keyword-only, strict about unknown fields."""


class _Item(Record, frozen=True, tag_field="type"):
    pass


class UserMessage(_Item, frozen=True, tag="user_message"):
    """A message from the user (the run's input, or input injected later)."""

    content: str


class AssistantMessage(_Item, frozen=True, tag="assistant_message"):
    """Text the model produced, and the agent that produced it."""

    content: str
    agent: str


class ToolCallItem(_Item, frozen=True, tag="tool_call"):
    """A tool call as the model made it. ``arguments`` is the model's raw JSON text."""

    call_id: str
    tool: str
    arguments: str
    agent: str


class ToolResultItem(_Item, frozen=True, tag="tool_result"):
    """The result the model sees for one tool call: the tool's output, an error, or a
    rejection. ``arguments`` is set when a human edited the call's arguments before approving
    it: the arguments it actually ran with."""

    call_id: str
    tool: str
    output: str
    agent: str
    is_error: bool = False
    arguments: dict[str, Any] | None = None


class HandoffItem(_Item, frozen=True, tag="handoff"):
    """The run's current agent changed from ``source`` to ``target``."""

    call_id: str
    source: str
    target: str


class Feedback(_Item, frozen=True, tag="feedback"):
    """A message from the engine to the model, such as a final output that failed validation."""

    content: str


class GuardrailItem(_Item, frozen=True, tag="guardrail"):
    """A guardrail's verdict, kept in the transcript for the audit (never sent to the model).

    ``kind`` says what was checked: the run's or injected ``input``, the final ``output``, a
    call's arguments (``tool_input``; ``recheck`` when checked again right before an approved
    call runs) or its result (``tool_output``). ``behavior`` is what the guardrail decided:
    ``allow``, ``replace`` (the content was replaced, as a redaction does), ``reject`` (the call
    was not run; the model was told ``message``) or ``trip`` (the run failed). A guardrail that
    raised counts as a trip, its error in ``message``. ``info`` is the guardrail's
    ``output_info`` as JSON data. The replaced content itself is never kept here: a redaction
    must not keep what it redacted.
    """

    guardrail: str
    kind: Literal["input", "output", "tool_input", "tool_output"]
    behavior: Literal["allow", "replace", "reject", "trip"]
    agent: str
    message: str | None = None
    info: Any = None
    call_id: str | None = None
    tool: str | None = None
    recheck: bool = False


Item = (
    UserMessage
    | AssistantMessage
    | ToolCallItem
    | ToolResultItem
    | HandoffItem
    | Feedback
    | GuardrailItem
)


class Usage(Record, frozen=True):
    """Token and request counts, summed over a run."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            requests=self.requests + other.requests,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


class ModelToolCall(Record, frozen=True):
    """One tool call in a model response. ``arguments`` is raw JSON text, unvalidated."""

    call_id: str
    name: str
    arguments: str = "{}"


class ModelResponse(Record, frozen=True):
    """What a model answered in one turn: text, tool calls, or both. ``response_id`` is the
    id under which the server keeps the response (``store=True``), for the next request to
    continue from."""

    text: str | None = None
    tool_calls: tuple[ModelToolCall, ...] = ()
    usage: Usage = Usage()
    response_id: str | None = None
