"""The pure core: ``step(state, event, agents) -> Step(state, outcome)``.

No await, no clock, no ids, no randomness, no I/O: the same inputs always give the same
outputs. Everything from outside (the model's answer, tool results, decisions, the verdicts of the
user's guardrails and error handler) arrives on the event; the agents supply only code that is
itself deterministic (argument and output validation). Which statuses a step may move the run
to is decided in ``_machine``. Beside it in the core: ``_newrun`` (a new run), ``_storable``
(an event made fit to store, before the step), ``_settle`` (what a decision does to a call) and
``_trips`` (guardrail verdicts, and a trip failing the run).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import msgspec
import pydantic

from ._agents import Agent, AgentSet
from ._decisions import refusal, repeats, standing
from ._errors import (
    IllegalTransition,
    InvalidEvent,
    ModelBehaviorError,
    ToolArgumentsError,
)
from ._events import (
    ApprovalsDecided,
    Cancelled,
    Decision,
    ErrorHandled,
    Event,
    HandedOff,
    Injected,
    ModelResponded,
    Paused,
    Resumed,
    Started,
    ToolsFinished,
)
from ._items import (
    AssistantMessage,
    Feedback,
    GuardrailItem,
    HandoffItem,
    Item,
    ModelToolCall,
    ToolCallItem,
    ToolResultItem,
)
from ._json import check_json_data, digest
from ._machine import RunStatus, allowed, status_of
from ._nested import forward, suspend
from ._newrun import check_max_turns, new_run
from ._outcomes import (
    FinalOutput,
    Handoff,
    Interruption,
    Outcome,
    RunAgain,
    RunError,
    ToolCall,
)
from ._settle import (
    DEFAULT_REJECTION,
    EXPIRED_REJECTION,
    IN_DOUBT_REJECTION,
    audit_record,
    refusal_text,
    sent_back,
    settle,
)
from ._state import (
    CallRecord,
    HandoffDue,
    HandoffInput,
    Policy,
    RunState,
    StoredResponse,
)
from ._storable import storable
from ._trips import (
    GUARDRAIL_REJECTION,
    NOT_RUN_TRIPPED,
    checked_verdicts,
    first_trip,
    require_replaced,
    trip,
)

__all__ = [
    "DEFAULT_REJECTION",
    "EXPIRED_REJECTION",
    "GUARDRAIL_REJECTION",
    "IN_DOUBT_REJECTION",
    "NOT_RUN_TRIPPED",
    "Step",
    "ToolErrors",
    "check_max_turns",
    "idempotency_key",
    "new_run",
    "pending_outcome",
    "step",
]

ToolErrors = Literal["feed", "raise"]

_replace = msgspec.structs.replace


class Step(NamedTuple):
    """The result of one step: the new state and what the driver must do next."""

    state: RunState
    outcome: Outcome


def idempotency_key(run_id: str, turn: int, call_id: str) -> str:
    """The stable idempotency key of one tool call."""
    return hashlib.sha256(f"{run_id}\x1f{turn}\x1f{call_id}".encode()).hexdigest()[:32]


def step(
    state: RunState,
    event: Event,
    agents: AgentSet | Agent,
    *,
    tool_errors: ToolErrors = "feed",
) -> Step:
    """Advance ``state`` by one ``event``. Pure.

    ``agents`` resolves the names in the state (pass the starting agent, or an AgentSet built
    from it once). ``tool_errors="raise"`` makes an unknown tool or malformed arguments from
    the model raise ModelBehaviorError instead of becoming a result the model sees.

    Raises IllegalTransition when the run's status does not accept the event, InvalidEvent
    when the event does not fit the state, ResolutionError when a name no longer resolves,
    ToolArgumentsError when edited arguments fail the tool's schema. On any error the state
    is unchanged (it is a value; nothing was modified).
    """
    legal = allowed(state.status, event)
    spec = agents if isinstance(agents, AgentSet) else AgentSet(agents)
    event = storable(event)
    match event:
        case Started():
            new, outcome = _started(state, event)
        case ModelResponded():
            new, outcome = _model_responded(state, event, spec, tool_errors)
        case ToolsFinished():
            new, outcome = _tools_finished(state, event, spec)
        case ApprovalsDecided():
            new, outcome = _approvals_decided(state, event, spec)
        case Cancelled():
            new, outcome = _cancelled(state, event, spec)
        case Injected():
            new, outcome = _injected(state, event)
        case ErrorHandled():
            new, outcome = _error_handled(state, event, spec)
        case Paused():
            new, outcome = state, Interruption(requests=(), paused=True)
        case Resumed():
            new, outcome = state, _running(state)
        case HandedOff():
            new, outcome = _handed_off(state, event)
        case _:
            raise InvalidEvent(f"not an event: {event!r}")
    status = status_of(outcome)
    if status not in legal:
        raise IllegalTransition(
            state.status, type(event).__name__, f"it would move the run to {status.value!r}"
        )
    return Step(_replace(new, status=status, version=state.version + 1), outcome)


def pending_outcome(state: RunState) -> Outcome:
    """What the driver must do for ``state`` as it stands: the outcome of the step that
    produced it. Used to resume a loaded state."""
    match state.status:
        case RunStatus.RUNNING:
            return _running(state)
        case RunStatus.TOOLS:
            return ToolCall(calls=_invocations(state.ledger))
        case RunStatus.INTERRUPTED:
            return Interruption(requests=_requests(state))
        case RunStatus.PAUSED:
            return Interruption(requests=(), paused=True)
        case RunStatus.NEW:
            raise InvalidEvent("a new run has no outcome yet; step it with Started()")
        case _:
            return FinalOutput(output=state.final_output, error=state.error)


# -- events ------------------------------------------------------------------------------------


def _started(state: RunState, event: Started) -> tuple[RunState, Outcome]:
    if state.status is RunStatus.FAILED:
        _require_out_of_turns(state, "restarted")
        if event.guardrails or event.input is not None:
            raise InvalidEvent("input guardrails check a new run's input; a restart has none")
        if event.history is not None:
            raise InvalidEvent("a session's history is given to a new run; a restart has none")
    max_turns = state.max_turns if event.max_turns is None else event.max_turns
    if max_turns < 0:
        raise InvalidEvent("max_turns must not be negative")
    verdicts = checked_verdicts(event.guardrails, "Started", {"input"})
    trace = state.trace or event.trace
    state = _replace(state, max_turns=max_turns, error=None, final_output=None, trace=trace)
    if event.input is not None:
        require_replaced(verdicts, "Started.input")
        state = _replace(state, input=event.input)
    if event.history is not None:
        if state.session is None:
            raise InvalidEvent("history is given to a run of a session; this run has none")
        state = _replace(
            state, input=(*event.history, *state.input), session_items=len(event.history)
        )
    state = _replace(state, items=state.items.extend(verdicts))
    tripped = first_trip(verdicts)
    if tripped is not None:
        return trip(state, tripped)
    return _next_turn(state)


def _model_responded(
    state: RunState, event: ModelResponded, spec: AgentSet, tool_errors: ToolErrors
) -> tuple[RunState, Outcome]:
    agent = state.current_agent
    spec.agent(agent)
    if state.handoff_due is not None:
        raise InvalidEvent(
            f"run {state.run_id} handed off to {state.handoff_due.target!r}, and the handoff's "
            "options have not run: step HandedOff first"
        )
    response = event.response
    ids = [call.call_id for call in response.tool_calls]
    if not all(ids) or len(set(ids)) != len(ids):
        raise ModelBehaviorError(f"the model's tool calls need distinct, non-empty ids: {ids}")
    turn = state.turn + 1
    usage = state.usage + response.usage
    if response.response_id is not None:
        # The server keeps the response: the run's items up to its own (an answer is one
        # message; tool calls are an optional message and the calls).
        calls = len(response.tool_calls)
        held = (1 if response.text else 0) + calls if calls else 1
        stored = StoredResponse(id=response.response_id, items=len(state.items) + held)
        state = _replace(state, stored_response=stored)
    verdicts = checked_verdicts(event.guardrails, "ModelResponded", {"tool_input", "output"})
    output_checks = [v for v in verdicts if v.kind == "output"]
    call_checks: dict[str, list[GuardrailItem]] = {}
    for verdict in verdicts:
        if verdict.kind == "tool_input":
            if verdict.recheck:
                raise InvalidEvent("a model's answer carries no rechecks of approved calls")
            call_checks.setdefault(str(verdict.call_id), []).append(verdict)

    if not response.tool_calls:
        if call_checks or event.arguments:
            raise InvalidEvent("tool guardrail verdicts for an answer without tool calls")
        text = response.text or ""
        done = _replace(state, turn=turn, usage=usage)
        adapter = spec.output_adapter(agent)
        output: Any = text
        if adapter is not None:
            try:
                output = adapter.dump_python(adapter.validate_json(text), mode="json")
                check_json_data(output, "the final output", InvalidEvent)
            except (pydantic.ValidationError, InvalidEvent) as exc:
                if output_checks:
                    raise InvalidEvent(
                        "output guardrail verdicts for an answer that is not a valid final output"
                    ) from None
                problem = _explain(exc) if isinstance(exc, pydantic.ValidationError) else str(exc)
                feedback = Feedback(
                    content=(
                        "Your final answer does not match the required output schema: "
                        f"{problem}. Answer again with output that matches it."
                    )
                )
                said = AssistantMessage(content=text, agent=agent)
                return _next_turn(_replace(done, items=done.items.extend([said, feedback])))
        return _final(done, agent, text, output, output_checks, event.final_output, spec)
    if output_checks or event.final_output is not None:
        raise InvalidEvent("output guardrail verdicts for an answer with tool calls")

    new_items: list[Item] = []
    results: list[Item] = []
    ledger: list[CallRecord] = []
    handoff = state.pending_handoff
    tripped: GuardrailItem | None = None
    replaced = set(event.arguments)
    if response.text:
        new_items.append(AssistantMessage(content=response.text, agent=agent))
    for call in response.tool_calls:
        new_items.append(
            ToolCallItem(
                call_id=call.call_id, tool=call.name, arguments=call.arguments, agent=agent
            )
        )
        target = spec.handoff_target(agent, call.name)
        if target is not None:
            if handoff is not None:
                message = "Only one handoff per turn is allowed; this one was ignored."
                results.append(_answer(call, agent, message, is_error=True))
                continue
            handoff = target
            results.append(_answer(call, agent, f"Transferred to {target}."))
            results.append(HandoffItem(call_id=call.call_id, source=agent, target=target))
            continue
        tool = spec.tool(agent, call.name)
        if tool is None:
            message = (
                f"Unknown tool {call.name!r}. Available tools: "
                f"{', '.join(spec.tool_names(agent)) or 'none'}."
            )
            if tool_errors == "raise":
                raise ModelBehaviorError(message)
            results.append(_answer(call, agent, message, is_error=True))
            continue
        try:
            arguments = tool.validate_json(call.arguments)
        except ToolArgumentsError as exc:
            if tool_errors == "raise":
                raise ModelBehaviorError(str(exc)) from None
            results.append(_answer(call, agent, f"Error: {exc}", is_error=True))
            continue
        checks = call_checks.pop(call.call_id, [])
        results.extend(checks)
        tripped = tripped or first_trip(checks)
        reject = next((v for v in checks if v.behavior == "reject"), None)
        if reject is not None and first_trip(checks) is None:
            results.append(_answer(call, agent, reject.message or GUARDRAIL_REJECTION))
            continue
        edited = call.call_id in event.arguments
        if edited:
            require_replaced(checks, f"ModelResponded.arguments[{call.call_id!r}]")
            replaced.discard(call.call_id)
            try:
                arguments = tool.validate(event.arguments[call.call_id])
            except ToolArgumentsError as exc:
                raise InvalidEvent(f"a guardrail's replaced arguments do not fit: {exc}") from None
        elif any(v.behavior == "replace" for v in checks) and first_trip(checks) is None:
            raise InvalidEvent(
                f"call {call.call_id}: a guardrail replaced its arguments, and "
                "the event does not carry them"
            )
        needs = (
            tool.needs_approval
            if isinstance(tool.needs_approval, bool)
            else event.needs_approval.get(call.call_id, True)
        )
        status: Literal["awaiting_approval", "started", "committed"] = "started"
        if needs:
            policy = _policy(state.policies, tool.name)
            if policy is None or (policy.approved and tool.quorum > 1):
                # A sticky approval by one person never stands in for a quorum.
                status = "awaiting_approval"
            elif not policy.approved:
                status = "committed"
                results.append(_rejection(call.call_id, tool.name, agent, policy.message))
        ledger.append(
            CallRecord(
                call_id=call.call_id,
                tool=tool.name,
                agent=agent,
                arguments=arguments,
                digest=digest(arguments),
                idempotency_key=idempotency_key(state.run_id, turn, call.call_id),
                status=status,
                schema=tool.parameters,
                deadline=event.deadlines.get(call.call_id) if needs else None,
                edited=edited,
                recheck=status == "awaiting_approval",
                pinned=tool.pinned,
                quorum=tool.quorum,
            )
        )
    if call_checks or replaced:
        unchecked = sorted({*call_checks, *replaced})
        raise InvalidEvent(
            f"tool guardrail verdicts or arguments for calls no guardrail could check (unknown "
            f"tools, invalid arguments, handoffs, or not in the answer): {unchecked}"
        )
    new = _replace(
        state,
        turn=turn,
        usage=usage,
        items=state.items.extend(new_items + results),
        ledger=tuple(ledger),
        pending_handoff=handoff,
    )
    if tripped is not None:
        return trip(new, tripped)
    return _advance(new, spec)


def _final(
    state: RunState,
    agent: str,
    text: str,
    output: Any,
    verdicts: Sequence[GuardrailItem],
    replacement: Any,
    spec: AgentSet,
) -> tuple[RunState, Outcome]:
    """The model's final answer, as the output guardrails leave it: through, replaced (the
    transcript then holds the replacement, not what it replaced), or tripped."""
    tripped = first_trip(verdicts)
    if any(v.behavior == "replace" for v in verdicts):
        if tripped is None:
            output = _valid_output(spec, agent, replacement)
            text = output if isinstance(output, str) else msgspec.json.encode(output).decode()
    elif replacement is not None:
        require_replaced(verdicts, "ModelResponded.final_output")
    items: list[Item] = [AssistantMessage(content=text, agent=agent), *verdicts]
    state = _replace(state, items=state.items.extend(items))
    if tripped is not None:
        return trip(state, tripped)
    return _replace(state, final_output=output), FinalOutput(output=output)


def _valid_output(spec: AgentSet, agent: str, value: Any) -> Any:
    """``value`` as a final output of ``agent``, as JSON data; InvalidEvent if it does not
    fit the agent's output type."""
    adapter = spec.output_adapter(agent)
    if adapter is None:
        if not isinstance(value, str):
            raise InvalidEvent(f"agent {agent!r} answers with text, not {type(value).__name__}")
        check_json_data(value, "the final output", InvalidEvent)
        return value
    try:
        output = adapter.dump_python(adapter.validate_json(msgspec.json.encode(value)), mode="json")
    except (pydantic.ValidationError, TypeError, ValueError) as exc:
        raise InvalidEvent(
            f"the final output does not fit agent {agent!r}'s output type: {exc}"
        ) from None
    check_json_data(output, "the final output", InvalidEvent)
    return output


