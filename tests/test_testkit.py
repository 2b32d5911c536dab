"""The agent test kit (``agentfsm.testing.AgentMachine``) finds seeded bugs in sample agents,
prints each failure as a plain test that fails on the buggy agent and passes on the fixed
one, and finds nothing wrong with the demo agent.

Each search runs with ``derandomize=True`` and no example database, so that it finds the
same counterexample on every run, within the stated budget.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import pydantic
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.stateful import invariant, run_state_machine_as_test

from agentfsm import Agent, HandoffItem, Tool, ToolArgumentsError, ToolContext, tool
from agentfsm._demo import build_agent as build_demo_agent
from agentfsm.testing import AgentMachine, arguments_for, from_schema, keyed, outputs_for
from agentfsm.testing._schema_strategies import exact_schema

#: The budget for each search: within hypothesis' default of 100 examples.
BUDGET = settings(
    max_examples=100,
    stateful_step_count=8,
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    # No "explain" phase: the printed regression test is the explanation.
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def find_failure(machine: type[AgentMachine]) -> tuple[BaseException, str]:
    """Run ``machine`` until it fails; the error and the regression test the kit printed."""
    with pytest.raises((AssertionError, ExceptionGroup)) as raised:
        run_state_machine_as_test(machine, settings=BUDGET)
    # hypothesis reports the failing example (and the kit's note) on the error.
    notes = getattr(raised.value, "__notes__", [])
    (note,) = [n for n in notes if "A regression test for this failure" in n]
    return raised.value, note[note.index("def test_") :]


def run_regression(source: str, machine: type[AgentMachine], name: str) -> None:
    """Execute the printed test function with ``machine`` bound to the class name it uses."""
    namespace: dict[str, Any] = {name: machine}
    exec(compile(source, "<printed regression test>", "exec"), namespace)
    (test,) = [value for key, value in namespace.items() if key.startswith("test_")]
    test()


def check_found_and_printed(
    buggy: type[AgentMachine], fixed: type[AgentMachine], expected: str
) -> str:
    error, source = find_failure(buggy)
    assert expected in str(error), error
    with pytest.raises(AssertionError, match=expected):
        run_regression(source, buggy, buggy.__name__)
    run_regression(source, fixed, buggy.__name__)
    return source


# -- 1. an approval rule that lets a refund above the paid amount through unapproved ----------

PAID = {"A-1": 40.0, "B-2": 250.0}
OrderId = Literal["A-1", "B-2"]


@tool
def lookup_order(order_id: OrderId) -> dict[str, Any]:
    """Look an order up."""
    return {"order_id": order_id, "paid_eur": PAID[order_id]}


def loose_rule(context: Any, arguments: dict[str, Any]) -> bool:
    return bool(arguments["amount_eur"] > 500)  # the bug: a flat limit, not what was paid


def paid_rule(context: Any, arguments: dict[str, Any]) -> bool:
    return bool(arguments["amount_eur"] > PAID[arguments["order_id"]])


def refund_agent(rule: Any) -> Agent:
    @tool(name="issue_refund", needs_approval=rule)
    def issue_refund(
        order_id: OrderId, amount_eur: Annotated[float, pydantic.Field(ge=0, le=1000)]
    ) -> str:
        """Refund money to the customer."""
        raise AssertionError("the kit runs the fake, never the real refund")

    return Agent("support", "Help.", tools=[lookup_order, issue_refund])


def fake_refund(order_id: str, amount_eur: float) -> str:
    return f"refunded {amount_eur:.2f} EUR on {order_id}"


class Refunds(AgentMachine):
    agent = refund_agent(loose_rule)
    fakes: ClassVar[dict[str, Any]] = {"issue_refund": fake_refund}

    @invariant()
    def no_refund_above_the_paid_amount_without_a_person(self) -> None:
        for run in self.executions:
            if run.tool == "issue_refund":
                order, amount = run.arguments["order_id"], run.arguments["amount_eur"]
                assert amount <= PAID[order] or run.approved, (
                    f"refunded {amount} EUR on {order} (paid {PAID[order]}) unapproved"
                )


class FixedRefunds(Refunds):
    agent = refund_agent(paid_rule)


def test_the_kit_finds_an_approval_rule_that_lets_a_large_refund_through() -> None:
    source = check_found_and_printed(Refunds, FixedRefunds, "unapproved")
    assert 'call("issue_refund"' in source


# -- 2. a tool that is not idempotent but is declared idempotent ------------------------------


def charge_agent(idempotent: bool) -> Agent:
    @tool(name="charge_card", idempotent=idempotent)
    def charge_card(amount_cents: Annotated[int, pydantic.Field(gt=0)], ctx: ToolContext) -> str:
        """Charge the customer's card."""
        raise AssertionError("the kit runs the fake, never the real charge")

    return Agent("billing", "Bill.", tools=[lookup_order, charge_card])


