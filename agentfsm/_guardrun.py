"""Running the user's guardrails and error handlers: part of the driver.

Guardrails are the user's code, so the driver runs them, never the step. Each check runs the
guardrails that apply at once (async ones on the event loop, sync ones in threads), turns each
answer into a ``GuardrailItem`` verdict, and hands the verdicts, with the content they
replaced, to the event that carries what was checked. The pure core then records them and
acts on them.

A guardrail fails closed: one that raises, returns something other than a
``GuardrailFunctionOutput``, or replaces the content with something that does not fit, counts
as a trip, its error in the verdict's message. When guardrails disagree, a trip beats a
rejection, which beats a replacement; when several replace, the first one declared is used
(they all saw the same content: to chain redactions, write them as one guardrail).

An error handler (``Runner(error_handlers={"max_turns": handler})``) is the user's code too:
the driver calls it for a run that failed on its turn limit, checks its output as the model's
would be (the output type, then the output guardrails), and hands the result to the step as
an ``ErrorHandled`` event.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import pydantic
import pydantic_core

from ._agents import Agent, AgentSet
from ._errors import InvalidEvent, ToolArgumentsError
from ._events import ErrorHandled, Event, Injected, Started
from ._guardrails import Guardrail, GuardrailFunctionOutput, GuardrailKind, ToolGuardrailData
from ._items import (
    AssistantMessage,
    Feedback,
    GuardrailItem,
    HandoffItem,
    Item,
    ModelResponse,
    ToolCallItem,
    ToolResultItem,
    UserMessage,
)
from ._json import check_json_data, copy_json, valid_text
from ._machine import RunStatus
from ._outcomes import Invocation, RunError
from ._state import RunState
from ._tools import Tool

__all__ = [
    "ERROR_KINDS",
    "Checked",
    "ErrorHandler",
    "ResponseChecks",
    "RunErrorHandlerInput",
    "RunErrorHandlerResult",
    "check_call",
    "check_input",
    "check_output",
    "check_response",
    "check_result",
    "checked_event",
    "handle_error",
    "withheld",
]

log = logging.getLogger("agentfsm")

_ITEM_TYPES = (
    UserMessage,
    AssistantMessage,
    ToolCallItem,
    ToolResultItem,
    HandoffItem,
    Feedback,
)
_RANK = {"allow": 0, "replace": 1, "reject": 2, "trip": 3}


def withheld(verdict: GuardrailItem) -> str:
    """What the model and the record see instead of a result a guardrail tripped on."""
    return f"Error: the result was withheld: guardrail {verdict.guardrail!r} tripped on it."


@dataclass(frozen=True)
class Checked:
    """The verdicts of one check, in the order the guardrails were declared, and the content
    to go on with when one replaced it (None otherwise)."""

    verdicts: tuple[GuardrailItem, ...] = ()
    replacement: Any = None

    @property
    def behavior(self) -> Literal["allow", "replace", "reject", "trip"]:
        behaviors = [v.behavior for v in self.verdicts]
        return max(behaviors, key=_RANK.__getitem__) if behaviors else "allow"

    @property
    def verdict(self) -> GuardrailItem | None:
        """The verdict that decided (the first of the strongest behavior), if any."""
        behavior = self.behavior
        return next((v for v in self.verdicts if v.behavior == behavior), None)


async def _check(
    guards: Sequence[Guardrail],
    kind: GuardrailKind,
    args: tuple[Any, ...],
    accept: Callable[[Any], Any],
    *,
    agent: str,
    call_id: str | None = None,
    tool: str | None = None,
    recheck: bool = False,
) -> Checked:
    """Run ``guards`` at once on ``args``; ``accept`` turns a replacement into the content
    to go on with, raising when it does not fit."""
    if not guards:
        return Checked()

    async def one(guard: Guardrail) -> tuple[GuardrailItem, Any]:
        def verdict(behavior: str, message: str | None, info: Any = None) -> GuardrailItem:
            return GuardrailItem(
                guardrail=guard.name,
                kind=kind,
                behavior=behavior,  # type: ignore[arg-type]
                agent=agent,
                message=None if message is None else valid_text(str(message)),
                info=_jsonable(info),
                call_id=call_id,
                tool=tool,
                recheck=recheck,
            )

        try:
            if guard.is_async:
                answer = await guard.fn(*args)
            else:
                answer = await asyncio.to_thread(guard.fn, *args)
        except Exception as exc:
            log.warning("guardrail %r raised; it counts as a trip", guard.name, exc_info=True)
            return verdict("trip", f"the guardrail raised {type(exc).__name__}: {exc}"), None
        if not isinstance(answer, GuardrailFunctionOutput):
            problem = (
                f"the guardrail returned {type(answer).__name__}, not a GuardrailFunctionOutput"
            )
            return verdict("trip", problem), None
        behavior = answer.behavior
        content = answer.replacement
        if behavior == "reject" and kind == "tool_output":
            # Rejecting a result replaces it with the message, as in the OpenAI Agents SDK.
            behavior, content = "replace", answer.message or "The result was withheld."
        elif behavior == "reject" and kind != "tool_input":
            problem = "only a tool guardrail can reject; use trip() or replace()"
            return verdict("trip", problem, answer.output_info), None
        if behavior == "replace":
            try:
                content = accept(content)
            except Exception as exc:
                problem = (
                    f"the guardrail replaced the content with something that does not fit: {exc}"
                )
                return verdict("trip", problem, answer.output_info), None
        return verdict(behavior, answer.message, answer.output_info), content

    answers = await asyncio.gather(*(one(guard) for guard in guards))
    checked = Checked(verdicts=tuple(v for v, _ in answers))
    if checked.behavior == "replace":
        replacement = next(content for v, content in answers if v.behavior == "replace")
        return Checked(verdicts=checked.verdicts, replacement=replacement)
    return checked


def _jsonable(info: Any) -> Any:
    """A guardrail's ``output_info`` as JSON data, or its repr when it cannot be."""
    if info is None:
        return None
    try:
        data = pydantic_core.to_jsonable_python(info)
        check_json_data(data, "info", InvalidEvent)
        # Kept only if it survives a JSON round trip unchanged (tuples, say, would not).
        if msgspec.json.decode(msgspec.json.encode(data)) == data:
            return data
    except Exception:
        pass
    return valid_text(repr(info))


