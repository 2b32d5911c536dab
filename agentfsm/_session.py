"""The lease session of a run being driven: its lease and renewal, the check that the lease
still holds before a tool body starts, and the run's inbox. Part of the driver."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence

from ._errors import LeaseLost
from ._events import ApprovalsDecided, Cancelled, Event, Injected
from ._machine import RunStatus
from ._outcomes import Invocation
from ._state import RunState
from .stores._base import CancelMessage, DecisionMessage, InputMessage, Lease, Store

__all__ = ["Session", "backoff"]

log = logging.getLogger("agentfsm")


class Session:
    """A run being driven under a lease: the store, the lease, and its renewal.

    The lease is valid, by this process's monotonic clock, until ``valid_until``: counted
    from when it was asked for, so never later than the store counts it."""

    def __init__(self, store: Store, lease: Lease, lease_seconds: float, claimed_at: float) -> None:
        self.store = store
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.valid_until = claimed_at + lease_seconds

    def require_lease(self, calls: Sequence[Invocation]) -> None:
        """Raise LeaseLost unless the lease holds for a safety margin more."""
        margin = self.lease_seconds / 5  # renewals keep two thirds of a lease ahead
        if time.monotonic() + margin > self.valid_until:
            names = ", ".join(c.call_id for c in calls)
            raise LeaseLost(
                f"run {self.lease.run_id}: the lease may have run out (this process was slow "
                f"or frozen), so {names} did not start; the run is taken up again"
            )

    async def keep_renewed(self) -> None:
        """Renew the lease every third of its length. A store that fails is tried again
        while the lease lasts; only a lease taken over by someone else ends it."""
        pause = self.lease_seconds / 3
        failures = 0
        while True:
            await asyncio.sleep(pause)
            asked = time.monotonic()
            try:
                self.lease = await self.store.renew(self.lease, lease_seconds=self.lease_seconds)
            except LeaseLost as exc:
                log.warning("lost the lease on run %s: %s", self.lease.run_id, exc)
                return
            except Exception as exc:  # a store that fails, or a fault nobody foresaw
                failures += 1
                if failures == 1:
                    log.warning(
                        "renewing the lease on run %s failed, retrying: %s", self.lease.run_id, exc
                    )
                pause = min(self.lease_seconds / 3, backoff(failures))
                continue
            self.valid_until = asked + self.lease_seconds
            pause, failures = self.lease_seconds / 3, 0

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
        if unreadable:
            return Injected(items=()), unreadable, seen  # a step that only acknowledges them
        return None, (), None


def backoff(failures: int) -> float:
    """How long to wait after ``failures`` failed tries of the store: doubling from 0.1 s up
    to 5 s, with jitter, so that workers do not retry in step."""
    return float(min(5.0, 0.1 * 2 ** min(failures, 10)) * random.uniform(0.5, 1.0))
