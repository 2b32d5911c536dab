"""Agents, and the resolved set of agents a run may use.

Agents and tools are code, not state: a RunState names them, and every use re-resolves the
names against the agents the caller passes. ``AgentSet`` does that resolution once per run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from ._errors import ConfigurationError, ToolChangedError, UnknownAgentError, UnknownToolError
from ._guardrails import Guardrail, guardrail_list
from ._handoffs import HandoffSpec, default_description, handoff, handoff_tool_name
from ._nested import AgentTool, OutputExtractor, check_nested
from ._settings import ModelSettings
from ._tools import Tool, ToolSpec, tool

if TYPE_CHECKING:
    from ._state import RunState

__all__ = ["Agent", "AgentSet", "handoff", "handoff_tool_name"]


@dataclass(eq=False)
class Agent:
    """An agent: a name, instructions, a model, tools, the agents it may hand off to, and the
    type of its final output (a pydantic model or any type pydantic validates; ``None`` or
    ``str`` for plain text).

    ``instructions`` is a str or a function of the run's context returning one. ``model`` is a
    model object (see ``agentfsm.testing.ScriptedModel``). Plain functions in ``tools`` are
    wrapped with ``@tool``.

    ``input_guardrails`` check the run's input (when this agent starts the run) and input
    injected while it is the current agent; ``output_guardrails`` check its final output.
    Plain functions are wrapped as guardrails (see docs/guardrails.md).

    ``handoffs`` holds agents, or ``handoff(agent, ...)`` for a handoff with options (a tool
    name, a description, an input filter, a callback). ``model_settings`` override the
    model's own settings for this agent's turns. With ``reset_tool_choice`` (the default), a
    ``tool_choice`` these settings force (``"required"`` or a tool's name) applies until the
    agent has called a tool in the run; after that its turns are sent ``"auto"``, so a forced
    call does not repeat forever. See docs/agents.md.
    """

    name: str
    instructions: str | Callable[[Any], str] = ""
    model: Any = None
    tools: list[Tool] = field(default_factory=list)
    handoffs: list[Agent | HandoffSpec] = field(default_factory=list)
    output_type: Any = None
    #: Lifecycle hooks (``RunHooks``) for what happens while this agent is the current one.
    hooks: Any = None
    input_guardrails: list[Guardrail] = field(default_factory=list)
    output_guardrails: list[Guardrail] = field(default_factory=list)
    model_settings: ModelSettings | None = None
    reset_tool_choice: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError("an agent needs a non-empty str name")
        if self.model_settings is not None and not isinstance(self.model_settings, ModelSettings):
            raise ConfigurationError(
                f"agent {self.name!r}: model_settings must be a ModelSettings, not "
                f"{type(self.model_settings).__name__}"
            )
        if not isinstance(self.reset_tool_choice, bool):
            raise ConfigurationError(f"agent {self.name!r}: reset_tool_choice must be a bool")
        self.handoffs = list(self.handoffs)
        for target in self.handoffs:
            if not isinstance(target, Agent | HandoffSpec):
                raise ConfigurationError(
                    f"agent {self.name!r}: handoffs holds agents or handoff(agent, ...), not "
                    f"{type(target).__name__}"
                )
        self.tools = [t if isinstance(t, Tool) else tool(t) for t in self.tools]
        where = f"agent {self.name!r}"
        self.input_guardrails = list(
            guardrail_list(self.input_guardrails, "input", f"{where} input_guardrails")
        )
        self.output_guardrails = list(
            guardrail_list(self.output_guardrails, "output", f"{where} output_guardrails")
        )

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    def as_tool(
        self,
        name: str | None = None,
        description: str | None = None,
        *,
        output_extractor: OutputExtractor | None = None,
        max_turns: int = 10,
        needs_approval: Any = False,
    ) -> AgentTool:
        """This agent as a tool another agent can call: each call runs it as a nested run on
        the ``input`` the model gives, inside the calling run (saved, resumed and decided on
        with it; see docs/agents.md). The call's result is the nested run's final output (JSON
        text for structured output), or what ``output_extractor`` (sync or async, given the
        nested run's ``RunResult``) returns. ``name`` defaults to the agent's name,
        ``max_turns`` (default 10) limits the nested run's turns, ``needs_approval`` is as
        for ``@tool``. Raises ToolDefinitionError for options that cannot work."""
        return AgentTool(
            self,
            name=name,
            description=description,
            output_extractor=output_extractor,
            max_turns=max_turns,
            needs_approval=needs_approval,
        )


@functools.lru_cache(maxsize=256)
def _adapter(output_type: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(output_type)


class AgentSet(Mapping[str, Agent]):
    """Every agent reachable from a starting agent through handoffs, by name, with lookup
    tables for the step. Raises ConfigurationError for two agents with one name or two tools
    with one name."""

    def __init__(self, starting: Agent) -> None:
        if not isinstance(starting, Agent):
            raise ConfigurationError(f"expected an Agent, got {type(starting).__name__}")
        self.starting = starting.name
        self._agents: dict[str, Agent] = {}
        self._tools: dict[str, dict[str, Tool]] = {}
        self._handoffs: dict[str, dict[str, str]] = {}
        self._handoff_specs: dict[str, dict[str, HandoffSpec]] = {}
        self._specs: dict[str, tuple[ToolSpec, ...]] = {}
        self._output_schemas: dict[str, dict[str, Any] | None] = {}
        #: Whether any agent has an agent tool (``Agent.as_tool``): runs of those have
        #: nested runs to drive.
        self.nests = False
        pending = [starting]
        while pending:
            agent = pending.pop()
            known = self._agents.get(agent.name)
            if known is agent:
                continue
            if known is not None:
                raise ConfigurationError(f"two different agents are named {agent.name!r}")
            self._agents[agent.name] = agent
            self._index(agent)
            pending.extend(t.agent if isinstance(t, HandoffSpec) else t for t in agent.handoffs)

    def _index(self, agent: Agent) -> None:
        tools: dict[str, Tool] = {}
        for t in agent.tools:
            if t.name in tools:
                raise ConfigurationError(f"agent {agent.name!r} has two tools named {t.name!r}")
            tools[t.name] = t
            self.nests = self.nests or isinstance(t, AgentTool)
        handoffs: dict[str, str] = {}
        by_target: dict[str, HandoffSpec] = {}
        specs = [t.spec for t in agent.tools]
        for option in agent.handoffs:
            target = (
                option
                if isinstance(option, HandoffSpec)
                else HandoffSpec(
                    agent=option,
                    tool_name=handoff_tool_name(option.name),
                    description=default_description(option.name),
                )
            )
            name = target.tool_name
            if name in tools or name in handoffs:
                raise ConfigurationError(
                    f"agent {agent.name!r}: handoff tool {name!r} clashes with another tool"
                )
            if target.agent.name in by_target:
                raise ConfigurationError(
                    f"agent {agent.name!r} has two handoffs to {target.agent.name!r}"
                )
            handoffs[name] = target.agent.name
            by_target[target.agent.name] = target
            specs.append(
                ToolSpec(
                    name=name,
                    description=target.description,
                    parameters={"type": "object", "properties": {}, "additionalProperties": False},
                )
            )
        self._tools[agent.name] = tools
        self._handoffs[agent.name] = handoffs
        self._handoff_specs[agent.name] = by_target
        choice = agent.model_settings.tool_choice if agent.model_settings is not None else None
        if (
            choice not in (None, "auto", "none", "required")
            and choice not in tools.keys() | handoffs
        ):
            raise ConfigurationError(
                f"agent {agent.name!r}: its model_settings force the tool {choice!r}, which it "
                f"does not have (tools: {', '.join([*tools, *handoffs]) or 'none'})"
            )
        self._specs[agent.name] = tuple(specs)

    # Mapping
    def __getitem__(self, name: str) -> Agent:
        return self._agents[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._agents)

    def __len__(self) -> int:
        return len(self._agents)

    def agent(self, name: str) -> Agent:
        """The agent called ``name``; raises UnknownAgentError."""
        try:
            return self._agents[name]
        except KeyError:
            known = ", ".join(sorted(self._agents))
            raise UnknownAgentError(
                f"the run names agent {name!r}, which is not reachable from {self.starting!r} "
                f"(known: {known})"
            ) from None

    def tool(self, agent: str, name: str) -> Tool | None:
        return self._tools[agent].get(name) if agent in self._tools else None

    def require_tool(self, agent: str, name: str) -> Tool:
        """The tool ``name`` of ``agent``; raises UnknownToolError."""
        found = self.tool(agent, name)
        if found is None:
            self.agent(agent)
            raise UnknownToolError(f"the run names tool {name!r}, which agent {agent!r} lacks")
        return found

    def tool_names(self, agent: str) -> list[str]:
        return [*self._tools[agent], *self._handoffs[agent]]

    def handoff_target(self, agent: str, tool_name: str) -> str | None:
        return self._handoffs[agent].get(tool_name)

    def handoff_spec(self, source: str, target: str) -> HandoffSpec | None:
        """The handoff from ``source`` to ``target``, with its options (None: none now)."""
        return self._handoff_specs.get(source, {}).get(target)

    def tool_specs(self, agent: str) -> tuple[ToolSpec, ...]:
        return self._specs[agent]

    def output_adapter(self, agent: str) -> pydantic.TypeAdapter[Any] | None:
        """The validator of ``agent``'s final output, or None for plain text."""
        output_type = self.agent(agent).output_type
        if output_type is None or output_type is str:
            return None
        try:
            return _adapter(output_type)
        except TypeError:  # unhashable type annotation
            return pydantic.TypeAdapter(output_type)

    def output_schema(self, agent: str) -> dict[str, Any] | None:
        """The JSON Schema of ``agent``'s final output (None for plain text), built once."""
        if agent not in self._output_schemas:
            adapter = self.output_adapter(agent)
            self._output_schemas[agent] = adapter.json_schema() if adapter is not None else None
        return self._output_schemas[agent]

    def check(self, state: RunState) -> None:
        """Raise ResolutionError unless every agent ``state`` names, and every tool it must
        run, resolves. A waiting call's tool may be gone: the call can still be rejected,
        expired or cancelled, and approving it is refused with the reason. A waiting or
        started call of a pinned tool (an MCP tool) needs that tool with the schema it was
        recorded with, else ToolChangedError."""
        self.agent(state.starting_agent)
        self.agent(state.current_agent)
        if state.pending_handoff is not None:
            self.agent(state.pending_handoff)
        if state.handoff_due is not None:
            self.agent(state.handoff_due.source)
        for call in state.ledger:
            if call.pinned and call.status != "committed":
                self._check_pinned(call.agent, call.tool, call.call_id, call.schema)
            elif call.status == "started":
                self.require_tool(call.agent, call.tool)
        check_nested(self, state)

    def _check_pinned(
        self, agent: str, name: str, call_id: str, schema: dict[str, Any] | None
    ) -> None:
        self.agent(agent)
        found = self.tool(agent, name)
        if found is None:
            raise ToolChangedError(
                f"call {call_id} of the run names tool {name!r} (agent {agent!r}), which is "
                "gone: its server no longer lists it. Restore it, or reject the call, or "
                "cancel the run",
                tool=name,
                call_id=call_id,
            )
        if schema is not None and found.parameters != schema:
            raise ToolChangedError(
                f"tool {name!r} (agent {agent!r}) changed its argument schema since call "
                f"{call_id} was recorded ({_schema_change(schema, found.parameters)}); the run "
                "was paused with the old tool. Restore it, or reject the call, or cancel "
                "the run",
                tool=name,
                call_id=call_id,
            )


def _schema_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A short account of how an object schema changed."""
    old, new = before.get("properties") or {}, after.get("properties") or {}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    parts = [
        f"{label}: {', '.join(names)}"
        for label, names in (("added", added), ("removed", removed), ("changed", changed))
        if names
    ]
    if set(before.get("required") or ()) != set(after.get("required") or ()):
        parts.append("required arguments changed")
    return "; ".join(parts) or "other keywords changed"