def _tools_finished(
    state: RunState, event: ToolsFinished, spec: AgentSet
) -> tuple[RunState, Outcome]:
    new = _record_tools(state, event, spec)
    tripped = first_trip(event.guardrails)
    if tripped is not None:
        return trip(new, tripped)
    return _advance(new, spec)


def _record_tools(state: RunState, event: ToolsFinished, spec: AgentSet) -> RunState:
    """The started calls' results in the transcript with their guardrails' verdicts, the
    calls in doubt waiting, and the calls whose arguments a guardrail replaced after their
    approval waiting for a decision on the new ones."""
    started = {call.call_id for call in state.ledger if call.status == "started"}
    results = {result.call_id: result for result in event.results}
    doubt = set(event.in_doubt)
    returned = event.arguments
    waits = set(event.nested)
    if (
        len(results) != len(event.results)
        or len(doubt) != len(event.in_doubt)
        or len(waits) != len(event.nested)
        or results.keys() & doubt
        or returned.keys() & (results.keys() | doubt)
        or waits & (results.keys() | doubt | returned.keys())
        or results.keys() | doubt | returned.keys() | waits != started
        or not event.started_by.keys() <= doubt
    ):
        reported = [result.call_id for result in event.results] + list(event.in_doubt)
        raise InvalidEvent(
            f"ToolsFinished must report each started call exactly once, and say who started "
            f"only calls in doubt (started: {sorted(started)}; reported: {reported}; "
            f"sent back for approval: {sorted(returned)}; waiting for nested runs: "
            f"{sorted(waits)}; started_by: "
            f"{sorted(event.started_by)})"
        )
    checks: dict[str, list[GuardrailItem]] = {}
    for verdict in checked_verdicts(
        event.guardrails, type(event).__name__, {"tool_input", "tool_output"}
    ):
        if verdict.call_id not in started or verdict.recheck != (verdict.kind == "tool_input"):
            raise InvalidEvent(
                f"a guardrail verdict on call {verdict.call_id} does not fit: only started "
                "calls are checked here, their arguments again (recheck) and their results"
            )
        checks.setdefault(verdict.call_id, []).append(verdict)
    items: list[Item] = []
    ledger: list[CallRecord] = []
    nested = state.nested
    for call in state.ledger:
        items.extend(checks.get(call.call_id, ()))
        if call.call_id in waits:
            ledger.append(suspend(state, call))
            continue
        if call.call_id in returned:
            require_replaced(checks.get(call.call_id, ()), "ToolsFinished.arguments")
            ledger.append(sent_back(call, returned[call.call_id], spec))
            continue
        result = results.get(call.call_id)
        if result is not None:
            items.append(
                ToolResultItem(
                    call_id=call.call_id,
                    tool=call.tool,
                    output=result.output,
                    is_error=result.is_error,
                    agent=call.agent,
                    arguments=call.arguments if call.edited else None,
                )
            )
            call = _replace(call, status="committed")
            if call.call_id in nested:
                # The nested run is over: its result is the call's.
                nested = {k: v for k, v in nested.items() if k != call.call_id}
        elif call.call_id in doubt:
            call = _replace(
                call,
                status="awaiting_approval",
                reason="in_doubt",
                started_by=event.started_by.get(call.call_id),
                approvals=(),
            )
        ledger.append(call)
    return _replace(state, items=state.items.extend(items), ledger=tuple(ledger), nested=nested)


