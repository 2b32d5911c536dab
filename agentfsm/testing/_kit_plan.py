"""What an ``AgentMachine`` example did, as data: the model's answers, the people's decisions
and the crash points. The kit records it while hypothesis explores, replays it in a plain
test, and prints it as the Python source of that test."""

from __future__ import annotations

import json
import keyword
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from .._events import Decision
from .._items import ModelResponse
from .._outcomes import ApprovalRequest
from ._scripted import ScriptedCall, Turn, _Say

__all__ = [
    "PersonDecision",
    "Plan",
    "approve",
    "decision_of",
    "expire",
    "regression_source",
    "reject",
    "stale",
]

DecisionKind = Literal["approve", "reject", "expire", "stale"]


class PersonDecision(msgspec.Struct, frozen=True):
    """One decision a person takes on a waiting call, by call id (the digest is the one the
    call waits with; ``stale`` decides on other arguments than those)."""

    kind: DecisionKind
    call_id: str
    always: bool = False
    arguments: dict[str, Any] | None = None
    message: str | None = None

    def source(self) -> str:
        parts = [_literal(self.call_id)]
        if self.always:
            parts.append("always=True")
        if self.arguments is not None:
            parts.append(f"arguments={_literal(self.arguments)}")
        if self.message is not None:
            parts.append(f"message={_literal(self.message)}")
        return f"{self.kind}({', '.join(parts)})"


def approve(
    call_id: str, *, always: bool = False, arguments: dict[str, Any] | None = None
) -> PersonDecision:
    """A person approves the waiting call ``call_id`` (for every later call of its tool
    too, with ``always``), or approves it with other ``arguments`` (an edit)."""
    return PersonDecision("approve", call_id, always=always, arguments=arguments)


def reject(call_id: str, *, always: bool = False, message: str | None = None) -> PersonDecision:
    """A person rejects the waiting call ``call_id`` (and every later call of its tool, with
    ``always``); the model is told ``message`` or a default."""
    return PersonDecision("reject", call_id, always=always, message=message)


def expire(call_id: str) -> PersonDecision:
    """No one decided on ``call_id`` in time: it expires."""
    return PersonDecision("expire", call_id)


def stale(call_id: str) -> PersonDecision:
    """A person approves ``call_id`` as it was shown earlier, with other arguments than it
    waits with now (the decision must be refused)."""
    return PersonDecision("stale", call_id)


def decision_of(made: PersonDecision, request: ApprovalRequest) -> Decision:
    """The decision record ``made`` stands for, on ``request`` as it waits."""
    if made.kind == "expire":
        return Decision(call_id=made.call_id, digest=request.digest, approved=False, expired=True)
    if made.kind == "stale":
        return Decision(call_id=made.call_id, digest="0" * 64, approved=True)
    return Decision(
        call_id=made.call_id,
        digest=request.digest,
        approved=made.kind == "approve",
        always=made.always,
        arguments=made.arguments,
        message=made.message,
        by="agentfsm.testing",
    )


@dataclass
class Plan:
    """The choices of one example: what a replay needs to take the same path."""

    script: list[Turn] = field(default_factory=list)
    #: Decision rounds, each with the index of the checkpoint it was taken on.
    rounds: list[tuple[int, list[PersonDecision]]] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    persistence: Literal["store", "json"] = "store"
    #: The checkpoint the finished run was resumed from to compare the ends, if any.
    resume_from: int | None = None


def regression_source(name: str, machine: str, plan: Plan, failure: str = "") -> str:
    """The source of a pytest function that replays ``plan`` with the machine class
    ``machine`` (which the test module must import)."""
    lines = [f"def {name}() -> None:"]
    if failure:
        first = failure.strip().splitlines()[0] if failure.strip() else ""
        lines.append(f"    # {_clip(first, 92)}")
    kinds = sorted({d.kind for _, round in plan.rounds for d in round})
    imports = sorted({*_helpers(plan.script), *kinds})
    if imports:
        lines.append(f"    from agentfsm.testing import {', '.join(imports)}")
        lines.append("")
    lines.append(f"    {machine}.replay(")
    lines.append("        script=[")
    lines += [f"            {_turn(turn)}," for turn in plan.script]
    lines.append("        ],")
    if plan.rounds:
        lines.append("        decisions=[")
        for _, round in plan.rounds:
            lines.append(f"            [{', '.join(d.source() for d in round)}],")
        lines.append("        ],")
    if plan.crashes:
        lines.append(f"        crashes={_literal(plan.crashes)},")
    lines.append(f"        persistence={_literal(plan.persistence)},")
    if plan.resume_from is not None:
        lines.append(f"        resume_from={plan.resume_from},")
    lines.append("    )")
    return "\n".join(lines) + "\n"


def _helpers(script: Sequence[Turn]) -> set[str]:
    names: set[str] = set()
    for turn in script:
        if isinstance(turn, _Say):
            names.add("say")
        elif isinstance(turn, ScriptedCall):
            names.add(_call_helper(turn))
        elif isinstance(turn, list | tuple):
            names.update(_call_helper(one) for one in turn)
    return names


def _call_helper(one: Any) -> str:
    if not isinstance(one, ScriptedCall):
        return "ModelResponse"
    if one.name.startswith("transfer_to_") and one.arguments == "{}":
        return "handoff"
    return "call" if _keywords(one) is not None else "ScriptedCall"


def _turn(turn: Turn) -> str:
    if isinstance(turn, _Say):
        return f"say({_literal(turn.text)})"
    if isinstance(turn, ScriptedCall):
        return _call(turn)
    if isinstance(turn, ModelResponse):
        return repr(turn)
    if isinstance(turn, list | tuple):
        return "[" + ", ".join(_call(c) for c in turn if isinstance(c, ScriptedCall)) + "]"
    raise TypeError(f"cannot print turn {turn!r}")


def _call(one: ScriptedCall) -> str:
    if one.name.startswith("transfer_to_") and one.arguments == "{}":
        return f"handoff({_literal(one.name.removeprefix('transfer_to_'))})"
    arguments = _keywords(one)
    if arguments is None:
        return f"ScriptedCall({_literal(one.name)}, {_literal(one.arguments)})"
    inner = ", ".join(f"{key}={_literal(value)}" for key, value in arguments.items())
    return f"call({_literal(one.name)}{', ' if inner else ''}{inner})"


def _keywords(one: ScriptedCall) -> dict[str, Any] | None:
    """The call's arguments as keyword arguments of ``call``, when they can be."""
    try:
        arguments = msgspec.json.decode(one.arguments)
    except msgspec.DecodeError:
        return None
    if not isinstance(arguments, dict) or msgspec.json.encode(arguments).decode() != (
        one.arguments
    ):
        return None
    if not all(k.isidentifier() and not keyword.iskeyword(k) for k in arguments):
        return None
    return arguments


def _literal(value: Any) -> str:
    """``value`` (JSON data) as a Python literal that evaluates back to it, quoted as ruff
    formats it."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
