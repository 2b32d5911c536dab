"""Fuzzing the engine with random event sequences, checking its invariants after every step.

Three parts:

* ``EngineMachine``: a hypothesis ``RuleBasedStateMachine`` that drives the pure core
  (``agentfsm.step``) directly. The test plays the model (random text, random tool calls with
  unknown names, malformed or invalid arguments, handoffs, parallel calls), the tool executor,
  the human (approve, approve always, approve with edited arguments, reject, decide with a
  stale digest, resume without deciding), the user (inject input, cancel, raise max_turns),
  the user's guardrails (verdicts that allow, replace, reject or trip on the input, calls
  before their approval and again before they run, results and final outputs) and error
  handler (an output for a run out of turns, or a failure), and the process crashing
  (serialize, load, continue; a crash while tools run puts them in doubt).
* ``ResumeMachine``: the same agents on the agent test kit (``agentfsm.testing.AgentMachine``),
  through the ``Runner`` and a store, crashed at every durable boundary: a run resumed from
  one of its checkpoints ends the same, no committed tool call runs again, and the kit's
  other invariants hold. The checks of one state (a well-formed transcript, a shape that
  fits the status, the JSON round trip) are the kit's, shared with ``EngineMachine``.
* Regressions for bugs found while fuzzing: non-finite floats from the model (NaN, Infinity)
  are refused, and text that is not valid Unicode (lone surrogates) from the model or a tool
  is made storable (input from a person is refused), so every state a step returns persists.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import Counter
from typing import Any, ClassVar

import msgspec
import pydantic
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

import agentfsm
from agentfsm import (
    Agent,
    AgentSet,
    ApprovalsDecided,
    AssistantMessage,
    Cancelled,
    Decision,
    DecisionRefused,
    ErrorHandled,
    Feedback,
    FinalOutput,
    GuardrailItem,
    HandedOff,
    Handoff,
    HandoffItem,
    IllegalTransition,
    Injected,
    Interruption,
    InvalidEvent,
    Invocation,
    ModelBehaviorError,
    ModelResponded,
    ModelResponse,
    ModelToolCall,
    Paused,
    Resumed,
    RunAgain,
    Runner,
    RunState,
    RunStatus,
    Started,
    StateFormatError,
    ToolArgumentsError,
    ToolCall,
    ToolCallItem,
    ToolContext,
    ToolOutput,
    ToolResultItem,
    ToolsFinished,
    Usage,
    UserMessage,
    idempotency_key,
    new_run,
    pending_outcome,
    step,
)
from agentfsm._decisions import same_decision
from agentfsm._json import digest
from agentfsm._machine import EVENT_TYPES, TABLE, status_of
from agentfsm._step import DEFAULT_REJECTION, IN_DOUBT_REJECTION, NOT_RUN_TRIPPED
from agentfsm.testing import AgentMachine, ScriptedModel, call, say
from agentfsm.testing._checks import (
    response_of,
    round_trip_problems,
    status_problems,
    transcript_problems,
)

# -- tools that count their executions ---------------------------------------------------------


class Executions:
    """Counts tool executions by idempotency key and by (run id, call id). Tools may run in
    threads (the Runner runs sync tools with ``asyncio.to_thread``), hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_key: Counter[str] = Counter()
        self.by_call: Counter[tuple[str, str]] = Counter()

    def record(self, ctx: ToolContext) -> None:
        with self._lock:
            self.by_key[ctx.idempotency_key] += 1
            self.by_call[ctx.run_id, ctx.call_id] += 1

    def reset(self) -> None:
        with self._lock:
            self.by_key.clear()
            self.by_call.clear()


EXECUTIONS = Executions()


@agentfsm.tool
def echo(ctx: ToolContext, text: str) -> str:
    """Repeat the text. No approval needed."""
    EXECUTIONS.record(ctx)
    return f"echo: {text}"


@agentfsm.tool(needs_approval=True)
async def send_email(ctx: ToolContext, to: str, body: str = "") -> str:
    """Send an email. A human approves every one."""
    EXECUTIONS.record(ctx)
    return f"sent to {to}: {body}"


def _large_refund(context: Any, arguments: dict[str, Any]) -> bool:
    return bool(arguments["amount"] > 100)


@agentfsm.tool(needs_approval=_large_refund)
def refund(ctx: ToolContext, amount: int) -> str:
    """Refund money. Amounts over 100 need a human's approval."""
    EXECUTIONS.record(ctx)
    return f"refunded {amount}"


@agentfsm.tool(idempotent=True)
async def lookup(ctx: ToolContext, key: str) -> dict[str, str]:
    """Read a value. Safe to run twice."""
    EXECUTIONS.record(ctx)
    return {"key": key, "value": key.upper()}


@agentfsm.tool
def flaky(ctx: ToolContext, n: int) -> str:
    """Fails on multiples of three."""
    EXECUTIONS.record(ctx)
    if n % 3 == 0:
        raise RuntimeError(f"flaky refuses multiples of three (got {n})")
    return f"flaky ok {n}"


@agentfsm.tool
def add(ctx: ToolContext, a: int, b: int) -> int:
    """Add two integers (a strict schema: exactly a and b, both ints)."""
    EXECUTIONS.record(ctx)
    return a + b


TOOLS = {t.name: t for t in (echo, send_email, refund, lookup, flaky, add)}


def make_agents(model: Any = None) -> Agent:
    """A fresh pair of agents (as a new process would build them): triage <-> worker."""
    triage = Agent(
        "triage",
        instructions="Route the request.",
        model=model,
        tools=[echo, send_email, refund, lookup, flaky, add],
    )
    worker = Agent(
        "worker",
        instructions="Do the work; answer with a number.",
        model=model,
        tools=[echo, send_email, lookup, add, flaky],
        handoffs=[triage],
        output_type=int,
    )
    triage.handoffs.append(worker)
    return triage


# -- strategies ----------------------------------------------------------------------------------

SMALL_TEXT = st.text(alphabet="abcxyz 019", max_size=6)

VALID_ARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "echo": st.fixed_dictionaries({"text": SMALL_TEXT}),
    "send_email": st.fixed_dictionaries(
        {"to": st.sampled_from(["ann@example.com", "bob@example.com"])},
        optional={"body": SMALL_TEXT},
    ),
    "refund": st.fixed_dictionaries({"amount": st.integers(0, 200)}),
    "lookup": st.fixed_dictionaries({"key": st.sampled_from(["a", "b", "c"])}),
    "flaky": st.fixed_dictionaries({"n": st.integers(0, 9)}),
    "add": st.fixed_dictionaries({"a": st.integers(-5, 5), "b": st.integers(-5, 5)}),
}

#: Arguments no tool accepts: not JSON, not an object, unknown fields, wrong types.
MALFORMED = st.sampled_from(
    [
        "{",
        "not json",
        "null",
        "[]",
        "",
        '{"unexpected": 1}',
        '{"a": "x", "b": 1}',
        '{"n": 1.5}',
        '{"amount": -1, "extra": true}',
    ]
)

HANDOFF_NAMES = ["transfer_to_worker", "transfer_to_triage"]
UNKNOWN_NAMES = ["no_such_tool", "delete_everything"]
CALL_NAMES = [*VALID_ARGS, *HANDOFF_NAMES, *UNKNOWN_NAMES]
#: The model's choice of tool, biased towards the ones that need approval.
PICK_TOOL = st.sampled_from([*CALL_NAMES, "send_email", "send_email", "refund", "refund"])
FINAL_TEXTS = st.sampled_from(["done", "42", "7", "", "not a number", " 3 ", '"5"']) | SMALL_TEXT


