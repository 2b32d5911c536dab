"""Agents as tools: a tool call that runs another agent as a nested run. The pure part.

A call of an agent tool (``Agent.as_tool``) runs the inner agent as a run of its own, whose
state lives in the outer run's state (``RunState.nested``, by the call's id) and so is saved,
loaded, forked and resumed with it. The driver steps the inner run with the same loop as any
run, and every inner step is recorded in the outer state (``absorb``) before the driver goes
on, so a crash inside the inner run loses nothing and runs nothing twice.

While the inner run waits for decisions, the outer call waits too (``reason="nested"``), and
the inner run's waiting calls are the outer run's: ``RunState.interruptions`` lists them with
ids that name the path to them (``outer_call/inner_call``, deeper levels likewise), each with
its own digest. A decision on such an id takes the one decision path: it is checked as it is
posted (``waiting_call`` finds the inner call), and when the outer run applies it, it is handed
to the inner run (``forward``) and the outer call runs again, which resumes the inner run
where it waited.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import ConfigurationError, InvalidEvent, ToolDefinitionError
from ._events import Decision
from ._outcomes import ApprovalRequest
from ._tools import Tool

if TYPE_CHECKING:
    from ._agents import Agent, AgentSet
    from ._decisions import DecisionRecord
    from ._state import CallRecord, RunState

__all__ = [
    "MAX_DEPTH",
    "SEPARATOR",
    "AgentTool",
    "OutputExtractor",
    "absorb",
    "check_nested",
    "forward",
    "nested_requests",
    "nested_run_id",
    "suspend",
    "waiting_call",
]

#: Joins the id of an outer call and the id of a call of its nested run.
SEPARATOR = "/"

#: How deep runs may nest (an agent tool whose agent calls an agent tool is two levels). A
#: call that would nest deeper is not run: its result says why.
MAX_DEPTH = 8

#: Turns a finished inner run (its ``RunResult``) into the text the outer model sees.
OutputExtractor = Callable[[Any], str | Awaitable[str]]

_replace = msgspec.structs.replace


class AgentTool(Tool):
    """A tool that runs ``agent`` as a nested run on the ``input`` the model gives it; build
    one with ``Agent.as_tool``. Its result is the inner run's final output (as text: JSON for
    structured output), or what ``output_extractor`` makes of the inner run's result.

    Resuming an interrupted call never redoes what its inner run did: the inner run goes on
    from its state. So the call itself counts as idempotent, and the inner run's own tools
    keep their own rules (approval, idempotency, calls in doubt).
    """

    def __init__(
        self,
        agent: Agent,
        *,
        name: str | None = None,
        description: str | None = None,
        output_extractor: OutputExtractor | None = None,
        max_turns: int = 10,
        needs_approval: Any = False,
    ) -> None:
        from ._agents import Agent

        if not isinstance(agent, Agent):
            raise ToolDefinitionError(f"as_tool needs an Agent, got {type(agent).__name__}")
        if output_extractor is not None and not callable(output_extractor):
            raise ToolDefinitionError("output_extractor must be a function of the inner result")
        if type(max_turns) is not int or max_turns < 1:
            raise ToolDefinitionError(f"max_turns must be an int of at least 1, not {max_turns!r}")
        tool_name = name or _tool_name(agent.name)
        super().__init__(
            _not_callable(tool_name),
            name=tool_name,
            description=description
            if description is not None
            else f"Ask the agent {agent.name!r} to do a task; it answers with its result.",
            parameters={
                "type": "object",
                "properties": {
                    "input": {"type": "string", "description": "What to ask the agent."}
                },
                "required": ["input"],
                "additionalProperties": False,
            },
            needs_approval=needs_approval,
            idempotent=True,
        )
        self.agent = agent
        self.output_extractor = output_extractor
        self.max_turns = max_turns
        self._agents: AgentSet | None = None

    @property
    def agents(self) -> AgentSet:
        """Every agent the inner run may use, resolved once."""
        if self._agents is None:
            from ._agents import AgentSet

            self._agents = AgentSet(self.agent)
        return self._agents

    def __repr__(self) -> str:
        return f"AgentTool({self.name!r}, agent={self.agent.name!r})"


def _tool_name(agent: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", agent)[:64] or "agent"


def _not_callable(name: str) -> Callable[..., Any]:
    def run(arguments: Any, context: Any) -> Any:
        raise ConfigurationError(
            f"agent tool {name!r} runs its agent as a nested run: a Runner calls it, not code"
        )

    return run


def nested_run_id(run_id: str, call_id: str) -> str:
    """The id of the nested run of call ``call_id`` of run ``run_id``."""
    return f"{run_id}{SEPARATOR}{call_id}"


# -- reading -----------------------------------------------------------------------------------


def nested_requests(state: RunState, call: CallRecord) -> list[ApprovalRequest]:
    """The waiting calls of the nested run of ``call`` (which waits for them), with ids that
    name the path to them from ``state``."""
    inner = state.nested.get(call.call_id)
    if inner is None:
        return []
    prefix = call.call_id + SEPARATOR
    return [_replace(r, call_id=prefix + r.call_id) for r in inner.interruptions]


def waiting_call(state: RunState, call_id: str) -> CallRecord | None:
    """The call ``call_id`` waiting for a decision in ``state``: one of its own, or one of a
    nested run (``outer/inner``, at any depth). A call that waits for its nested run is not
    decided itself."""
    for call in state.ledger:
        if call.call_id == call_id and call.status == "awaiting_approval":
            return None if call.reason == "nested" else call
    path = _split(state, call_id)
    if path is None:
        return None
    inner, rest = path
    return waiting_call(inner, rest)


def _holder(state: RunState, call_id: str) -> CallRecord | None:
    """The call of ``state`` that waits for the nested run that ``call_id`` points into."""
    if not state.nested or SEPARATOR not in call_id:
        return None
    return next(
        (
            call
            for call in state.ledger
            if call.reason == "nested"
            and call.status == "awaiting_approval"
            and call_id.startswith(call.call_id + SEPARATOR)
            and call.call_id in state.nested
        ),
        None,
    )


def _split(state: RunState, call_id: str) -> tuple[RunState, str] | None:
    """The nested run that ``call_id`` points into, and the id within it."""
    holder = _holder(state, call_id)
    if holder is None:
        return None
    return state.nested[holder.call_id], call_id[len(holder.call_id) + len(SEPARATOR) :]


# -- moves -------------------------------------------------------------------------------------


def absorb(state: RunState, call_id: str, inner: RunState) -> RunState:
    """``state`` with ``inner`` as the state of the nested run of its started call
    ``call_id``: a step of the inner run, recorded in the outer one. The outer run's status
    does not change (its tools are running); its version goes up by one, like a step's.
    Raises InvalidEvent when the call is not a started call of the running tools, or
    ``inner`` is not its nested run."""
    from ._machine import RunStatus

    if state.status is not RunStatus.TOOLS:
        raise InvalidEvent(
            f"run {state.run_id} is {state.status.value!r}: only a run whose tools are running "
            "records a nested run's steps"
        )
    call = next((c for c in state.ledger if c.call_id == call_id), None)
    if call is None or call.status != "started":
        raise InvalidEvent(f"run {state.run_id} has no started call {call_id!r}")
    if inner.run_id != nested_run_id(state.run_id, call_id):
        raise InvalidEvent(
            f"run {inner.run_id!r} is not the nested run of call {call_id!r} of run "
            f"{state.run_id!r}"
        )
    return _replace(state, nested={**state.nested, call_id: inner}, version=state.version + 1)


def suspend(state: RunState, call: CallRecord) -> CallRecord:
    """``call``, reported by the tools as waiting for its nested run's decisions, as it
    waits. Raises InvalidEvent unless its nested run is recorded and waits for decisions."""
    from ._machine import RunStatus

    inner = state.nested.get(call.call_id)
    if inner is None or inner.status is not RunStatus.INTERRUPTED or not inner.interruptions:
        raise InvalidEvent(
            f"call {call.call_id} is reported waiting for its nested run, which "
            + (
                "is not recorded"
                if inner is None
                else f"is {inner.status.value!r} with no call waiting"
            )
        )
    return _replace(call, status="awaiting_approval", reason="nested", started_by=None)


def forward(
    state: RunState,
    decisions: Sequence[Decision],
    record: Callable[[Decision, CallRecord | None, str | None], DecisionRecord],
) -> tuple[RunState, tuple[Decision, ...]]:
    """Hand the decisions on nested calls (in ``state.decisions`` and ``decisions``) to their
    nested runs, checked as ``refusal`` checks them, in the order posted; each one is
    recorded in the audit trail (``record``) as applied or refused. The outer calls whose
    nested runs got a decision run again, to resume them. Returns the state without those
    decisions, and the other ``decisions``."""
    from ._decisions import refusal

    if not state.nested:
        return state, tuple(decisions)
    mine = [d for d in state.decisions if _split(state, d.call_id) is not None]
    theirs = [d for d in decisions if _split(state, d.call_id) is not None]
    if not mine and not theirs:
        return state, tuple(decisions)
    nested = dict(state.nested)
    woken: set[str] = set()
    audit = list(state.audit)
    accepted: list[Decision] = []
    for decision in (*mine, *theirs):
        problem = refusal(state, decision, accepted)
        if problem is None and any(d.call_id == decision.call_id for d in accepted):
            continue  # the same decision, posted twice
        call = waiting_call(state, decision.call_id)
        audit.append(record(decision, call, None if problem is None else str(problem)))
        if problem is not None:
            continue
        accepted.append(decision)
        outer = _holder(state, decision.call_id)
        assert outer is not None  # _split found it
        rest = decision.call_id[len(outer.call_id) + len(SEPARATOR) :]
        inner = nested[outer.call_id]
        nested[outer.call_id] = _replace(
            inner, decisions=(*inner.decisions, _replace(decision, call_id=rest))
        )
        woken.add(outer.call_id)
    ledger = tuple(_replace(c, status="started") if c.call_id in woken else c for c in state.ledger)
    new = _replace(
        state,
        nested=nested,
        ledger=ledger,
        audit=tuple(audit),
        decisions=tuple(d for d in state.decisions if d not in mine),
    )
    return new, tuple(d for d in decisions if d not in theirs)


def check_nested(agents: AgentSet, state: RunState) -> None:
    """Raise ResolutionError unless every nested run of ``state`` resolves against the agent
    of its call's agent tool (at every depth)."""
    from ._errors import UnknownToolError

    for call_id, inner in state.nested.items():
        call = next((c for c in state.ledger if c.call_id == call_id), None)
        if call is None:
            continue
        found = agents.tool(call.agent, call.tool)
        if not isinstance(found, AgentTool):
            raise UnknownToolError(
                f"call {call_id} of run {state.run_id} ran a nested run through tool "
                f"{call.tool!r} (agent {call.agent!r}), which is no longer an agent tool"
            )
        found.agents.check(inner)
