"""``Runner.run``, ``resume`` and ``work`` wait out a store that is unavailable for a while
(``store_wait``), retrying each call with backoff and saying so once per episode; they give up
with a StoreUnavailable that says so. A write whose answer was lost after it landed is not
applied twice, and a stale one is still refused.

The faults are real where they can be (a SQLite database locked by another connection, a
network cut between the runner and PostgreSQL); an answer lost after the commit is
simulated by a store wrapper, since no real fault lands there on purpose."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import through

from agentfsm import (
    Agent,
    ConfigurationError,
    ConflictError,
    MemoryStore,
    PostgresStore,
    Runner,
    SQLiteStore,
    StoreUnavailable,
    UserMessage,
    new_run,
    tool,
)
from agentfsm._patience import PatientStore
from agentfsm.stores._base import InputMessage
from agentfsm.testing import ScriptedModel, call, say
from tests.apps.mailer import agent as mailer
from tests.tcp_proxy import Proxy

# -- faults ----------------------------------------------------------------------------------


class Lock:
    """The write lock of the SQLite file ``path``, held from another connection as another
    process in the middle of a long write would, for ``seconds`` or until released."""

    def __init__(self, path: Path, seconds: float) -> None:
        self._other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._other.execute("BEGIN IMMEDIATE")
        self._timer = threading.Timer(seconds, self.release)
        self._timer.daemon = True
        self._timer.start()

    def release(self) -> None:
        self._timer.cancel()
        self._other.close()


def locking_agent(path: Path, seconds: float, effects: list[Lock]) -> Agent:
    """An agent whose tool, once it ran, leaves the store locked for ``seconds``: the save
    of its result meets the lock. ``effects`` gets the lock of each time the tool ran."""

    @tool
    def work() -> str:
        """Do the work."""
        effects.append(Lock(path, seconds))
        return "worked"

    return Agent("a", "", ScriptedModel([call("work"), say("done")]), tools=[work])


class LostAnswer:
    """A store whose named methods, the first time, do their work and then raise
    StoreUnavailable, as when the connection dies after the commit and before the answer."""

    def __init__(self, store: Any, *methods: str) -> None:
        self._store, self._left = store, set(methods)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name not in self._left:
            return method

        async def lost(*args: Any, **kwargs: Any) -> Any:
            result = await method(*args, **kwargs)
            if name in self._left:
                self._left.discard(name)
                raise StoreUnavailable("the connection was lost before the answer came")
            return result

        return lost


def said(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


# -- waiting it out --------------------------------------------------------------------------


def test_a_run_goes_on_when_a_locked_database_frees_within_the_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteStore(path, timeout=0.05)
    effects: list[Lock] = []
    runner = Runner(store=store, store_wait=30)
    with caplog.at_level(logging.WARNING, logger="agentfsm"):
        done = runner.run_sync(locking_agent(path, 1.0, effects), "go", run_id="r")
    assert done.status == "completed"
    assert len(effects) == 1
    stored = asyncio.run(store.load("r"))
    assert stored == done.state
    assert said(caplog, "saving run r: the store is unavailable, retrying") == 1, "once"
    assert said(caplog, "saving run r: the store answers again") == 1
    asyncio.run(store.close())


def test_a_store_unavailable_for_longer_than_the_wait_gives_up_and_loses_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteStore(path, timeout=0.05)
    effects: list[Lock] = []
    runner = Runner(store=store, store_wait=0.5)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            runner.run_sync(locking_agent(path, 600, effects), "go", run_id="r")
    finally:
        for held in effects:
            held.release()
    message = str(caught.value)
    assert message.startswith("saving run r: gave up after ")
    assert "the database is locked" in message
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert caught.value.state is not None
    stored = asyncio.run(store.load("r"))
    assert stored == caught.value.state  # the last saved step: the call recorded as started
    assert stored.status.value == "tools"
    asyncio.run(store.close())


def test_with_no_wait_the_first_failure_is_raised_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    asyncio.run(SQLiteStore(path).close())
    store = SQLiteStore(path, timeout=0.05)
    held = Lock(path, 600)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            Runner(store=store, store_wait=0).run_sync(mailer(), "go", run_id="r")
        assert "gave up" not in str(caught.value)
        assert "the database is locked" in str(caught.value)
    finally:
        held.release()
    asyncio.run(store.close())


def test_a_worker_rides_out_a_lock_mid_run_instead_of_abandoning_the_run(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteStore(path, timeout=0.05)
    effects: list[Lock] = []
    agent = locking_agent(path, 1.0, effects)
    asyncio.run(store.create(new_run(agent, "go", run_id="w")))
    advanced = asyncio.run(asyncio.wait_for(Runner(store=store).work(agent, until_idle=True), 60))
    assert advanced == 1
    assert asyncio.run(store.load("w")).status.value == "completed"
    assert len(effects) == 1
    asyncio.run(store.close())


# -- through a network cut to PostgreSQL -----------------------------------------------------


def store_through(proxy: Proxy, schema: str) -> PostgresStore:
    return PostgresStore(through(proxy), schema=schema)


def test_run_and_resume_go_on_through_a_network_cut(
    schema: str, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    effects: list[str] = []
    timers: list[threading.Timer] = []

    def cut_for(seconds: float) -> None:
        proxy.cut()
        timers.append(threading.Timer(seconds, proxy.restore))
        timers[-1].start()

    @tool
    def cut() -> str:
        """Cut the network to the database for a second and a half."""
        effects.append("cut")
        cut_for(1.5)
        return "cut"

    agent = Agent("a", "", ScriptedModel([call("cut"), say("done")]), tools=[cut])

    async def main() -> None:
        async with store_through(proxy, schema) as store:
            runner = Runner(store=store)
            done = await asyncio.wait_for(runner.run(agent, "go", run_id="r"), 60)
            assert done.status == "completed"
            assert await store.load("r") == done.state
            paused = await asyncio.wait_for(runner.run(mailer(), "mail ada", run_id="m"), 60)
            await store.approve("m", paused.interruptions[0], by="ada")
            cut_for(1.5)
            resumed = await asyncio.wait_for(runner.resume(mailer(), "m"), 60)
            assert resumed.final_output == "sent"

    try:
        with caplog.at_level(logging.WARNING, logger="agentfsm"):
            asyncio.run(main())
    finally:
        for timer in timers:
            timer.cancel()
    assert effects == ["cut"]
    assert said(caplog, "saving run r: the store is unavailable, retrying") == 1
    assert said(caplog, "saving run r: the store answers again") == 1
    assert said(caplog, "claiming run m: the store is unavailable, retrying") == 1


def test_the_runs_of_a_runner_share_one_heartbeat_through_the_patient_store(
    tmp_path: Path,
) -> None:
    def beating() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "agentfsm-heartbeat"}

    before = beating()
    store = SQLiteStore(tmp_path / "runs.db")
    runner = Runner(store=store)
    for n in range(3):
        assert runner.run_sync(mailer(), "mail ada", run_id=f"r{n}").status == "interrupted"
    assert len(beating() - before) == 1
    asyncio.run(store.close())


# -- writes whose answer was lost --------------------------------------------------------------


def test_a_save_that_landed_before_its_answer_was_lost_is_not_a_conflict() -> None:
    store = MemoryStore()
    runner = Runner(store=LostAnswer(store, "create", "save"))  # type: ignore[arg-type]
    done = runner.run_sync(mailer(), "mail ada", run_id="r")
    assert done.status == "interrupted"
    assert asyncio.run(store.load("r")) == done.state


def test_a_save_whose_retry_meets_another_writer_is_still_a_conflict() -> None:
    store = MemoryStore()

    class Raced:
        """The first save does not land, and another writer saves first meanwhile."""

        raced = False

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        async def save(self, state: Any, **kwargs: Any) -> int:
            if not self.raced:
                self.raced = True
                other = msgspec.structs.replace(state, context={"written": "elsewhere"})
                await store.save(other, expected_version=kwargs["expected_version"])
                raise StoreUnavailable("the connection was lost")
            return await store.save(state, **kwargs)

    with pytest.raises(ConflictError):
        Runner(store=Raced()).run_sync(mailer(), "mail ada", run_id="r")  # type: ignore[arg-type]
    assert asyncio.run(store.load("r")).context == {"written": "elsewhere"}


def test_input_posted_before_its_answer_was_lost_is_staged_once() -> None:
    store = MemoryStore()
    asyncio.run(store.create(new_run("a", "go", run_id="r")))
    patient = PatientStore(LostAnswer(store, "post"), 5)  # type: ignore[arg-type]
    asyncio.run(patient.add_input("r", "one more thing"))
    inbox = asyncio.run(store.inbox("r"))
    assert inbox.messages == (InputMessage(items=(UserMessage(content="one more thing"),)),)


def test_a_decision_posted_before_its_answer_was_lost_counts_as_posted() -> None:
    store = MemoryStore()
    paused = Runner(store=store).run_sync(mailer(), "mail ada", run_id="r")
    patient = PatientStore(LostAnswer(store, "post"), 5)  # type: ignore[arg-type]
    assert asyncio.run(patient.approve("r", paused.interruptions[0], by="ada")) is True
    assert len(asyncio.run(store.inbox("r")).ids) == 1
    assert Runner(store=store).resume_sync(mailer(), "r").final_output == "sent"


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("wait", [-1, math.nan, math.inf, "5", True, None])
def test_store_wait_must_be_a_finite_number_of_seconds_of_0_or_more(wait: Any) -> None:
    with pytest.raises(ConfigurationError, match="store_wait"):
        Runner(store=MemoryStore(), store_wait=wait)


@pytest.mark.parametrize("interval", [0, -1, math.nan, math.inf, "1", True])
def test_poll_interval_must_be_a_positive_finite_number_of_seconds(interval: Any) -> None:
    runner = Runner(store=MemoryStore())
    with pytest.raises(ConfigurationError, match="poll_interval"):
        asyncio.run(runner.work(mailer(), poll_interval=interval, until_idle=True))
