"""Waiting out a store that is unavailable for a while. Part of the driver, and of the CLI.

A store raises StoreUnavailable for a fault that may pass (a lost connection, a server
restart, a lock or statement timeout, a busy database). ``patiently`` tries such a call
again with a growing, jittered delay for up to a bounded number of seconds, and says so once
per episode in the log; ``PatientStore`` puts every call of a store under it. Every other
error passes at once.

A write whose connection died after the commit and before the answer raises
StoreUnavailable although it landed. Trying it again is safe, because every write either
says so or cannot be applied twice:

- ``save`` is a compare-and-swap on the run's version, and ``create`` refuses a taken id: a
  retry of a write that landed meets ConflictError (or LeaseLost, InboxChanged). Then the
  run is loaded, and if the stored state is the one being written, the write is done;
  otherwise the ConflictError is raised (someone else wrote).
- ``post`` (decisions, cancellations, input): on a retry, a message equal to one still in
  the run's inbox is not posted again (it is the one that landed), so input is not staged
  twice. (A decision that landed and was applied meanwhile is a repeat the decision check
  sees anyway.)
- ``release``, ``fail`` and ``delete`` name a lease or a run that a landed call already
  freed or removed: the retry does nothing, or its UnknownRunError means done.
- ``claim`` of a run by id: a claim that landed leaves the run leased to this process, and
  the retry finds it held (None) until that lease runs out.
- ``clear_session`` deletes a session's runs; a retry of one that landed finds none left.
- ``renew`` (and ``renewer``) is never retried here: the heartbeat renews on its own
  schedule, bounded by the lease.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ._errors import (
    ConfigurationError,
    ConflictError,
    SessionBusy,
    StoreUnavailable,
    UnknownRunError,
)
from ._machine import RunStatus
from ._session import backoff
from ._state import RunState
from .stores._base import (
    Admission,
    ChangeFeed,
    Inbox,
    InboxMessage,
    Lease,
    Renewer,
    RetryPolicy,
    RunSummary,
    RunVersion,
    SessionRun,
    SessionSummary,
    Store,
    WaitingPage,
)

__all__ = ["PatientStore", "check_wait", "patiently"]

log = logging.getLogger("agentfsm")

T = TypeVar("T")


def check_wait(seconds: object, name: str = "store_wait") -> float:
    """``seconds`` as a float, or ConfigurationError unless it is a finite number of 0 or
    more."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, not {seconds!r}")
    if not 0 <= seconds < math.inf:
        raise ConfigurationError(f"{name} must be a finite number of seconds of 0 or more")
    return float(seconds)


async def patiently(
    call: Callable[[], Awaitable[T]], wait: float, what: str, *, quiet: bool = False
) -> T:
    """``await call()``, tried again while it raises StoreUnavailable, for up to ``wait``
    seconds from the first try: after a delay from ``backoff`` (doubling up to 5 s, with
    jitter), and a last time when the wait is up. A warning is logged at the first failure
    and another when the store answers again (unless ``quiet``: for a command whose only
    report is its result). After ``wait`` seconds the last failure is raised again as a
    StoreUnavailable that says so, chaining the driver's error as its ``__cause__``.
    ``wait`` 0 tries once. ``what`` names the call in messages ("loading run r1")."""
    started = time.monotonic()
    failures = 0
    while True:
        try:
            result = await call()
        except StoreUnavailable as exc:
            if wait <= 0:
                raise
            failures += 1
            left = started + wait - time.monotonic()
            if left <= 0:
                waited = time.monotonic() - started
                raise StoreUnavailable(
                    f"{what}: gave up after {waited:.1f} s ({failures} tries): {exc}"
                ) from (exc.__cause__ or exc)
            if failures == 1 and not quiet:
                log.warning(
                    "%s: the store is unavailable, retrying for up to %g s: %s", what, wait, exc
                )
            await asyncio.sleep(min(backoff(failures), left))
            continue
        except Exception:  # the store answered, with another error
            if failures and not quiet:
                _answered(what, failures, started)
            raise
        if failures and not quiet:
            _answered(what, failures, started)
        return result


def _answered(what: str, failures: int, started: float) -> None:
    waited = time.monotonic() - started
    log.warning(
        "%s: the store answers again, after %d failed tries (%.1f s)", what, failures, waited
    )


