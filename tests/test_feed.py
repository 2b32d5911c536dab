"""The change feed (``Store.changes``) where the conformance suite cannot reach: changes made
through another connection (as another process would), run ids PostgreSQL cannot carry as
they are, a listener whose connection drops or cannot be made, a store closed under a
waiting feed, a store of the user's own that cannot notify (its feeds poll), and workers
woken by the feed instead of their poll interval. The PostgreSQL tests skip when the server
does not answer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DSN, through

from agentfsm import (
    Changed,
    MemoryStore,
    PostgresStore,
    Runner,
    SQLiteStore,
    Store,
    new_run,
)
from agentfsm.stores import Hub
from agentfsm.stores._base import (
    Admission,
    Inbox,
    InboxMessage,
    Lease,
    RetryPolicy,
    RunSummary,
    RunVersion,
    SessionRun,
    SessionSummary,
    WaitingPage,
)
from agentfsm.stores._feed import MAX_RUNS
from agentfsm.stores._listeners import NotifyListener
from agentfsm.testing import StoreConformance
from tests.apps.mailer import agent as mailer
from tests.tcp_proxy import Proxy


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


async def heard(feed: Any, seconds: float = 20) -> Changed:
    changed: Changed = await feed.wait(seconds)
    assert changed, f"the feed told of no change within {seconds} s"
    return changed


def listeners() -> list[threading.Thread]:
    """The stores' listening threads (not the runners' heartbeats, which other tests leave
    to end on their own time)."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith(("agentfsm-sqlite-changes", "agentfsm-postgres-changes"))
    ]


# -- SQLite ------------------------------------------------------------------------------------


def test_sqlite_feeds_hear_what_another_connection_commits(tmp_path: Path) -> None:
    async def test() -> None:
        path = tmp_path / "runs.db"
        async with (
            SQLiteStore(path) as watched,
            SQLiteStore(path) as other,
            watched.changes() as feed,
            watched.changes(claimable=True) as runnable,
        ):
            await other.create(new_run(mailer(), "mail ada", run_id="r1"))
            # Another connection's commit says only that something changed.
            assert (await heard(feed)).unknown
            assert (await heard(runnable)).unknown
            # This store's own changes are told by name, at once.
            await watched.cancel("r1", "no")
            assert "r1" in (await heard(feed)).runs

    run(test)


def test_closing_a_store_ends_the_waits_on_its_feeds_and_stops_listening(tmp_path: Path) -> None:
    async def test() -> None:
        before = len(listeners())
        store = SQLiteStore(tmp_path / "runs.db")
        async with store.changes() as feed:
            assert len(listeners()) == before + 1
            waiting = asyncio.ensure_future(feed.wait(None))
            await asyncio.sleep(0.01)
            await store.close()
            assert (await asyncio.wait_for(waiting, 10)).unknown
        assert len(listeners()) == before

    run(test)


def test_the_listener_runs_only_while_a_feed_is_open(tmp_path: Path) -> None:
    async def test() -> None:
        before = len(listeners())
        async with SQLiteStore(tmp_path / "runs.db") as store:
            for _ in range(3):
                async with store.changes(), store.changes("r1"):
                    assert len(listeners()) == before + 1
                for _ in range(100):
                    if len(listeners()) == before:
                        break
                    await asyncio.sleep(0.05)
                assert len(listeners()) == before

    run(test)


def test_a_feed_that_falls_far_behind_says_unknown() -> None:
    async def test() -> None:
        store = MemoryStore()
        async with store.changes() as feed:
            for n in range(MAX_RUNS + 5):
                await store.create(new_run(mailer(), "hi", run_id=f"r{n}"))
            changed = await heard(feed)
            assert changed.unknown and "anything" in changed

    run(test)


# -- PostgreSQL --------------------------------------------------------------------------------


def test_postgres_feeds_name_runs_whatever_their_ids(schema: str) -> None:
    async def test() -> None:
        async with (
            PostgresStore(DSN, schema=schema) as watched,
            PostgresStore(DSN, schema=schema) as other,
            watched.changes() as feed,
        ):
            for run_id in ("plain", "nul\x00and\x01soh", "東京 ✓ café"):
                await other.create(new_run(mailer(), "hi", run_id=run_id))
                assert (await heard(feed)).runs == {run_id}
            # A run id too long for a notification is told as "anything may have
            # changed".
            await other.create(new_run(mailer(), "hi", run_id="x" * 10_000))
            assert (await heard(feed)).unknown

    run(test)


def test_the_postgres_listener_survives_a_dropped_connection(schema: str, proxy: Proxy) -> None:
    async def test() -> None:
        async with (
            PostgresStore(through(proxy), schema=schema, connect_timeout=2) as watched,
            PostgresStore(DSN, schema=schema) as other,
        ):
            await other.create(new_run(mailer(), "hi", run_id="before"))
            async with watched.changes() as feed:
                await other.cancel("before", "no")
                assert (await heard(feed)).runs == {"before"}
                proxy.cut()
                await other.create(new_run(mailer(), "hi", run_id="while-cut"))
                await asyncio.sleep(0.5)
                proxy.restore()
                # What changed while the listener was away is not lost, only unnamed.
                assert (await heard(feed)).unknown
                await other.create(new_run(mailer(), "hi", run_id="after"))
                changed = await heard(feed)
                while changed.unknown:  # more than one try to reconnect, perhaps
                    changed = await heard(feed)
                assert changed.runs == {"after"}

    run(test)


