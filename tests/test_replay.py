"""Replay as a check: stored runs re-driven under changed code report the first step the new
code would decide otherwise, and nothing runs while they are checked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

from agentfsm import (
    Agent,
    ConfigurationError,
    MemoryStore,
    Model,
    ModelRequest,
    ModelResponse,
    Runner,
    RunState,
    SQLiteStore,
    Store,
    ToolContext,
    UnknownRunError,
    tool,
)
from agentfsm.testing import ReplayReport, ScriptedModel, call, replay, replay_runs, say

RAN: list[str] = []


class NoModel(Model):
    """A model that must never be asked: replay reads what the model said from the record."""

    async def respond(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("replay called the model")


@tool
def lookup(name: str) -> str:
    """Find an address."""
    RAN.append("lookup")
    return f"{name}@example.com"


@tool(needs_approval=True)
def send(to: str, body: str, ctx: ToolContext) -> str:
    """Send an email."""
    RAN.append("send")
    return f"sent to {to}"


SCRIPT = [call("lookup", name="ada"), call("send", to="ada@example.com", body="hi"), say("sent")]


def mailer(*tools: Any, model: Any = None) -> Agent:
    return Agent(
        "mailer",
        "You send mail.",
        model or ScriptedModel(SCRIPT),
        tools=list(tools or (lookup, send)),
    )


STORES: dict[str, Callable[[Path], Store]] = {
    "memory": lambda _: MemoryStore(),
    "sqlite": lambda path: SQLiteStore(path / "runs.db"),
}


def _recorded(store: Store, *, finish: bool = True) -> list[RunState]:
    """A mailer run in ``store`` (r1), approved and finished; the states the runner held."""
    held: list[RunState] = []

    async def main() -> None:
        runner = Runner(store=store, on_step=held.append)
        paused = await runner.run(mailer(), "mail ada", run_id="r1")
        if finish:
            await store.approve("r1", paused.interruptions[0], by="ada")
            await runner.resume(mailer(), "r1")

    asyncio.run(main())
    return held


def _replayed(store: Store, agent: Agent) -> ReplayReport:
    RAN.clear()
    report = asyncio.run(replay(store, mailer_like(agent), run_id="r1"))
    assert RAN == [], "replay never runs a tool body"
    return report


def mailer_like(agent: Agent) -> Agent:
    """``agent`` with a model that must not be called."""
    return Agent(agent.name, agent.instructions, NoModel(), tools=agent.tools)


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return STORES[request.param](tmp_path)


def _version_of_call(store: Store, call_id: str) -> int:
    async def main() -> int:
        for kept in await store.history("r1"):
            state = await store.load("r1", version=kept.version)
            if any(getattr(i, "call_id", None) == call_id for i in state.items):
                return kept.version
        raise AssertionError(call_id)

    return asyncio.run(main())


def test_unchanged_code_decides_every_step_as_recorded(store: Store) -> None:
    _recorded(store)
    report = _replayed(store, mailer())
    assert report.ok
    assert report.difference is None
    history = asyncio.run(store.history("r1"))
    assert report.checked == len(history) - 1
    assert str(report) == f"run r1: {report.checked} steps replayed, all decided as recorded"


def test_a_renamed_tool_is_the_first_difference(store: Store) -> None:
    _recorded(store)

    @tool(needs_approval=True)
    def send_mail(to: str, body: str) -> str:
        """Send an email."""
        RAN.append("send_mail")
        return "sent"

    report = _replayed(store, mailer(lookup, send_mail))
    assert not report.ok
    found = report.difference
    assert found is not None
    assert (found.kind, found.tool, found.call_id) == ("tool", "send", "call_1_0")
    assert found.version == _version_of_call(store, "call_1_0")
    assert found.event == "ModelResponded"
    assert "no longer exists: was it renamed or removed?" in found.message
    assert str(report).startswith(
        f"run r1: the current code decides otherwise at version {found.version}"
    )


def test_a_changed_schema_is_reported_with_what_changed(store: Store) -> None:
    _recorded(store)

    @tool(needs_approval=True)
    def send(to: str, body: str, cc: str = "") -> str:
        """Send an email."""
        return "sent"

    found = _replayed(store, mailer(lookup, send)).difference
    assert found is not None
    assert (found.kind, found.tool) == ("schema", "send")
    assert "arguments added: cc" in found.message


def test_arguments_that_no_longer_fit_are_reported(store: Store) -> None:
    _recorded(store)

    @tool
    def lookup(name: int) -> str:
        """Find an address."""
        return ""

    found = _replayed(store, mailer(lookup, send)).difference
    assert found is not None
    assert (found.kind, found.tool, found.call_id) == ("schema", "lookup", "call_0_0")
    assert "arguments changed: name" in found.message


def test_an_approval_rule_that_now_decides_otherwise_is_reported(store: Store) -> None:
    _recorded(store)

    @tool(name="lookup", needs_approval=lambda context, arguments: arguments["name"] == "ada")
    def asking_lookup(name: str) -> str:
        """Find an address."""
        return ""

    found = _replayed(store, mailer(asking_lookup, send)).difference
    assert found is not None
    assert (found.kind, found.call_id) == ("approval", "call_0_0")
    assert "ran without one, and now needs a decision" in found.message

    @tool(name="send")
    def trusting_send(to: str, body: str, ctx: ToolContext) -> str:
        """Send an email."""
        return ""

    found = _replayed(store, mailer(lookup, trusting_send)).difference
    assert found is not None
    assert (found.kind, found.call_id) == ("approval", "call_1_0")
    assert "waited for one, and now needs no decision" in found.message


def test_a_removed_agent_is_reported() -> None:
    store = MemoryStore()
    _recorded(store)
    other = Agent("postman", "", NoModel(), tools=[lookup, send])
    found = asyncio.run(replay(store, other, run_id="r1")).difference
    assert found is not None
    assert (found.kind, found.version) == ("agent", 0)


def test_states_collected_by_the_runner_replay_as_the_store_does() -> None:
    held = _recorded(MemoryStore())
    report = asyncio.run(replay(held, mailer()))
    assert report.ok
    assert report.checked == len(held) - 1

    @tool(needs_approval=True)
    def send_mail(to: str, body: str) -> str:
        """Send an email."""
        return "sent"

    found = asyncio.run(replay(held, mailer(lookup, send_mail))).difference
    assert found is not None
    assert (found.kind, found.event) == ("tool", None), "states alone do not name events"


def test_a_pruned_history_is_checked_where_it_can_be_and_its_waiting_calls_always(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    _recorded(store, finish=False)
    asyncio.run(store.prune(keep_versions=1))

    @tool(needs_approval=True)
    def send_mail(to: str, body: str) -> str:
        """Send an email."""
        return "sent"

    report = asyncio.run(replay(store, mailer(lookup, send_mail), run_id="r1"))
    assert report.checked == 0
    found = report.difference
    assert found is not None
    assert (found.kind, found.call_id) == ("tool", "call_1_0")
    assert "waits to run tool 'send'" in found.message
    assert asyncio.run(replay(store, mailer(), run_id="r1")).ok
    asyncio.run(store.close())


def test_replay_runs_checks_every_run_of_the_agent(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    _recorded(store)

    async def more() -> None:
        await Runner(store=store).run(mailer(), "again", run_id="r2")
        other = Agent("other", "", ScriptedModel([say("hi")]))
        await Runner(store=store).run(other, "hello", run_id="r3")

    asyncio.run(more())
    reports = asyncio.run(replay_runs(store, mailer()))
    assert sorted(r.run_id for r in reports) == ["r1", "r2"]
    assert all(r.ok for r in reports)
    asyncio.run(store.close())


def test_bad_sources_are_refused_clearly() -> None:
    store = MemoryStore()
    with pytest.raises(UnknownRunError):
        asyncio.run(replay(store, mailer(), run_id="nope"))
    with pytest.raises(ConfigurationError, match="needs the run_id"):
        asyncio.run(replay(store, mailer()))
    with pytest.raises(ConfigurationError, match="not str"):
        asyncio.run(replay("r1", mailer()))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="at least one state"):
        asyncio.run(replay([], mailer()))


def test_a_final_answer_that_no_longer_fits_the_output_type_is_reported(store: Store) -> None:
    _recorded(store)

    class Receipt(pydantic.BaseModel):
        to: str

    typed = Agent("mailer", "", NoModel(), tools=[lookup, send], output_type=Receipt)
    found = asyncio.run(replay(store, typed, run_id="r1")).difference
    assert found is not None
    assert (found.kind, found.event) == ("output", "ModelResponded")
    assert found.version == asyncio.run(store.history("r1"))[-1].version
    assert "would ask the model again" in found.message