def _approvals_decided(
    state: RunState, event: ApprovalsDecided, spec: AgentSet
) -> tuple[RunState, Outcome]:
    if event.max_turns is not None:
        if event.max_turns < 0:
            raise InvalidEvent("max_turns must not be negative")
        state = _replace(state, max_turns=event.max_turns)
    # Decisions on the calls of nested runs go to those runs, whose calls run again.
    state, posted = forward(state, event.decisions, audit_record)
    # Each decision is checked again, in the order it was posted: the first on a call wins,
    # and one that fails is recorded as refused while its call keeps waiting. An approval of
    # a call that needs a quorum is counted in the call (``work``), which waits for more.
    accepted: dict[str, tuple[Decision, CallRecord]] = {}
    audit = list(state.audit)
    work = state
    for decision in (*state.decisions, *posted):
        pending = [d for d, _ in accepted.values()]
        problem = refusal(work, decision, pending)
        if problem is None and repeats(work, decision, pending):
            continue  # the same decision posted twice, or an approver counted already
        call = next((c for c in work.ledger if c.call_id == decision.call_id), None)
        settled = None
        if problem is None and call is not None:
            settled, reason = settle(call, decision, spec)
        else:
            reason = str(problem)
        if settled is not None and settled.status == "awaiting_approval":
            work = _replace(work, ledger=tuple(settled if c is call else c for c in work.ledger))
            audit.append(audit_record(decision, call, standing(settled), counted=True))
            continue
        if settled is not None:
            accepted[decision.call_id] = (decision, settled)
        audit.append(audit_record(decision, call, reason))
    # Among sticky decisions, the most recent wins.
    policies = list(state.policies)
    for decision, call in accepted.values():
        if decision.always:
            policies = [p for p in policies if p.tool != call.tool]
            policies.append(
                Policy(tool=call.tool, approved=decision.approved, message=decision.message)
            )
    items: list[Item] = []
    ledger: list[CallRecord] = []
    for call in work.ledger:
        if call.call_id in accepted:
            decision, call = accepted[call.call_id]
            if call.status == "committed":
                items.append(
                    _rejection(call.call_id, call.tool, call.agent, refusal_text(call, decision))
                )
        elif call.status == "awaiting_approval" and call.reason == "approval":
            # A sticky policy never settles a call in doubt: only a decision on that call.
            policy = _policy(policies, call.tool)
            if policy is not None and not (policy.approved and call.quorum > 1):
                call = _replace(call, status="started" if policy.approved else "committed")
                if not policy.approved:
                    items.append(_rejection(call.call_id, call.tool, call.agent, policy.message))
        ledger.append(call)
    return _advance(
        _replace(
            state,
            items=state.items.extend(items),
            ledger=tuple(ledger),
            decisions=(),
            policies=tuple(policies),
            audit=tuple(audit),
        ),
        spec,
    )