# -- input and output --------------------------------------------------------------------------


async def check_input(
    agent: Agent, items: Sequence[Item], context: Any
) -> tuple[tuple[GuardrailItem, ...], tuple[Item, ...] | None]:
    """The verdicts of ``agent``'s input guardrails on ``items`` (the run's input, or input
    injected later), and the items to go on with when one replaced them."""

    def accept(content: Any) -> tuple[Item, ...]:
        if isinstance(content, str):
            return (UserMessage(content=content),)
        if isinstance(content, Sequence) and all(isinstance(i, _ITEM_TYPES) for i in content):
            replaced = tuple(content)
            check_json_data(msgspec.to_builtins(list(replaced)), "the input", InvalidEvent)
            return replaced
        raise InvalidEvent(f"input is text or a list of items, not {type(content).__name__}")

    given: Any = list(items)
    if len(items) == 1 and isinstance(items[0], UserMessage):
        given = items[0].content
    checked = await _check(
        agent.input_guardrails, "input", (context, agent, given), accept, agent=agent.name
    )
    return checked.verdicts, checked.replacement


async def checked_event(agents: AgentSet, state: RunState, event: Event) -> Event:
    """``event`` with the verdicts of the input guardrails on the input it brings: a new
    run's input (the starting agent's guardrails), or injected input (the current
    agent's)."""
    match event:
        case Started() if state.status is RunStatus.NEW:
            agent, items = agents.agent(state.starting_agent), state.input
        case Injected(items=items) if items and not event.guardrails:
            agent = agents.agent(state.current_agent)
        case _:
            return event
    if not agent.input_guardrails:
        return event
    verdicts, replaced = await check_input(agent, items, copy_json(state.context))
    if isinstance(event, Started):
        return msgspec.structs.replace(event, guardrails=verdicts, input=replaced)
    tripped = any(v.behavior == "trip" for v in verdicts)
    items = replaced if replaced is not None and not tripped else items
    return msgspec.structs.replace(event, items=items, guardrails=verdicts)