@st.composite
def raw_arguments(draw: st.DrawFn, name: str) -> str:
    if name in VALID_ARGS and draw(st.integers(0, 3)) > 0:
        return json.dumps(draw(VALID_ARGS[name]))
    if name in VALID_ARGS:
        return draw(MALFORMED)
    return draw(st.sampled_from(["{}", "", '{"x": 1}']))


USAGE = Usage(requests=1, input_tokens=3, output_tokens=2)
CONTEXT = {"user": "ann", "tier": 1}
SIGNING_KEY = b"fuzz-signing-key"


def _response_index(call_id: str) -> int:
    """The model response a call belongs to: ids are ``c<response>_<index>`` (this file's
    model) or ``call_<turn>_<index>`` (ScriptedModel)."""
    index = response_of(call_id)
    assert index is not None, call_id
    return index


def _outcome_as_resumed(outcome: Any) -> Any:
    """What ``pending_outcome`` reports for a state a step left with ``outcome``."""
    if isinstance(outcome, Handoff):
        return RunAgain(agent=outcome.target)
    return outcome


def execute(agents: AgentSet, state: RunState, invocation: Invocation) -> ToolOutput:
    """Run one tool call the way the Runner does (errors become error results)."""
    tool = agents.require_tool(invocation.agent, invocation.tool)
    ctx = ToolContext(
        run_id=state.run_id,
        call_id=invocation.call_id,
        tool=invocation.tool,
        agent=invocation.agent,
        idempotency_key=invocation.idempotency_key,
        context=state.context,
    )
    args, kwargs = tool.bind(invocation.arguments, ctx)
    try:
        value = tool.fn(*args, **kwargs)
        if tool.is_async:
            value = asyncio.run(value)
    except Exception as exc:
        return ToolOutput(call_id=invocation.call_id, output=f"Error: {exc}", is_error=True)
    output = value if isinstance(value, str) else json.dumps(value)
    return ToolOutput(call_id=invocation.call_id, output=output)


def check_transcript(state: RunState) -> None:
    """The kit's check (agentfsm.testing._checks): every tool call gets exactly one result,
    before the next model response is recorded, and the ledger agrees."""
    problems = transcript_problems(state, response=_response_index)
    assert not problems, problems


# -- the state machine -----------------------------------------------------------------------


