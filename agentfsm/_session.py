"""The lease session of a run being driven: its lease and renewal, the check that the lease
still holds before a tool body starts, and the run's inbox. Part of the driver."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Sequence

from ._errors import LeaseLost
from ._events import ApprovalsDecided, Cancelled, Event, Injected, Paused, Resumed
from ._machine import RunStatus
from ._outcomes import Invocation
from ._state import RunState
from .stores._base import (
    CancelMessage,
    DecisionMessage,
    InputMessage,
    Lease,
    PauseMessage,
    Renewer,
    Store,
    UnpauseMessage,
)

__all__ = ["Heartbeat", "Session", "backoff"]

log = logging.getLogger("agentfsm")


class Session:
    """A run being driven under a lease: the store, the lease, and its renewal.

    The lease is valid, by this process's monotonic clock, until ``valid_until``: counted
    from when it was asked for, so never later than the store counts it. The heartbeat
    thread renews it (``renew``); the event loop reads it."""

    def __init__(self, store: Store, lease: Lease, lease_seconds: float, claimed_at: float) -> None:
        self.store = store
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.valid_until = claimed_at + lease_seconds
        self.lost = False
        self.ended = False
        self._loop = asyncio.get_running_loop()
        self._failures = 0

    def require_lease(self, calls: Sequence[Invocation]) -> None:
        """Raise LeaseLost unless the lease holds for a safety margin more."""
        margin = self.lease_seconds / 5  # renewals keep two thirds of a lease ahead
        if self.lost or time.monotonic() + margin > self.valid_until:
            names = ", ".join(c.call_id for c in calls)
            raise LeaseLost(
                f"run {self.lease.run_id}: the lease may have run out (this process was slow "
                f"or frozen, or the store could not be reached), so {names} did not start; "
                "the run is taken up again"
            )

    def renew(self, renewer: Renewer | None) -> float | None:
        """Renew the lease once, on the heartbeat thread: through the store's blocking
        ``renewer``, or else on the session's event loop. Returns the seconds until the next
        renewal: a third of a lease, or sooner after a failure (the store is tried again
        while the lease lasts), or None once the lease is taken over by someone else."""
        asked = time.monotonic()
        try:
            if renewer is not None:
                lease = renewer(self.lease, self.lease_seconds)
            else:
                lease = self._renew_on_loop()
        except LeaseLost as exc:
            self.lost = True
            if not self.ended:
                log.warning("lost the lease on run %s: %s", self.lease.run_id, exc)
            return None
        except Exception as exc:  # a store that fails, or a fault nobody foresaw
            self._failures += 1
            if self._failures == 1 and not self.ended:
                log.warning(
                    "renewing the lease on run %s failed, retrying: %s", self.lease.run_id, exc
                )
            return min(self.lease_seconds / 3, backoff(self._failures))
        self.lease = lease
        self.valid_until = asked + self.lease_seconds
        self._failures = 0
        return self.lease_seconds / 3

    def _renew_on_loop(self) -> Lease:
        """``store.renew`` on the session's event loop, given up after a third of a lease
        (a loop that is blocked cannot run it)."""
        renewal = self.store.renew(self.lease, lease_seconds=self.lease_seconds)
        future = asyncio.run_coroutine_threadsafe(renewal, self._loop)
        try:
            return future.result(timeout=self.lease_seconds / 3)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def take_mail(self, state: RunState) -> tuple[Event | None, tuple[int, ...], int | None]:
        """The next event from the run's inbox that fits its status, the ids of the messages
        it consumes (messages that cannot be read go with it), and the newest id read."""
        inbox = await self.store.inbox(state.run_id)
        seen = max(inbox.ids, default=None)
        mail = list(zip(inbox.ids, inbox.messages, strict=True))
        unreadable = tuple(i for i, m in mail if m is None)
        cancel = next((m for _, m in mail if isinstance(m, CancelMessage)), None)
        if cancel is not None:
            dropped = tuple(m.decision for _, m in mail if isinstance(m, DecisionMessage))
            return Cancelled(reason=cancel.reason, decisions=dropped), inbox.ids, seen
        inputs = [(i, m) for i, m in mail if isinstance(m, InputMessage)]
        if inputs:
            items = tuple(item for _, m in inputs for item in m.items)
            return Injected(items=items), (*unreadable, *(i for i, _ in inputs)), seen
        decisions = [(i, m) for i, m in mail if isinstance(m, DecisionMessage)]
        if decisions and state.status is RunStatus.INTERRUPTED:
            return (
                ApprovalsDecided(decisions=tuple(m.decision for _, m in decisions)),
                (*unreadable, *(i for i, _ in decisions)),
                seen,
            )
        # Pauses and unpauses: the last one posted says what is wanted; all go together.
        toggles = [(i, m) for i, m in mail if isinstance(m, PauseMessage | UnpauseMessage)]
        taken = (*unreadable, *(i for i, _ in toggles))
        last = toggles[-1][1] if toggles else None
        if isinstance(last, PauseMessage) and state.status is RunStatus.RUNNING:
            return Paused(reason=last.reason), taken, seen
        if isinstance(last, UnpauseMessage) and state.status is RunStatus.PAUSED:
            return Resumed(), taken, seen
        # What no longer applies (a pause of a run that stopped meanwhile, an unpause of one
        # that is not paused) and what cannot be read go with a step that only acknowledges
        # them, so that they do not keep the run runnable.
        if taken:
            return Injected(items=()), taken, seen
        return None, (), None


class Heartbeat:
    """Renews the leases of a runner's sessions on a thread of its own, so that neither a
    tool that blocks the event loop nor a busy loop can starve the renewal (with a store
    whose ``renewer`` works off the loop; see ``Store.renewer``). The thread starts with the
    first session and ends when it has had none for a while."""

    IDLE = 5.0  # seconds without a session before the thread ends

    def __init__(self, store: Store) -> None:
        self.store = store
        self._due: dict[Session, float] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, session: Session) -> None:
        with self._changed:
            self._due[session] = time.monotonic() + session.lease_seconds / 3
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._beat, name="agentfsm-heartbeat", daemon=True
                )
                self._thread.start()
            self._changed.notify()

    def forget(self, session: Session) -> None:
        """Stop renewing ``session`` (a renewal under way may still land; releasing the
        lease after it is safe)."""
        with self._changed:
            session.ended = True
            self._due.pop(session, None)
            self._changed.notify()

    def _beat(self) -> None:
        renewer = self.store.renewer()
        while True:
            with self._changed:
                while True:
                    if not self._due:
                        self._changed.wait(self.IDLE)
                        if not self._due:
                            self._thread = None
                            return
                        continue
                    session, due = min(self._due.items(), key=lambda entry: entry[1])
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    self._changed.wait(wait)
            pause = session.renew(renewer)
            with self._changed:
                if session in self._due:
                    if pause is None:
                        del self._due[session]
                    else:
                        self._due[session] = time.monotonic() + pause


def backoff(failures: int) -> float:
    """How long to wait after ``failures`` failed tries of the store: doubling from 0.1 s up
    to 5 s, with jitter, so that workers do not retry in step."""
    return float(min(5.0, 0.1 * 2 ** min(failures, 10)) * random.uniform(0.5, 1.0))
