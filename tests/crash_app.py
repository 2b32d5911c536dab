"""Crash-kit scenarios for the crash-safety test (tests/test_crash_safety.py): a real agent
over two agents, agentfsm's own stores, the demo agent, and two seeded bugs (a tool
declared idempotent that is not, and a store whose save is not atomic).

Each function takes the kit's ``options`` (JSON: which store, where) and returns a
``CrashScenario``; ``agentfsm.testing.CrashKit`` calls it in every child process it kills.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agentfsm import (
    Agent,
    ModelResponse,
    ModelToolCall,
    SQLiteStore,
    Store,
    ToolContext,
    Usage,
    tool,
)
from agentfsm.testing import (
    CrashOutcome,
    CrashScenario,
    ScriptedModel,
    call,
    crash_point,
    handoff,
    say,
)

INPUT = "Settle customer 42's account and keep them informed."


def _said(turn: int, text: str, *calls: tuple[str, str]) -> ModelResponse:
    """A scripted turn with text and tool calls (ScriptedModel's call ids)."""
    return ModelResponse(
        text=text,
        tool_calls=tuple(
            ModelToolCall(call_id=f"call_{turn}_{n}", name=name, arguments=arguments)
            for n, (name, arguments) in enumerate(calls)
        ),
        usage=Usage(requests=1, input_tokens=10, output_tokens=5),
    )


#: Eight model turns over two agents. Turn 2: an idempotent and a non-idempotent call in
#: parallel. Turn 3: a call that needs no approval next to one that does. Turn 4: a tool call
#: and a handoff in one turn. Turn 5: two calls needing approval next to two that do not.
SCRIPT = [
    call("lookup", query="customer 42"),
    [call("lookup", query="open invoices"), call("charge", amount=5, item="late fee")],
    [call("charge", amount=10, item="invoice 7"), call("send_email", to="ada", subject="7 paid")],
    _said(
        3,
        "Passing you to billing.",
        ("lookup", '{"query": "billing plan"}'),
        (handoff("billing").name, "{}"),
    ),
    [
        call("send_email", to="bob", subject="refund"),
        call("send_email", to="eve", subject="audit"),
        call("charge", amount=20, item="plan upgrade"),
        call("lookup", query="refund policy"),
    ],
    _said(5, "Charging the balance.", ("charge", '{"amount": 30, "item": "balance"}')),
    call("send_email", to="ada", subject="all settled"),
    say("All settled: 65 charged, 4 emails sent."),
]


@tool(idempotent=True)
async def lookup(query: str, ctx: ToolContext) -> str:
    """Look a record up (reads only: safe to run again)."""
    await asyncio.sleep(0)
    return f"record of {query}"


@tool
def charge(amount: int, item: str, ctx: ToolContext) -> str:
    """Charge the customer's card (a sync tool: it runs in a worker thread)."""
    return f"charged {amount} for {item}"


@tool(name="charge", idempotent=True)
def charge_declared_idempotent(amount: int, item: str, ctx: ToolContext) -> str:
    """The seeded bug: ``charge`` declared idempotent, though the card service does not
    deduplicate on the idempotency key (a run after a crash charges again)."""
    return f"charged {amount} for {item}"


@tool(needs_approval=True)
def send_email(to: str, subject: str, ctx: ToolContext) -> str:
    """Email someone (a person approves every email)."""
    return f"emailed {to}: {subject}"


def build_agent(charge_tool: Any = charge) -> Agent:
    model = ScriptedModel(SCRIPT)
    tools = [lookup, charge_tool, send_email]
    billing = Agent("billing", "You settle accounts.", model, tools=tools)
    return Agent("triage", "You sort requests out.", model, tools=tools, handoffs=[billing])


def open_store(options: dict[str, Any], clock: Any = None) -> Store:
    """agentfsm's SQLite or PostgreSQL store, as ``options`` say."""
    extra = {"clock": clock} if clock else {}
    if options["kind"] == "sqlite":
        return SQLiteStore(options["path"], **extra)
    if options["kind"] == "torn":
        return TornStore(options["path"], **extra)
    from agentfsm import PostgresStore

    store: Store = PostgresStore(options["dsn"], schema=options["schema"], **extra)
    return store


def scenario(options: dict[str, Any]) -> CrashScenario:
    """The settle-the-account agent on agentfsm's own stores (``options['kind']``)."""
    return CrashScenario(
        agent=build_agent(), store=lambda clock: open_store(options, clock), input=INPUT
    )


def false_idempotency(options: dict[str, Any]) -> CrashScenario:
    """The seeded bug: ``charge`` declared idempotent, while the card service behind it
    charges each time it is asked (the test says so with ``at_most_once``)."""
    return CrashScenario(
        agent=build_agent(charge_declared_idempotent),
        store=lambda clock: open_store(options, clock),
        input=INPUT,
        at_most_once={"charge", "send_email"},
    )


def demo(options: dict[str, Any]) -> CrashScenario:
    """The demo agent (``agentfsm demo``): a lookup, a refund a person approves, an answer."""
    from agentfsm._demo import build_agent as build_demo

    return CrashScenario(
        agent=build_demo(),
        store=lambda clock: open_store(options, clock),
        input="My espresso machine arrived broken. Order A-1001. Refund please.",
        # Its last turn reads the refund's result: a refund in doubt that the person rejects
        # (it had run) makes the model say it could not refund.
        model_reacts=True,
        checks=[refunded_once],
    )


def refunded_once(outcome: CrashOutcome) -> list[str]:
    """A check of the user's own: the refund reached the bank exactly once, whatever
    the kills (the side-effect file stands in for the bank's records here)."""
    count = sum(1 for tool, *_ in outcome.effects if tool == "issue_refund")
    return [] if count == 1 else [f"the customer was refunded {count} times"]


class TornStore(SQLiteStore):
    """The seeded bug of a store: SQLiteStore, except that its save commits the run's new
    head row before it appends the step's items, in a transaction of their own. A process
    killed between the two (``crash_point("torn save")``) leaves half a step stored."""

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(path, **options)
        self._db = _TornConnection(self._db)  # type: ignore[assignment]


class _TornConnection:
    def __init__(self, db: Any) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> Any:
        result = self._db.execute(sql, *args)
        if sql.startswith("UPDATE runs SET status") and self._db.in_transaction:
            self._db.execute("COMMIT")
            crash_point("torn save")
            self._db.execute("BEGIN IMMEDIATE")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)