def listening_with_keepalive(store: PostgresStore, seconds: float) -> None:
    """Make ``store``'s listener check a silent connection every ``seconds``."""
    store._hub = Hub(
        lambda hub: NotifyListener(
            hub, store._connect_blocking, store.channel, "test", keepalive=seconds
        )
    )


def test_the_postgres_listener_keeps_its_connection_through_keepalives(schema: str) -> None:
    async def test() -> None:
        async with (
            PostgresStore(DSN, schema=schema) as watched,
            PostgresStore(DSN, schema=schema) as other,
        ):
            listening_with_keepalive(watched, 0.05)
            async with watched.changes() as feed:
                await asyncio.sleep(0.5)  # many keep-alive queries, each answered
                await other.create(new_run(mailer(), "hi", run_id="r1"))
                assert await heard(feed) == Changed(runs=frozenset({"r1"}))

    run(test)


def test_a_connection_dropped_without_a_word_is_noticed_and_opened_again(
    schema: str, proxy: Proxy
) -> None:
    async def test() -> None:
        async with (
            PostgresStore(through(proxy), schema=schema, connect_timeout=2) as watched,
            PostgresStore(DSN, schema=schema) as other,
        ):
            listening_with_keepalive(watched, 0.3)
            async with watched.changes() as feed:
                proxy.silence()
                await other.create(new_run(mailer(), "hi", run_id="unheard"))
                # The keep-alive query gets no answer: the listener connects again, and
                # says that anything may have changed.
                assert (await heard(feed)).unknown
                await other.create(new_run(mailer(), "hi", run_id="heard"))
                changed = await heard(feed)
                while changed.unknown:
                    changed = await heard(feed)
                assert changed.runs == {"heard"}

    run(test)


def test_a_feed_opens_while_postgres_cannot_be_reached_and_hears_once_it_can(
    schema: str, proxy: Proxy
) -> None:
    async def test() -> None:
        async with PostgresStore(DSN, schema=schema) as other:
            await other.create(new_run(mailer(), "hi", run_id="r1"))
            proxy.cut()
            store = PostgresStore(through(proxy), schema=schema, connect_timeout=2)
            async with store, store.changes() as feed:
                assert not await feed.wait(0.05), "nothing heard, and no error either"
                proxy.restore()
                assert (await heard(feed)).unknown
                await other.cancel("r1", "no")
                changed = await heard(feed)
                while changed.unknown:
                    changed = await heard(feed)
                assert changed.runs == {"r1"}

    run(test)


# -- a store of one's own, that cannot notify --------------------------------------------------