def _cancelled(state: RunState, event: Cancelled, spec: AgentSet) -> tuple[RunState, Outcome]:
    error = RunError(kind="cancelled", message=event.reason)
    calls = {c.call_id: c for c in state.ledger}
    why = f"the run was cancelled before this decision was applied ({event.reason})"
    audit = (
        *state.audit,
        *(audit_record(d, calls.get(d.call_id), why) for d in (*state.decisions, *event.decisions)),
    )
    if state.status is RunStatus.TOOLS:
        # The calls that were running: the finished ones committed, the others in doubt.
        report = ToolsFinished(
            results=event.results,
            in_doubt=event.in_doubt,
            started_by=event.started_by,
            guardrails=event.guardrails,
        )
        state = _record_tools(state, report, spec)
        state = _replace(
            state,
            ledger=tuple(
                _replace(c, status="started") if c.call_id in event.in_doubt else c
                for c in state.ledger
            ),
        )
    elif event.results or event.in_doubt or event.started_by or event.guardrails:
        raise InvalidEvent("only a run whose tools are running reports calls when cancelled")
    new = _replace(state, error=error, decisions=(), audit=audit)
    return new, FinalOutput(error=error)


def _injected(state: RunState, event: Injected) -> tuple[RunState, Outcome]:
    verdicts = checked_verdicts(event.guardrails, "Injected", {"input"})
    state = _replace(state, items=state.items.extend(verdicts))
    tripped = first_trip(verdicts)
    if tripped is not None:
        return trip(state, tripped)  # the input it tripped on is not kept
    if state.status is RunStatus.RUNNING:
        return _replace(state, items=state.items.extend(event.items)), _running(state)
    if state.status is RunStatus.PAUSED:
        items = state.items.extend(event.items)
        return _replace(state, items=items), Interruption(requests=(), paused=True)
    return _replace(state, staged=state.staged + event.items), Interruption(
        requests=_requests(state)
    )