async def check_output(
    agents: AgentSet, agent: str, output: Any, context: Any
) -> tuple[tuple[GuardrailItem, ...], Any]:
    """The verdicts of ``agent``'s output guardrails on a final ``output`` (as validated, a
    pydantic model say), and the output to go on with (as JSON data) when one replaced it."""
    adapter = agents.output_adapter(agent)

    def accept(content: Any) -> Any:
        return _output_data(adapter, content)

    holder = agents.agent(agent)
    checked = await _check(
        holder.output_guardrails, "output", (context, holder, output), accept, agent=agent
    )
    return checked.verdicts, checked.replacement


def _output_data(adapter: pydantic.TypeAdapter[Any] | None, content: Any) -> Any:
    """A final output given by the user's code, as JSON data of the agent's output type."""
    if adapter is None:
        if not isinstance(content, str):
            raise InvalidEvent(f"the output is text, not {type(content).__name__}")
        check_json_data(content, "the output", InvalidEvent)
        return content
    data = adapter.dump_python(adapter.validate_python(content), mode="json")
    check_json_data(data, "the output", InvalidEvent)
    return data


# -- tools -------------------------------------------------------------------------------------


def _arguments(tool: Tool) -> Callable[[Any], dict[str, Any]]:
    def accept(content: Any) -> dict[str, Any]:
        if not isinstance(content, Mapping):
            raise InvalidEvent(f"arguments are a dict, not {type(content).__name__}")
        return tool.validate(content)

    return accept


async def check_call(
    tool: Tool, call: Invocation, run_id: str, context: Any, *, recheck: bool
) -> Checked:
    """The verdicts of ``tool``'s input guardrails on ``call``'s arguments; the replacement is
    the arguments to go on with, validated."""
    data = ToolGuardrailData(
        run_id=run_id,
        call_id=call.call_id,
        tool=call.tool,
        agent=call.agent,
        arguments=msgspec.json.decode(msgspec.json.encode(call.arguments)),
        context=context,
        recheck=recheck,
    )
    return await _check(
        tool.tool_input_guardrails,
        "tool_input",
        (data,),
        _arguments(tool),
        agent=call.agent,
        call_id=call.call_id,
        tool=call.tool,
        recheck=recheck,
    )


async def check_result(
    tool: Tool, call: Invocation, run_id: str, context: Any, output: str, is_error: bool
) -> Checked:
    """The verdicts of ``tool``'s output guardrails on a call's result; the replacement is the
    result text to go on with."""

    def accept(content: Any) -> str:
        text = content if isinstance(content, str) else pydantic_core.to_json(content).decode()
        return valid_text(text)

    data = ToolGuardrailData(
        run_id=run_id,
        call_id=call.call_id,
        tool=call.tool,
        agent=call.agent,
        arguments=msgspec.json.decode(msgspec.json.encode(call.arguments)),
        context=context,
        output=output,
        is_error=is_error,
    )
    return await _check(
        tool.tool_output_guardrails,
        "tool_output",
        (data,),
        accept,
        agent=call.agent,
        call_id=call.call_id,
        tool=call.tool,
    )


@dataclass
class ResponseChecks:
    """What the guardrails said about one model answer: the verdicts (by call, in the order
    of the calls, then on the final output), the arguments they replaced, the calls they
    blocked (rejected or tripped on), and the final output they replaced."""

    verdicts: list[GuardrailItem] = field(default_factory=list)
    arguments: dict[str, dict[str, Any]] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    final_output: Any = None