class PatientStore(Store):
    """``store``, its calls tried again for up to ``wait`` seconds while it is unavailable
    (see ``patiently`` and the module's docstring for why retrying each write is safe).
    ``renew``, ``renewer``, ``changes`` and ``close`` pass through as they are."""

    def __init__(self, store: Store, wait: float, *, quiet: bool = False) -> None:
        self.inner = store
        self.wait = check_wait(wait)
        self.quiet = quiet

    @classmethod
    def of(cls, store: Store, wait: float) -> PatientStore:
        """``store`` made patient; one that is already patient keeps its own wait."""
        return store if isinstance(store, PatientStore) else cls(store, wait)

    def __repr__(self) -> str:
        return repr(self.inner)

    async def _try(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        return await patiently(call, self.wait, what, quiet=self.quiet)

    async def _written(
        self,
        write: Callable[[], Awaitable[T]],
        state: RunState,
        landed: Callable[[], Awaitable[T]],
        what: str,
    ) -> T:
        """``write``, tried patiently; a ConflictError met on a retry is the first try having
        landed when the stored run is ``state`` (then ``landed()`` is the answer)."""
        tries = 0

        async def attempt() -> T:
            nonlocal tries
            tries += 1
            try:
                return await write()
            except SessionBusy:
                # A run that landed meets "already stored" first: this one did not land.
                raise
            except ConflictError:
                if tries == 1 or await self.inner.load(state.run_id) != state:
                    raise
                log.warning("%s: the try that failed had landed; it is done", what)
                return await landed()

        return await self._try(attempt, what)

    # -- runs ------------------------------------------------------------------------------

    async def create(self, state: RunState) -> None:
        async def landed() -> None:
            return None

        await self._written(
            lambda: self.inner.create(state), state, landed, f"creating run {state.run_id}"
        )

    async def load(self, run_id: str, *, version: int | None = None) -> RunState:
        return await self._try(
            lambda: self.inner.load(run_id, version=version), f"loading run {run_id}"
        )

    async def history(self, run_id: str) -> list[RunVersion]:
        return await self._try(
            lambda: self.inner.history(run_id), f"reading the history of run {run_id}"
        )

    async def prune(
        self,
        *,
        keep_versions: int | None = None,
        older_than: float | None = None,
        run_id: str | None = None,
    ) -> int:
        # Dropping versions twice drops nothing more: a retry is safe.
        return await self._try(
            lambda: self.inner.prune(
                keep_versions=keep_versions, older_than=older_than, run_id=run_id
            ),
            "pruning the history of runs",
        )

    async def save(
        self,
        state: RunState,
        *,
        expected_version: int | None = None,
        lease: Lease | None = None,
        acknowledge: Sequence[int] = (),
        seen: int | None = None,
        event: str | None = None,
    ) -> int:
        async def write() -> int:
            return await self.inner.save(
                state,
                expected_version=expected_version,
                lease=lease,
                acknowledge=acknowledge,
                seen=seen,
                event=event,
            )

        async def landed() -> int:
            return len((await self.inner.inbox(state.run_id)).ids)

        return await self._written(write, state, landed, f"saving run {state.run_id}")

    async def session_runs(self, session: str) -> list[SessionRun]:
        return await self._try(
            lambda: self.inner.session_runs(session), f"listing the runs of session {session!r}"
        )

    async def sessions(self, *, limit: int | None = None) -> list[SessionSummary]:
        return await self._try(lambda: self.inner.sessions(limit=limit), "listing sessions")

    async def clear_session(self, session: str) -> int:
        return await self._try(
            lambda: self.inner.clear_session(session), f"clearing session {session!r}"
        )

    async def list(
        self, *, status: RunStatus | str | None = None, limit: int | None = None
    ) -> list[RunSummary]:
        return await self._try(lambda: self.inner.list(status=status, limit=limit), "listing runs")

    async def waiting(
        self,
        *,
        tool: str | None = None,
        agent: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> WaitingPage:
        return await self._try(
            lambda: self.inner.waiting(tool=tool, agent=agent, limit=limit, after=after),
            "listing the calls waiting for a decision",
        )

    async def delete(self, run_id: str) -> None:
        tries = 0

        async def attempt() -> None:
            nonlocal tries
            tries += 1
            try:
                await self.inner.delete(run_id)
            except UnknownRunError:
                if tries == 1:
                    raise  # else the try that failed had deleted it

        await self._try(attempt, f"deleting run {run_id}")

    async def post(
        self, run_id: str, message: InboxMessage, *, admit: Admission | None = None
    ) -> bool:
        tries = 0
        landed = False

        def again(state: RunState, inbox: Sequence[InboxMessage]) -> bool:
            nonlocal landed
            landed = message in inbox  # then the try that failed had posted it
            return not landed and (admit is None or admit(state, inbox))

        async def attempt() -> bool:
            nonlocal tries
            tries += 1
            posted = await self.inner.post(run_id, message, admit=admit if tries == 1 else again)
            return posted or landed

        return await self._try(attempt, f"posting to run {run_id}")

    async def inbox(self, run_id: str) -> Inbox:
        return await self._try(
            lambda: self.inner.inbox(run_id), f"reading the inbox of run {run_id}"
        )

    # -- leases ----------------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        *,
        lease_seconds: float = 30.0,
        run_id: str | None = None,
        starting_agent: str | None = None,
    ) -> Lease | None:
        return await self._try(
            lambda: self.inner.claim(
                owner, lease_seconds=lease_seconds, run_id=run_id, starting_agent=starting_agent
            ),
            "claiming a run" if run_id is None else f"claiming run {run_id}",
        )

    async def fail(self, lease: Lease, error: str, *, retry: RetryPolicy) -> bool:
        return await self._try(
            lambda: self.inner.fail(lease, error, retry=retry),
            f"recording the failure of run {lease.run_id}",
        )

    async def renew(self, lease: Lease, *, lease_seconds: float = 30.0) -> Lease:
        return await self.inner.renew(lease, lease_seconds=lease_seconds)

    def renewer(self) -> Renewer | None:
        return self.inner.renewer()

    async def release(self, lease: Lease) -> None:
        await self._try(lambda: self.inner.release(lease), f"releasing run {lease.run_id}")

    def changes(self, run_id: str | None = None, *, claimable: bool = False) -> ChangeFeed:
        return self.inner.changes(run_id, claimable=claimable)

    async def close(self) -> None:
        await self.inner.close()

    def _decision_time(self) -> float:
        return self.inner._decision_time()
