"""Replay as a check: would the current code decide a stored run's steps as it did?

A deploy that renames a tool, changes its argument schema or changes who must approve what
can leave stored runs that the new code takes differently: a waiting call whose tool is
gone, arguments that no longer fit, a call that ran without a decision that now needs one.
``replay`` goes through a run's recorded versions, step by step, and asks the current code
(the agents, their tools and approval rules) what it would decide at each step where the
run's code made a decision: the model's calls (which tool, whether the arguments fit, as what
values, whether the call needs approval), the arguments people approved, and the final
answer (does it fit the agent's output type). It reports the first step that would go
otherwise.

It never runs a tool body and never calls a model: what the model said and what the tools
returned are read from the record. Approval rules that are functions are the user's code,
and are called, as the driver calls them, with the run's context and the call's arguments.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import pydantic

from .._agents import Agent, AgentSet
from .._errors import ToolArgumentsError, UnknownAgentError
from .._items import (
    AssistantMessage,
    GuardrailItem,
    HandoffItem,
    Item,
    Record,
    ToolCallItem,
    ToolResultItem,
)
from .._json import digest
from .._machine import RunStatus
from .._state import CallRecord, RunState
from ..stores._base import Store

__all__ = ["Difference", "ReplayReport", "replay", "replay_runs"]

#: What differs: an agent or tool the run names is gone, a handoff is gone, a tool's
#: argument schema changed, the arguments no longer fit (or fit as other values), the
#: approval rule now decides otherwise, or the model's final answer no longer fits the
#: agent's output type.
DifferenceKind = Literal["agent", "tool", "handoff", "schema", "arguments", "approval", "output"]


class Difference(Record, frozen=True):
    """The first step of a run that the current code would take differently: the
    ``version`` that step made, its ``event`` (when the store kept it), what differs
    (``kind``), the call and tool concerned (when one is), and a sentence for a person."""

    version: int
    kind: DifferenceKind
    message: str
    event: str | None = None
    call_id: str | None = None
    tool: str | None = None


class ReplayReport(Record, frozen=True):
    """What ``replay`` found for one run: how many steps it checked, the versions it could
    not check (the one before them was pruned), and the first ``difference`` (None when the
    current code decides every checked step as the run's code did)."""

    run_id: str
    checked: int
    difference: Difference | None = None
    skipped: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether no step would be decided differently."""
        return self.difference is None

    def __str__(self) -> str:
        steps = f"{self.checked} step{'' if self.checked == 1 else 's'}"
        gaps = f" ({len(self.skipped)} not checked: history pruned)" if self.skipped else ""
        if self.difference is None:
            return f"run {self.run_id}: {steps} replayed{gaps}, all decided as recorded"
        d = self.difference
        made = f" ({d.event})" if d.event else ""
        return (
            f"run {self.run_id}: the current code decides otherwise at version "
            f"{d.version}{made}: {d.message}"
        )


async def replay(
    source: Store | Sequence[RunState],
    agent: Agent | AgentSet,
    *,
    run_id: str | None = None,
) -> ReplayReport:
    """Replay one stored run under the current code (``agent``, the starting agent) and
    report the first step it would decide differently.

    ``source`` is a store (with ``run_id``: every kept version of that run is read), or the
    run's states in order (as a ``Runner``'s ``on_step`` collects them). Never runs a tool
    body or calls a model. Raises UnknownRunError for a run the store lacks, and
    ConfigurationError for a source that is neither, or a store without ``run_id``."""
    from .._errors import ConfigurationError

    spec = agent if isinstance(agent, AgentSet) else AgentSet(agent)
    if isinstance(source, Store):
        if run_id is None:
            raise ConfigurationError("replay from a store needs the run_id of the run")
        history = await source.history(run_id)
        states = [await source.load(run_id, version=v.version) for v in history]
        events = {v.version: v.event for v in history}
    elif isinstance(source, Sequence) and all(isinstance(s, RunState) for s in source):
        states, events = list(source), {}
        if not states:
            raise ConfigurationError("replay needs at least one state of the run")
    else:
        raise ConfigurationError(
            f"replay reads a Store or a sequence of RunStates, not {type(source).__name__}"
        )
    return await _replay(states, events, spec)


async def replay_runs(store: Store, agent: Agent) -> list[ReplayReport]:
    """``replay`` every run in ``store`` started by ``agent``, most recently updated first:
    what to run over the stored runs before deploying new code."""
    spec = AgentSet(agent)
    reports = []
    for summary in await store.list():
        if summary.starting_agent == agent.name:
            reports.append(await replay(store, spec, run_id=summary.run_id))
    return reports


async def _replay(
    states: Sequence[RunState], events: dict[int, str | None], spec: AgentSet
) -> ReplayReport:
    run_id = states[0].run_id
    checked = 0
    skipped: list[int] = []

    def report(found: Difference | None) -> ReplayReport:
        if found is not None:
            found = msgspec.structs.replace(found, event=events.get(found.version))
        return ReplayReport(
            run_id=run_id, checked=checked, difference=found, skipped=tuple(skipped)
        )

    found = _agents(states[0], spec)
    if found is not None:
        return report(found)
    for before, after in itertools.pairwise(states):
        if after.version != before.version + 1:
            skipped.append(after.version)
            continue
        checked += 1
        found = _agents(after, spec) or await _step(before, after, spec)
        if found is not None:
            return report(found)
    return report(_waiting(states[-1], spec))


def _agents(state: RunState, spec: AgentSet) -> Difference | None:
    for name in (state.starting_agent, state.current_agent, state.pending_handoff):
        if name is None:
            continue
        try:
            spec.agent(name)
        except UnknownAgentError as exc:
            return Difference(version=state.version, kind="agent", message=str(exc))
    return None


async def _step(before: RunState, after: RunState, spec: AgentSet) -> Difference | None:
    """The first decision of the step from ``before`` to ``after`` that the current code
    would take otherwise."""
    added = after.items[len(before.items) :] if len(after.items) >= len(before.items) else ()
    ledger = {call.call_id: call for call in after.ledger}
    for item in added:
        if isinstance(item, ToolCallItem):
            found = await _called(item, added, ledger.get(item.call_id), before, after, spec)
            if found is not None:
                return found
    return _approved(before, after, spec) or _answered(before, after, added, spec)


async def _called(
    item: ToolCallItem,
    added: Sequence[Item],
    record: CallRecord | None,
    before: RunState,
    after: RunState,
    spec: AgentSet,
) -> Difference | None:
    """A call the model made in this step, as the run's code settled it, against what the
    current code would do with it."""
    version, name, agent = after.version, item.tool, item.agent

    def differs(kind: DifferenceKind, message: str) -> Difference:
        return Difference(
            version=version, kind=kind, message=message, call_id=item.call_id, tool=name
        )

    if agent not in spec:
        return differs("agent", f"agent {agent!r}, which made call {item.call_id}, is gone")
    handed = any(isinstance(i, HandoffItem) and i.call_id == item.call_id for i in added)
    target = spec.handoff_target(agent, name)
    if handed:
        if target is None:
            return differs(
                "handoff", f"agent {agent!r} no longer has the handoff {name!r} the model used"
            )
        return None
    tool = spec.tool(agent, name)
    if record is None:
        # Settled without running: an unknown tool, arguments that did not fit, a guardrail
        # that rejected it, a second handoff.
        result = next(
            (i for i in added if isinstance(i, ToolResultItem) and i.call_id == item.call_id),
            None,
        )
        guarded = any(isinstance(i, GuardrailItem) and i.call_id == item.call_id for i in added)
        if result is None or guarded or target is not None:
            return None
        if result.output.startswith("Unknown tool") and tool is not None:
            return differs(
                "tool",
                f"the model called tool {name!r}, unknown then (call {item.call_id}); "
                f"agent {agent!r} has it now",
            )
        if result.output.startswith("Error: ") and tool is not None and _fits(tool, item):
            return differs(
                "arguments",
                f"the arguments of call {item.call_id} did not fit tool {name!r} then; they do now",
            )
        return None
    if tool is None:
        also = " (it is a handoff now)" if target is not None else ""
        return differs(
            "tool",
            f"tool {name!r} of agent {agent!r}, which the run called (call "
            f"{item.call_id}), no longer exists: was it renamed or removed?{also}",
        )
    if record.schema is not None and record.schema != tool.parameters:
        return differs(
            "schema",
            f"the argument schema of tool {name!r} changed since the run called it (call "
            f"{item.call_id}): {_schema_change(record.schema, tool.parameters)}",
        )
    if record.edited:
        return None  # a guardrail replaced the arguments: checked with the approvals
    try:
        arguments = tool.validate_json(item.arguments)
    except ToolArgumentsError as exc:
        return differs(
            "arguments",
            f"the arguments of call {item.call_id} no longer fit tool {name!r}: {exc}",
        )
    if digest(arguments) != record.digest:
        return differs(
            "arguments",
            f"the arguments of call {item.call_id} now validate to other values "
            f"({_short(arguments)}, not {_short(record.arguments)}): decisions bound to "
            "the old ones would be refused",
        )
    if any(p.tool == tool.name for p in before.policies) or record.status == "committed":
        return None  # a sticky decision settled it: the rule was not the one deciding
    needed = record.status == "awaiting_approval"
    needs = await _needs_approval(tool, before.context, arguments)
    if needs != needed:
        now = "needs a decision" if needs else "needs no decision"
        then = "waited for one" if needed else "ran without one"
        return differs(
            "approval",
            f"the approval rule of tool {name!r} decides otherwise: call {item.call_id} "
            f"{then}, and now {now}",
        )
    return None


def _answered(
    before: RunState, after: RunState, added: Sequence[Item], spec: AgentSet
) -> Difference | None:
    """The model's final answer in this step, against the agent's current output type."""
    if after.status is not RunStatus.COMPLETED or before.status is RunStatus.COMPLETED:
        return None
    if any(isinstance(i, GuardrailItem) and i.kind == "output" for i in added):
        return None  # an output guardrail had its say: the record holds its verdict
    answer = next((i for i in reversed(added) if isinstance(i, AssistantMessage)), None)
    if answer is None or answer.agent not in spec:
        return None
    adapter = spec.output_adapter(answer.agent)
    problem = None
    if adapter is None and not isinstance(after.final_output, str):
        problem = "it answers with text now"
    elif adapter is not None:
        try:
            adapter.validate_json(answer.content)
        except (pydantic.ValidationError, ValueError) as exc:
            problem = f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"
    if problem is None:
        return None
    return Difference(
        version=after.version,
        kind="output",
        message=f"the model's final answer no longer fits agent {answer.agent!r}'s output "
        f"type ({problem}): the run would ask the model again instead of completing",
    )


def _approved(before: RunState, after: RunState, spec: AgentSet) -> Difference | None:
    """The arguments people approved in this step, against the current tools."""
    for record in after.audit[len(before.audit) :]:
        decision = record.decision
        if record.outcome != "applied" or decision.arguments is None or record.tool is None:
            continue
        agent = record.agent or after.current_agent
        tool = spec.tool(agent, record.tool) if agent in spec else None
        if tool is None:
            continue  # the model step that made the call says so
        try:
            tool.validate(decision.arguments)
        except ToolArgumentsError as exc:
            return Difference(
                version=after.version,
                kind="arguments",
                message=f"the arguments a person approved for call {decision.call_id} no "
                f"longer fit tool {record.tool!r}: {exc}",
                call_id=decision.call_id,
                tool=record.tool,
            )
    return None


def _waiting(state: RunState, spec: AgentSet) -> Difference | None:
    """The calls the run's current version still has to run or decide, against the current
    tools: what resuming it would meet, even when the step that made them was pruned."""
    if state.status.is_terminal:
        return None
    for call in state.ledger:
        if call.status == "committed":
            continue
        tool = spec.tool(call.agent, call.tool) if call.agent in spec else None
        if tool is None:
            return Difference(
                version=state.version,
                kind="tool",
                message=f"call {call.call_id} waits to run tool {call.tool!r} of agent "
                f"{call.agent!r}, which no longer exists: was it renamed or removed?",
                call_id=call.call_id,
                tool=call.tool,
            )
        if call.schema is not None and call.schema != tool.parameters:
            return Difference(
                version=state.version,
                kind="schema",
                message=f"call {call.call_id} waits with the old argument schema of tool "
                f"{call.tool!r}: {_schema_change(call.schema, tool.parameters)}",
                call_id=call.call_id,
                tool=call.tool,
            )
    return None


def _fits(tool: Any, item: ToolCallItem) -> bool:
    try:
        tool.validate_json(item.arguments)
    except ToolArgumentsError:
        return False
    return True


async def _needs_approval(tool: Any, context: Any, arguments: dict[str, Any]) -> bool:
    """The tool's approval rule on these arguments, as the driver evaluates it (a rule that
    raises asks a person)."""
    rule = tool.needs_approval
    if isinstance(rule, bool):
        return rule
    try:
        verdict = rule(msgspec.json.decode(msgspec.json.encode(context)), arguments)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)
    except Exception:
        return True


def _schema_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """In a few words, how a tool's argument schema changed."""
    before, after = old.get("properties", {}), new.get("properties", {})
    parts = []
    if gone := sorted(set(before) - set(after)):
        parts.append(f"arguments removed: {', '.join(gone)}")
    if added := sorted(set(after) - set(before)):
        parts.append(f"arguments added: {', '.join(added)}")
    if changed := sorted(k for k in set(before) & set(after) if before[k] != after[k]):
        parts.append(f"arguments changed: {', '.join(changed)}")
    if set(old.get("required", ())) != set(new.get("required", ())):
        parts.append("required arguments changed")
    return "; ".join(parts) or "its schema differs"


def _short(value: Any) -> str:
    text = msgspec.json.encode(value, order="sorted").decode()
    return text if len(text) <= 80 else text[:77] + "..."