async def check_response(
    agents: AgentSet, agent: str, run_id: str, context: Any, response: ModelResponse
) -> ResponseChecks:
    """Check a model's answer as the step will read it: each call of a known tool with
    valid arguments, before anyone is asked to approve it; or the final output, once it
    validates."""
    checks = ResponseChecks()
    if not response.tool_calls:
        adapter = agents.output_adapter(agent)
        text = response.text or ""
        output: Any = text
        if adapter is not None:
            try:
                output = adapter.validate_json(text)
                check_json_data(adapter.dump_python(output, mode="json"), "output", InvalidEvent)
            except (pydantic.ValidationError, InvalidEvent):
                return checks  # the step asks the model again
        verdicts, replaced = await check_output(agents, agent, output, context)
        checks.verdicts.extend(verdicts)
        if any(v.behavior == "replace" for v in verdicts) and all(
            v.behavior != "trip" for v in verdicts
        ):
            checks.final_output = replaced
        return checks
    pending: list[tuple[str, Any]] = []
    for call in response.tool_calls:
        if agents.handoff_target(agent, call.name) is not None:
            continue
        tool = agents.tool(agent, call.name)
        if tool is None or not tool.tool_input_guardrails:
            continue
        try:
            arguments = tool.validate_json(call.arguments)
        except ToolArgumentsError:
            continue
        invocation = Invocation(
            call_id=call.call_id,
            tool=tool.name,
            agent=agent,
            arguments=arguments,
            idempotency_key="",
        )
        pending.append((call.call_id, check_call(tool, invocation, run_id, context, recheck=False)))
    results = await asyncio.gather(*(work for _, work in pending))
    for (call_id, _), checked in zip(pending, results, strict=True):
        checks.verdicts.extend(checked.verdicts)
        if checked.behavior in ("reject", "trip"):
            checks.blocked.add(call_id)
        elif checked.behavior == "replace":
            checks.arguments[call_id] = checked.replacement
    return checks


# -- error handlers ----------------------------------------------------------------------------

#: The errors a runner's ``error_handlers`` can handle.
ERROR_KINDS = ("max_turns",)


@dataclass(frozen=True)
class RunErrorHandlerInput:
    """What an error handler is given: the run's ``error`` (``kind`` is
    ``"max_turns_exceeded"``), a copy of its ``context``, the failed ``state``, and the
    current ``agent``."""

    error: RunError
    context: Any
    state: RunState
    agent: Agent


@dataclass(frozen=True)
class RunErrorHandlerResult:
    """An error handler's answer: the run completes with ``final_output`` (a value of the
    current agent's output type), added to the transcript as the agent's message when
    ``include_in_history``."""

    final_output: Any
    include_in_history: bool = True


#: ``handler(data)``, sync or async: a RunErrorHandlerResult (or a bare final output) to
#: complete the run, or None to leave it failed.
ErrorHandler = Callable[[RunErrorHandlerInput], Any | Awaitable[Any]]


async def handle_error(
    handler: ErrorHandler, agents: AgentSet, state: RunState
) -> ErrorHandled | None:
    """Call ``handler`` for ``state``, a run that failed on its turn limit: the event that
    records its answer, or None when it left the run failed. A handler that raises or gives
    an output that does not fit leaves it failed too, and the event says why."""
    assert state.error is not None
    agent = agents.agent(state.current_agent)
    context = copy_json(state.context)
    data = RunErrorHandlerInput(error=state.error, context=context, state=state, agent=agent)
    try:
        answer = handler(data)
        if inspect.isawaitable(answer):
            answer = await answer
    except Exception as exc:
        log.warning("the max_turns error handler raised; the run stays failed", exc_info=True)
        return ErrorHandled(failure=f"it raised {type(exc).__name__}: {valid_text(str(exc))}")
    if answer is None:
        return None
    if not isinstance(answer, RunErrorHandlerResult):
        answer = RunErrorHandlerResult(final_output=answer)
    adapter = agents.output_adapter(agent.name)
    try:
        output = _output_data(adapter, answer.final_output)
        value = output if adapter is None else adapter.validate_python(answer.final_output)
    except (pydantic.ValidationError, InvalidEvent) as exc:
        problem = f"its output does not fit agent {agent.name!r}'s output type: {exc}"
        return ErrorHandled(failure=valid_text(problem))
    verdicts, replaced = await check_output(agents, agent.name, value, context)
    if any(v.behavior == "replace" for v in verdicts) and all(
        v.behavior != "trip" for v in verdicts
    ):
        output = replaced
    return ErrorHandled(
        output=output, include_in_history=bool(answer.include_in_history), guardrails=verdicts
    )
