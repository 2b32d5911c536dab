"""Property: for random runs, what a store loads after every step equals the in-memory state
the runner just produced (memory and SQLite here; PostgreSQL runs the same conformance
checks in test_store_postgres)."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agentfsm import (
    Agent,
    MemoryStore,
    ModelResponse,
    ModelToolCall,
    Runner,
    RunState,
    SQLiteStore,
    Store,
    tool,
)
from agentfsm.testing import ScriptedModel, call, handoff, say


@tool
def lookup(name: str) -> str:
    """Find someone."""
    return f"{name}@example.com"


@tool(needs_approval=True)
def send(to: str, body: str) -> str:
    """Send mail."""
    return f"sent to {to}"


TURNS = st.one_of(
    st.builds(lambda n: call("lookup", name=n), st.text(min_size=1, max_size=8)),
    st.builds(lambda b: call("send", to="ada", body=b), st.text(max_size=20)),
    st.lists(
        st.sampled_from([call("lookup", name="x"), call("send", to="bob", body="hi")]),
        min_size=2,
        max_size=3,
    ),
    st.just(handoff("back")),
    # A model's broken text: the engine makes it storable (U+FFFD) at the step boundary.
    st.just(
        ModelResponse(
            tool_calls=(
                ModelToolCall(call_id="s1", name="lookup", arguments='{"name": "\udcff x"}'),
            )
        )
    ),
    st.builds(say, st.text(max_size=30)),
)


def agents(script: list[Any]) -> Agent:
    model = ScriptedModel([*script, say("the end")])
    front = Agent("front", "", model, tools=[lookup, send])
    back = Agent("back", "", model, tools=[lookup, send], handoffs=[front])
    front.handoffs.append(back)
    return front


@settings(max_examples=40)
@given(
    script=st.lists(TURNS, max_size=6),
    decisions=st.lists(st.sampled_from(["approve", "reject", "always"]), min_size=12, max_size=12),
    kind=st.sampled_from(["memory", "sqlite"]),
)
def test_a_stored_run_loads_back_equal_to_the_state_at_every_step(
    script: list[Any], decisions: list[str], kind: str
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store: Store = MemoryStore() if kind == "memory" else SQLiteStore(Path(folder) / "runs.db")
        checked: list[int] = []

        async def check(state: RunState) -> None:
            loaded = await store.load(state.run_id)
            assert loaded == state
            assert loaded.to_json() == state.to_json()
            checked.append(state.version)

        async def main() -> RunState:
            async with store:
                runner = Runner(store=store, on_step=check)
                result = await runner.run(
                    agents(script), "go", run_id=uuid.uuid4().hex, max_turns=20
                )
                for decision in decisions:
                    if result.status != "interrupted":
                        break
                    for request in result.interruptions:
                        if decision == "reject":
                            await store.reject(result.run_id, request, message="no")
                        else:
                            await store.approve(result.run_id, request, always=decision == "always")
                    result = await runner.resume(agents(script), result.run_id)
            return result.state

        final = asyncio.run(main())
        assert checked == sorted(checked)
        assert checked[-1] == final.version