def _error_handled(
    state: RunState, event: ErrorHandled, spec: AgentSet
) -> tuple[RunState, Outcome]:
    _require_out_of_turns(state, "ended by its error handler")
    verdicts = checked_verdicts(event.guardrails, "ErrorHandled", {"output"})
    if event.failure is not None:
        if verdicts:
            raise InvalidEvent("a failed error handler gave no output to check")
        error = RunError(
            kind="max_turns_exceeded",
            message=f"{_out_of_turns(state.max_turns)}; its max_turns error handler failed: "
            f"{event.failure}",
        )
        return _replace(state, error=error), FinalOutput(error=error)
    agent = state.current_agent
    spec.agent(agent)
    tripped = first_trip(verdicts)
    if tripped is not None:
        return trip(_replace(state, items=state.items.extend(verdicts)), tripped)
    output = _valid_output(spec, agent, event.output)
    # Input staged for a turn that never came joins the transcript: a completed run holds
    # nothing staged.
    items: list[Item] = [*state.staged, *verdicts]
    if event.include_in_history:
        text = output if isinstance(output, str) else msgspec.json.encode(output).decode()
        items.append(AssistantMessage(content=text, agent=agent))
    new = _replace(
        state, items=state.items.extend(items), staged=(), error=None, final_output=output
    )
    return new, FinalOutput(output=output)


