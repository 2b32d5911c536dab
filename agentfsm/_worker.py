"""The worker side of the driver: claiming a run, holding its lease while the run goes on
(renewed by the runner's heartbeat), saving each of its steps under the lease, giving it up,
and the loop of ``Runner.work`` that takes the store's runnable runs one after another,
retrying or parking the ones that fail."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from ._agents import AgentSet
from ._errors import AgentFSMError, ConflictError, GuardrailTripped, LeaseLost, StoreError
from ._patience import PatientStore
from ._session import Heartbeat, Session, backoff
from ._state import RunState
from ._stream import Live
from .stores._base import ChangeFeed, Lease, Store

if TYPE_CHECKING:
    from ._result import RunResult
    from ._runner import Checkpoint, Runner

__all__ = ["adopt", "checkpoint", "failed", "release", "with_lease", "work_loop"]

log = logging.getLogger("agentfsm")


async def work_loop(
    runner: Runner,
    store: PatientStore,
    agents: AgentSet,
    poll_interval: float,
    until_idle: bool,
    feed: ChangeFeed,
    since: int,
) -> int:
    """The loop of ``Runner.work``: claim a runnable run and drive it, again and again, until
    the runner is stopped (or, ``until_idle``, none is left). Returns how many it advanced."""
    advanced = 0
    failures = 0
    while runner._stops == since:
        claimed_at = time.monotonic()
        try:
            # Not patiently: this loop waits out a failing store for as long as it takes.
            lease = await store.inner.claim(
                runner.owner, lease_seconds=runner.lease_seconds, starting_agent=agents.starting
            )
        except StoreError as exc:
            # A database restart, a dropped connection, a lock held too long: wait and
            # try again, saying so once per episode.
            failures += 1
            if failures == 1:
                log.warning("worker %s: the store fails, retrying: %s", runner.owner, exc)
            await asyncio.sleep(backoff(failures))
            continue
        if failures:
            log.warning("worker %s: the store answers again (%d tries)", runner.owner, failures)
            failures = 0
        if lease is None:
            if until_idle:
                break
            await feed.wait(poll_interval)
            continue
        try:
            state = await store.load(lease.run_id)
            agents.check(state)
            await with_lease(
                runner, agents, state, None, lease, claimed_at, worker=True, since=since, live=None
            )
            advanced += 1
        except LeaseLost as exc:
            # Another worker may have the run now (this one was slow, frozen or cut off).
            log.warning("run %s: worker %s gave it up: %s", lease.run_id, runner.owner, exc)
        except StoreError as exc:
            # The store's trouble, not the run's: it is retried when the lease expires.
            log.error("run %s: store error in worker %s: %s", lease.run_id, runner.owner, exc)
        except GuardrailTripped as exc:
            # The run ended, failed and saved: nothing to retry.
            log.warning("run %s: %s", lease.run_id, exc)
            advanced += 1
        except AgentFSMError as exc:
            await failed(runner, store, lease, exc)
        except Exception:
            # A fault nobody foresaw (a bug of ours, a driver error that slipped through)
            # must not end the worker: the run keeps its lease and is retried later.
            log.exception("run %s: unexpected error in worker %s", lease.run_id, runner.owner)
    return advanced


async def failed(runner: Runner, store: Store, lease: Lease, exc: AgentFSMError) -> None:
    """Count a run's failure: retry it later, or park it when it keeps failing."""
    error = f"{type(exc).__name__}: {exc}"
    try:
        parked = await store.fail(lease, error, retry=runner.retry)
    except StoreError as store_error:
        log.error(
            "run %s failed (%s), and so did recording it: %s", lease.run_id, error, store_error
        )
        return
    if parked:
        log.error(
            "run %s parked after failing %d times: %s", lease.run_id, runner.retry.attempts, error
        )
    else:
        log.error("run %s failed in worker %s, will retry: %s", lease.run_id, runner.owner, error)


async def with_lease(
    runner: Runner,
    agents: AgentSet,
    state: RunState,
    max_turns: int | None,
    lease: Lease | None,
    claimed_at: float,
    *,
    worker: bool = False,
    given: bool = False,
    since: int,
    live: Live | None,
) -> RunResult:
    """Drive the run under ``lease`` (claimed here when None), asked for at the monotonic
    time ``claimed_at``, renewing it while the run goes on. A ``worker`` keeps the lease
    when the run raises (so the run is retried later, not at once)."""
    store = runner._require_store()
    if lease is None:
        claimed_at = time.monotonic()
        lease = await store.claim(
            runner.owner, lease_seconds=runner.lease_seconds, run_id=state.run_id
        )
        if lease is None:
            raise ConflictError(
                f"run {state.run_id} is being run by another worker (it holds a lease)"
            )
        try:
            state = await adopt(store, state)
        except BaseException:
            await release(store, lease, failed=True)
            raise
    session = Session(store, lease, runner.lease_seconds, claimed_at)
    heartbeat = runner._heartbeat
    if heartbeat is None or heartbeat.store is not store.inner:
        heartbeat = runner._heartbeat = Heartbeat(store.inner)
    heartbeat.watch(session)
    failed = True
    try:
        result = await runner._drive(
            agents,
            state,
            max_turns,
            session,
            given=given,
            since=since,
            live=live,
            worker=worker,
        )
        failed = False
        return result
    except GuardrailTripped:
        failed = False  # the run ended, saved: its lease goes
        raise
    finally:
        heartbeat.forget(session)
        if not (failed and worker):
            await release(store, session.lease, failed=failed)


async def checkpoint(
    on_step: Checkpoint | None,
    previous: RunState,
    state: RunState,
    session: Session | None,
    acknowledge: Sequence[int],
    seen: int | None,
    event: str,
) -> bool:
    """Persist the step; True if the run's inbox has messages waiting. ``seen`` is the
    newest inbox message the step was taken from (None for a step not from the inbox);
    ``event`` the type name of the event it took, for the run's history."""
    waiting = 0
    if session is not None:
        try:
            waiting = await session.store.save(
                state,
                expected_version=previous.version,
                lease=session.lease,
                acknowledge=acknowledge,
                seen=seen,
                event=event,
            )
        except AgentFSMError as exc:
            exc.state = previous
            raise
    if on_step is not None:
        done = on_step(state)
        if inspect.isawaitable(done):
            await done
    return waiting > 0


async def adopt(store: Store, state: RunState) -> RunState:
    """The stored run that ``state`` stands for. Decisions recorded on ``state`` since it
    was loaded go to the run's inbox; any other difference is a ConflictError."""
    stored = await store.load(state.run_id)
    if stored == state:
        return stored
    undecided = msgspec.structs.replace(state, decisions=stored.decisions, version=stored.version)
    if undecided != stored:
        raise ConflictError(
            f"run {state.run_id} changed in the store since this state was loaded; load "
            "it again (or resume it by id)"
        )
    for decision in state.decisions:
        if decision not in stored.decisions:
            await store.decide(state.run_id, decision)
    return stored


async def release(store: PatientStore, lease: Lease, *, failed: bool) -> None:
    """Give the lease up. A lease that cannot be given up runs out by itself, so a store
    that fails here is logged, never raised over the run's result or error; and when the
    run failed (perhaps for the store's trouble) it is tried once, not waited for."""
    try:
        await (store.inner if failed else store).release(lease)
    except StoreError as exc:
        log.warning(
            "run %s: could not give its lease up, so it runs out by itself: %s", lease.run_id, exc
        )