def fake_charge(amount_cents: int, ctx: ToolContext) -> str:
    return f"charged {amount_cents} cents"


class Charges(AgentMachine):
    agent = charge_agent(idempotent=True)
    fakes: ClassVar[dict[str, Any]] = {"charge_card": fake_charge}


class FixedCharges(Charges):
    agent = charge_agent(idempotent=False)


def test_the_kit_finds_a_tool_declared_idempotent_that_is_not() -> None:
    source = check_found_and_printed(Charges, FixedCharges, "no side effect happens twice")
    assert "crashes=" in source


# -- 3. an output type the model cannot satisfy -----------------------------------------------


class Verdict(pydantic.BaseModel):
    decision: Literal["approve", "deny"]
    reason: str

    @pydantic.field_validator("decision")
    @classmethod
    def known(cls, value: str) -> str:
        if value not in ("approved", "denied"):  # the bug: not the values the type allows
            raise ValueError(f"unknown decision {value!r}")
        return value


class FixedVerdict(pydantic.BaseModel):
    decision: Literal["approve", "deny"]
    reason: str


class Verdicts(AgentMachine):
    agent = Agent("judge", "Decide.", tools=[lookup_order], output_type=Verdict)


class FixedVerdicts(Verdicts):
    agent = Agent("judge", "Decide.", tools=[lookup_order], output_type=FixedVerdict)


def test_the_kit_finds_an_output_type_the_model_cannot_satisfy() -> None:
    check_found_and_printed(Verdicts, FixedVerdicts, "outputs that fit the schema are accepted")


# -- 4. a handoff loop ---------------------------------------------------------------------


def escalation(loop: bool) -> Agent:
    """triage -> billing -> supervisor: escalation only goes up. The bug: billing can hand
    the customer back to triage."""
    supervisor = Agent("supervisor", "Decide.", tools=[lookup_order])
    billing = Agent("billing", "Bill.", tools=[lookup_order], handoffs=[supervisor])
    triage = Agent("triage", "Route.", handoffs=[billing])
    if loop:
        billing.handoffs.append(triage)
    return triage


class Escalation(AgentMachine):
    agent = escalation(loop=True)

    @invariant()
    def escalation_never_goes_back(self) -> None:
        visited = [h.target for h in self.state.items if isinstance(h, HandoffItem)]
        assert len(visited) == len(set(visited)), f"handed off in a loop: {visited}"


class FixedEscalation(Escalation):
    agent = escalation(loop=False)


def test_the_kit_finds_a_handoff_loop() -> None:
    source = check_found_and_printed(Escalation, FixedEscalation, "handed off in a loop")
    assert 'handoff("triage")' in source


# -- no false positives on the demo agent ---------------------------------------------------


class Demo(AgentMachine):
    agent = build_demo_agent()