def _require_out_of_turns(state: RunState, what: str) -> None:
    if state.error is None or state.error.kind != "max_turns_exceeded":
        kind = state.error.kind if state.error is not None else "unknown"
        raise InvalidEvent(
            f"run {state.run_id} failed ({kind}), not on its turn limit; it cannot be {what}"
        )


# -- shared moves ------------------------------------------------------------------------------


def _advance(state: RunState, spec: AgentSet) -> tuple[RunState, Outcome]:
    """After a change within a turn: run started calls, else wait for decisions, else end the
    turn (hand off if asked, then ask the model again). A handoff with options waits for
    the driver to run them (``HandedOff``)."""
    calls = _invocations(state.ledger)
    if calls:
        return state, ToolCall(calls=calls)
    requests = _requests(state)
    if requests:
        return state, Interruption(requests=requests)
    source, target = state.current_agent, state.pending_handoff
    state = _replace(state, ledger=(), nested={})
    if target is None:
        return _next_turn(state)
    options = spec.handoff_spec(source, target)
    due = HandoffDue(source=source, target=target) if options and options.has_options else None
    return _next_turn(
        _replace(state, current_agent=target, pending_handoff=None, handoff_due=due),
        Handoff(source=source, target=target),
    )


def _next_turn(state: RunState, handoff: Handoff | None = None) -> tuple[RunState, Outcome]:
    if state.turn >= state.max_turns:
        error = RunError(kind="max_turns_exceeded", message=_out_of_turns(state.max_turns))
        return _replace(state, error=error), FinalOutput(error=error)
    if state.staged:
        state = _replace(state, items=state.items.extend(state.staged), staged=())
    if state.handoff_due is not None:
        return state, _running(state)
    return state, handoff or RunAgain(agent=state.current_agent)