class Plain(Store):
    """A store of a user's own: MemoryStore's calls, without its change feed."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.inner = MemoryStore(clock=clock)
        self._clock = clock

    async def create(self, state: Any) -> None:
        await self.inner.create(state)

    async def load(self, run_id: str, *, version: int | None = None) -> Any:
        return await self.inner.load(run_id, version=version)

    async def history(self, run_id: str) -> list[RunVersion]:
        return await self.inner.history(run_id)

    async def prune(self, **kwargs: Any) -> int:
        return await self.inner.prune(**kwargs)

    async def save(self, state: Any, **kwargs: Any) -> int:
        return await self.inner.save(state, **kwargs)

    async def list(self, **kwargs: Any) -> list[RunSummary]:
        return await self.inner.list(**kwargs)

    async def waiting(self, **kwargs: Any) -> WaitingPage:
        return await self.inner.waiting(**kwargs)

    async def delete(self, run_id: str) -> None:
        await self.inner.delete(run_id)

    async def post(
        self, run_id: str, message: InboxMessage, *, admit: Admission | None = None
    ) -> bool:
        return await self.inner.post(run_id, message, admit=admit)

    async def inbox(self, run_id: str) -> Inbox:
        return await self.inner.inbox(run_id)

    async def session_runs(self, session: str) -> list[SessionRun]:
        return await self.inner.session_runs(session)

    async def sessions(self, *, limit: int | None = None) -> list[SessionSummary]:
        return await self.inner.sessions(limit=limit)

    async def clear_session(self, session: str) -> int:
        return await self.inner.clear_session(session)

    async def claim(self, owner: str, **kwargs: Any) -> Lease | None:
        return await self.inner.claim(owner, **kwargs)

    async def fail(self, lease: Lease, error: str, *, retry: RetryPolicy) -> bool:
        return await self.inner.fail(lease, error, retry=retry)

    async def renew(self, lease: Lease, *, lease_seconds: float = 30.0) -> Lease:
        return await self.inner.renew(lease, lease_seconds=lease_seconds)

    async def release(self, lease: Lease) -> None:
        await self.inner.release(lease)


class TestAStoreThatCannotNotify(StoreConformance):
    """Such a store passes the conformance suite as it is: its feeds poll."""

    async def make_store(self, clock: Callable[[], float]) -> Store:
        return Plain(clock)


def test_a_store_that_cannot_notify_gets_a_feed_that_polls() -> None:
    async def test() -> None:
        store = Plain()
        async with store.changes() as feed:
            assert not feed.native
            await store.create(new_run(mailer(), "hi", run_id="r1"))
            assert (await feed.wait(0.01)) == Changed(unknown=True)
            # A wake is not a change: it says nothing.
            feed.wake()
            assert not await feed.wait(30)

    run(test)


async def approve_when_waiting(store: Store, run_id: str) -> None:
    while True:
        state = await store.load(run_id)
        if state.interruptions:
            await store.approve(run_id, state.interruptions[0])
            return
        await asyncio.sleep(0.01)


async def work_until(runner: Runner, store: Store, run_id: str, poll: float) -> None:
    """Work with ``poll`` as the interval until the run completes, then stop the worker."""
    worker = asyncio.ensure_future(runner.work(mailer(), poll_interval=poll))
    await approve_when_waiting(store, run_id)
    while (await store.load(run_id)).status.value != "completed":
        await asyncio.sleep(0.01)
    runner.stop()
    assert await asyncio.wait_for(worker, 20) >= 2


def test_a_worker_on_a_store_that_cannot_notify_polls_at_its_interval() -> None:
    async def test() -> None:
        store = Plain()
        await store.create(new_run(mailer(), "mail ada", run_id="r1"))
        await work_until(Runner(store=store), store, "r1", poll=0.05)

    run(test)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_a_worker_is_woken_by_the_feed_not_its_poll_interval(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An approval posted while the worker waits (poll interval 30 s) starts the tool at
    once, and stop() ends the wait too: the test is bounded well under 30 s."""

    def open_store() -> Store:
        if kind == "postgres":
            return PostgresStore(DSN, schema=request.getfixturevalue("schema"))
        if kind == "sqlite":
            return SQLiteStore(tmp_path / "runs.db")
        return MemoryStore()

    async def test() -> None:
        async with open_store() as store:
            runner = Runner(store=store)
            worker = asyncio.ensure_future(runner.work(mailer(), poll_interval=30))
            await asyncio.sleep(0.2)  # it looked, found nothing, and waits
            await store.create(new_run(mailer(), "mail ada", run_id="r1"))
            await approve_when_waiting(store, "r1")
            while (await store.load("r1")).status.value != "completed":
                await asyncio.sleep(0.01)
            runner.stop()
            assert await asyncio.wait_for(worker, 10) == 2

    asyncio.run(asyncio.wait_for(test(), 20))


# -- the inbox's live events -------------------------------------------------------------------


def test_the_inbox_streams_are_woken_by_changes_another_connection_makes(tmp_path: Path) -> None:
    """The approvals feed and a run's events, polling every 30 s, bring what a worker on
    another connection to the SQLite file (as in another process) does, at once."""
    pytest.importorskip("starlette", reason="the inbox needs the web extra")
    from agentfsm.web import create_app
    from tests.inboxkit import ADA, TOKENS, Stream

    async def test() -> None:
        path = tmp_path / "runs.db"
        async with SQLiteStore(path) as served, SQLiteStore(path) as workers:
            await workers.create(new_run(mailer(), "mail ada", run_id="r1"))
            app = create_app(served, auth=TOKENS, poll_interval=30)
            async with (
                Stream(app, "/api/approvals/events", ADA) as approvals,
                Stream(app, "/api/runs/r1/events?after=0", ADA) as events,
            ):
                await asyncio.sleep(0.2)  # both streams look, and wait
                assert await Runner(store=workers).work(mailer(), until_idle=True) == 1
                [asked] = await approvals.take("approval_requested", 10)
                assert asked["data"]["request"]["tool"] == "send"
                await approve_when_waiting(workers, "r1")
                await Runner(store=workers).work(mailer(), until_idle=True)
                decided = await approvals.take("approval_decided", 10)
                assert decided[-1]["data"]["record"]["decision"]["approved"] is True
                kinds = [e["event"] for e in await events.take("run_finished", 10)]
                assert "approval_requested" in kinds and "approval_decided" in kinds

    run(test)


def test_a_worker_stopped_while_it_starts_listening_stops(tmp_path: Path) -> None:
    async def test() -> None:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            runner = Runner(store=store)
            worker = asyncio.ensure_future(runner.work(mailer(), poll_interval=30))
            await asyncio.sleep(0)  # it started, and waits for its listener
            runner.stop()
            assert await asyncio.wait_for(worker, 10) == 0

    run(test)


@pytest.mark.parametrize("seconds", [0, -1, 61, float("nan")])
def test_a_sqlite_watch_interval_that_cannot_work_is_refused(
    tmp_path: Path, seconds: float
) -> None:
    with pytest.raises(ValueError, match="watch_interval"):
        SQLiteStore(tmp_path / "runs.db", watch_interval=seconds)
    assert not (tmp_path / "runs.db").exists()
