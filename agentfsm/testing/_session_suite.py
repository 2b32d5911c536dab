"""The store conformance checks of sessions (conversation threads); ``StoreConformance``
runs them with the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .._agents import Agent
from .._errors import ConfigurationError, SessionBusy, UnknownRunError
from .._items import AssistantMessage, UserMessage
from .._model import ModelRequest
from .._runner import Runner
from .._step import new_run
from ..stores._base import Store
from ._scripted import ScriptedModel, say

__all__ = ["SessionConformance"]


def _echo(request: ModelRequest) -> Any:
    """Answer the last user message, saying how much of the conversation the model saw."""
    conversation = list(request.conversation())
    last = [i for i in conversation if isinstance(i, UserMessage)][-1]
    return say(f"{last.content}: seen {len(conversation)}")


def _chat() -> Agent:
    return Agent("chat", "", ScriptedModel([_echo]))


#: Session ids a store must refuse, before it stores anything.
HOSTILE_SESSIONS: tuple[Any, ...] = (
    "",
    "x" * 201,
    "a\x00b",
    "line\nbreak",
    "\ud800",
    "\x1b[2J",
    42,
)


class SessionConformance:
    """Sessions: a store lists a session's runs, reads its transcript, clears it, and lets a
    session have one active run at a time."""

    _run: Callable[[Callable[[Store, Any], Awaitable[None]]], None]

    def test_a_session_continues_the_conversation_of_its_earlier_runs(self) -> None:
        async def check(store: Store, clock: Any) -> None:
            runner = Runner(store=store)
            first = await runner.run(_chat(), "hello", session="s1")
            second = await runner.run(_chat(), "again", session="s1")
            assert first.final_output == "hello: seen 1"
            assert second.final_output == "again: seen 3"
            assert second.state.session == "s1"
            assert second.state.session_items == 2
            assert list(second.state.input) == [
                UserMessage(content="hello"),
                AssistantMessage(content="hello: seen 1", agent="chat"),
                UserMessage(content="again"),
            ]
            runs = await store.session_runs("s1")
            assert [(r.position, r.run_id, r.status) for r in runs] == [
                (1, first.run_id, "completed"),
                (2, second.run_id, "completed"),
            ]
            # Each run once: its own input and items, not the history it was given.
            assert await store.session_transcript("s1") == [
                UserMessage(content="hello"),
                AssistantMessage(content="hello: seen 1", agent="chat"),
                UserMessage(content="again"),
                AssistantMessage(content="again: seen 3", agent="chat"),
            ]
            assert (
                await store.session_transcript("s1", before=second.run_id)
                == (await store.session_transcript("s1"))[:2]
            )
            assert await store.session_runs("nobody") == []
            assert await store.session_transcript("nobody") == []

        self._run(check)

    def test_a_session_has_one_active_run_at_a_time(self) -> None:
        async def check(store: Store, clock: Any) -> None:
            await store.create(new_run("chat", "one", run_id="a1", session="s"))
            busy = await _busy(store.create(new_run("chat", "two", run_id="a2", session="s")))
            assert busy.session == "s"
            assert busy.active_run == "a1"
            assert "a1" in str(busy)
            await _gone(store, "a2")
            # Another session, and a run of none, are not held up.
            await store.create(new_run("chat", "three", run_id="b1", session="t"))
            await store.create(new_run("chat", "four", run_id="c1"))
            assert [r.run_id for r in await store.session_runs("s")] == ["a1"]
            await store.cancel("a1")
            await Runner(store=store).resume(_chat(), "a1")
            await store.create(new_run("chat", "five", run_id="a3", session="s"))
            assert [r.run_id for r in await store.session_runs("s")] == ["a1", "a3"]

        self._run(check)

    def test_two_runs_started_at_once_in_one_session_do_not_both_join(self) -> None:
        async def check(store: Store, clock: Any) -> None:
            async def start(run_id: str) -> bool:
                try:
                    await store.create(new_run("chat", "hi", run_id=run_id, session="race"))
                except SessionBusy:
                    return False
                return True

            joined = await asyncio.gather(*(start(f"r{n}") for n in range(4)))
            assert sum(joined) == 1
            assert len(await store.session_runs("race")) == 1

        self._run(check)

    def test_sessions_are_listed_latest_first(self) -> None:
        async def check(store: Store, clock: Any) -> None:
            runner = Runner(store=store)
            await runner.run(_chat(), "1", session="old")
            clock.advance(1)
            await runner.run(_chat(), "2", session="new")
            clock.advance(1)
            last = await runner.run(_chat(), "3", session="old")
            listed = await store.sessions()
            assert [(s.session, s.runs, s.status) for s in listed] == [
                ("old", 2, "completed"),
                ("new", 1, "completed"),
            ]
            assert listed[0].last_run == last.run_id
            assert [s.session for s in await store.sessions(limit=1)] == ["old"]
            await _refused(store.sessions(limit=0))

        self._run(check)

    def test_clearing_a_session_deletes_its_runs_unless_one_is_active(self) -> None:
        async def check(store: Store, clock: Any) -> None:
            runner = Runner(store=store)
            first = await runner.run(_chat(), "1", session="c")
            await store.create(new_run("chat", "2", run_id="live", session="c"))
            await _busy(store.clear_session("c"))
            assert len(await store.session_runs("c")) == 2
            await store.cancel("live")
            await runner.resume(_chat(), "live")
            other = await runner.run(_chat(), "x", session="other")
            async with store.changes() as feed:
                assert await store.clear_session("c") == 2
                # Those watching the runs hear that they are gone.
                unheard = {first.run_id, "live"}
                while feed.native and unheard:
                    heard = await feed.wait(30)
                    assert heard, "clearing a session was not heard within 30 s"
                    unheard = set() if heard.unknown else unheard - set(heard.runs)
            assert await store.session_runs("c") == []
            await _gone(store, first.run_id)
            await _gone(store, "live")
            assert await store.clear_session("c") == 0
            assert (await store.load(other.run_id)).session == "other"
            # A cleared session starts a new conversation.
            fresh = await runner.run(_chat(), "new", session="c")
            assert fresh.final_output == "new: seen 1"

        self._run(check)

    def test_a_deleted_run_leaves_its_session(self) -> None:
        async def check(store: Store, clock: Any) -> None:
            runner = Runner(store=store)
            first = await runner.run(_chat(), "1", session="d")
            second = await runner.run(_chat(), "2", session="d")
            await store.delete(first.run_id)
            assert [r.run_id for r in await store.session_runs("d")] == [second.run_id]
            assert await store.session_transcript("d") == list(second.state.input[2:]) + list(
                second.state.items
            )

        self._run(check)

    def test_invalid_session_ids_are_refused_and_nothing_is_stored(self) -> None:
        async def check(store: Store, clock: Any) -> None:
            for bad in HOSTILE_SESSIONS:
                await _refused(store.session_runs(bad))
                await _refused(store.clear_session(bad))
                await _refused(Runner(store=store).run(_chat(), "hi", session=bad))
            assert await store.list() == []
            assert await store.sessions() == []

        self._run(check)


async def _gone(store: Store, run_id: str) -> None:
    try:
        await store.load(run_id)
    except UnknownRunError:
        return
    raise AssertionError(f"run {run_id} should not be stored")


async def _busy(awaitable: Awaitable[Any]) -> SessionBusy:
    try:
        await awaitable
    except SessionBusy as exc:
        return exc
    raise AssertionError("a second active run of a session must be refused (SessionBusy)")


async def _refused(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except ConfigurationError:
        return
    raise AssertionError("expected ConfigurationError")
