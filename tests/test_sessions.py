"""Sessions (conversation threads): runs that continue a conversation, on every store; one
active run per session, also against two processes racing; hostile session ids; the
``session_history`` hook; stores laid out before sessions existed."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DSN
from fleet import ROOT, store_of, wait_until

from agentfsm import (
    AssistantMessage,
    ConfigurationError,
    ConflictError,
    HookError,
    Item,
    MemoryStore,
    PostgresStore,
    Runner,
    SessionBusy,
    SessionHistory,
    SQLiteStore,
    Store,
    ToolCallItem,
    ToolResultItem,
    UserMessage,
    keep_last,
    new_run,
)
from agentfsm.stores._base import NOT_RUN_IN_SESSION
from agentfsm.stores._sqlite import LAYOUT_VERSION
from agentfsm.testing._session_suite import HOSTILE_SESSIONS
from tests.apps.chat import agent


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Opens the test's store: a new object each time for SQLite and PostgreSQL (as another
    process would), the same one for memory."""
    if request.param == "memory":
        memory = MemoryStore()
        return lambda: memory
    return store_of(request.param, request, tmp_path)[1]


def run(main: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 60))


def texts(items: Any) -> list[str]:
    return [
        f"{type(i).__name__}:{getattr(i, 'content', '') or getattr(i, 'tool', '')}" for i in items
    ]


def test_three_runs_with_a_pause_and_an_approval_in_the_middle(stores: Callable[[], Store]) -> None:
    async def main() -> None:
        store = stores()
        first = await Runner(store=store).run(agent(), "hello", session="user-42")
        assert first.status == "completed" and first.final_output == "hello: seen 1"

        # The second run asks for approval, and stops there.
        second = await Runner(store=store).run(agent(), "send bob", session="user-42")
        assert second.status == "interrupted"
        assert second.state.session_items == 2
        # While it waits, the session takes no other run, and nothing is stored for it.
        with pytest.raises(SessionBusy, match=second.run_id) as busy:
            await Runner(store=store).run(agent(), "too soon", session="user-42", run_id="early")
        assert busy.value.active_run == second.run_id
        assert len(await store.list()) == 2

        # Someone approves from elsewhere; another runner (another store object) resumes.
        other = stores()
        await other.approve(second.run_id, second.interruptions[0])
        resumed = await Runner(store=other).resume(agent(), second.run_id)
        assert resumed.status == "completed"
        assert resumed.final_output == "send bob: seen 5"

        # The third run sees all of it: both questions, the call, its result, the answers.
        third = await Runner(store=other).run(agent(), "and now?", session="user-42")
        assert third.status == "completed"
        assert texts(third.state.input) == [
            "UserMessage:hello",
            "AssistantMessage:hello: seen 1",
            "UserMessage:send bob",
            "ToolCallItem:send",
            "ToolResultItem:send",
            "AssistantMessage:send bob: seen 5",
            "UserMessage:and now?",
        ]
        assert third.final_output == "and now?: seen 7"
        runs = await other.session_runs("user-42")
        assert [r.run_id for r in runs] == [first.run_id, second.run_id, third.run_id]
        assert [r.status for r in runs] == ["completed"] * 3
        assert await other.session_transcript("user-42") == [
            *third.state.input,
            *third.state.items,
        ]
        for opened in {id(store): store, id(other): other}.values():
            await opened.close()

    run(main)


def test_a_worker_gives_a_stored_session_run_its_history(stores: Callable[[], Store]) -> None:
    async def main() -> None:
        store = stores()
        await Runner(store=store).run(agent(), "hello", session="w")
        # Created by anyone (a web handler, say), started by a worker.
        await store.create(new_run("chat", "later", run_id="queued", session="w"))
        assert await Runner(store=store).work(agent(), until_idle=True) == 1
        done = await store.load("queued")
        assert done.final_output == "later: seen 3"
        await store.close()

    run(main)


def test_a_streamed_session_run_continues_the_conversation() -> None:
    async def main() -> None:
        runner = Runner(store=MemoryStore())
        await runner.run(agent(), "hello", session="s")
        handle = runner.run_streamed(agent(), "streamed", session="s")
        kinds = [type(event).__name__ async for event in handle.events()]
        result = await handle.result()
        assert result.final_output == "streamed: seen 3"
        assert "RunFinished" in kinds
        busy = runner.run_streamed(agent(), "send x", session="s")
        assert (await busy.result()).status == "interrupted"
        with pytest.raises(SessionBusy):
            await runner.run_streamed(agent(), "again", session="s").result()

    run(main)


