"""``AgentMachine``: property-test your own agents with a hypothesis state machine.

Subclass it, name your agent (and fakes for the tools with side effects), and hypothesis
plays the model, the people who decide on calls, and the crashes of the process, through the
real driver (``Runner``) and a real store; the kit's invariants and yours are checked after
every step. When hypothesis finds a failure and shrinks it, the kit prints a plain pytest
function that replays it (``AgentMachine.replay``), to paste into your suite::

    class TestSupport(AgentMachine):
        agent = build_support_agent(model=None)
        fakes = {"issue_refund": fake_refund}

        @invariant()
        def never_refund_more_than_paid(self): ...

    test_support = TestSupport.TestCase

Why the real driver rather than the pure step: the bugs worth finding in your agents live
in the code the driver runs. Your approval functions are evaluated by the driver (with the
run's context, possibly async); which calls are re-run after a crash is decided by the
driver from your ``idempotent`` declarations; your tool bodies are bound, given their
ToolContext and timed out by it; your output types are validated by the step and again by
the driver. A harness of its own would test a copy of those rules.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import msgspec
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from .._agents import Agent, AgentSet
from .._errors import ConfigurationError, DecisionRefused, ToolArgumentsError
from .._items import AssistantMessage, Feedback, ToolCallItem, ToolResultItem
from .._json import digest
from .._jsonschema import schema_errors
from .._machine import RunStatus
from .._model import ModelRequest
from .._outcomes import ApprovalRequest
from .._state import CallRecord, RunState
from .._step import new_run
from .._tools import Tool, ToolContext
from ._checks import round_trip_problems, status_problems, transcript_problems
from ._kit_choices import Explorer, KitModel, Replayer
from ._kit_plan import PersonDecision, Plan, decision_of, regression_source
from ._kit_resume import check_resume
from ._kit_shared import shared
from ._kit_world import Crash, EndOfScript, Escaped, Execution, copy_agents, fake_of, wrap_tool
from ._schema_strategies import exact_schema
from ._scripted import Turn, _Say

__all__ = ["AgentMachine"]


class AgentMachine(RuleBasedStateMachine):
    """A hypothesis state machine over one run of your agent. Subclass it and set:

    - ``agent``: your starting agent, with its real tools and handoffs (its model and the
      models of the agents it hands off to are replaced by the kit's);
    - ``fakes``: ``{tool name: function}`` for the tools with side effects, called with
      the tool's arguments instead of its body (``keyed(fake)`` for a service that
      deduplicates on the idempotency key); each run of a fake is one side effect;
    - optionally ``input``, ``context``, ``max_turns``, ``store`` (``"memory"``,
      ``"sqlite"`` or a function returning a Store), ``persistence`` (how runs are
      restarted: ``("store", "json")``), ``crashes``, ``invalid_arguments``,
      ``invalid_outputs``, ``invalid_edits``, ``parallel_calls`` and
      ``outputs_match_schema``.

    Then ``test_x = MyMachine.TestCase``. Each example is one run: hypothesis draws the
    model's answers (your tools with arguments from their schemas, handoffs to your agents,
    final answers for the output type), people's decisions on waiting calls, and crashes at
    every durable boundary; every stop goes through the store or JSON and back. Your own
    ``@invariant`` and ``@rule`` methods join in; read ``state``, ``checkpoints`` and
    ``executions``.
    """

    agent: ClassVar[Agent]
    fakes: ClassVar[Mapping[str, Any]] = {}
    input: ClassVar[str] = "Hello!"
    context: ClassVar[Any] = None
    max_turns: ClassVar[int] = 8
    store: ClassVar[Any] = "memory"
    persistence: ClassVar[Sequence[Literal["store", "json"]]] = ("store", "json")
    crashes: ClassVar[bool] = True
    invalid_arguments: ClassVar[bool] = False
    invalid_outputs: ClassVar[bool] = True
    invalid_edits: ClassVar[bool] = True
    parallel_calls: ClassVar[int] = 2
    #: False if your output types refuse, on purpose, values their schema allows.
    outputs_match_schema: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        cls = type(self)
        if not isinstance(getattr(cls, "agent", None), Agent):
            raise ConfigurationError(f"{cls.__name__}.agent must be your starting Agent")
        self._shared = shared(cls)
        self._shared.current = self
        self._originals = _originals(cls)
        model = KitModel(self)
        self._agent = copy_agents(cls.agent, self._wrap, lambda _: model)
        self._agents = AgentSet(self._agent)
        self._oracle: Explorer | Replayer = Explorer()
        self.plan = Plan()
        #: Every durable state of the run, in order (the store's or the JSON file's).
        self.checkpoints: list[RunState] = []
        #: Every tool body (or fake) that ran, in order.
        self.executions: list[Execution] = []
        self.state: RunState = new_run(cls.agent, cls.input, run_id="unset")
        self.run_id = f"{cls.__name__}-{next(_RUN_IDS)}"
        self.violations: dict[str, list[str]] = {}
        self._ledger: dict[str, CallRecord] = {}
        self._waited: set[str] = set()
        self._approved: dict[str, set[str]] = {}
        self._always: set[str] = set()
        self._effects: Counter[tuple[str, str]] = Counter()
        self._outputs: dict[str, Any] = {}
        self._valid_answers: set[str] = set()
        self._seen: Counter[str] = Counter()
        self._saved = ""
        self._dead = False
        self._posted = 0
        self._last_crash_at = 0
        self._scanned = 0
        self._over = False
        self._resume_checked = False
        self._advancing = False

    # -- reading, for your invariants ----------------------------------------------------

    def ran(self, idempotency_key: str) -> bool:
        """Whether a tool body (or its fake) ran for this idempotency key."""
        return any(e.idempotency_key == idempotency_key for e in self.executions)

    # -- the rules -----------------------------------------------------------------------

    @initialize(data=st.data())
    def start_run(self, data: Any) -> None:
        """A new run of ``agent`` on ``input``, kept in the store or as JSON."""
        assert isinstance(self._oracle, Explorer)
        self._oracle.data = data
        ways = list(self.persistence)
        way = ways[0] if len(ways) == 1 else data.draw(st.sampled_from(ways), "persistence")
        self._begin(way)

    @rule(data=st.data())
    def go_on(self, data: Any) -> None:
        """The next thing that happens to the run: people decide on its waiting calls, or
        it goes on (the model answers, tools run, the process may crash) until it stops."""
        assert isinstance(self._oracle, Explorer)
        self._oracle.data = data
        self._act()

    # -- built-in invariants -------------------------------------------------------------

    @invariant()
    def every_call_is_answered_before_the_next_model_call(self) -> None:
        self._holds("every_call_is_answered_before_the_next_model_call")

    @invariant()
    def no_side_effect_happens_twice(self) -> None:
        self._holds("no_side_effect_happens_twice")

    @invariant()
    def nothing_runs_with_arguments_no_one_approved(self) -> None:
        self._holds("nothing_runs_with_arguments_no_one_approved")

    @invariant()
    def a_decision_applies_only_to_its_digest(self) -> None:
        self._holds("a_decision_applies_only_to_its_digest")

    @invariant()
    def resuming_from_a_checkpoint_ends_the_same(self) -> None:
        self._holds("resuming_from_a_checkpoint_ends_the_same")

    @invariant()
    def the_json_round_trip_is_the_identity(self) -> None:
        self._holds("the_json_round_trip_is_the_identity")

    @invariant()
    def the_transcript_is_well_formed(self) -> None:
        self._holds("the_transcript_is_well_formed")

    @invariant()
    def the_state_fits_its_status(self) -> None:
        self._holds("the_state_fits_its_status")

    @invariant()
    def outputs_that_fit_the_schema_are_accepted(self) -> None:
        self._holds("outputs_that_fit_the_schema_are_accepted")

    @invariant()
    def approval_rules_answer(self) -> None:
        self._holds("approval_rules_answer")

    def _event(self, text: str) -> None:
        """A statistic for ``--hypothesis-show-statistics``, while hypothesis explores."""
        if isinstance(self._oracle, Explorer):
            from hypothesis import event

            event(text)

    def _holds(self, name: str) -> None:
        found = self.violations.get(name)
        if found:
            raise AssertionError(f"{name.replace('_', ' ')}: {found[0]}")

    def _violation(self, name: str, message: str) -> None:
        self.violations.setdefault(name, []).append(message)
        if self._advancing:
            # Stop the run here: the example (and the printed test) ends at the failure.
            self._dead = True
            raise Crash(f"stopped at a violation of {name}")

    # -- replaying a plan ----------------------------------------------------------------

    @classmethod
    def replay(
        cls,
        script: Sequence[Turn],
        *,
        decisions: Sequence[Sequence[PersonDecision]] = (),
        crashes: Sequence[str] = (),
        persistence: Literal["store", "json"] = "store",
        resume_from: int | None = None,
    ) -> None:
        """Play one run as the kit printed it: the model answers from ``script`` (a
        ScriptedModel script), people take the ``decisions`` rounds in order at each
        stop for decisions, and the process crashes at the ``crashes`` points. Every
        invariant (the kit's and the class's) is checked after every step, as hypothesis
        does; AssertionError says which failed. The replay ends where the run ends, or
        where the code under test takes a path the plan does not know (more turns than
        the script has, no decisions left)."""
        machine = cls()
        machine._oracle = Replayer(decisions, crashes, resume_from)
        machine.plan.script = list(script)
        try:
            machine._begin(persistence)
            machine._check_invariants()
            while machine._act():
                machine._check_invariants()
            machine._check_invariants()
        finally:
            machine.teardown()

    def _check_invariants(self) -> None:
        # A list since hypothesis 6.104; a classmethod before.
        found: Any = self.invariants
        for invariant_ in found() if callable(found) else found:
            if all(condition(self) for condition in invariant_.preconditions):
                invariant_.function(self)

    def teardown(self) -> None:
        if isinstance(self._oracle, Explorer) and _final():
            from hypothesis import note

            note(_Regression(self))
        if self._shared.current is self:
            self._shared.current = None
        if self.plan.persistence == "store" and self.checkpoints:
            with contextlib.suppress(Exception):
                self._shared.run(self._shared.store.delete(self.run_id))

    def regression_test(self) -> str:
        """This example as the source of a pytest function that replays it."""
        cls = type(self)
        name = "test_" + re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower() + "_regression"
        failures = [m for found in self.violations.values() for m in found]
        # A class defined in a function is named by its own name: the test sits beside it.
        where = cls.__name__ if "<locals>" in cls.__qualname__ else cls.__qualname__
        return regression_source(name, where, self.plan, failures[0] if failures else "")

    # -- one step ------------------------------------------------------------------------

    def _begin(self, persistence: Literal["store", "json"]) -> None:
        self.plan.persistence = persistence
        first = new_run(
            self._agent,
            self.input,
            run_id=self.run_id,
            context=self.context,
            max_turns=self.max_turns,
        )
        if persistence == "store":
            self._shared.run(self._shared.store.create(first))
        else:
            self._saved = first.to_json()
        self._observe(first)

    def _act(self) -> bool:
        """Take the next step; False when the run can go no further."""
        state = self.state
        if self._over:
            return False
        if state.status.is_terminal:
            if not self._resume_checked:
                self._event(f"run ended {state.status.value} after {state.turn} turns")
            self._check_resume()
            return False
        if state.status is RunStatus.INTERRUPTED and not self._posted:
            decisions = self._oracle.decisions(self, state.interruptions)
            if decisions is None:
                self._over = True
                return False
            self._decide(decisions)
            return True
        self._advance()
        return True

    def _advance(self) -> None:
        self._dead = False
        self._posted = 0
        if self.crashes:
            self._oracle.start()
        self._advancing = True
        try:
            if self.plan.persistence == "store":
                self._shared.run(self._shared.store_runner.resume(self._agent, self.run_id))
            else:
                loaded = RunState.from_json(self._saved)
                self._shared.run(self._shared.json_runner.run(self._agent, loaded))
        except Crash:
            pass
        except EndOfScript:
            self._over = True
        except Escaped as escaped:
            raise escaped.error from None
        finally:
            self._advancing = False
        if self.plan.persistence == "store":
            stored = self._shared.run(self._shared.store.load(self.run_id))
            if stored != self.state:
                self._violation(
                    "the_json_round_trip_is_the_identity",
                    f"the store gave back version {stored.version}, not the version "
                    f"{self.state.version} saved last",
                )

    def _decide(self, decisions: Sequence[PersonDecision]) -> None:
        self.plan.rounds.append((len(self.checkpoints) - 1, list(decisions)))
        waiting = {r.call_id: r for r in self.state.interruptions}
        state = self.state
        for made in decisions:
            request = waiting.get(made.call_id)
            if request is None:
                continue
            decision = decision_of(made, request)
            bad_edit = made.arguments is not None and bool(
                schema_errors(made.arguments, request.schema or {})
            )
            try:
                if self.plan.persistence == "store":
                    self._shared.run(self._shared.store.decide(self.run_id, decision))
                else:
                    state = state.decide(decision)
            except DecisionRefused:
                continue
            if made.kind == "stale" or bad_edit:
                what = "stale digest" if made.kind == "stale" else "edit that fits no schema"
                self._violation(
                    "a_decision_applies_only_to_its_digest",
                    f"a decision with a {what} on {made.call_id} was accepted",
                )
            self._posted += 1
            self._event(
                f"decision: {made.kind}{' always' if made.always else ''} ({request.reason})"
            )
            self._remember(made, request)
        if state is not self.state:
            self._saved = state.to_json()
            self._observe(state)

    def _remember(self, made: PersonDecision, request: ApprovalRequest) -> None:
        """What a person allowed to run."""
        if made.kind != "approve":
            if made.always:
                self._always.discard(request.tool)
            return
        approved = request.digest
        if made.arguments is not None:
            tool = self._originals.tool(request.agent, request.tool)
            try:
                approved = digest(tool.validate(made.arguments)) if tool else ""
            except ToolArgumentsError:
                return
        self._approved.setdefault(request.call_id, set()).add(approved)
        if made.always:
            self._always.add(request.tool)

    # -- durable boundaries --------------------------------------------------------------

    def _on_step(self, state: RunState) -> None:
        if self.plan.persistence == "json":
            self._boundary(f"in_save:{state.version}")
            self._saved = state.to_json()
        self._observe(state)
        self._boundary(f"after_save:{state.version}")

    def _boundary(self, point: str) -> None:
        """A durable boundary: the process may die here (and, once dead, does nothing)."""
        if self._dead:
            raise Crash(point)
        if not self.crashes:
            return
        self._seen[point] += 1
        seen = self._seen[point]
        name = point if seen == 1 else f"{point}#{seen}"
        if self._oracle.crash(name):
            self._dead = True
            if isinstance(self._oracle, Explorer):
                self.plan.crashes.append(name)
            self._last_crash_at = len(self.checkpoints)
            self._event(f"crash {point.split(':')[0]}")
            raise Crash(name)

    def _observe(self, state: RunState) -> None:
        """A state is durable: check it goes through JSON unchanged, and learn from it."""
        for problem in round_trip_problems(state):
            self._violation("the_json_round_trip_is_the_identity", problem)
        for problem in transcript_problems(state):
            self._violation("the_transcript_is_well_formed", f"version {state.version}: {problem}")
        for problem in status_problems(state):
            self._violation("the_state_fits_its_status", f"version {state.version}: {problem}")
        self.checkpoints.append(state)
        self.state = state
        self._ledger = {c.call_id: c for c in state.ledger}
        for call in state.ledger:
            if call.status == "awaiting_approval":
                self._waited.add(call.call_id)
        items = state.items
        start = min(self._scanned, len(items))
        for before, after in itertools.pairwise(items[max(start - 1, 0) :]):
            if (
                isinstance(before, AssistantMessage)
                and isinstance(after, Feedback)
                and before.content in self._valid_answers
            ):
                self._violation(
                    "outputs_that_fit_the_schema_are_accepted",
                    f"agent {before.agent!r} refused the final answer {before.content!r}, "
                    f"which fits the output schema the model is shown: {after.content}",
                )
        self._scanned = len(items)

    # -- the model -----------------------------------------------------------------------

    def _check_request(self, request: ModelRequest) -> None:
        calls: dict[str, int] = {}
        for item in request.items:
            if isinstance(item, ToolCallItem):
                calls[item.call_id] = 0
            elif isinstance(item, ToolResultItem):
                if item.call_id not in calls:
                    self._violation(
                        "every_call_is_answered_before_the_next_model_call",
                        f"a result for {item.call_id}, which no call made",
                    )
                    continue
                calls[item.call_id] += 1
        wrong = {c: n for c, n in calls.items() if n != 1}
        if wrong:
            self._violation(
                "every_call_is_answered_before_the_next_model_call",
                f"the model was asked for turn {request.turn} with calls answered "
                f"{', '.join(f'{c}: {n} times' for c, n in wrong.items())}",
            )

    def _note_answer(self, agent_name: str, turn: Turn) -> None:
        """Remember a final answer that fits the output schema exactly."""
        if not (self.outputs_match_schema and isinstance(turn, _Say)):
            return
        schema = self._agents.output_schema(agent_name)
        if schema is None or not exact_schema(schema):
            return
        try:
            value = msgspec.json.decode(turn.text)
        except msgspec.DecodeError:
            return
        if not schema_errors(value, schema):
            self._valid_answers.add(turn.text)

    # -- tools ---------------------------------------------------------------------------

    def _wrap(self, tool: Tool) -> Tool:
        body, faked, keyed = fake_of(self.fakes, tool)

        async def run(
            original: Tool, fn: Callable[..., Any], ctx: ToolContext, args: Any, kwargs: Any
        ) -> Any:
            return await self._run_body(original, fn, ctx, args, kwargs, faked, keyed)

        return wrap_tool(tool, body, run, self._approval)

    async def _run_body(
        self,
        tool: Tool,
        body: Callable[..., Any],
        ctx: ToolContext,
        args: list[Any],
        kwargs: dict[str, Any],
        faked: bool,
        keyed: bool,
    ) -> Any:
        self._boundary(f"before_tool:{ctx.call_id}")
        record = self._ledger.get(ctx.call_id)
        arguments = record.arguments if record is not None else {}
        approved = record is not None and (
            record.digest in self._approved.get(ctx.call_id, ())
            or (record.reason == "approval" and tool.name in self._always)
        )
        if ctx.call_id in self._waited and not approved:
            self._violation(
                "nothing_runs_with_arguments_no_one_approved",
                f"{tool.name} ran call {ctx.call_id} with {arguments}, which no person approved",
            )
        key = ctx.idempotency_key
        effect = True
        if keyed and key in self._outputs:
            output: Any = self._outputs[key]
            effect = False
        else:
            try:
                output = body(*args, **kwargs)
                if inspect.isawaitable(output):
                    output = await output
            except Exception as exc:
                output = exc
        self.executions.append(
            Execution(
                tool=tool.name,
                agent=ctx.agent,
                call_id=ctx.call_id,
                idempotency_key=key,
                arguments=arguments,
                approved=approved,
                output=output,
                faked=faked,
                effect=effect,
            )
        )
        if effect and (faked or not tool.idempotent):
            self._effects[tool.name, key] += 1
            if self._effects[tool.name, key] > 1:
                why = (
                    "it is declared idempotent, so it ran again after a crash, and its fake "
                    "took effect again: declare it idempotent=False (a person then decides on "
                    "a call in doubt), or have it pass ctx.idempotency_key to the service "
                    "(and fake that with agentfsm.testing.keyed)"
                    if tool.idempotent
                    else "it is not idempotent"
                )
                self._violation(
                    "no_side_effect_happens_twice",
                    f"{tool.name} took effect {self._effects[tool.name, key]} times for call "
                    f"{ctx.call_id}; {why}",
                )
        self._outputs[key] = output
        self._boundary(f"after_tool:{ctx.call_id}")
        if isinstance(output, Exception):
            raise output
        return output

    def _approval(self, tool: Tool, context: Any, arguments: dict[str, Any]) -> Any:
        rule = tool.needs_approval
        assert callable(rule)
        try:
            verdict = rule(context, arguments)
        except Exception as exc:
            self._rule_raised(tool, arguments, exc)
            raise
        if inspect.isawaitable(verdict):
            return self._awaited(tool, arguments, verdict)
        return verdict

    async def _awaited(self, tool: Tool, arguments: dict[str, Any], verdict: Any) -> Any:
        try:
            return await verdict
        except Exception as exc:
            self._rule_raised(tool, arguments, exc)
            raise

    def _rule_raised(self, tool: Tool, arguments: dict[str, Any], exc: Exception) -> None:
        self._violation(
            "approval_rules_answer",
            f"the approval rule of {tool.name} raised {type(exc).__name__}: {exc} for "
            f"arguments {arguments} (the run then asks a person, but the rule is broken)",
        )

    # -- resuming from a checkpoint ------------------------------------------------------

    def _check_resume(self) -> None:
        """The run is over: check that resuming it from one of its checkpoints ends the
        same (see ``check_resume``)."""
        if not self._resume_checked:
            self._resume_checked = True
            check_resume(self)


_RUN_IDS = itertools.count(1)


_ORIGINALS: dict[type, AgentSet] = {}


def _originals(cls: type[AgentMachine]) -> AgentSet:
    """The class's own agents, resolved once: strategies are built from (and cached on)
    these, not on the per-example copies."""
    found = _ORIGINALS.get(cls)
    if found is None or found[found.starting] is not cls.agent:
        found = _ORIGINALS[cls] = AgentSet(cls.agent)
    return found


def _final() -> bool:
    from hypothesis.control import _current_build_context

    context = _current_build_context.value
    return context is not None and bool(context.is_final)


class _Regression:
    """Printed (by ``note``) only when hypothesis reports a failing example."""

    def __init__(self, machine: AgentMachine) -> None:
        self.machine = machine

    def __repr__(self) -> str:
        return (
            "A regression test for this failure (paste it next to "
            f"{type(self.machine).__qualname__}):\n\n{self.machine.regression_test()}"
        )
