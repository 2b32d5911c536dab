"""Handoffs with options: ``handoff(agent, tool_name=, description=, input_filter=,
on_handoff=)``.

An agent's ``handoffs`` list takes agents (a handoff with the defaults) and what
``handoff()`` returns. The options are code, not state, like the agents: the step knows only
whether a handoff has any, and then waits for ``HandedOff``, which the driver sends after it
ran them. The history the input filter gave enters the run there, as event data, and stays
in the state (``RunState.handoff_input``), so that a resumed run never runs the filter again.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError
from ._items import HandoffItem, Item, ToolCallItem, ToolResultItem

if TYPE_CHECKING:
    from ._agents import Agent

__all__ = [
    "HandoffInputData",
    "HandoffSpec",
    "InputFilter",
    "OnHandoff",
    "handoff",
    "handoff_tool_name",
    "remove_tool_calls",
]


@dataclass(frozen=True)
class HandoffInputData:
    """What an input filter is given: the agents the run hands off from and to, the
    ``history`` the next agent would see (the conversation so far, as the model sees it:
    the input, messages, tool calls and their results), and a copy of the run's
    ``context``."""

    source: str
    target: str
    history: tuple[Item, ...]
    context: Any = None


#: An input filter: given a HandoffInputData, returns the history the next agent sees (a
#: list of items), sync or async.
InputFilter = Callable[[HandoffInputData], "Sequence[Item] | Awaitable[Sequence[Item]]"]
#: Called with a copy of the run's context when the handoff is taken, sync or async.
OnHandoff = Callable[[Any], "Awaitable[None] | None"]

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def handoff_tool_name(agent_name: str) -> str:
    """The name of the tool a model calls to hand off to ``agent_name``."""
    return "transfer_to_" + re.sub(r"[^A-Za-z0-9_-]", "_", agent_name).lower()


def default_description(agent_name: str) -> str:
    return f"Hand the conversation over to the agent {agent_name!r}."


@dataclass(frozen=True, eq=False)
class HandoffSpec:
    """A handoff to ``agent`` with its options; build it with ``handoff()``."""

    agent: Agent
    tool_name: str
    description: str
    input_filter: InputFilter | None = None
    on_handoff: OnHandoff | None = None

    @property
    def has_options(self) -> bool:
        """Whether the driver has code to run when the handoff is taken."""
        return self.input_filter is not None or self.on_handoff is not None


def handoff(
    agent: Agent,
    *,
    tool_name: str | None = None,
    description: str | None = None,
    input_filter: InputFilter | None = None,
    on_handoff: OnHandoff | None = None,
) -> HandoffSpec:
    """A handoff to ``agent``, for another agent's ``handoffs`` list.

    ``tool_name`` and ``description`` are what the model sees (default
    ``transfer_to_<agent>`` and a sentence naming the agent). ``on_handoff`` is called with
    a copy of the run's context when the handoff is taken; ``input_filter`` is given a
    HandoffInputData and returns the history the next agent sees, in place of the run's so
    far (``remove_tool_calls`` is one). Both may be sync or async. The driver runs them once
    the turn that handed off is over, before the next agent's first turn; what the filter
    gave is kept in the run's state, so a resumed run does not run them again. A process that
    dies after they ran and before that was saved runs them again on resume (at least once).
    A filter or callback that raises, or a filter that gives something other than a list of
    items, stops the run with HandoffError, its state intact: it resumes once fixed.

    Raises ConfigurationError for a tool name the model APIs refuse (1 to 64 letters,
    digits, ``_`` and ``-``), or options that are not functions.
    """
    from ._agents import Agent

    if not isinstance(agent, Agent):
        raise ConfigurationError(f"handoff() takes an Agent, not {type(agent).__name__}")
    name = handoff_tool_name(agent.name) if tool_name is None else tool_name
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        raise ConfigurationError(
            f"handoff to {agent.name!r}: tool_name must be 1 to 64 letters, digits, '_' or "
            f"'-', not {name!r}"
        )
    if description is not None and not isinstance(description, str):
        raise ConfigurationError(f"handoff to {agent.name!r}: description must be a str")
    for option, value in (("input_filter", input_filter), ("on_handoff", on_handoff)):
        if value is not None and not callable(value):
            raise ConfigurationError(
                f"handoff to {agent.name!r}: {option} must be a function, not {value!r}"
            )
    return HandoffSpec(
        agent=agent,
        tool_name=name,
        description=default_description(agent.name) if description is None else description,
        input_filter=input_filter,
        on_handoff=on_handoff,
    )


def remove_tool_calls(data: HandoffInputData) -> tuple[Item, ...]:
    """An input filter: the history without tool calls, their results and handoffs, so the
    next agent sees only the messages."""
    return tuple(
        item
        for item in data.history
        if not isinstance(item, ToolCallItem | ToolResultItem | HandoffItem)
    )
