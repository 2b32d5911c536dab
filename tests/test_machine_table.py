"""The status table, tried exhaustively: every (status, event) pair."""

from __future__ import annotations

import itertools

import msgspec
import pytest

import agentfsm
from agentfsm import (
    Agent,
    ApprovalsDecided,
    Cancelled,
    ErrorHandled,
    GuardrailItem,
    HandedOff,
    IllegalTransition,
    Injected,
    ModelResponded,
    ModelResponse,
    ModelToolCall,
    Paused,
    Resumed,
    RunStatus,
    Started,
    ToolOutput,
    ToolsFinished,
    UserMessage,
    handoff,
    new_run,
    step,
    tool,
)
from agentfsm._machine import EVENT_TYPES, TABLE, TRANSITIONS, mermaid, status_of
from agentfsm.testing import ScriptedModel


@tool
def noop() -> str:
    return "ok"


@tool(needs_approval=True)
def guarded() -> str:
    return "done"


AGENT = Agent("a", "", ScriptedModel([]), tools=[noop, guarded])
# The same, and a handoff with options: a run that takes it waits for HandedOff.
HANDING = Agent(
    "a",
    "",
    ScriptedModel([]),
    tools=[noop, guarded],
    handoffs=[handoff(Agent("b"), on_handoff=lambda context: None)],
)


def _handing_off() -> agentfsm.RunState:
    """A running run that took a handoff with options."""
    state = step(new_run(HANDING, "hi", run_id="r"), Started(), HANDING).state
    calls = (ModelToolCall(call_id="c1", name="transfer_to_b"),)
    state = step(state, ModelResponded(response=ModelResponse(tool_calls=calls)), HANDING).state
    assert state.handoff_due is not None
    return state


def _reach(status: RunStatus) -> agentfsm.RunState:
    """A real state in ``status``, reached through the step function."""
    state = new_run(AGENT, "hi", run_id="r")
    if status is RunStatus.NEW:
        return state
    if status is RunStatus.FAILED:
        return step(new_run(AGENT, "hi", run_id="r", max_turns=0), Started(), AGENT).state
    state = step(state, Started(), AGENT).state
    if status is RunStatus.RUNNING:
        return state
    if status is RunStatus.CANCELLED:
        return step(state, Cancelled(), AGENT).state
    if status is RunStatus.PAUSED:
        return step(state, Paused(), AGENT).state
    if status is RunStatus.COMPLETED:
        return step(state, ModelResponded(response=ModelResponse(text="x")), AGENT).state
    name = "noop" if status is RunStatus.TOOLS else "guarded"
    calls = (ModelToolCall(call_id="c1", name=name),)
    return step(state, ModelResponded(response=ModelResponse(tool_calls=calls)), AGENT).state


def _event(kind: type, state: agentfsm.RunState) -> agentfsm.Event:
    """An event of ``kind`` whose content fits ``state`` as far as possible."""
    started = [c.call_id for c in state.ledger if c.status == "started"]
    if kind is ToolsFinished:
        return ToolsFinished(results=tuple(ToolOutput(call_id=c, output="ok") for c in started))
    if kind is Cancelled and state.status is RunStatus.TOOLS:
        # A run cancelled while its tools run reports each of them.
        return Cancelled(in_doubt=tuple(started))
    examples: dict[type, agentfsm.Event] = {
        Started: Started(max_turns=5),
        ModelResponded: ModelResponded(response=ModelResponse(text="done")),
        ApprovalsDecided: ApprovalsDecided(),
        Cancelled: Cancelled(),
        Injected: Injected(items=(UserMessage(content="more"),)),
        Paused: Paused(reason="lunch"),
        Resumed: Resumed(),
        ErrorHandled: ErrorHandled(output="handled"),
        HandedOff: HandedOff(input=(UserMessage(content="filtered"),)),
    }
    return examples[kind]


@pytest.mark.parametrize(
    ("status", "kind"),
    list(itertools.product(RunStatus, EVENT_TYPES)),
    ids=lambda v: v.value if isinstance(v, RunStatus) else v.__name__,
)
def test_every_status_event_pair_moves_as_the_table_says_or_raises(
    status: RunStatus, kind: type
) -> None:
    state = _reach(status)
    spec = AGENT
    if (status, kind) == (RunStatus.RUNNING, HandedOff):
        state, spec = _handing_off(), HANDING
    assert state.status is status
    before = state.to_json()
    event = _event(kind, state)
    if (status, kind) not in TABLE:
        with pytest.raises(IllegalTransition) as caught:
            step(state, event, AGENT)
        assert status.value in str(caught.value)
        assert kind.__name__ in str(caught.value)
        assert caught.value.status is status
        assert caught.value.event == kind.__name__
        assert state.to_json() == before
        return
    new, outcome = step(state, event, spec)
    assert new.status in TABLE[status, kind]
    assert status_of(outcome) is new.status
    assert new.version == state.version + 1
    assert state.to_json() == before, "the old state value must not change"


