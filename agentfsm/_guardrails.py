"""Guardrails: the user's checks on what goes into a run, what comes out, and what its tools
are called with and return.

A guardrail is a plain (sync or async) function that returns a ``GuardrailFunctionOutput``:
allow, replace the content (a redaction), reject a tool call (the model is told why), or
trip (the run fails). Guardrails are code, like tools: the agents and tools declare them,
the driver runs them (they may await, and they may raise), and only their verdicts enter the
pure core, as data on the events (see ``GuardrailItem``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, overload

from ._errors import AgentFSMError, ConfigurationError

__all__ = [
    "Guardrail",
    "GuardrailFunctionOutput",
    "GuardrailKind",
    "ToolGuardrailData",
    "guardrail_list",
    "input_guardrail",
    "output_guardrail",
    "tool_input_guardrail",
    "tool_output_guardrail",
]

GuardrailKind = Literal["input", "output", "tool_input", "tool_output"]

_DECORATOR = {
    "input": "@input_guardrail",
    "output": "@output_guardrail",
    "tool_input": "@tool_input_guardrail",
    "tool_output": "@tool_output_guardrail",
}


@dataclass(frozen=True, kw_only=True)
class GuardrailFunctionOutput:
    """What a guardrail decided. Build one with ``allow``, ``replace``, ``reject_content`` or
    ``trip``; ``GuardrailFunctionOutput(output_info=..., tripwire_triggered=True)`` also works,
    as in the OpenAI Agents SDK.

    ``output_info`` is anything the guardrail wants on the record (the audit keeps it as JSON
    data; what cannot be JSON is kept as its ``repr``).
    """

    output_info: Any = None
    tripwire_triggered: bool = False
    message: str | None = None
    replacement: Any = None
    replaced: bool = False
    rejected: bool = False

    @classmethod
    def allow(cls, output_info: Any = None) -> GuardrailFunctionOutput:
        """Let the content through unchanged."""
        return cls(output_info=output_info)

    @classmethod
    def replace(cls, content: Any, output_info: Any = None) -> GuardrailFunctionOutput:
        """Let ``content`` through instead (a redaction, say): input as text or items, the
        final output as a value of the agent's output type, a call's arguments as a dict, a
        tool's result as text."""
        return cls(output_info=output_info, replacement=content, replaced=True)

    @classmethod
    def reject_content(cls, message: str, output_info: Any = None) -> GuardrailFunctionOutput:
        """Tool guardrails: a call's arguments are not run, and the model is told ``message``
        as the call's result (the run goes on); a tool's result is replaced by ``message``."""
        return cls(output_info=output_info, message=message, rejected=True)

    @classmethod
    def trip(cls, message: str | None = None, output_info: Any = None) -> GuardrailFunctionOutput:
        """Stop the run: it ends ``failed`` and the runner raises ``GuardrailTripped``."""
        return cls(output_info=output_info, message=message, tripwire_triggered=True)

    @property
    def behavior(self) -> Literal["allow", "replace", "reject", "trip"]:
        if self.tripwire_triggered:
            return "trip"
        if self.rejected:
            return "reject"
        return "replace" if self.replaced else "allow"


@dataclass(frozen=True, slots=True)
class ToolGuardrailData:
    """What a tool guardrail checks: one call of ``tool`` by ``agent``.

    ``arguments`` are the call's validated arguments. ``recheck`` is True when an input
    guardrail checks an approved call again, right before it runs. ``output`` (output
    guardrails only) is the tool's result as text, ``is_error`` when the tool raised or timed
    out. ``context`` is a copy of the run's context.
    """

    run_id: str
    call_id: str
    tool: str
    agent: str
    arguments: dict[str, Any]
    context: Any
    recheck: bool = False
    output: str | None = None
    is_error: bool = False