def _running(state: RunState) -> Outcome:
    """The outcome of a running run: ask the model, or first run the options of the
    handoff it took."""
    due = state.handoff_due
    if due is not None:
        return Handoff(source=due.source, target=due.target)
    return RunAgain(agent=state.current_agent)


def _handed_off(state: RunState, event: HandedOff) -> tuple[RunState, Outcome]:
    due = state.handoff_due
    if due is None:
        raise InvalidEvent(f"run {state.run_id} has no handoff whose options wait to run")
    if event.input is None:
        return _replace(state, handoff_due=None), RunAgain(agent=state.current_agent)
    given = HandoffInput(
        source=due.source, target=due.target, items=event.input, start=len(state.items)
    )
    # The server's copy of the conversation is not what the next agent is given: the next
    # request sends the whole of it.
    new = _replace(state, handoff_due=None, handoff_input=given, stored_response=None)
    return new, RunAgain(agent=state.current_agent)


def _out_of_turns(max_turns: int) -> str:
    return (
        f"the run used all {max_turns} of its turns without a final output; resume it with a "
        "higher max_turns to go on"
    )


def _invocations(ledger: Sequence[CallRecord]) -> tuple[Any, ...]:
    return tuple(call.invocation() for call in ledger if call.status == "started")


def _requests(state: RunState) -> tuple[Any, ...]:
    # With the waiting calls of nested runs in the place of the calls that wait for them.
    return tuple(state.interruptions)


def _policy(policies: Sequence[Policy], tool: str) -> Policy | None:
    return next((p for p in policies if p.tool == tool), None)


def _answer(call: ModelToolCall, agent: str, output: str, *, is_error: bool = False) -> Item:
    """The result of a call the engine settles itself, without running a tool."""
    return ToolResultItem(
        call_id=call.call_id, tool=call.name, output=output, is_error=is_error, agent=agent
    )


def _rejection(call_id: str, tool: str, agent: str, message: str | None) -> ToolResultItem:
    return ToolResultItem(
        call_id=call_id, tool=tool, output=message or DEFAULT_REJECTION, agent=agent
    )


def _explain(exc: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'output'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    )