class EngineMachine(RuleBasedStateMachine):
    """The test is the driver: it plays model, tools, human and crashes against ``step``."""

    def __init__(self) -> None:
        super().__init__()
        EXECUTIONS.reset()
        self.agents = AgentSet(make_agents())
        self.runs = 0
        self.responses = 0
        self.steps = 0
        self.state: RunState = new_run("triage", "hello", run_id="unset")
        self.outcome: Any = None
        # Across runs (idempotency keys include the run id, so they never collide).
        self.key_of: dict[str, str] = {}  # call id -> idempotency key
        self.started: Counter[str] = Counter()  # times the engine asked to run a key
        self.doubted: Counter[str] = Counter()  # times a crash put a key in doubt
        self.committed: dict[str, int] = {}  # key -> executions when its result was recorded
        self.blocked: set[str] = set()  # call ids a guardrail rejected or tripped on
        # Per run.
        self.injected: list[str] = []
        self.model_steps = 0

    # -- helpers ---------------------------------------------------------------------------

    def fresh_state(self) -> None:
        self.runs += 1
        max_turns = 4 + self.runs % 5
        self.state = new_run(
            "triage",
            f"request {self.runs}",
            run_id=f"run{self.runs}",
            context=CONTEXT,
            max_turns=max_turns,
        )
        self.outcome = None
        self.injected = []
        self.model_steps = 0

    @property
    def status(self) -> RunStatus:
        return self.state.status

    def apply(self, ev: Any, *, tool_errors: Any = "feed") -> Any:
        """Step, check what every step must satisfy, and keep the new state. On an error the
        state is checked unchanged and the error propagates."""
        old = self.state
        before = old.to_json()
        legal = TABLE.get((old.status, type(ev)))
        try:
            new, outcome = step(old, ev, self.agents, tool_errors=tool_errors)
        except agentfsm.AgentFSMError:
            assert old.to_json() == before, "a failed step changed its input state"
            raise
        assert legal is not None, f"{type(ev).__name__} accepted in {old.status}"
        # Pure: the same inputs give the same outputs (this second call forks the transcript).
        again = step(old, ev, self.agents, tool_errors=tool_errors)
        assert again == (new, outcome)
        assert old.to_json() == before, "step changed its input state"
        assert new.version == old.version + 1
        assert new.status in legal, (old.status, type(ev).__name__, new.status)
        assert status_of(outcome) == new.status
        if old.status is RunStatus.RUNNING:
            self.check_fork(old, new)
        self.steps += 1
        if self.steps % 2:
            new, outcome = again  # continue sometimes from the forked transcript
        self.check_outcome_authority(old, ev, new, outcome)
        self.record_commits(old, new)
        self.state, self.outcome = new, outcome
        event(f"step: {old.status.value} --{type(ev).__name__}--> {new.status.value}")
        return outcome

    def check_fork(self, old: RunState, new: RunState) -> None:
        """States are values: stepping an older state again (a stale copy, a retry) forks it,
        and neither branch sees the other's items."""
        text = new.to_json()
        fork = UserMessage(content="fork")
        forked, _ = step(old, Injected(items=(fork,)), self.agents)
        assert forked.items == (*old.items, fork)
        assert new.to_json() == text
        assert list(new.items) == list(RunState.from_json(text).items)

    def record_commits(self, old: RunState, new: RunState) -> None:
        for item in new.items[len(old.items) :]:
            if isinstance(item, ToolResultItem):
                key = self.key_of[item.call_id]
                assert key not in self.committed, f"{item.call_id} got a second result"
                self.committed[key] = EXECUTIONS.by_key[key]

    def check_outcome_authority(self, old: RunState, ev: Any, new: RunState, outcome: Any) -> None:
        """Nothing runs without authority, and nothing committed runs again."""
        if isinstance(outcome, ToolCall):
            assert outcome.calls, "a ToolCall outcome with nothing to run"
            for invocation in outcome.calls:
                assert invocation.call_id not in self.blocked, "a blocked call was started"
                key = invocation.idempotency_key
                record = next(c for c in new.ledger if c.call_id == invocation.call_id)
                if record.edited and key != self.key_of[invocation.call_id]:
                    # Edited arguments make another operation, with a key of its own.
                    derived = f"{self.key_of[invocation.call_id]}\x1f{record.digest}"
                    expected = hashlib.sha256(derived.encode()).hexdigest()[:32]
                    assert key == expected, "an edited call's key must derive from the original"
                    self.key_of[invocation.call_id] = key
                assert key == self.key_of[invocation.call_id], "idempotency key not stable"
                assert key not in self.committed, f"{invocation.call_id} ran after its commit"
                self.started[key] += 1
                assert self.started[key] <= 1 + self.doubted[key], (
                    f"{invocation.call_id} started twice without being in doubt"
                )
        if isinstance(ev, ApprovalsDecided):
            self.check_decisions_applied(old, ev, new, outcome)

    def check_decisions_applied(
        self, old: RunState, ev: ApprovalsDecided, new: RunState, outcome: Any
    ) -> None:
        decisions, refused = self.effective_decisions(old, ev.decisions)
        started = {c.call_id: c for c in outcome.calls} if isinstance(outcome, ToolCall) else {}
        results = {
            i.call_id: i for i in new.items[len(old.items) :] if isinstance(i, ToolResultItem)
        }
        after = {c.call_id: c for c in new.ledger}
        assert new.decisions == ()
        assert len({p.tool for p in new.policies}) == len(new.policies)
        # The audit trail grows by one record per decision taken or refused, in posting order.
        trail = new.audit[len(old.audit) :]
        assert new.audit[: len(old.audit)] == old.audit, "the audit trail was rewritten"
        assert [r.outcome for r in trail if r.outcome == "refused"] == ["refused"] * refused
        assert {r.decision.call_id for r in trail if r.outcome == "applied"} == set(decisions)
        if refused:
            event("decision refused when applied")
        for record in old.ledger:
            if record.status != "awaiting_approval":
                assert record.status == "committed", "a started call while interrupted"
                continue
            exact = decisions.get(record.call_id)
            policy = next((p for p in new.policies if p.tool == record.tool), None)
            sticky = policy if record.reason == "approval" else None
            if record.call_id in started:
                if exact is not None:
                    assert exact.approved
                    event(f"decision: exact approval ({record.reason})")
                else:
                    assert sticky is not None
                    assert sticky.approved
                    event("decision: sticky approval")
                expected = record.arguments
                if exact is not None and exact.arguments is not None:
                    expected = TOOLS[record.tool].validate(exact.arguments)
                    event("decision: edited arguments")
                assert started[record.call_id].arguments == expected
            elif record.call_id in results:
                if exact is not None:
                    assert not exact.approved
                    message = exact.message
                else:
                    assert sticky is not None
                    assert not sticky.approved
                    message = sticky.message
                default = IN_DOUBT_REJECTION if record.reason == "in_doubt" else DEFAULT_REJECTION
                result = results[record.call_id]
                assert result.output == (message or default)
                assert not result.is_error
                event(f"decision: rejection ({record.reason})")
            else:
                assert exact is None, "an exact decision was not applied"
                assert sticky is None, "a sticky decision was not applied"
                assert after[record.call_id] == record, "a waiting call changed"

    @staticmethod
    def effective_decisions(
        state: RunState, extra: tuple[Decision, ...]
    ) -> tuple[dict[str, Decision], int]:
        """The decisions that take effect, by call (the first valid one on each call, in
        posting order), and how many are refused."""
        waiting = {c.call_id: c for c in state.ledger if c.status == "awaiting_approval"}
        taken: dict[str, Decision] = {}
        refused = 0
        for d in (*state.decisions, *extra):
            call = waiting.get(d.call_id)
            first = taken.get(d.call_id)
            if first is not None and same_decision(first, d):
                continue
            ok = call is not None and d.digest == call.digest and first is None
            if ok and d.approved and d.arguments is not None:
                try:
                    TOOLS[call.tool].validate(d.arguments)
                except ToolArgumentsError:
                    ok = False
            if ok:
                taken[d.call_id] = d
            else:
                refused += 1
        return taken, refused

    def reload(self, data: st.DataObject) -> RunState:
        """A new process: the state goes through JSON (signed or not) and new agents."""
        state = self.state
        if data.draw(st.booleans(), label="signed"):
            text = state.to_json(signing_key=SIGNING_KEY)
            with pytest.raises(StateFormatError):
                RunState.from_json(text)
            with pytest.raises(StateFormatError):
                RunState.from_json(text, signing_key=b"another key")
            tampered = text.replace(f'"version":{state.version}', f'"version":{state.version + 1}')
            with pytest.raises(StateFormatError):
                RunState.from_json(tampered, signing_key=SIGNING_KEY)
            loaded = RunState.from_json(text, signing_key=SIGNING_KEY)
        else:
            loaded = RunState.from_json(state.to_json())
        assert loaded == state
        self.agents = AgentSet(make_agents())
        self.agents.check(loaded)
        if loaded.status is not RunStatus.NEW:
            assert pending_outcome(loaded) == _outcome_as_resumed(self.outcome)
        event(f"restart in {loaded.status.value}")
        return loaded

    def approval_answers(self, response: ModelResponse, data: st.DataObject) -> dict[str, bool]:
        """What the Runner computes for tools with an approval function; sometimes an answer
        is left out (the engine must then treat the call as needing approval)."""
        answers = {}
        for c in response.tool_calls:
            tool = self.agents.tool(self.state.current_agent, c.name)
            if tool is None or isinstance(tool.needs_approval, bool):
                continue
            try:
                arguments = tool.validate_json(c.arguments)
            except ToolArgumentsError:
                continue
            if data.draw(st.integers(0, 5), label="drop answer") == 0:
                event("approval function answer left out")
                continue
            verdict = tool.needs_approval(self.state.context, arguments)
            answers[c.call_id] = bool(verdict)
        return answers

    def expect_model_step(
        self,
        old: RunState,
        new: RunState,
        outcome: Any,
        response: ModelResponse,
        answers: dict[str, bool],
    ) -> None:
        """The model's answer is recorded exactly as the design says."""
        agent = old.current_agent
        added = new.items[len(old.items) :]
        assert new.turn == old.turn + 1
        assert new.usage.requests == old.usage.requests + 1
        if not response.tool_calls:
            text = response.text or ""
            assert added[0] == AssistantMessage(content=text, agent=agent)
            adapter = self.agents.output_adapter(agent)
            try:
                value = (
                    text
                    if adapter is None
                    else adapter.dump_python(adapter.validate_json(text), mode="json")
                )
            except pydantic.ValidationError:
                assert len(added) == 2
                assert isinstance(added[1], Feedback)
                assert new.status in (RunStatus.RUNNING, RunStatus.FAILED)
                event("final output failed validation")
            else:
                assert len(added) == 1
                assert outcome == FinalOutput(output=value)
                assert new.final_output == value
            return
        head: list[Any] = []
        if response.text:
            head.append(AssistantMessage(content=response.text, agent=agent))
        head += [
            ToolCallItem(call_id=c.call_id, tool=c.name, arguments=c.arguments, agent=agent)
            for c in response.tool_calls
        ]
        tail: list[Any] = []
        ledger: list[tuple[str, str, dict[str, Any], str]] = []
        target = None
        for c in response.tool_calls:
            handoff_to = self.agents.handoff_target(agent, c.name)
            if handoff_to is not None:
                if target is None:
                    target = handoff_to
                    event("handoff")
                    tail.append(
                        ToolResultItem(
                            call_id=c.call_id,
                            tool=c.name,
                            output=f"Transferred to {handoff_to}.",
                            agent=agent,
                        )
                    )
                    tail.append(HandoffItem(call_id=c.call_id, source=agent, target=handoff_to))
                else:
                    tail.append((c.call_id, "error"))
                    event("second handoff in one turn")
                continue
            tool = self.agents.tool(agent, c.name)
            if tool is None:
                tail.append((c.call_id, "error"))
                event("unknown tool")
                continue
            try:
                arguments = tool.validate_json(c.arguments)
            except ToolArgumentsError:
                tail.append((c.call_id, "error"))
                event("invalid arguments")
                continue
            needs = (
                tool.needs_approval
                if isinstance(tool.needs_approval, bool)
                else answers.get(c.call_id, True)
            )
            policy = next((p for p in old.policies if p.tool == tool.name), None)
            if not needs or (policy is not None and policy.approved):
                status = "started"
                if needs:
                    event("sticky approval at model response")
            elif policy is not None:
                status = "committed"
                tail.append(
                    ToolResultItem(
                        call_id=c.call_id,
                        tool=tool.name,
                        output=policy.message or DEFAULT_REJECTION,
                        agent=agent,
                    )
                )
                event("sticky rejection at model response")
            else:
                status = "awaiting_approval"
            ledger.append((c.call_id, tool.name, arguments, status))
        assert list(added[: len(head)]) == head
        rest = added[len(head) :]
        assert len(rest) == len(tail)
        for got, want in zip(rest, tail, strict=True):
            if isinstance(want, tuple):
                assert isinstance(got, ToolResultItem)
                assert got.call_id == want[0]
                assert got.is_error
            else:
                assert got == want
        if any(status != "committed" for *_, status in ledger):
            assert new.pending_handoff == target
            assert new.current_agent == agent
            got_ledger = [(c.call_id, c.tool, c.arguments, c.status) for c in new.ledger]
            assert got_ledger == ledger
            for record in new.ledger:
                assert record.idempotency_key == idempotency_key(
                    new.run_id, new.turn, record.call_id
                )
                assert record.digest == digest(record.arguments)
                assert record.reason == "approval"
                assert record.agent == agent
        else:
            assert new.ledger == ()
            assert new.pending_handoff is None
            assert new.current_agent == (target or agent)
            if target is not None and new.status is RunStatus.RUNNING:
                assert outcome == Handoff(source=agent, target=target)

    # -- rules -----------------------------------------------------------------------------
    #
    # One rule acts: it picks, with weights, among the actions that make sense in the run's
    # current status (separate rules with preconditions leave hypothesis retrying most draws).

    ACTIONS: ClassVar[dict[RunStatus, list[tuple[str, int]]]] = {
        RunStatus.NEW: [
            ("start", 8),
            ("start_guarded", 3),
            ("start_with_negative_turns", 1),
            ("restart", 1),
        ],
        RunStatus.RUNNING: [
            ("model_responds", 12),
            ("model_responds_guarded", 6),
            ("inject", 2),
            ("inject_guarded", 1),
            ("model_misbehaves", 1),
            ("restart", 2),
            ("cancel", 1),
            ("pause", 1),
        ],
        RunStatus.PAUSED: [
            ("resume_paused", 4),
            ("inject", 1),
            ("inject_guarded", 1),
            ("restart", 1),
            ("cancel", 1),
        ],
        RunStatus.TOOLS: [
            ("tools_finish", 6),
            ("tools_finish_guarded", 4),
            ("crash_while_tools_run", 3),
            ("tools_misreported", 1),
            ("approve", 1),
            ("reject", 1),
            ("cancel", 1),
        ],
        RunStatus.INTERRUPTED: [
            ("approve", 5),
            ("reject", 3),
            ("resume_as_decided", 4),
            ("resume_with_new_turn_limit", 1),
            ("decide_with_stale_digest", 1),
            ("inject", 1),
            ("inject_guarded", 1),
            ("restart", 2),
            ("cancel", 1),
        ],
        RunStatus.FAILED: [
            ("raise_max_turns", 5),
            ("restart_without_enough_turns", 1),
            ("start_with_negative_turns", 1),
            ("error_handled", 3),
            ("restart_tripped_run", 2),
            ("restart", 1),
            ("next_run", 1),
        ],
        RunStatus.COMPLETED: [("next_run", 3), ("restart", 1)],
        RunStatus.CANCELLED: [("next_run", 3), ("restart", 1)],
    }

    def enabled(self, action: str) -> bool:
        if action in ("approve", "reject"):
            return bool(self.waiting())
        if action in _OUT_OF_TURNS_ACTIONS:
            return self.out_of_turns()
        if action == "restart_tripped_run":
            return not self.out_of_turns()
        if action == "decide_with_stale_digest":
            return not self.state.decisions
        return True

    @rule(data=st.data())
    def act(self, data: st.DataObject) -> None:
        choices = [
            name
            for name, weight in self.ACTIONS[self.status]
            if self.enabled(name)
            for _ in range(weight)
        ]
        action = data.draw(st.sampled_from(choices), label="action")
        getattr(self, action)(data)

    # -- actions: lifecycle -----------------------------------------------------------------

    @initialize()
    def begin(self) -> None:
        self.fresh_state()

    def next_run(self, data: st.DataObject) -> None:
        self.fresh_state()

    def start(self, data: st.DataObject) -> None:
        max_turns = data.draw(st.none() | st.integers(0, 6), label="max_turns")
        self.apply(Started(max_turns=max_turns))
        expected = self.state.max_turns if max_turns is None else max_turns
        assert self.state.max_turns == expected
        if expected == 0:
            assert self.status is RunStatus.FAILED
        else:
            assert self.outcome == RunAgain(agent="triage")

    def start_with_negative_turns(self, data: st.DataObject) -> None:
        max_turns = data.draw(st.integers(-3, -1), label="max_turns")
        before = self.state
        with pytest.raises(InvalidEvent):
            self.apply(Started(max_turns=max_turns))
        assert self.state is before

    def raise_max_turns(self, data: st.DataObject) -> None:
        more = data.draw(st.integers(1, 4), label="more turns")
        assert self.state.error is not None
        assert self.state.error.kind == "max_turns_exceeded"
        self.apply(Started(max_turns=self.state.turn + more))
        assert self.state.error is None
        assert self.status is RunStatus.RUNNING
        assert self.outcome == RunAgain(agent=self.state.current_agent)

    def restart_without_enough_turns(self, data: st.DataObject) -> None:
        max_turns = data.draw(st.none() | st.integers(0, self.state.turn), label="max_turns")
        self.apply(Started(max_turns=max_turns))
        assert self.status is RunStatus.FAILED
        assert self.state.error is not None
        assert self.state.error.kind == "max_turns_exceeded"

    def cancel(self, data: st.DataObject) -> None:
        reason = data.draw(st.sampled_from(["user", "deploy", "cancelled"]), label="reason")
        old = self.state
        started = [c.call_id for c in old.ledger if c.status == "started"]
        results: tuple[ToolOutput, ...] = ()
        doubt: tuple[str, ...] = ()
        if old.status is RunStatus.TOOLS:
            # Cancelled while its tools run: each call finished, or is in doubt.
            done = data.draw(st.lists(st.sampled_from(started), unique=True), label="finished")
            results = tuple(ToolOutput(call_id=c, output=f"done {c}") for c in done)
            doubt = tuple(c for c in started if c not in done)
        self.apply(Cancelled(reason=reason, results=results, in_doubt=doubt))
        assert self.status is RunStatus.CANCELLED
        assert self.outcome == FinalOutput(error=self.state.error)
        assert self.state.error is not None
        assert self.state.error.kind == "cancelled"
        if old.status is not RunStatus.TOOLS:
            assert self.state.ledger == old.ledger
            return
        # Never half-recorded: a finished call's result is in the transcript and the call
        # committed; one in doubt stays started, marked in doubt, with no result.
        calls = {c.call_id: c for c in self.state.ledger}
        answered = {i.call_id for i in self.state.items if isinstance(i, ToolResultItem)}
        for result in results:
            assert calls[result.call_id].status == "committed"
            assert result.call_id in answered
        for call_id in doubt:
            assert (calls[call_id].status, calls[call_id].reason) == ("started", "in_doubt")
            assert call_id not in answered

    def pause(self, data: st.DataObject) -> None:
        old = self.state
        self.apply(Paused(reason="lunch"))
        assert self.status is RunStatus.PAUSED
        assert self.outcome == Interruption(requests=(), paused=True)
        assert self.state.items == old.items
        assert self.state.ledger == old.ledger

    def resume_paused(self, data: st.DataObject) -> None:
        old = self.state
        self.apply(Resumed())
        assert self.status is RunStatus.RUNNING
        assert self.outcome == RunAgain(agent=old.current_agent)
        assert self.state.items == old.items

    def inject(self, data: st.DataObject) -> None:
        text = f"injected {len(self.injected)} in run {self.runs}"
        self.injected.append(text)
        old = self.state
        self.apply(Injected(items=(UserMessage(content=text),)))
        if old.status is RunStatus.RUNNING:
            assert self.state.items[-1] == UserMessage(content=text)
            assert self.outcome == RunAgain(agent=old.current_agent)
        elif old.status is RunStatus.PAUSED:
            assert self.state.items[-1] == UserMessage(content=text)
            assert self.outcome == Interruption(requests=(), paused=True)
        else:
            assert self.state.items == old.items
            assert self.state.staged[-1] == UserMessage(content=text)
            assert self.outcome == Interruption(requests=tuple(old.interruptions))

    @rule(data=st.data())
    def illegal_event(self, data: st.DataObject) -> None:
        illegal = [e for e in EVENT_TYPES if (self.status, e) not in TABLE]
        kind = data.draw(st.sampled_from(illegal), label="illegal event")
        ev = {
            Started: Started(),
            ModelResponded: ModelResponded(response=ModelResponse(text="hi", usage=USAGE)),
            ToolsFinished: ToolsFinished(),
            ApprovalsDecided: ApprovalsDecided(),
            Cancelled: Cancelled(),
            Injected: Injected(items=(UserMessage(content="late"),)),
            Paused: Paused(),
            Resumed: Resumed(),
            ErrorHandled: ErrorHandled(output="x"),
            HandedOff: HandedOff(),
        }[kind]
        before = self.state
        text = before.to_json()
        with pytest.raises(IllegalTransition) as raised:
            self.apply(ev)
        assert raised.value.status == before.status
        assert raised.value.event == kind.__name__
        assert self.state is before
        assert before.to_json() == text

    def restart(self, data: st.DataObject) -> None:
        self.state = self.reload(data)

    def out_of_turns(self) -> bool:
        error = self.state.error
        return error is not None and error.kind == "max_turns_exceeded"

    # -- actions: guardrails and error handlers ---------------------------------------------
    #
    # The test plays the driver: it draws the verdicts the user's guardrails would give, and
    # the content they replaced, and puts them on the events, as the Runner does.

    def draw_verdicts(
        self,
        data: st.DataObject,
        kind: str,
        behaviors: list[str],
        label: str,
        *,
        call: Invocation | ModelToolCall | None = None,
        tool: str | None = None,
        recheck: bool = False,
    ) -> tuple[GuardrailItem, ...]:
        drawn = data.draw(
            st.lists(st.sampled_from(behaviors), min_size=0 if call else 1, max_size=2),
            label=label,
        )
        call_id = None if call is None else call.call_id
        return tuple(
            GuardrailItem(
                guardrail=f"{kind}_{i}",
                kind=kind,  # type: ignore[arg-type]
                behavior=b,  # type: ignore[arg-type]
                agent=self.state.current_agent,
                message=f"{b} by {kind}_{i}",
                info={"check": i} if i else None,
                call_id=call_id,
                tool=tool,
                recheck=recheck,
            )
            for i, b in enumerate(drawn)
        )

    def expect_tripped(self, old: RunState, verdicts: tuple[GuardrailItem, ...]) -> None:
        trip = next(v for v in verdicts if v.behavior == "trip")
        assert self.status is RunStatus.FAILED
        assert self.state.error is not None
        assert self.state.error.kind == "guardrail_tripped"
        assert repr(trip.guardrail) in self.state.error.message
        assert self.outcome == FinalOutput(error=self.state.error)
        assert self.state.ledger == ()
        assert self.state.decisions == ()
        for v in verdicts:
            assert v in self.state.items[len(old.items) :]
        event(f"guardrail trip on {trip.kind}{' (recheck)' if trip.recheck else ''}")

    def start_guarded(self, data: st.DataObject) -> None:
        verdicts = self.draw_verdicts(
            data, "input", ["allow", "allow", "allow", "replace", "trip"], "input checks"
        )
        behaviors = {v.behavior for v in verdicts}
        replaced = None
        if "replace" in behaviors and "trip" not in behaviors:
            replaced = (UserMessage(content=f"redacted request {self.runs}"),)
        old = self.state
        self.apply(Started(guardrails=verdicts, input=replaced))
        if "trip" in behaviors:
            self.expect_tripped(old, verdicts)
            return
        assert self.status is RunStatus.RUNNING
        assert tuple(self.state.items) == verdicts
        assert self.state.input == (replaced or old.input)

    def inject_guarded(self, data: st.DataObject) -> None:
        verdicts = self.draw_verdicts(data, "input", ["allow", "replace", "trip"], "input checks")
        behaviors = {v.behavior for v in verdicts}
        text = f"injected {len(self.injected)} in run {self.runs}"
        if "replace" in behaviors:
            text += " (redacted)"
        old = self.state
        self.apply(Injected(items=(UserMessage(content=text),), guardrails=verdicts))
        if "trip" in behaviors:
            self.expect_tripped(old, verdicts)
            contents = [
                i for i in (*self.state.items, *self.state.staged) if i == UserMessage(content=text)
            ]
            assert not contents, "input a guardrail tripped on was kept"
            return
        self.injected.append(text)
        assert self.state.items[len(old.items) : len(old.items) + len(verdicts)] == verdicts

    def model_responds_guarded(self, data: st.DataObject) -> None:
        """An answer whose calls (of known tools, with valid arguments) and final output the
        guardrails checked."""
        self.responses += 1
        r = self.responses
        agent = self.state.current_agent
        old = self.state
        if data.draw(st.booleans(), label="final answer"):
            verdicts = self.draw_verdicts(
                data, "output", ["allow", "allow", "replace", "trip"], "output checks"
            )
            behaviors = {v.behavior for v in verdicts}
            typed = self.agents.output_adapter(agent) is not None
            replaced = None
            if "replace" in behaviors and "trip" not in behaviors:
                replaced = 8 if typed else "redacted"
            response = ModelResponse(text="7", usage=USAGE)
            self.apply(
                ModelResponded(response=response, guardrails=verdicts, final_output=replaced)
            )
            self.model_steps += 1
            if "trip" in behaviors:
                self.expect_tripped(old, verdicts)
                return
            expected = replaced if replaced is not None else (7 if typed else "7")
            assert self.outcome == FinalOutput(output=expected)
            said = self.state.items[len(old.items)]
            assert said == AssistantMessage(content=str(expected), agent=agent)
            event(f"final output {'replaced' if replaced is not None else 'allowed'}")
            return
        names = [n for n in VALID_ARGS if self.agents.tool(agent, n) is not None]
        picked = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3), label="tools")
        calls = tuple(
            ModelToolCall(
                call_id=f"c{r}_{i}",
                name=name,
                arguments=json.dumps(data.draw(VALID_ARGS[name], label=f"arguments of {name}")),
            )
            for i, name in enumerate(picked)
        )
        verdicts: list[GuardrailItem] = []
        replaced_args: dict[str, dict[str, Any]] = {}
        blocked: set[str] = set()
        for c in calls:
            checks = self.draw_verdicts(
                data,
                "tool_input",
                ["allow", "allow", "allow", "replace", "reject", "trip"],
                f"checks of {c.call_id}",
                call=c,
                tool=c.name,
            )
            verdicts += checks
            behaviors = {v.behavior for v in checks}
            if behaviors & {"reject", "trip"}:
                blocked.add(c.call_id)
            elif "replace" in behaviors:
                replaced_args[c.call_id] = data.draw(VALID_ARGS[c.name], label="replaced")
        response = ModelResponse(tool_calls=calls, usage=USAGE)
        for c in calls:
            self.key_of[c.call_id] = idempotency_key(old.run_id, old.turn + 1, c.call_id)
        self.blocked |= blocked
        answers = self.approval_answers(response, data)
        self.apply(
            ModelResponded(
                response=response,
                needs_approval=answers,
                guardrails=tuple(verdicts),
                arguments=replaced_args,
            )
        )
        self.model_steps += 1
        added = self.state.items[len(old.items) :]
        assert [v for v in added if isinstance(v, GuardrailItem)] == verdicts
        if any(v.behavior == "trip" for v in verdicts):
            self.expect_tripped(old, tuple(verdicts))
            answered = {i.call_id for i in added if isinstance(i, ToolResultItem)}
            assert answered == {c.call_id for c in calls}, "a call was left without a result"
            return
        ledger = {c.call_id: c for c in self.state.ledger}
        results = {i.call_id: i for i in added if isinstance(i, ToolResultItem)}
        for c in calls:
            if c.call_id in blocked:
                assert c.call_id not in ledger or ledger[c.call_id].status == "committed"
                reject = next(
                    v for v in verdicts if v.call_id == c.call_id and v.behavior == "reject"
                )
                assert results[c.call_id].output == reject.message
                event("call rejected by a guardrail")
            elif c.call_id in replaced_args and c.call_id in ledger:
                record = ledger[c.call_id]
                assert record.arguments == TOOLS[c.name].validate(replaced_args[c.call_id])
                assert record.edited
                event("arguments replaced by a guardrail")
            if c.call_id in ledger:
                record = ledger[c.call_id]
                assert record.recheck == (record.status == "awaiting_approval")

    def tools_finish_guarded(self, data: st.DataObject) -> None:
        """The tools ran as the Runner runs them with guardrails: approved calls checked
        again first (a trip runs nothing), then each result checked."""
        calls = self.outcome.calls
        rechecks: dict[str, tuple[GuardrailItem, ...]] = {}
        for c in calls:
            if c.recheck:
                rechecks[c.call_id] = self.draw_verdicts(
                    data,
                    "tool_input",
                    ["allow", "replace", "reject", "trip"],
                    f"rechecks of {c.call_id}",
                    call=c,
                    tool=c.tool,
                    recheck=True,
                )
        old = self.state
        verdicts = [v for c in calls for v in rechecks.get(c.call_id, ())]
        if any(v.behavior == "trip" for v in verdicts):
            self.blocked |= {v.call_id for v in verdicts if v.call_id is not None}
            results = tuple(
                ToolOutput(call_id=c.call_id, output=NOT_RUN_TRIPPED, is_error=True) for c in calls
            )
            self.apply(ToolsFinished(results=results, guardrails=tuple(verdicts)))
            self.expect_tripped(old, tuple(verdicts))
            return
        outputs: list[ToolOutput] = []
        returned: dict[str, dict[str, Any]] = {}
        verdicts = []
        tripped = False
        for c in calls:
            checks = rechecks.get(c.call_id, ())
            verdicts += checks
            behaviors = {v.behavior for v in checks}
            if "reject" in behaviors:
                self.blocked.add(c.call_id)
                outputs.append(ToolOutput(call_id=c.call_id, output="blocked on recheck"))
                continue
            if "replace" in behaviors:
                returned[c.call_id] = data.draw(VALID_ARGS[c.tool], label="replaced on recheck")
                continue
            result = execute(self.agents, self.state, c)
            after = self.draw_verdicts(
                data,
                "tool_output",
                ["allow", "allow", "replace", "trip"],
                f"result checks of {c.call_id}",
                call=c,
                tool=c.tool,
            )
            verdicts += after
            kinds = {v.behavior for v in after}
            if "trip" in kinds:
                tripped = True
                result = ToolOutput(call_id=c.call_id, output="withheld", is_error=True)
            elif "replace" in kinds:
                result = ToolOutput(call_id=c.call_id, output="redacted", is_error=result.is_error)
            outputs.append(result)
        self.apply(
            ToolsFinished(results=tuple(outputs), guardrails=tuple(verdicts), arguments=returned)
        )
        if tripped:
            self.expect_tripped(old, tuple(verdicts))
            return
        ledger = {c.call_id: c for c in self.state.ledger}
        for call_id, arguments in returned.items():
            record = ledger[call_id]
            assert record.status == "awaiting_approval"
            assert record.recheck and record.edited
            assert record.arguments == TOOLS[record.tool].validate(arguments)
            assert record.digest == digest(record.arguments)
            self.key_of[call_id] = record.idempotency_key
            event("sent back to a person by a guardrail")

    def error_handled(self, data: st.DataObject) -> None:
        choice = data.draw(
            st.sampled_from(["output", "output", "no history", "failure", "trip", "replace"]),
            label="error handler",
        )
        old = self.state
        agent = old.current_agent
        typed = self.agents.output_adapter(agent) is not None
        output: Any = 3 if typed else "out of turns"
        verdicts: tuple[GuardrailItem, ...] = ()
        if choice in ("trip", "replace"):
            verdicts = self.draw_verdicts(data, "output", [choice], "output checks")
            if choice == "replace":
                output = 4 if typed else "replaced"
        if choice == "failure":
            self.apply(ErrorHandled(failure="it raised"))
            assert self.status is RunStatus.FAILED
            assert self.state.error is not None
            assert self.state.error.kind == "max_turns_exceeded"
            assert "it raised" in self.state.error.message
            return
        self.apply(
            ErrorHandled(
                output=output, include_in_history=choice != "no history", guardrails=verdicts
            )
        )
        if choice == "trip":
            self.expect_tripped(old, verdicts)
            return
        assert self.status is RunStatus.COMPLETED
        assert self.outcome == FinalOutput(output=output)
        assert self.state.staged == ()
        said = AssistantMessage(content=str(output), agent=agent)
        added = self.state.items[len(old.items) :]
        assert (bool(added) and added[-1] == said) == (choice != "no history")
        event(f"error handler: {choice}")

    def restart_tripped_run(self, data: st.DataObject) -> None:
        before = self.state
        ev = data.draw(
            st.sampled_from([Started(max_turns=99), ErrorHandled(output="x")]), label="event"
        )
        with pytest.raises(InvalidEvent, match="guardrail_tripped"):
            self.apply(ev)
        assert self.state is before

    # -- actions: the model ------------------------------------------------------------------

    def model_responds(self, data: st.DataObject) -> None:
        self.responses += 1
        r = self.responses
        if data.draw(st.integers(0, 3), label="text only") == 0:
            response = ModelResponse(text=data.draw(FINAL_TEXTS, label="text"), usage=USAGE)
        else:
            names = data.draw(st.lists(PICK_TOOL, min_size=1, max_size=4), label="tools")
            calls = tuple(
                ModelToolCall(
                    call_id=f"c{r}_{i}",
                    name=name,
                    arguments=data.draw(raw_arguments(name), label=f"arguments of {name}"),
                )
                for i, name in enumerate(names)
            )
            text = data.draw(st.none() | SMALL_TEXT, label="text")
            response = ModelResponse(text=text, tool_calls=calls, usage=USAGE)
            event(f"{len(calls)} tool call(s)")
        answers = self.approval_answers(response, data)
        old = self.state
        for c in response.tool_calls:
            self.key_of[c.call_id] = idempotency_key(old.run_id, old.turn + 1, c.call_id)
        ev = ModelResponded(response=response, needs_approval=answers)
        if self.would_raise(response) and data.draw(st.booleans(), label="strict"):
            with pytest.raises(ModelBehaviorError):
                self.apply(ev, tool_errors="raise")
            assert self.state is old
            event("tool_errors=raise refused the answer")
        outcome = self.apply(ev)
        self.model_steps += 1
        self.expect_model_step(old, self.state, outcome, response, answers)

    def would_raise(self, response: ModelResponse) -> bool:
        agent = self.state.current_agent
        for c in response.tool_calls:
            if self.agents.handoff_target(agent, c.name) is not None:
                continue
            tool = self.agents.tool(agent, c.name)
            if tool is None:
                return True
            try:
                tool.validate_json(c.arguments)
            except ToolArgumentsError:
                return True
        return False

    def model_misbehaves(self, data: st.DataObject) -> None:
        bad_id = data.draw(st.sampled_from(["", "dup"]), label="bad id")
        calls = (
            ModelToolCall(call_id=bad_id, name="echo", arguments='{"text": "a"}'),
            ModelToolCall(call_id=bad_id or "x", name="echo", arguments='{"text": "b"}'),
        )
        before = self.state
        with pytest.raises(ModelBehaviorError):
            self.apply(ModelResponded(response=ModelResponse(tool_calls=calls, usage=USAGE)))
        assert self.state is before

    # -- actions: tools ----------------------------------------------------------------------

    def tools_finish(self, data: st.DataObject) -> None:
        calls = self.outcome.calls
        results = [execute(self.agents, self.state, c) for c in calls]
        shuffled = data.draw(st.permutations(results), label="report order")
        old = self.state
        self.apply(ToolsFinished(results=tuple(shuffled)))
        added = [i for i in self.state.items[len(old.items) :] if isinstance(i, ToolResultItem)]
        # Results join the transcript in the order of the calls, whatever the report order.
        assert [(i.call_id, i.output, i.is_error) for i in added[: len(results)]] == [
            (r.call_id, r.output, r.is_error) for r in results
        ]
        for result in results:
            if result.is_error:
                event("a tool raised")

    def tools_misreported(self, data: st.DataObject) -> None:
        calls = self.outcome.calls
        ok = [ToolOutput(call_id=c.call_id, output="ok") for c in calls]
        bad = data.draw(
            st.sampled_from(
                [
                    ToolsFinished(results=tuple(ok[:-1])),  # one missing
                    ToolsFinished(results=(*ok, ok[0])),  # one twice
                    ToolsFinished(results=tuple(ok), in_doubt=(calls[0].call_id,)),
                    ToolsFinished(results=(*ok, ToolOutput(call_id="ghost", output="boo"))),
                ]
            ),
            label="bad report",
        )
        before = self.state
        with pytest.raises(InvalidEvent):
            self.apply(bad)
        assert self.state is before

    def crash_while_tools_run(self, data: st.DataObject) -> None:
        """The process dies while the tools run: some ran, none reported. A new process
        loads the state, re-runs the idempotent calls and reports the others in doubt."""
        calls = self.outcome.calls
        for c in calls:
            if data.draw(st.booleans(), label=f"{c.call_id} ran before the crash"):
                execute(self.agents, self.state, c)
            self.doubted[c.idempotency_key] += 1
        self.state = self.reload(data)
        outcome = pending_outcome(self.state)
        assert outcome == ToolCall(calls=calls)
        again = [c for c in calls if TOOLS[c.tool].idempotent]
        doubt = tuple(c.call_id for c in calls if c not in again)
        results = tuple(execute(self.agents, self.state, c) for c in again)
        self.apply(ToolsFinished(results=results, in_doubt=doubt))
        ledger = {c.call_id: c for c in self.state.ledger}
        for call_id in doubt:
            assert ledger[call_id].status == "awaiting_approval"
            assert ledger[call_id].reason == "in_doubt"
            event("call in doubt")
        if doubt:
            assert self.status is RunStatus.INTERRUPTED
            in_doubt = [r.call_id for r in self.outcome.requests if r.reason == "in_doubt"]
            assert set(doubt) <= set(in_doubt)

    # -- actions: the human ------------------------------------------------------------------

    def waiting(self) -> list[Any]:
        return self.state.interruptions

    def approve(self, data: st.DataObject) -> None:
        request = data.draw(st.sampled_from(self.waiting()), label="request")
        always = data.draw(st.booleans(), label="always")
        edit = data.draw(st.sampled_from(["none", "none", "valid", "invalid"]), label="edit")
        arguments = None
        if edit == "valid":
            arguments = data.draw(VALID_ARGS[request.tool], label="edited arguments")
        elif edit == "invalid":
            arguments = {"bogus": 1}
        if self.status is RunStatus.INTERRUPTED and data.draw(st.booleans(), label="in event"):
            decision = Decision(
                call_id=request.call_id,
                digest=request.digest,
                approved=True,
                always=always,
                arguments=arguments,
            )
            self.resume((decision,))
            return
        self.record_decision(request.call_id, approved=True, always=always, arguments=arguments)

    def reject(self, data: st.DataObject) -> None:
        request = data.draw(st.sampled_from(self.waiting()), label="request")
        always = data.draw(st.booleans(), label="always")
        message = data.draw(st.none() | st.sampled_from(["no", "not today"]), label="message")
        if self.status is RunStatus.INTERRUPTED and data.draw(st.booleans(), label="in event"):
            decision = Decision(
                call_id=request.call_id,
                digest=request.digest,
                approved=False,
                always=always,
                message=message,
            )
            self.resume((decision,))
            return
        self.record_decision(request.call_id, approved=False, always=always, message=message)

    def record_decision(self, call_id: str, *, approved: bool, **kwargs: Any) -> None:
        old = self.state
        first = next((d for d in old.decisions if d.call_id == call_id), None)
        arguments = kwargs.get("arguments")
        bad_edit = False
        if arguments is not None:
            tool = next(c.tool for c in old.ledger if c.call_id == call_id)
            try:
                TOOLS[tool].validate(arguments)
            except ToolArgumentsError:
                bad_edit = True
        try:
            new = old.approve(call_id, **kwargs) if approved else old.reject(call_id, **kwargs)
        except DecisionRefused:
            assert bad_edit or first is not None, "a valid first decision was refused"
            event("decision refused when posted")
            return
        assert not bad_edit, "edited arguments that fail the tool's schema were posted"
        if first is not None:
            assert new is old, "a second decision on a call was taken"
            event("the same decision posted twice")
            return
        assert new.version == old.version + 1
        decision = new.decisions[-1]
        assert decision.call_id == call_id
        assert decision.approved is approved
        assert [d.call_id for d in new.decisions].count(call_id) == 1
        assert msgspec.structs.replace(new, decisions=old.decisions, version=old.version) == old
        self.state = new

    def resume_as_decided(self, data: st.DataObject) -> None:
        self.resume(())

    def resume_with_new_turn_limit(self, data: st.DataObject) -> None:
        """Resuming may change the turn limit, even below the turns already used: the calls
        of the current turn still get their results, then the run fails on its limit."""
        max_turns = data.draw(st.integers(0, self.state.turn + 3), label="max_turns")
        self.resume((), max_turns=max_turns)
        assert self.state.max_turns == max_turns

    def resume(self, decisions: tuple[Decision, ...], *, max_turns: int | None = None) -> None:
        old = self.state
        taken, _ = self.effective_decisions(old, decisions)
        settled_by_policy = any(
            r.reason == "approval" and any(p.tool == r.tool for p in old.policies)
            for r in old.interruptions
        )
        self.apply(ApprovalsDecided(decisions=decisions, max_turns=max_turns))
        if not taken and not settled_by_policy:
            # Nothing takes effect: the run pauses again on the same requests, and only the
            # audit trail (the refusals) moves.
            assert self.outcome == Interruption(requests=tuple(old.interruptions))
            assert self.state.items == old.items
            assert self.state.ledger == old.ledger
            event("resumed without an effective decision")

    def decide_with_stale_digest(self, data: st.DataObject) -> None:
        """A decision made on other arguments than the call's is not a decision on it."""
        request = data.draw(st.sampled_from(self.waiting()), label="request")
        stale = Decision(call_id=request.call_id, digest="0" * 64, approved=True)
        self.apply(ApprovalsDecided(decisions=(stale,)))
        assert self.state.audit[-1].outcome == "refused"
        policy = any(p.tool == request.tool for p in self.state.policies)
        if request.reason == "in_doubt" or not policy:
            assert request in self.state.interruptions
            event("stale decision ignored")

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def status_agrees_with_outcome(self) -> None:
        state = self.state
        if state.status is RunStatus.NEW:
            assert self.outcome is None
            return
        assert status_of(self.outcome) == state.status
        assert pending_outcome(state) == _outcome_as_resumed(self.outcome)

    @invariant()
    def json_round_trip_is_identity(self) -> None:
        assert not round_trip_problems(self.state)
        signed = self.state.to_json(signing_key=SIGNING_KEY)
        assert RunState.from_json(signed, signing_key=SIGNING_KEY) == self.state

    @invariant()
    def transcript_is_well_formed(self) -> None:
        check_transcript(self.state)

    @invariant()
    def status_shape(self) -> None:
        state = self.state
        problems = status_problems(state)
        assert not problems, problems
        if state.status is RunStatus.FAILED:
            assert state.error is not None
            assert state.error.kind in ("max_turns_exceeded", "guardrail_tripped")
        assert state.current_agent in self.agents
        assert state.usage.requests == self.model_steps

    @invariant()
    def no_committed_call_runs_twice(self) -> None:
        for key, count in EXECUTIONS.by_key.items():
            assert count <= 1 + self.doubted[key], f"{key} ran {count} times"
            if key in self.committed:
                assert count == self.committed[key], f"{key} ran after its result was recorded"

    @invariant()
    def a_trip_is_on_the_record(self) -> None:
        error = self.state.error
        if error is not None and error.kind == "guardrail_tripped":
            trips = [
                i for i in self.state.items if isinstance(i, GuardrailItem) and i.behavior == "trip"
            ]
            assert trips, "a run failed by a guardrail with no trip in its transcript"
            assert any(repr(t.guardrail) in error.message for t in trips)

    @invariant()
    def no_one_is_asked_about_a_blocked_call(self) -> None:
        for request in self.state.interruptions:
            assert request.call_id not in self.blocked, f"{request.call_id} waits, blocked"

    @invariant()
    def verdicts_never_reach_the_model(self) -> None:
        request = agentfsm.ModelRequest(
            run_id=self.state.run_id,
            agent=self.state.current_agent,
            instructions="",
            input=self.state.input,
            items=self.state.items,
            tools=(),
            output_schema=None,
            turn=self.state.turn,
        )
        assert not any(isinstance(i, GuardrailItem) for i in request.conversation())

    @invariant()
    def injected_input_is_never_lost(self) -> None:
        contents = [
            i.content for i in (*self.state.items, *self.state.staged) if isinstance(i, UserMessage)
        ]
        for text in self.injected:
            assert contents.count(text) == 1, text


EngineMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestEngineMachine = EngineMachine.TestCase


_OUT_OF_TURNS_ACTIONS = frozenset(
    {"raise_max_turns", "restart_without_enough_turns", "error_handled"}
)


# -- resuming from any checkpoint ----------------------------------------------------------------


class ResumeMachine(AgentMachine):
    """This file's two agents (triage <-> worker, six tools: idempotent, not, approved
    always, approved above an amount, failing, strict), driven through the Runner and a
    store by the agent test kit: hypothesis plays the model (valid, malformed and unknown
    calls, parallel calls, handoffs both ways, answers the worker's int output refuses),
    the people (approve, always, edit, reject, partial decisions) and the process (crashes
    at every durable boundary, resumes through the store and through JSON). The kit's
    invariants hold after every step; among them: a finished run resumed from one of its
    checkpoints ends the same, nothing committed runs again, and a call that may not run
    twice goes to a person after a crash."""

    agent = make_agents()
    context = CONTEXT
    max_turns = 8
    invalid_arguments = True
    parallel_calls = 4


ResumeMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestResumeMachine = ResumeMachine.TestCase


# -- regressions -------------------------------------------------------------------------------


@agentfsm.tool(needs_approval=True)
def scale(factor: float) -> str:
    """Scale by a factor."""
    return f"scaled by {factor}"


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ('{"factor": NaN}', "arguments"),
        ('{"factor": Infinity}', "arguments"),
        ('{"factor": 1e400}', "arguments"),
        ("NaN", "output"),
        ("-Infinity", "output"),
    ],
)
def test_non_finite_floats_from_the_model_are_refused(raw: str, where: str) -> None:
    """Found by this fuzzer: pydantic accepts NaN and Infinity in JSON, msgspec writes them as
    null, so a state holding one did not survive to_json/from_json (and a human approved
    arguments that changed on reload). The engine must refuse them as it refuses any invalid
    model output: an error result for the call, feedback for a final answer."""
    bot = Agent("bot", tools=[scale], output_type=float)
    state = step(new_run(bot, "go", run_id="nan"), Started(), bot).state
    if where == "arguments":
        response = ModelResponse(
            tool_calls=(ModelToolCall(call_id="c1_0", name="scale", arguments=raw),)
        )
    else:
        response = ModelResponse(text=raw)
    state = step(state, ModelResponded(response=response), bot).state
    assert RunState.from_json(state.to_json()) == state
    assert state.status is RunStatus.RUNNING
    assert state.ledger == ()
    last = state.items[-1]
    if where == "arguments":
        assert isinstance(last, ToolResultItem)
        assert last.is_error
    else:
        assert isinstance(last, Feedback)


