"""The change feed: waiting until something changes in a store, whichever process changed it.

A change is a run created, saved or deleted, a message posted to a run's inbox (a decision,
a cancellation, input), or a lease given back on a run that is still runnable.
``Store.changes()`` opens a feed; ``await feed.wait(timeout)`` returns what changed since the
feed's previous wait (or since it was opened) as soon as something did, or an empty
``Changed`` after ``timeout`` seconds. Nothing that happens while a feed is open is missed: a
change between two waits is reported by the next one. Changes coalesce: a wait names each
run that changed once, however often it changed, and a feed that fell behind by more than
``MAX_RUNS`` runs says ``unknown`` instead.

How each store hears of changes made elsewhere:

* PostgresStore: a NOTIFY in the transaction of each change (so it is sent if, and only if,
  the change commits), naming the run; one connection per store LISTENs, on a thread of its
  own, while feeds are open. It is opened again after it drops, and then every feed is told
  ``unknown``: what changed while it was down is not lost, only unnamed.
* SQLiteStore: a thread polls the file's change counter (``PRAGMA data_version``) on a
  connection of its own, every ``watch_interval`` seconds. The counter moves whenever another
  connection, of any process, commits; it does not say what changed (``unknown``). Changes
  made through the store itself are told at once, by run.
* MemoryStore: its own calls, at once.
* Any other store: a feed that hears nothing. Its ``wait`` returns ``Changed(unknown=True)``
  when its timeout is up, which callers take as "look": they poll, as they did before.

Workers and the web inbox wait on a feed with their poll interval as the timeout: a change
wakes them at once, and the timeout stays as a safety net (and for what no one announces:
leases that run out, retries that come due).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable

import msgspec

from .._errors import ConfigurationError

__all__ = ["MAX_RUNS", "ChangeFeed", "Changed", "Hub", "Listener"]

log = logging.getLogger("agentfsm")

#: The most runs a feed names between two waits; beyond that it says ``unknown``.
MAX_RUNS = 1000

#: The longest the opening of a feed waits for its store's listener to listen (a store that
#: cannot be reached then is listened to once it can; until then feeds wait out timeouts).
READY_WAIT = 5.0


class Changed(msgspec.Struct, frozen=True):
    """What changed in a store since a feed's previous wait: the ids of the runs that did
    (``runs``), or ``unknown``, when anything may have (the feed cannot tell what: its
    listener reconnected, SQLite's counter moved, it fell behind, or the store cannot
    notify). True when something (may have) changed; ``run_id in changed`` says whether that
    run may have."""

    runs: frozenset[str] = frozenset()
    unknown: bool = False

    def __bool__(self) -> bool:
        return self.unknown or bool(self.runs)

    def __contains__(self, run_id: object) -> bool:
        return self.unknown or run_id in self.runs


_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class ChangeFeed:
    """One subscriber's view of a store's changes (``Store.changes``), an async context
    manager: changes are collected from the moment it is entered until it is left.

    ``run_id`` limits it to the changes of one run; ``claimable`` to the changes that may
    have made a run claimable by a worker (a run created, a message posted, a lease given
    back on a runnable run; not the steps its own worker saves). ``unknown`` passes every
    limit. A feed belongs to one task at a time; ``wake`` may be called from anywhere."""

    def __init__(
        self, hub: Hub | None, run_id: str | None = None, *, claimable: bool = False
    ) -> None:
        self.run_id = run_id
        self.claimable = claimable
        self._hub = hub
        self._lock = threading.Lock()
        self._runs: set[str] = set()
        self._unknown = False
        self._woken = False
        self._waiter: _Waiter | None = None
        self._open = False

    @property
    def native(self) -> bool:
        """Whether the store tells this feed of changes (False: it can only poll)."""
        return self._hub is not None

    async def __aenter__(self) -> ChangeFeed:
        if self._open:
            raise ConfigurationError("this change feed is open already")
        self._open = True
        if self._hub is not None:
            await self._hub.join(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        if self._hub is not None:
            self._hub.leave(self)

    async def wait(self, timeout: float | None = None) -> Changed:
        """What changed since the previous wait: at once if something did, else as soon as
        something does, or after ``timeout`` seconds (None: no limit) an empty ``Changed``.
        A feed of a store that cannot notify returns ``Changed(unknown=True)`` when the
        timeout is up: look, as anything may have changed. ``wake`` ends a wait early.
        Raises ConfigurationError on a feed that is not entered."""
        if not self._open:
            raise ConfigurationError(
                "enter the change feed before waiting on it: async with store.changes() as feed"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = None
        with self._lock:
            if not (self._unknown or self._runs or self._woken):
                future = loop.create_future()
                self._waiter = (loop, future)
        if future is not None:
            try:
                await asyncio.wait_for(future, timeout)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self._waiter = None
        with self._lock:
            changed = Changed(runs=frozenset(self._runs), unknown=self._unknown)
            woken = self._woken
            self._runs, self._unknown, self._woken = set(), False, False
        if self._hub is None and not woken:
            return Changed(unknown=True)
        return changed

    def wake(self) -> None:
        """End the current wait now, or the next one at once (from any thread): for a worker
        told to stop, say."""
        with self._lock:
            self._woken = True
            waiter = self._waiter
        _resolve_soon(waiter)

    def offer(self, run_id: str | None, claimable: bool) -> None:
        """Tell the feed that run ``run_id`` changed (None: anything may have), if it is one
        the feed wants. Any thread."""
        if run_id is not None and (
            (self.claimable and not claimable) or self.run_id not in (None, run_id)
        ):
            return
        with self._lock:
            if run_id is None or len(self._runs) >= MAX_RUNS:
                self._unknown = True
            else:
                self._runs.add(run_id)
            waiter = self._waiter
        _resolve_soon(waiter)


def _resolve_soon(waiter: _Waiter | None) -> None:
    if waiter is None:
        return
    loop, future = waiter
    with contextlib.suppress(RuntimeError):  # the waiter's loop has closed
        loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Hub:
    """The open feeds of one store, and the listener that hears other processes' changes
    for them (``listener``, if the store has one): started with the first feed, stopped
    with the last. Every method may be called from any thread."""

    def __init__(self, listener: Callable[[Hub], Listener] | None = None) -> None:
        self._feeds: set[ChangeFeed] = set()
        self._lock = threading.Lock()
        self._make_listener = listener
        self._listener: Listener | None = None

    def publish(self, run_id: str | None, *, claimable: bool = False) -> None:
        """Tell every open feed that run ``run_id`` changed (None: anything may have);
        ``claimable`` if the change may let a worker claim it."""
        with self._lock:
            feeds = list(self._feeds)
        for feed in feeds:
            feed.offer(run_id, claimable)

    async def join(self, feed: ChangeFeed) -> None:
        with self._lock:
            self._feeds.add(feed)
            listener = self._listener
            if listener is None and self._make_listener is not None:
                listener = self._listener = self._make_listener(self)
                listener.start()
        if listener is not None:
            await listener.ready()

    def leave(self, feed: ChangeFeed) -> None:
        with self._lock:
            self._feeds.discard(feed)
            if self._feeds or self._listener is None:
                return
            listener, self._listener = self._listener, None
        listener.stop()

    def close(self) -> None:
        """Stop listening (the store closes): feeds still open are told ``unknown``, so
        that whoever waits looks, and meets the closed store."""
        with self._lock:
            listener, self._listener = self._listener, None
            self._make_listener = None
        if listener is not None:
            listener.stop()
            listener.join(READY_WAIT)
        self.publish(None, claimable=True)


class Listener(threading.Thread):
    """Hears the changes that other processes make to a store, on a thread of its own, and
    publishes them to the hub. A subclass implements ``listen``: connect, call
    ``listening()`` once nothing can be missed from then on, publish what it hears until
    ``stopping`` is set, and raise when the connection fails; it is then called again,
    after a growing delay, for as long as feeds are open."""

    def __init__(self, hub: Hub, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.hub = hub
        self.stopping = threading.Event()
        self.failures = 0
        self._ready = threading.Event()

    def listen(self) -> None:
        raise NotImplementedError

    def interrupt(self) -> None:
        """Make ``listen`` notice ``stopping`` soon (a subclass that blocks says how)."""

    def describe(self) -> str:
        return self.name

    async def ready(self) -> None:
        """Wait until the listener listens (or failed once: feeds then wait out their
        timeouts until it listens)."""
        if not self._ready.is_set():
            await asyncio.to_thread(self._ready.wait, READY_WAIT)

    def listening(self) -> None:
        """Called by ``listen`` once it listens. After a failure, nothing of what changed
        meanwhile was heard: every feed is told that anything may have changed."""
        if self._ready.is_set():
            self.hub.publish(None, claimable=True)
        self._ready.set()
        if self.failures:
            log.warning(
                "%s: listening again, after %d failed tries", self.describe(), self.failures
            )
            self.failures = 0

    def stop(self) -> None:
        self.stopping.set()
        self.interrupt()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.listen()
            except Exception as exc:  # a lost connection, a database that went away
                if self.stopping.is_set():
                    break
                self.failures += 1
                if self.failures == 1:
                    log.warning(
                        "%s: cannot listen for changes, retrying (until then, waits end "
                        "at their timeouts): %s",
                        self.describe(),
                        exc,
                    )
                self._ready.set()
                self.stopping.wait(_backoff(self.failures))


def _backoff(failures: int) -> float:
    """Doubling from 0.1 s up to 5 s, with jitter."""
    return float(min(5.0, 0.1 * 2 ** min(failures, 10)) * random.uniform(0.5, 1.0))
