"""Watching runs that other processes advance: the one mechanism behind the inbox's
Server-Sent Events and its pages' live updates.

A worker in another process saves each step to the store; this module waits on the store's
change feed (``Store.changes``: PostgreSQL's LISTEN/NOTIFY, SQLite's change counter), looks
at the store when it tells of a change, or every ``interval`` seconds at the latest, and
derives the run's durable events with ``durable_events(previous, head)`` between the last
head it saw and the new one. Two consequences:

* Several steps saved before one look collapse into one diff: their events arrive
  together, at the positions of the newest version, and the intermediate statuses are not
  seen. Every event that follows from the two states is there (items, requests, decisions,
  the end); only the steps between are merged. The steps of a nested run (an agent called as a
  tool) that ended between two looks are not seen: its state is gone from the newest one.
* Resuming from a ``Last-Event-ID`` needs the state the client had seen. ``Memory`` keeps
  the recent heads this process saw, so a client that reconnects to the same process
  resumes exactly (with the steps it derived one by one replayed one by one: the steps of a
  nested run that has since ended are in them, and not in the newest state); otherwise the
  stream says ``Reset`` and the client reloads.

The approvals feed watches every run: it lists the most recently updated runs at each
look, loads only those that changed, and keeps the approval events of their diffs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import msgspec

from .._errors import StoreError, UnknownRunError
from .._machine import RunStatus
from .._run_events import (
    ApprovalDecided,
    ApprovalRequested,
    Position,
    RunEvent,
    RunFinished,
    durable_events,
)
from .._state import RunState
from ..stores._base import ChangeFeed, Store

__all__ = ["Memory", "Reset", "Sleep", "watch_approvals", "watch_run"]

log = logging.getLogger("agentfsm.web")

#: How a stream of an ended run idles (``asyncio.sleep``; tests may pass their own).
Sleep = Callable[[float], Awaitable[None]]


class Reset(msgspec.Struct, frozen=True, tag="reset", tag_field="type"):
    """The stream cannot say what happened between the client's last event and now
    (``version``, the run's, when it is one run's stream): reload, then go on."""

    reason: str
    run_id: str | None = None
    version: int | None = None


Watched: TypeAlias = RunEvent | Reset


class Memory:
    """The recent heads this process saw, by run and version (at most ``size``)."""

    def __init__(self, size: int = 512) -> None:
        self._states: OrderedDict[tuple[str, int], RunState] = OrderedDict()
        self._bases: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._latest: OrderedDict[str, int] = OrderedDict()
        self._size = size

    def remember(self, state: RunState, base: RunState | None = None) -> None:
        """Keep ``state``; ``base`` is the state its events were derived from."""
        key = (state.run_id, state.version)
        self._states[key] = state
        self._states.move_to_end(key)
        if base is not None and base.version < state.version and key not in self._bases:
            # The first derivation of a version's events wins: clients hold its positions.
            self._bases[key] = base.version
            self._bases.move_to_end(key)
        if self._latest.get(state.run_id, -1) < state.version:
            self._latest[state.run_id] = state.version
        self._latest.move_to_end(state.run_id)
        for table in (self._states, self._bases, self._latest):
            _trim(table, self._size)

    def state(self, run_id: str, version: int) -> RunState | None:
        return self._states.get((run_id, version))

    def latest(self, run_id: str) -> RunState | None:
        """The newest state of the run this process saw, if still kept."""
        version = self._latest.get(run_id)
        return None if version is None else self.state(run_id, version)

    def base(self, run_id: str, version: int) -> RunState | None:
        """The state the events of ``version`` were derived from here, if still kept."""
        base = self._bases.get((run_id, version))
        return None if base is None else self.state(run_id, base)

    def chain(self, run_id: str, version: int, until: int) -> list[RunState]:
        """The states after ``version`` (up to ``until``) whose events were derived here one
        from the other, in order, as long as they are kept: replaying their diffs gives a
        client the very events it would have had, at the same positions."""
        following: dict[int, int] = {}
        for (rid, derived), base in self._bases.items():
            if rid == run_id and version <= base and derived <= until:
                following[base] = min(derived, following.get(base, derived))  # finest steps
        states: list[RunState] = []
        while (v := following.get(version)) is not None:
            state = self.state(run_id, v)
            if state is None:
                break
            states.append(state)
            version = v
        return states


def _trim(table: OrderedDict[Any, Any], size: int) -> None:
    while len(table) > size:
        table.popitem(last=False)


async def watch_run(
    store: Store,
    head: RunState,
    *,
    after: Position | None,
    memory: Memory,
    interval: float,
    sleep: Sleep = asyncio.sleep,
) -> AsyncIterator[Watched]:
    """The events of ``head``'s run from the position ``after`` on (None: from ``head`` on),
    looking at the store when its change feed tells of a change of the run, and every
    ``interval`` seconds at the latest. It ends when the run is deleted, and stops looking
    (but not streaming) once the run has ended."""
    memory.remember(head)
    for event in _catch_up(head, after, memory):
        yield event
    async with store.changes(head.run_id) as feed:
        # The first look is at once: the run may have changed before the feed was open.
        looked = None
        while not head.status.is_terminal:
            if looked is not None:
                await _next_look(feed, interval, looked)
            looked = time.monotonic()
            try:
                state = await store.load(head.run_id)
            except UnknownRunError:
                return
            except StoreError as exc:
                log.warning("watching run %s: the store fails, retrying: %s", head.run_id, exc)
                continue
            if state.version == head.version:
                continue
            if state.version < head.version:  # the run was deleted and stored again
                yield Reset("the run was replaced", state.run_id, state.version)
            else:
                for event in durable_events(head, state):
                    yield event
            memory.remember(state, head)
            head = state
    # An ended run changes no more; the stream stays open (quiet) rather than end, since
    # an EventSource reconnects to a stream that ends.
    while True:
        await sleep(3600)


#: The least time between two looks of one stream: on a busy store, the changes that come
#: meanwhile are taken together, so that a stream looks at most ten times a second.
SPACING = 0.1


async def _next_look(feed: ChangeFeed, interval: float, looked: float) -> None:
    """Wait until the store tells of a change, or for ``interval`` seconds, and no less
    than SPACING (or ``interval``, if shorter) since the previous look, at ``looked``."""
    rest = min(interval, SPACING) - (time.monotonic() - looked)
    if rest > 0:
        await asyncio.sleep(rest)
    await feed.wait(interval)


def _catch_up(head: RunState, after: Position | None, memory: Memory) -> list[Watched]:
    """What a client that saw the events up to ``after`` missed, as of ``head``: the rest
    of the batch it was reading, then the diffs this process derived since, then the diff
    from the last of them to ``head``."""
    if after is None:
        return []
    run_id = head.run_id
    if after.version > head.version:
        return [Reset("the stream is ahead of the stored run", run_id, head.version)]
    seen = memory.state(run_id, after.version)
    base = memory.base(run_id, after.version)
    events: list[Watched] = []
    if seen is not None and base is not None:
        events += [e for e in durable_events(base, seen) if e.position > after]
    if after.version < head.version:
        if seen is None:
            return [
                Reset(
                    f"the events after {after} are no longer known here; reload the run",
                    run_id,
                    head.version,
                )
            ]
        for state in memory.chain(run_id, seen.version, head.version):
            events += durable_events(seen, state)
            seen = state
        if seen.version < head.version:
            events += durable_events(seen, head)
            memory.remember(head, seen)
    return events


#: The events of the approvals feed.
FEED = (ApprovalRequested, ApprovalDecided, RunFinished)

#: How many of the most recently updated runs the feed lists at each poll: more runs than
#: this changing between two polls is noticed, and said with a Reset.
SCAN = 100


async def watch_approvals(
    store: Store,
    *,
    memory: Memory,
    interval: float,
    tool: str | None = None,
    agent: str | None = None,
) -> AsyncIterator[Watched]:
    """Approvals requested and decided across every run (and the end of runs, which ends
    their waiting calls), from now on, optionally only those of ``tool`` or ``agent``:
    looking at the store when its change feed tells of a change, and every ``interval``
    seconds at the latest."""
    async with store.changes() as feed:
        async for event in _approvals(store, feed, memory, interval, tool, agent):
            yield event


async def _approvals(
    store: Store,
    feed: ChangeFeed,
    memory: Memory,
    interval: float,
    tool: str | None,
    agent: str | None,
) -> AsyncIterator[Watched]:
    waiting = await _waiting_now(store)
    summaries = await store.list(limit=SCAN)
    versions = {s.run_id: s.version for s in summaries}
    mark = max((s.updated_at for s in summaries), default=0.0)
    seen: dict[str, int] = {}
    looked = time.monotonic()
    while True:
        await _next_look(feed, interval, looked)
        looked = time.monotonic()
        try:
            summaries = await store.list(limit=SCAN)
        except StoreError as exc:
            log.warning("watching the approvals: the store fails, retrying: %s", exc)
            continue
        if len(summaries) == SCAN and summaries[-1].updated_at > mark:
            yield Reset(f"more than {SCAN} runs changed at once; reload the inbox")
        changed = [
            s
            for s in reversed(summaries)  # the oldest change first
            if versions.get(s.run_id, -1) != s.version and s.updated_at >= mark
        ]
        versions = {s.run_id: s.version for s in summaries}
        mark = max((s.updated_at for s in summaries), default=mark)
        for summary in changed:
            try:
                state = await store.load(summary.run_id)
            except UnknownRunError:
                continue
            except StoreError as exc:
                log.warning("watching the approvals: cannot load %s: %s", summary.run_id, exc)
                continue
            if state.run_id in seen:
                previous = memory.state(state.run_id, seen[state.run_id])
            else:  # a head the inbox page loaded, say
                previous = memory.latest(state.run_id)
            if previous is None or previous.version >= state.version:
                previous = _assumed(state, waiting.pop(state.run_id, set()))
            memory.remember(state)
            seen[state.run_id] = state.version
            for event in durable_events(previous, state):
                if isinstance(event, FEED) and _wanted(event, tool, agent):
                    yield event


async def _waiting_now(store: Store, pages: int = 10) -> dict[str, set[str]]:
    """The calls waiting now, by run (the first ``pages`` thousand: a call beyond them
    decided later shows in the feed only when its run's previous state is in memory)."""
    found: dict[str, set[str]] = {}
    after = None
    for _ in range(pages):
        page = await store.waiting(limit=1000, after=after)
        for call in page.calls:
            found.setdefault(call.run_id, set()).add(call.request.call_id)
        if page.next is None:
            break
        after = page.next
    return found


def _assumed(head: RunState, waited: set[str]) -> RunState:
    """What ``head``'s run looked like when the feed started watching, as far as the
    feed's events go, when no earlier state of it is at hand: the calls in ``waited``
    waited then (any other call waiting now is new), the audit records from the first one
    about those calls on are new, and the run had not ended."""
    first = next(
        (i for i, r in enumerate(head.audit) if r.decision.call_id in waited), len(head.audit)
    )
    return msgspec.structs.replace(
        head,
        status=RunStatus.INTERRUPTED,
        ledger=tuple(
            c
            for c in head.ledger
            if c.status != "awaiting_approval"
            or c.call_id in waited
            # A call that waits for its nested run: the nested run's calls are the ones
            # listed (their ids start with its own).
            or (c.reason == "nested" and any(w.startswith(c.call_id + "/") for w in waited))
        ),
        audit=head.audit[:first],
    )


def _wanted(event: RunEvent, tool: str | None, agent: str | None) -> bool:
    match event:
        case ApprovalRequested(request=request):
            named = (request.tool, request.agent)
        case ApprovalDecided(record=record):
            named = (record.tool, record.agent)
        case _:
            return True
    return (tool is None or named[0] == tool) and (agent is None or named[1] == agent)
