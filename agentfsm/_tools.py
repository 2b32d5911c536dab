"""Tools: plain Python functions with a schema, an approval rule and execution limits."""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import msgspec
import pydantic
from pydantic import BaseModel, ConfigDict

from ._errors import ToolArgumentsError, ToolDefinitionError
from ._guardrails import Guardrail, guardrail_list
from ._items import Record
from ._json import check_json_data
from ._jsonschema import schema_errors

__all__ = ["ApprovalRule", "Tool", "ToolContext", "ToolSpec", "tool"]

#: ``needs_approval``: a bool, or a (sync or async) function of the run's context and the
#: call's validated arguments.
ApprovalRule = bool | Callable[[Any, dict[str, Any]], bool | Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool can learn about the call it serves. Declare a parameter annotated
    ``ToolContext`` (any name) to receive it; it is not part of the tool's schema.

    ``idempotency_key`` is stable for the call across processes and retries.
    ``fencing_token`` (with a store) is the token of the lease the worker holds on the run: it
    grows with every claim, so a service that remembers the highest token it saw for a run
    can refuse a write from a worker that lost its lease (frozen, then woken up) after
    another took over. None without a store.
    """

    run_id: str
    call_id: str
    tool: str
    agent: str
    idempotency_key: str
    context: Any
    fencing_token: int | None = None


class ToolSpec(Record, frozen=True):
    """A tool as the model sees it: name, description, JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


class Tool:
    """A function the model can call. Build one with the ``@tool`` decorator."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        needs_approval: ApprovalRule = False,
        timeout: float | None = None,
        idempotent: bool = False,
        inline: bool = False,
        approval_timeout: float | None = None,
        on_cancel: Callable[[Any], Any] | None = None,
        tool_input_guardrails: Sequence[Guardrail | Callable[..., Any]] | None = None,
        tool_output_guardrails: Sequence[Guardrail | Callable[..., Any]] | None = None,
        parameters: Mapping[str, Any] | None = None,
        pinned: bool = False,
        quorum: int = 1,
    ) -> None:
        if not callable(fn):
            raise ToolDefinitionError(f"a tool needs a function, got {fn!r}")
        self.fn = fn
        self.name = name or fn.__name__
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ToolDefinitionError(
                f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'"
            )
        if not (isinstance(needs_approval, bool) or callable(needs_approval)):
            raise ToolDefinitionError("needs_approval must be a bool or a function")
        if timeout is not None and timeout <= 0:
            raise ToolDefinitionError("timeout must be a positive number of seconds")
        if type(quorum) is not int or quorum < 1:
            raise ToolDefinitionError(f"quorum must be an int of at least 1, not {quorum!r}")
        if quorum > 1 and needs_approval is False:
            raise ToolDefinitionError(
                f"tool {self.name!r}: quorum={quorum} counts approvals, so the tool needs "
                "needs_approval (True, or a rule)"
            )
        self.quorum = quorum
        if approval_timeout is not None and not approval_timeout > 0:
            raise ToolDefinitionError("approval_timeout must be a positive number of seconds")
        if on_cancel is not None and not callable(on_cancel):
            raise ToolDefinitionError("on_cancel must be a function of the call")
        self.on_cancel = on_cancel
        where = f"tool {self.name!r}"
        self.tool_input_guardrails = guardrail_list(
            tool_input_guardrails,
            "tool_input",
            f"{where} tool_input_guardrails",
            ToolDefinitionError,
        )
        self.tool_output_guardrails = guardrail_list(
            tool_output_guardrails,
            "tool_output",
            f"{where} tool_output_guardrails",
            ToolDefinitionError,
        )
        self.approval_timeout = approval_timeout
        self.needs_approval = needs_approval
        self.timeout = timeout
        self.idempotent = idempotent
        self.is_async = inspect.iscoroutinefunction(fn)
        if inline and self.is_async:
            raise ToolDefinitionError(
                f"tool {self.name!r}: inline is for sync functions; async ones already run on "
                "the event loop"
            )
        if inline and timeout is not None:
            raise ToolDefinitionError(
                f"tool {self.name!r}: an inline tool cannot have a timeout (nothing can stop "
                "it while it blocks the event loop)"
            )
        self.inline = inline
        self.pinned = pinned
        #: What else is known about the tool (for an MCP tool: the server's annotations and
        #: ``open_world``); approval rules and interfaces may read it.
        self.annotations: dict[str, Any] = {}
        self.arguments_model: type[BaseModel] | None = None
        self.parameters: dict[str, Any]
        self._positional: tuple[str, ...]
        self.context_param: str | None
        if parameters is not None:
            # The function takes the validated arguments as one dict, and the ToolContext.
            self.description = description or ""
            self.parameters = _object_schema(parameters, self.name)
            self._positional, self.context_param = (), "context"
        else:
            summary, params_doc = _parse_docstring(inspect.getdoc(fn) or "")
            self.description = description if description is not None else summary
            self._positional, self.context_param, model = _arguments_model(
                fn, self.name, params_doc, _definer_locals()
            )
            self.arguments_model = model
            self._validator = model.__pydantic_validator__
            self._serializer = model.__pydantic_serializer__
            self.parameters = model.model_json_schema()
        self.spec = ToolSpec(
            name=self.name, description=self.description, parameters=self.parameters
        )

    @classmethod
    def from_schema(
        cls,
        fn: Callable[..., Any],
        parameters: Mapping[str, Any],
        *,
        name: str,
        description: str = "",
        pinned: bool = False,
        **options: Any,
    ) -> Tool:
        """A tool whose arguments are described by a given JSON Schema (an object schema)
        instead of a Python signature: a remote tool, an MCP server's tool.

        ``fn`` (sync or async) is called as ``fn(arguments, context)`` with the validated
        arguments as a dict and the call's ToolContext. Arguments are checked against the
        schema with agentfsm's JSON Schema checker (types, required, additionalProperties,
        enums, bounds, local ``$ref``s; unknown keywords are left to the tool itself).
        ``pinned``: a call recorded against this tool must find the same schema when the run
        is resumed (else ToolChangedError), instead of being re-validated against the new
        one. ``options`` are those of ``Tool``: needs_approval, timeout, idempotent, ...
        Raises ToolDefinitionError for a schema that does not describe an object.
        """
        return cls(
            fn,
            name=name,
            description=description,
            parameters=parameters,
            pinned=pinned,
            **options,
        )

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def validate_json(self, raw: str) -> dict[str, Any]:
        """Validate the model's raw JSON arguments; returns them as JSON data.
        Raises ToolArgumentsError."""
        try:
            # msgspec parses strict JSON (no NaN or Infinity literals), so what passes here
            # is data that survives the state's JSON round trip.
            data = msgspec.json.decode(raw.strip() or "{}")
        except msgspec.DecodeError as exc:
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: not valid JSON ({exc})"
            ) from None
        if not isinstance(data, dict):
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: expected a JSON object"
            )
        return self.validate(data)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validate arguments given as data; returns them as JSON data.
        Raises ToolArgumentsError."""
        if self.arguments_model is None:
            return self._validate_schema(arguments)
        try:
            model = self._validator.validate_python(arguments)
        except pydantic.ValidationError as exc:
            raise ToolArgumentsError(self._explain(exc)) from None
        data: dict[str, Any] = self._serializer.to_python(model, mode="json")
        # A validator may compute a non-finite float; stored arguments must stay JSON.
        check_json_data(data, f"arguments of tool {self.name!r}", ToolArgumentsError)
        return data

    def bind(
        self, arguments: Mapping[str, Any], context: ToolContext | None
    ) -> tuple[list[Any], dict[str, Any]]:
        """The positional and keyword arguments to call the function with."""
        if self.arguments_model is None:
            return [self._validate_schema(arguments), context], {}
        try:
            model = self._validator.validate_python(arguments)
        except pydantic.ValidationError as exc:
            raise ToolArgumentsError(self._explain(exc)) from None
        values = dict(model.__dict__)
        if self.context_param is not None:
            values[self.context_param] = context
        args = [values.pop(name) for name in self._positional if name in values]
        return args, values

    def _validate_schema(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(arguments, Mapping):
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: expected a JSON object"
            )
        data = dict(arguments)
        check_json_data(data, f"arguments of tool {self.name!r}", ToolArgumentsError)
        problems = schema_errors(data, self.parameters)
        if problems:
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: {'; '.join(problems)}"
            )
        # A copy through JSON: what the caller does to its dict later cannot change them.
        copied: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(data))
        return copied

    def _explain(self, exc: pydantic.ValidationError) -> str:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'arguments'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        return f"invalid arguments for tool {self.name!r}: {problems}"


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    needs_approval: ApprovalRule = False,
    timeout: float | None = None,
    idempotent: bool = False,
    inline: bool = False,
    approval_timeout: float | None = None,
    on_cancel: Callable[[Any], Any] | None = None,
    tool_input_guardrails: Sequence[Guardrail | Callable[..., Any]] | None = None,
    tool_output_guardrails: Sequence[Guardrail | Callable[..., Any]] | None = None,
    quorum: int = 1,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    needs_approval: ApprovalRule = False,
    timeout: float | None = None,
    idempotent: bool = False,
    inline: bool = False,
    approval_timeout: float | None = None,
    on_cancel: Callable[[Any], Any] | None = None,
    tool_input_guardrails: Sequence[Guardrail | Callable[..., Any]] | None = None,
    tool_output_guardrails: Sequence[Guardrail | Callable[..., Any]] | None = None,
    quorum: int = 1,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a sync or async function into a Tool.

    The argument schema comes from the signature's annotations (through pydantic) and the
    docstring (its first paragraph describes the tool, an ``Args:`` section or ``:param:``
    lines describe the arguments).

    Args:
        name: the name the model calls it by (default: the function's name).
        description: what the model is told it does (default: from the docstring).
        needs_approval: True to pause for a human before every call, or a (sync or async)
            function of the run's context and the validated arguments that decides per call.
        timeout: seconds a call may take before it counts as failed.
        idempotent: True if running a call twice has the same effect as once; a call in doubt
            after a crash is then re-run instead of asking a human.
        inline: for a quick sync function (arithmetic, formatting): call it on the event
            loop instead of in a worker thread, which saves the thread hop (about 0.1-0.3 ms
            a call) but blocks the loop while it runs. Not with ``timeout``.
        approval_timeout: seconds a call may wait for a decision; then it expires: it does
            not run, the model is told, and the audit trail says expired (default: the
            Runner's ``approval_timeout``, else no limit).
        on_cancel: a (sync or async) function of the call (an ``Invocation``: call id,
            arguments, idempotency key), called when the run is cancelled while the call
            runs: to stop the work it started (a sync tool's thread cannot be stopped from
            outside), or to tell the service it called. The call is in doubt all the same.
        tool_input_guardrails: guardrails on a call's arguments (``@tool_input_guardrail``):
            they check each call before anyone is asked to approve it, and an approved call
            again right before it runs. They allow, replace the arguments, reject the call
            (the model is told why) or trip (the run fails).
        tool_output_guardrails: guardrails on a call's result (``@tool_output_guardrail``):
            they allow, replace it (a redaction), or trip.
        quorum: how many distinct people must approve a call before it runs (M-of-N
            approval; with ``needs_approval``). Each approval counts once per identity
            (``by``), a rejection by anyone rejects, an edit starts the count again on the
            new arguments, and a sticky ``always`` approval never stands in for it.
    """

    def wrap(function: Callable[..., Any]) -> Tool:
        return Tool(
            function,
            name=name,
            description=description,
            needs_approval=needs_approval,
            timeout=timeout,
            idempotent=idempotent,
            inline=inline,
            approval_timeout=approval_timeout,
            on_cancel=on_cancel,
            tool_input_guardrails=tool_input_guardrails,
            tool_output_guardrails=tool_output_guardrails,
            quorum=quorum,
        )

    return wrap(fn) if fn is not None else wrap


def _object_schema(schema: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A copy of ``schema`` as JSON data, checked to describe the object of a call's
    arguments."""
    try:
        data = msgspec.json.decode(msgspec.json.encode(schema))
    except (TypeError, msgspec.EncodeError) as exc:
        raise ToolDefinitionError(f"tool {name!r}: its schema is not JSON data ({exc})") from None
    if not isinstance(data, dict) or data.get("type", "object") != "object":
        raise ToolDefinitionError(
            f"tool {name!r}: its schema must describe an object (the call's arguments)"
        )
    data.setdefault("type", "object")
    data.setdefault("properties", {})
    return data


def _definer_locals() -> dict[str, Any]:
    """The local names where the tool was defined, so that string annotations naming local
    classes (``from __future__ import annotations`` inside a function) resolve."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return dict(frame.f_locals)


def _arguments_model(
    fn: Callable[..., Any], name: str, docs: Mapping[str, str], localns: dict[str, Any]
) -> tuple[tuple[str, ...], str | None, type[BaseModel]]:
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, localns=localns, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ToolDefinitionError(f"cannot read the signature of tool {name!r}: {exc}") from None
    fields: dict[str, Any] = {}
    positional: list[str] = []
    context_param = None
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"tool {name!r} cannot take *{param.name}: every argument needs a name and type"
            )
        annotation = hints.get(param.name, Any)
        if annotation is ToolContext:
            context_param = param.name
            continue
        if param.kind is param.POSITIONAL_ONLY:
            positional.append(param.name)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (
            annotation,
            pydantic.Field(default, description=docs.get(param.name)),
        )
    try:
        model = pydantic.create_model(
            f"{name}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
    except (pydantic.PydanticSchemaGenerationError, TypeError, NameError) as exc:
        raise ToolDefinitionError(
            f"tool {name!r} has an argument pydantic cannot use: {exc}"
        ) from None
    return tuple(positional), context_param, model


_HEADER = re.compile(r"^[A-Z][A-Za-z ]*:$")
_ARGS_HEADER = re.compile(r"^(Args|Arguments|Parameters|Params):$")
_GOOGLE_ARG = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_ARG = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+):\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary (the text before any section) and the per-argument descriptions of a
    docstring in Google (``Args:``) or Sphinx (``:param x:``) style."""
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None  # None while in the summary, then "args" or "other"
    current: str | None = None  # the argument whose description continues
    arg_indent: int | None = None
    for line in doc.splitlines():
        text = line.strip()
        indent = len(line) - len(line.lstrip())
        sphinx = _SPHINX_ARG.match(text)
        if sphinx:
            section, current = "args", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
        elif indent == 0 and (_HEADER.match(text) or text.startswith(":")):
            section = "args" if _ARGS_HEADER.match(text) else "other"
            current = arg_indent = None
        elif section is None:
            summary.append(line)
        elif section == "args" and text:
            google = _GOOGLE_ARG.match(text)
            if google and (arg_indent is None or indent <= arg_indent):
                arg_indent, current = indent, google.group(1)
                params[current] = google.group(2).strip()
            elif current is not None:
                params[current] = f"{params[current]} {text}".strip()
    return "\n".join(summary).strip(), params