def test_the_kit_finds_nothing_wrong_with_the_demo_agent() -> None:
    run_state_machine_as_test(
        Demo,
        settings=settings(
            max_examples=300,
            stateful_step_count=12,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.slow
def test_the_kit_finds_nothing_wrong_with_the_demo_agent_over_a_long_run() -> None:
    """No false positives: a long, random exploration of the demo agent (models, people,
    crashes and restarts) breaks none of the built-in invariants."""
    run_state_machine_as_test(
        Demo,
        settings=settings(
            max_examples=1000,
            stateful_step_count=25,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


class SQLiteDemo(AgentMachine):
    agent = build_demo_agent()
    store = "sqlite"


def test_the_kit_runs_on_sqlite() -> None:
    run_state_machine_as_test(
        SQLiteDemo,
        settings=settings(max_examples=30, stateful_step_count=8, deadline=None, database=None),
    )


# -- strategies from schemas ----------------------------------------------------------------


class Address(pydantic.BaseModel):
    street: str
    zip_code: Annotated[str, pydantic.Field(min_length=4, max_length=6)]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@tool
def rich(
    when: datetime.datetime,
    day: datetime.date,
    ref: uuid.UUID,
    color: Color,
    address: Address,
    tags: set[int],
    pair: tuple[int, str],
    scores: dict[str, float],
    level: Annotated[int, pydantic.Field(ge=1, le=5)] = 3,
    note: str | None = None,
    others: list[Address] | None = None,
) -> str:
    """A tool with many kinds of arguments."""
    return "ok"


SCHEMA_TOOLS = [rich, lookup_order, refund_agent(paid_rule).tools[1]]


@pytest.mark.parametrize("target", SCHEMA_TOOLS, ids=lambda t: t.name)
def test_arguments_from_the_schema_fit_the_tool(target: Tool) -> None:
    assert exact_schema(target.parameters)

    @settings(max_examples=60, deadline=None, database=None)
    @given(arguments_for(target))
    def fits(arguments: dict[str, Any]) -> None:
        assert msgspec.json.decode(msgspec.json.encode(arguments)) == arguments
        target.validate(arguments)

    fits()


@pytest.mark.parametrize("target", SCHEMA_TOOLS, ids=lambda t: t.name)
def test_invalid_arguments_are_refused_by_the_tool(target: Tool) -> None:
    @settings(max_examples=60, deadline=None, database=None)
    @given(arguments_for(target, valid=False))
    def refused(raw: str) -> None:
        with pytest.raises(ToolArgumentsError):
            target.validate_json(raw)

    refused()


def test_outputs_from_the_schema_fit_the_output_type() -> None:
    judge = Agent("judge", output_type=FixedVerdict)
    adapter = pydantic.TypeAdapter(FixedVerdict)

    @settings(max_examples=60, deadline=None, database=None)
    @given(outputs_for(judge), outputs_for(judge, valid=False))
    def check(good: str, bad: str) -> None:
        adapter.validate_json(good)
        with pytest.raises(pydantic.ValidationError):
            adapter.validate_json(bad)

    check()


def test_schemas_the_generator_cannot_honour_exactly_are_not_exact() -> None:
    assert exact_schema(pydantic.TypeAdapter(FixedVerdict).json_schema())
    assert not exact_schema(pydantic.TypeAdapter(decimal.Decimal).json_schema())
    assert not exact_schema({"type": "string", "pattern": "^a+$"})
    assert not exact_schema({"type": "string", "format": "ipv4"})
    assert from_schema(False).is_empty


# -- more of what the kit checks ------------------------------------------------------------


def test_a_keyed_fake_makes_a_tool_declared_idempotent_pass() -> None:
    class KeyedCharges(Charges):
        fakes: ClassVar[dict[str, Any]] = {"charge_card": keyed(fake_charge)}

    run_state_machine_as_test(KeyedCharges, settings=BUDGET)


def test_the_kit_finds_an_approval_rule_that_raises() -> None:
    def rule(context: Any, arguments: dict[str, Any]) -> bool:
        return bool(arguments["note"].startswith("urgent"))  # note may be None

    @tool(needs_approval=rule)
    def escalate(order_id: OrderId, note: str | None = None) -> str:
        """Escalate an order."""
        return "escalated"

    class Escalations(AgentMachine):
        agent = Agent("desk", tools=[escalate])

    error, source = find_failure(Escalations)
    assert "approval rules answer" in str(error)
    with pytest.raises(AssertionError, match="approval rules answer"):
        run_regression(source, Escalations, "Escalations")