class Guardrail:
    """A guardrail function with its name (what the audit records). Build one with the
    decorators (``@input_guardrail`` and so on), or pass plain functions where guardrails are
    declared.

    Input guardrails are called as ``fn(context, agent, input)``: ``input`` is the text when
    it is one user message, else the list of items. Output guardrails as ``fn(context, agent,
    output)``, with the validated final output. Tool guardrails as ``fn(data)`` with a
    ``ToolGuardrailData``. ``context`` is a copy of the run's context; ``agent`` the Agent.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        kind: GuardrailKind | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"a guardrail needs a function, got {fn!r}")
        name = name or getattr(fn, "__name__", "")
        if not isinstance(name, str) or not name or name == "<lambda>":
            raise ConfigurationError(
                f"guardrail {fn!r} needs a name (the audit records it): pass name=..."
            )
        self.fn = fn
        self.name = name
        self.kind = kind
        self.is_async = inspect.iscoroutinefunction(fn)

    def __repr__(self) -> str:
        return f"Guardrail({self.name!r})"


def guardrail_list(
    given: Iterable[Guardrail | Callable[..., Any]] | None,
    kind: GuardrailKind,
    where: str,
    error: type[AgentFSMError] = ConfigurationError,
) -> tuple[Guardrail, ...]:
    """``given`` as Guardrails of ``kind`` (plain functions are wrapped). Raises ``error``
    for a guardrail declared for another kind, or two with one name."""
    if given is None:
        return ()
    if isinstance(given, Guardrail | str) or callable(given):
        raise error(f"{where}: guardrails are given as a list")
    found: list[Guardrail] = []
    for item in given:
        try:
            guard = item if isinstance(item, Guardrail) else Guardrail(item, kind=kind)
        except ConfigurationError as exc:
            raise error(f"{where}: {exc}") from None
        if guard.kind is not None and guard.kind != kind:
            raise error(
                f"{where}: {guard.name!r} is a {_DECORATOR[guard.kind]}; this list takes "
                f"{_DECORATOR[kind]}s"
            )
        if any(g.name == guard.name for g in found):
            raise error(f"{where}: two guardrails are named {guard.name!r}")
        found.append(guard)
    return tuple(found)


def _decorator(
    kind: GuardrailKind, fn: Callable[..., Any] | None, name: str | None
) -> Guardrail | Callable[[Callable[..., Any]], Guardrail]:
    def wrap(function: Callable[..., Any]) -> Guardrail:
        return Guardrail(function, name=name, kind=kind)

    return wrap(fn) if fn is not None else wrap


@overload
def input_guardrail(fn: Callable[..., Any], /) -> Guardrail: ...
@overload
def input_guardrail(*, name: str | None = None) -> Callable[[Callable[..., Any]], Guardrail]: ...
def input_guardrail(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None
) -> Guardrail | Callable[[Callable[..., Any]], Guardrail]:
    """A guardrail on the run's input and on input injected later: ``fn(context, agent,
    input)``, sync or async, returning a GuardrailFunctionOutput."""
    return _decorator("input", fn, name)


@overload
def output_guardrail(fn: Callable[..., Any], /) -> Guardrail: ...
@overload
def output_guardrail(*, name: str | None = None) -> Callable[[Callable[..., Any]], Guardrail]: ...
def output_guardrail(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None
) -> Guardrail | Callable[[Callable[..., Any]], Guardrail]:
    """A guardrail on the run's final output: ``fn(context, agent, output)``, sync or async,
    returning a GuardrailFunctionOutput."""
    return _decorator("output", fn, name)


@overload
def tool_input_guardrail(fn: Callable[..., Any], /) -> Guardrail: ...
@overload
def tool_input_guardrail(
    *, name: str | None = None
) -> Callable[[Callable[..., Any]], Guardrail]: ...
def tool_input_guardrail(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None
) -> Guardrail | Callable[[Callable[..., Any]], Guardrail]:
    """A guardrail on a tool call's arguments: ``fn(data)`` with a ToolGuardrailData, sync or
    async. It checks each call before anyone is asked to approve it, and an approved call
    again right before it runs (``data.recheck``)."""
    return _decorator("tool_input", fn, name)


@overload
def tool_output_guardrail(fn: Callable[..., Any], /) -> Guardrail: ...
@overload
def tool_output_guardrail(
    *, name: str | None = None
) -> Callable[[Callable[..., Any]], Guardrail]: ...
def tool_output_guardrail(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None
) -> Guardrail | Callable[[Callable[..., Any]], Guardrail]:
    """A guardrail on a tool's result: ``fn(data)`` with a ToolGuardrailData whose ``output``
    is set, sync or async."""
    return _decorator("tool_output", fn, name)