def test_terminal_statuses_accept_nothing_but_a_restart_or_handler_after_the_turn_limit() -> None:
    for status in (RunStatus.COMPLETED, RunStatus.CANCELLED):
        assert not [key for key in TABLE if key[0] is status]
    assert [key[1] for key in TABLE if key[0] is RunStatus.FAILED] == [Started, ErrorHandled]


def _trip(kind: str = "input", **fields: object) -> GuardrailItem:
    return GuardrailItem(guardrail="g", kind=kind, behavior="trip", agent="a", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "event", "dest"),
    [
        (RunStatus.NEW, Started(guardrails=(_trip(),)), RunStatus.FAILED),
        (RunStatus.RUNNING, Injected(items=(), guardrails=(_trip(),)), RunStatus.FAILED),
        (RunStatus.INTERRUPTED, Injected(items=(), guardrails=(_trip(),)), RunStatus.FAILED),
        (RunStatus.PAUSED, Injected(items=(), guardrails=(_trip(),)), RunStatus.FAILED),
        (
            RunStatus.RUNNING,
            ModelResponded(response=ModelResponse(text="x"), guardrails=(_trip("output"),)),
            RunStatus.FAILED,
        ),
        (
            RunStatus.TOOLS,
            ToolsFinished(
                results=(ToolOutput(call_id="c1", output="ok"),),
                guardrails=(_trip("tool_output", call_id="c1", tool="noop"),),
            ),
            RunStatus.FAILED,
        ),
        (RunStatus.FAILED, ErrorHandled(output="ok"), RunStatus.COMPLETED),
        (RunStatus.FAILED, ErrorHandled(failure="it raised"), RunStatus.FAILED),
        (
            RunStatus.FAILED,
            ErrorHandled(output="ok", guardrails=(_trip("output"),)),
            RunStatus.FAILED,
        ),
    ],
    ids=lambda v: v.value if isinstance(v, RunStatus) else type(v).__name__,
)
def test_guardrails_and_error_handlers_reach_their_rows(
    status: RunStatus, event: agentfsm.Event, dest: RunStatus
) -> None:
    """Each move that a guardrail's trip or an error handler adds to the table is taken."""
    state = _reach(status)
    assert dest in TABLE[status, type(event)]
    new, outcome = step(state, event, AGENT)
    assert new.status is dest
    assert status_of(outcome) is dest
    if any(v.behavior == "trip" for v in getattr(event, "guardrails", ())):
        assert new.error is not None and new.error.kind == "guardrail_tripped"
        assert new.ledger == ()
        # A run a guardrail failed cannot be restarted, nor ended by an error handler.
        for again in (Started(max_turns=99), ErrorHandled(output="x")):
            with pytest.raises(agentfsm.InvalidEvent, match="guardrail_tripped"):
                step(new, again, AGENT)


def test_table_is_compiled_from_the_declared_transitions() -> None:
    declared = {
        (source, event, dest)
        for event, sources, dests in TRANSITIONS
        for source in sources
        for dest in dests
    }
    compiled = {(source, event, dest) for (source, event), dests in TABLE.items() for dest in dests}
    assert compiled == declared


def test_the_diagram_draws_every_move() -> None:
    diagram = mermaid()
    assert diagram.count("stateDiagram-v2") == 1
    for (source, event), dests in TABLE.items():
        for dest in dests:
            line = next(
                (
                    ln
                    for ln in diagram.splitlines()
                    if ln.strip().startswith(f"{source} --> {dest}:")
                ),
                None,
            )
            assert line is not None, (source, dest)
            assert event.__name__ in line


def test_a_step_that_would_leave_the_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _reach(RunStatus.RUNNING)
    narrowed = dict(TABLE)
    narrowed[RunStatus.RUNNING, ModelResponded] = frozenset({RunStatus.TOOLS})
    monkeypatch.setattr(agentfsm._machine, "TABLE", narrowed)
    with pytest.raises(IllegalTransition, match="completed"):
        step(state, ModelResponded(response=ModelResponse(text="bye")), AGENT)


def test_statuses_and_events_are_plain_data() -> None:
    assert [s.value for s in RunStatus] == [
        "new",
        "running",
        "tools",
        "interrupted",
        "paused",
        "completed",
        "failed",
        "cancelled",
    ]
    event = ModelResponded(response=ModelResponse(text="x"))
    encoded = msgspec.json.encode(event)
    assert msgspec.json.decode(encoded, type=agentfsm.Event) == event