def test_a_session_needs_a_store_and_new_input() -> None:
    async def main() -> None:
        with pytest.raises(ConfigurationError, match="store"):
            await Runner().run(agent(), "hi", session="s")
        runner = Runner(store=MemoryStore())
        done = await runner.run(agent(), "hi")
        with pytest.raises(ConfigurationError, match="keeps the session"):
            await runner.run(agent(), done.state, session="s")
        # A stored session run driven without a store has no transcript to start from.
        with pytest.raises(ConfigurationError, match="sessions live in a store"):
            await Runner().run(agent(), new_run("chat", "hi", run_id="x", session="s"))

    run(main)


# -- one active run, two processes --------------------------------------------------------------

_RACER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from agentfsm import SessionBusy, new_run, open_store

    dsn, me, go, sessions = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])

    async def main():
        store = open_store(dsn)
        await store.list()  # connected and laid out before the start
        Path(go.parent / f"ready-{me}").touch()
        while not go.exists():
            time.sleep(0.001)
        joined = 0
        for n in range(sessions):
            try:
                await store.create(new_run("chat", "hi", run_id=f"{me}-{n}", session=f"s{n}"))
                joined += 1
            except SessionBusy:
                pass
        await store.close()
        print(joined)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_processes_racing_never_give_a_session_two_active_runs(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    dsn, open_ = store_of(kind, request, tmp_path)
    sessions = 40
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, dsn, me, str(go), str(sessions)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in ("p1", "p2")
    ]
    try:
        wait_until(
            lambda: (
                all((tmp_path / f"ready-{me}").exists() for me in ("p1", "p2"))
                or any(r.poll() is not None for r in racers)
            ),
            60,
            "both racers to be ready",
        )
        go.touch()
        outputs = [r.communicate(timeout=60) for r in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    for racer, (_, err) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, err
    # Every session got exactly one run, whichever process won it.
    assert sum(int(out) for out, _ in outputs) == sessions, outputs

    async def check() -> None:
        store = open_()
        for n in range(sessions):
            runs = await store.session_runs(f"s{n}")
            assert len(runs) == 1, runs
        assert len(await store.list()) == sessions
        await store.close()

    run(check)


# -- hostile session ids ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [*HOSTILE_SESSIONS, "y" * 10_000_000], ids=lambda b: repr(b)[:20])
def test_a_hostile_session_id_is_refused_with_a_clear_error_and_stores_nothing(
    bad: Any, tmp_path: Path
) -> None:
    async def main() -> None:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            with pytest.raises(ConfigurationError, match="session id") as refused:
                await Runner(store=store).run(agent(), "hi", session=bad)
            message = str(refused.value)
            assert "\n" not in message and len(message) < 300
            with pytest.raises(ConfigurationError, match="session id"):
                await store.session_runs(bad)
            with pytest.raises(ConfigurationError, match="session id"):
                await store.clear_session(bad)
            with pytest.raises(ConfigurationError, match="session id"):
                new_run("chat", "hi", run_id="r", session=bad)
            assert await store.list() == [] and await store.sessions() == []

    run(main)


def test_any_printable_text_is_a_session_id() -> None:
    async def main() -> None:
        store = MemoryStore()
        for session in ("user-42", "ü 名前 ✓", "x" * 200, "'; DROP TABLE runs; --"):
            done = await Runner(store=store).run(agent(), "hi", session=session)
            assert [r.run_id for r in await store.session_runs(session)] == [done.run_id]

    run(main)


# -- the session_history hook -------------------------------------------------------------------


def test_keep_last_trims_what_the_next_run_sees_and_the_store_keeps_everything(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            runner = Runner(store=store)
            for text in ("one", "two", "three"):
                await runner.run(agent(), text, session="t")
            trimmed = Runner(store=store, session_history=keep_last(3))
            four = await trimmed.run(agent(), "four", session="t")
            # The last three items start mid-exchange: it starts at the next question.
            assert texts(four.state.input) == [
                "UserMessage:three",
                "AssistantMessage:three: seen 5",
                "UserMessage:four",
            ]
            assert four.state.session_items == 2
            # What was trimmed stays: the transcript has every run's input and answer.
            transcript = await store.session_transcript("t")
            assert texts(transcript)[:2] == ["UserMessage:one", "AssistantMessage:one: seen 1"]
            assert len(transcript) == 8
            assert (await store.load(four.run_id)).session_items == 2

    run(main)


def test_keep_last_never_starts_inside_a_tool_call() -> None:
    history = SessionHistory(
        session="s",
        run_id="r",
        context=None,
        items=(
            UserMessage(content="send"),
            ToolCallItem(call_id="c", tool="send", arguments="{}", agent="chat"),
            ToolResultItem(call_id="c", tool="send", output="ok", agent="chat"),
            AssistantMessage(content="sent", agent="chat"),
        ),
    )
    assert keep_last(3)(history) == []
    assert keep_last(4)(history) == list(history.items)
    assert keep_last(100)(history) == list(history.items)
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ConfigurationError):
            keep_last(bad)  # type: ignore[arg-type]


def test_a_summarising_hook_runs_once_and_not_again_on_resume() -> None:
    calls: list[SessionHistory] = []

    async def summarise(history: SessionHistory) -> list[Item]:
        calls.append(history)
        said = [i.content for i in history.items if isinstance(i, UserMessage)]
        return [UserMessage(content=f"Earlier the user said: {', '.join(said)}")]

    async def main() -> None:
        store = MemoryStore()
        runner = Runner(store=store, session_history=summarise)
        await runner.run(agent(), "hello", session="s", context={"user": "ada"})
        assert len(calls) == 1 and calls[0].items == ()
        paused = await runner.run(agent(), "send bob", session="s", context={"user": "ada"})
        assert len(calls) == 2
        assert calls[1].context == {"user": "ada"} and calls[1].session == "s"
        assert calls[1].run_id == paused.run_id
        assert paused.state.input[0] == UserMessage(content="Earlier the user said: hello")
        await store.approve(paused.run_id, paused.interruptions[0])
        done = await runner.resume(agent(), paused.run_id)
        assert done.status == "completed"
        assert len(calls) == 2, "a resumed run keeps the history it started with"
        assert done.state.input == paused.state.input

    run(main)


def test_a_hook_that_raises_leaves_the_run_new_and_it_starts_once_fixed() -> None:
    broken = True

    def hook(history: SessionHistory) -> list[Item]:
        if broken:
            raise RuntimeError("summariser down")
        return list(history.items)

    async def main() -> None:
        nonlocal broken
        store = MemoryStore()
        runner = Runner(store=store, session_history=hook)
        broken = False
        await runner.run(agent(), "hello", session="s")
        broken = True
        with pytest.raises(HookError, match="summariser down") as failed:
            await runner.run(agent(), "again", session="s", run_id="r2")
        assert failed.value.state is not None and failed.value.state.status.value == "new"
        assert (await store.load("r2")).status.value == "new"
        with pytest.raises(SessionBusy):
            await runner.run(agent(), "meanwhile", session="s")
        broken = False
        done = await runner.resume(agent(), "r2")
        assert done.final_output == "again: seen 3"

    run(main)


@pytest.mark.parametrize(
    "returned",
    ["text", [{"type": "user_message", "content": "x"}], [UserMessage(content="\ud800")], None],
    ids=["a-str", "dicts", "lone-surrogate", "none"],
)
def test_a_hook_that_returns_something_other_than_items_is_refused(returned: Any) -> None:
    async def main() -> None:
        store = MemoryStore()
        runner = Runner(store=store, session_history=lambda history: returned)
        with pytest.raises(ConfigurationError, match="session_history"):
            await runner.run(agent(), "hi", session="s", run_id="r")
        assert (await store.load("r")).status.value == "new"

    run(main)


def test_a_session_transcript_answers_calls_a_cancelled_run_left_waiting() -> None:
    async def main() -> None:
        store = MemoryStore()
        runner = Runner(store=store)
        paused = await runner.run(agent(), "send bob", session="s")
        await store.cancel(paused.run_id)
        await runner.resume(agent(), paused.run_id)
        after = await runner.run(agent(), "sorry?", session="s")
        assert texts(after.state.input) == [
            "UserMessage:send bob",
            "ToolCallItem:send",
            "ToolResultItem:send",
            "UserMessage:sorry?",
        ]
        result = after.state.input[2]
        assert isinstance(result, ToolResultItem)
        assert result.is_error and result.output == NOT_RUN_IN_SESSION
        # The cancelled run itself is stored as it was.
        stored = await store.load(paused.run_id)
        assert not any(isinstance(i, ToolResultItem) for i in stored.items)

    run(main)


# -- stores laid out before sessions ------------------------------------------------------------


def test_a_layout_3_sqlite_store_gains_sessions_on_open(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"

    async def before() -> str:
        async with SQLiteStore(path) as store:
            return (await Runner(store=store).run(agent(), "old")).run_id

    old = run(before)
    with sqlite3.connect(path) as db:  # as layout 3 left it
        db.execute("DROP TABLE session_runs")
        db.execute("DELETE FROM agentfsm_schema WHERE version > 3")
    db.close()

    async def after() -> None:
        async with SQLiteStore(path) as store:
            assert (await store.load(old)).session is None
            await Runner(store=store).run(agent(), "hi", session="s")
            second = await Runner(store=store).run(agent(), "and?", session="s")
            assert second.final_output == "and?: seen 3"

    run(after)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT max(version) FROM agentfsm_schema").fetchone() == (
            LAYOUT_VERSION,
        )
    db.close()


def test_a_layout_3_postgres_schema_gains_sessions_on_first_use(schema: str) -> None:
    import psycopg

    async def before() -> None:
        async with PostgresStore(DSN, schema=schema) as store:
            await Runner(store=store).run(agent(), "old", run_id="old")

    run(before)
    with psycopg.connect(DSN, autocommit=True) as conn:  # as layout 3 left it
        conn.execute(f'DROP TABLE "{schema}".session_runs')
        conn.execute(f'DELETE FROM "{schema}".agentfsm_schema WHERE version > 3')

    async def after() -> None:
        async with PostgresStore(DSN, schema=schema) as store:
            assert (await store.load("old")).session is None
            await Runner(store=store).run(agent(), "hi", session="s")
            second = await Runner(store=store).run(agent(), "and?", session="s")
            assert second.final_output == "and?: seen 3"
            assert [s.session for s in await store.sessions()] == ["s"]

    run(after)


# -- the command line ---------------------------------------------------------------------------


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "agentfsm", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENTFSM_STORE": str(tmp_path / "runs.db")},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def test_the_cli_runs_lists_shows_and_clears_a_session(tmp_path: Path) -> None:
    chat = ["--app", "tests.apps.chat:agent"]
    first = cli(tmp_path, "run", *chat, "--session", "user-42", "hello")
    assert first.returncode == 0, first.stderr
    waiting = cli(tmp_path, "run", *chat, "--session", "user-42", "--run-id", "r2", "send bob")
    assert waiting.returncode == 3, waiting.stderr
    assert "user: hello" in waiting.stdout  # the run starts from the conversation so far
    busy = cli(tmp_path, "run", *chat, "--session", "user-42", "again")
    assert busy.returncode == 1
    assert busy.stderr.count("\n") == 1 and "active run, r2 (interrupted)" in busy.stderr

    listed = cli(tmp_path, "sessions", "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[1].split()[:4] == ["user-42", "2", "r2", "interrupted"]
    shown = cli(tmp_path, "sessions", "show", "user-42")
    assert shown.returncode == 0
    assert "  user: hello" in shown.stdout and "-> call send" in shown.stdout

    import msgspec

    from agentfsm._cli_json import SessionDocument, SessionListDocument

    as_json = cli(tmp_path, "sessions", "list", "--json")
    (summary,) = msgspec.json.decode(as_json.stdout, type=SessionListDocument).sessions
    assert (summary.session, summary.runs, summary.last_run) == ("user-42", 2, "r2")
    document = msgspec.json.decode(
        cli(tmp_path, "sessions", "show", "user-42", "--json").stdout, type=SessionDocument
    )
    assert [r.position for r in document.runs] == [1, 2]
    assert texts(document.transcript)[:3] == [
        "UserMessage:hello",
        "AssistantMessage:hello: seen 1",
        "UserMessage:send bob",
    ]

    refused = cli(tmp_path, "sessions", "clear", "user-42", "--yes")
    assert refused.returncode == 1 and "active run" in refused.stderr
    assert cli(tmp_path, "cancel", "r2").returncode == 0
    assert cli(tmp_path, "resume", "r2", *chat).returncode == 5
    assert cli(tmp_path, "sessions", "clear", "user-42").returncode == 1  # no --yes
    cleared = cli(tmp_path, "sessions", "clear", "user-42", "--yes")
    assert cleared.returncode == 0 and "deleted 2 runs" in cleared.stdout
    assert cli(tmp_path, "sessions", "list").stdout.strip() == "no sessions"
    assert cli(tmp_path, "runs", "list").stdout.strip() == "no runs"


@pytest.mark.parametrize("bad", ["", "a\nb", "\x1b[2J", "z" * 300])
def test_the_cli_refuses_a_hostile_session_id_in_one_line(tmp_path: Path, bad: str) -> None:
    chat = ["--app", "tests.apps.chat:agent"]
    for args in (
        ("run", *chat, "--session", bad, "hi"),
        ("sessions", "show", bad),
        ("sessions", "clear", bad, "--yes"),
    ):
        done = cli(tmp_path, *args)
        assert done.returncode == 1, (args, done.stdout)
        assert done.stderr.startswith("agentfsm: error: a session id")
        assert done.stderr.count("\n") == 1 and "\x1b" not in done.stderr
        assert "Traceback" not in done.stderr


def test_only_a_sessions_last_run_can_be_restarted_after_running_out_of_turns() -> None:
    async def main() -> None:
        store = MemoryStore()
        runner = Runner(store=store)
        out = await runner.run(agent(), "hello", session="s", max_turns=0)
        assert out.status == "failed"
        again = await runner.run(agent(), out.state, max_turns=1)
        assert again.status == "completed" and again.final_output == "hello: seen 1"
        late = await runner.run(agent(), "hi", session="s", max_turns=0)
        await runner.run(agent(), "next", session="s")
        with pytest.raises(ConflictError, match="came after it"):
            await runner.run(agent(), late.state, max_turns=1)
        assert (await store.load(late.run_id)).status.value == "failed"

    run(main)


def test_a_session_run_whose_create_landed_but_whose_answer_was_lost_is_not_refused() -> None:
    from agentfsm import RunState, StoreUnavailable

    class LosesAnswers(MemoryStore):
        lost = 0

        async def create(self, state: RunState) -> None:
            await super().create(state)
            if state.session is not None and not self.lost:
                self.lost += 1
                raise StoreUnavailable("the connection dropped after the commit")

    async def main() -> None:
        store = LosesAnswers()
        # Tried again, the create meets its own run: it landed, and the session is not
        # busy with itself.
        done = await Runner(store=store, store_wait=5).run(agent(), "hi", session="s")
        assert done.status == "completed" and store.lost == 1
        assert [r.run_id for r in await store.session_runs("s")] == [done.run_id]

    run(main)


def test_the_inbox_api_starts_a_sessions_next_run_for_the_workers() -> None:
    pytest.importorskip("starlette", reason="the inbox needs the web extra")
    from agentfsm.web import create_app
    from tests.inboxkit import ADA, TOKENS, client, is_problem

    async def main() -> None:
        store = MemoryStore()
        await Runner(store=store).run(agent(), "hello", session="web")
        async with client(create_app(store, auth=TOKENS, agent=agent())) as http:
            started = await http.post(
                "/api/runs", headers=ADA, json={"input": "again", "session": "web", "run_id": "w2"}
            )
            assert started.status_code == 201, started.text
            busy = await http.post("/api/runs", headers=ADA, json={"input": "x", "session": "web"})
            assert "active run, w2 (new)" in is_problem(busy, 409)["detail"]
            for bad in ("", "a\nb", "q" * 201, "\x00"):
                refused = await http.post(
                    "/api/runs", headers=ADA, json={"input": "x", "session": bad}
                )
                is_problem(refused, 422)
        assert await Runner(store=store).work(agent(), until_idle=True) == 1
        assert (await store.load("w2")).final_output == "again: seen 3"
        assert len(await store.list()) == 2

    run(main)


# -- the core ---------------------------------------------------------------------------------


def test_started_puts_the_history_before_the_runs_own_input_and_nowhere_else() -> None:
    from agentfsm import InvalidEvent, Started, step

    earlier = (UserMessage(content="before"), AssistantMessage(content="ok", agent="chat"))
    state = new_run("chat", "now", run_id="r", session="s")
    started = step(state, Started(history=earlier), agent()).state
    assert started.input == (*earlier, UserMessage(content="now"))
    assert started.session_items == 2 and started.session == "s"
    # Pure: the same event gives the same state.
    assert step(state, Started(history=earlier), agent()).state == started

    with pytest.raises(InvalidEvent, match="this run has none"):
        step(new_run("chat", "now", run_id="r"), Started(history=earlier), agent())
    with pytest.raises(InvalidEvent, match="history"):
        step(state, Started(history=(UserMessage(content="\ud800"),)), agent())
    out = step(new_run("chat", "x", run_id="r", session="s", max_turns=0), Started(), agent())
    assert out.state.status.value == "failed"
    with pytest.raises(InvalidEvent, match="a restart has none"):
        step(out.state, Started(max_turns=2, history=earlier), agent())


def test_a_state_of_a_session_round_trips_and_one_from_before_sessions_has_none() -> None:
    from pathlib import Path

    from agentfsm import RunState

    fixture = Path(__file__).resolve().parent / "fixtures" / "state_v3.json"
    assert RunState.from_json(fixture.read_text()).session is None
    state = new_run("chat", "hi", run_id="r", session="s")
    assert RunState.from_json(state.to_json()) == state


_KILLED = textwrap.dedent(
    """
    import asyncio, sys
    from agentfsm import Runner, open_store
    from tests.apps.chat import agent

    async def main():
        store = open_store(sys.argv[1])
        await Runner(store=store, lease_seconds=1).run(agent(), "wait", session="s", run_id="k")

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_session_run_whose_process_is_killed_mid_call_keeps_the_session_until_it_ends(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import os
    import time

    dsn, open_ = store_of(kind, request, tmp_path)
    effects = tmp_path / "effects"
    log = tmp_path / "victim.log"
    with log.open("w") as stderr:
        victim = subprocess.Popen(
            [sys.executable, "-c", _KILLED, dsn],
            cwd=ROOT,
            env={**os.environ, "CHAT_EFFECTS": str(effects)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            wait_until(
                lambda: effects.exists() or victim.poll() is not None, 60, "the call to start"
            )
            assert effects.read_text() == "started\n", log.read_text()
        finally:
            victim.kill()
            victim.wait()

    async def main() -> None:
        store = open_()
        # Killed mid-call: the run stays active (its call in doubt), and so does the session.
        with pytest.raises(SessionBusy, match=r"active run, k \(tools\)"):
            await Runner(store=store).run(agent(), "hello?", session="s")
        # Once its lease runs out, a worker takes it: the call may have had its effect, so
        # a person decides; until then the session is still busy.
        deadline = time.monotonic() + 30
        runner = Runner(store=store, lease_seconds=1)
        while (await store.load("k")).status.value == "tools":
            assert time.monotonic() < deadline, "the worker never took the run over"
            await runner.work(agent(), until_idle=True)
            await asyncio.sleep(0.1)
        waiting = await store.load("k")
        assert waiting.status.value == "interrupted"
        (doubt,) = waiting.interruptions
        assert doubt.reason == "in_doubt"
        with pytest.raises(SessionBusy):
            await Runner(store=store).run(agent(), "hello?", session="s")
        await store.reject("k", doubt, message="It did not finish; do not run it again.")
        assert (await runner.resume(agent(), "k")).status == "completed"
        after = await Runner(store=store).run(agent(), "and now?", session="s")
        assert after.status == "completed"
        assert texts(after.state.input) == [
            "UserMessage:wait",
            "ToolCallItem:pause_here",
            "ToolResultItem:pause_here",
            "AssistantMessage:wait: seen 3",
            "UserMessage:and now?",
        ]
        await store.close()

    run(main)
    assert effects.read_text() == "started\n"  # the call never ran again


class _StoreFromBeforeSessions(MemoryStore):
    """A store of one's own written before sessions: it has none of their methods."""

    session_runs = Store.session_runs
    sessions = Store.sessions
    clear_session = Store.clear_session


def test_a_store_without_sessions_runs_the_rest_and_refuses_sessions_clearly() -> None:
    async def test() -> None:
        store = _StoreFromBeforeSessions()
        runner = Runner(store=store)
        assert (await runner.run(agent(), "hello", run_id="plain")).status == "completed"
        for refused in (
            store.session_runs("s"),
            store.sessions(),
            store.clear_session("s"),
            runner.run(agent(), "hello", session="s"),
        ):
            with pytest.raises(ConfigurationError, match="keeps no sessions"):
                await refused
        assert [s.run_id for s in await store.list()] == ["plain"], "nothing else was stored"

    asyncio.run(asyncio.wait_for(test(), 30))