# -- bugs found ----------------------------------------------------------------------------------

#: What ``os.fsdecode(b"report-\xff.txt")`` returns on Linux: a str with a lone surrogate.
#: Lone surrogates also come out of ``json.loads`` of a model's '"\ud83d"' (half an emoji).
NOT_UTF8 = "report-\udcff.txt"


@agentfsm.tool
def list_reports(ctx: ToolContext) -> str:
    """List the report files (names decoded as the OS does, with surrogateescape)."""
    EXECUTIONS.record(ctx)
    return NOT_UTF8


def _outside_text(where: str) -> tuple[RunState, Any]:
    """A run, and an event carrying a str that is not valid Unicode at ``where``."""
    bot = Agent("bot", tools=[echo, list_reports])
    state = step(new_run(bot, "go", run_id="utf8"), Started(), bot).state
    if where == "tool output":
        call = ModelToolCall(call_id="c1_0", name="list_reports", arguments="{}")
        state = step(state, ModelResponded(response=ModelResponse(tool_calls=(call,))), bot).state
        return state, ToolsFinished(results=(ToolOutput(call_id="c1_0", output=NOT_UTF8),))
    if where == "injected input":
        return state, Injected(items=(UserMessage(content=NOT_UTF8),))
    if where == "model text":
        return state, ModelResponded(response=ModelResponse(text=NOT_UTF8))
    arguments = json.dumps({"text": NOT_UTF8}, ensure_ascii=False)
    name = "echo" if where == "model tool arguments" else NOT_UTF8
    call = ModelToolCall(call_id="c1_0", name=name, arguments=arguments)
    return state, ModelResponded(response=ModelResponse(tool_calls=(call,)))


@pytest.mark.parametrize(
    "where",
    ["tool output", "injected input", "model text", "model tool arguments", "tool name"],
)
def test_every_state_a_step_returns_can_be_persisted(where: str) -> None:
    state, ev = _outside_text(where)
    bot = Agent("bot", tools=[echo, list_reports])
    try:
        new = step(state, ev, bot).state
    except agentfsm.AgentFSMError:
        return  # refusing the event (state unchanged) is fine too
    assert RunState.from_json(new.to_json()) == new


def test_runner_checkpoints_a_tool_output_that_is_not_valid_unicode() -> None:
    saved: list[str] = []
    bot = Agent(
        "bot",
        model=ScriptedModel([call("list_reports"), say("done")]),
        tools=[list_reports],
    )
    result = Runner(on_step=lambda s: saved.append(s.to_json())).run_sync(bot, "list them")
    assert result.status == "completed"
    assert RunState.from_json(saved[-1]) == result.state
