"""The outside world of an ``AgentMachine``: the user's agents copied with every tool body
wrapped (counted, crashable, faked), and what the bodies did."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._agents import Agent
from .._handoffs import HandoffSpec
from .._tools import Tool, ToolContext

__all__ = [
    "Crash",
    "EndOfScript",
    "Escaped",
    "Execution",
    "Keyed",
    "copy_agents",
    "keyed",
    "wrap_tool",
]

#: The keyword the kit passes a ToolContext under to a tool that takes none.
_CONTEXT = "_agentfsm_kit_context"


class Crash(BaseException):
    """The simulated process dies here. A BaseException, so that nothing in the driver
    treats it as a failure of a tool or a model: it unwinds everything, like SIGKILL."""


class Escaped(BaseException):
    """An error of the kit's own (or hypothesis') carried out through the driver, which
    would otherwise take it for the model's or a tool's failure."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class EndOfScript(BaseException):
    """A replayed script has no more turns: the replay ends here."""


@dataclass(frozen=True)
class Execution:
    """One tool body that ran (or one fake that stood in for it).

    ``approved`` is True when a person approved these exact arguments for this call, or
    approved every call of the tool ("always") before it ran. ``effect`` is False for a
    ``keyed`` fake that recognised the idempotency key and did nothing."""

    tool: str
    agent: str
    call_id: str
    idempotency_key: str
    arguments: dict[str, Any]
    approved: bool
    output: Any
    faked: bool
    effect: bool = True


class Keyed:
    """A fake for a service that honours idempotency keys: a second call with a key it has
    seen returns the first result and does nothing. Build it with ``keyed(fake)``."""

    def __init__(self, fake: Callable[..., Any]) -> None:
        self.fake = fake


def keyed(fake: Callable[..., Any]) -> Keyed:
    """Mark ``fake`` as a service that deduplicates on ``ToolContext.idempotency_key``: use
    it for a tool declared ``idempotent=True`` that passes its key on. A plain fake is a
    service that does whatever it is asked, as many times as it is asked."""
    return Keyed(fake)


#: Runs one body: (tool, the body, the call's ToolContext, args, kwargs) -> output.
Body = Callable[[Tool, Callable[..., Any], ToolContext, list[Any], dict[str, Any]], Awaitable[Any]]


def wrap_tool(
    tool: Tool,
    body: Callable[..., Any],
    run_body: Body,
    approval: Callable[[Tool, Any, dict[str, Any]], Any] | None = None,
) -> Tool:
    """A copy of ``tool`` whose body is ``run_body(tool, body, ctx, args, kwargs)``, run on
    the event loop (so that a crash stops every sibling at once), with the call's
    ToolContext whatever the tool's signature. ``approval`` replaces a function approval
    rule (it gets the original tool, to call the real rule)."""
    clone = copy.copy(tool)
    context_param = tool.context_param
    wants_context = _accepts(body, context_param) if context_param is not None else False

    async def run(*args: Any, **kwargs: Any) -> Any:
        if context_param is None:
            context = kwargs.pop(_CONTEXT)
        else:
            context = kwargs[context_param]
            if not wants_context:
                kwargs = {k: v for k, v in kwargs.items() if k != context_param}
        return await run_body(tool, body, context, list(args), kwargs)

    clone.fn = run
    clone.is_async = True
    clone.inline = False
    if context_param is None:
        clone.context_param = _CONTEXT
    if approval is not None and not isinstance(tool.needs_approval, bool):

        def rule(context: Any, arguments: dict[str, Any]) -> Any:
            return approval(tool, context, arguments)

        clone.needs_approval = rule
    return clone


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def copy_agents(
    start: Agent, tools: Callable[[Tool], Tool], model: Callable[[Agent], Any]
) -> Agent:
    """A copy of the agent graph reachable from ``start`` (cycles and handoff options kept),
    every agent with its tools passed through ``tools`` and the model ``model(agent)``."""
    copies: dict[int, Agent] = {}

    def visit(agent: Agent) -> Agent:
        done = copies.get(id(agent))
        if done is not None:
            return done
        clone = dataclasses.replace(
            agent,
            model=model(agent),
            tools=[tools(t) for t in agent.tools],
            handoffs=[],
        )
        copies[id(agent)] = clone
        clone.handoffs = [
            dataclasses.replace(target, agent=visit(target.agent))
            if isinstance(target, HandoffSpec)
            else visit(target)
            for target in agent.handoffs
        ]
        return clone

    return visit(start)


def fake_of(fakes: Mapping[str, Any], tool: Tool) -> tuple[Callable[..., Any], bool, bool]:
    """The body to run for ``tool``: (body, faked, keyed)."""
    fake = fakes.get(tool.name)
    if fake is None:
        return tool.fn, False, False
    if isinstance(fake, Keyed):
        return fake.fake, True, True
    return fake, True, False
