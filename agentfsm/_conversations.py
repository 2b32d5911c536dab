"""Sessions (conversation threads), the driver's side: what a session's next run is given of
the session's earlier runs.

A run of a session starts from the session's transcript (``Store.session_transcript``: every
earlier run's own input and items, in order) plus its own input. The runner's
``session_history`` hook, user code, may trim or summarise that transcript first; the driver
awaits it once, when the run starts, and what it returns enters the core as data of the
``Started`` event (``Started.history``), so a run resumed later never calls it again. The
earlier runs stay in the store as they are, whatever the hook leaves out.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import msgspec

from ._errors import ConfigurationError, ConflictError, HookError
from ._items import Item, UserMessage
from ._json import check_json_data
from ._state import RunState
from .stores._base import Store

__all__ = [
    "SessionHistory",
    "SessionHistoryHook",
    "check_restart",
    "keep_last",
    "session_history",
]

_ITEM_TYPES = get_args(Item)


@dataclass(frozen=True)
class SessionHistory:
    """What the ``session_history`` hook is given: the ``session``, the new run
    (``run_id``, its ``context``), and ``items``, the transcript of the session's earlier
    runs, oldest first."""

    session: str
    run_id: str
    items: tuple[Item, ...]
    context: Any


#: ``Runner(session_history=...)``: returns the items a session's new run starts from (sync
#: or async), given the session's transcript so far.
SessionHistoryHook = Callable[[SessionHistory], Sequence[Item] | Awaitable[Sequence[Item]]]


def keep_last(n: int) -> SessionHistoryHook:
    """A ``session_history`` hook that keeps at most the last ``n`` items of the transcript,
    starting at a user message: the exchange that the limit cuts into is left out whole, so
    that the model never sees a tool result without its call (or a reply without its
    question). ConfigurationError unless ``n`` is an int of at least 1."""
    if type(n) is not int or n < 1:
        raise ConfigurationError(f"keep_last needs an int of at least 1, not {n!r}")

    def keep(history: SessionHistory) -> list[Item]:
        window = list(history.items[-n:])
        start = next((i for i, item in enumerate(window) if isinstance(item, UserMessage)), None)
        return [] if start is None else window[start:]

    keep.__qualname__ = f"keep_last({n})"
    return keep


async def session_history(
    store: Store | None, state: RunState, hook: SessionHistoryHook | None
) -> tuple[Item, ...]:
    """What the new run ``state`` of a session starts from: the session's transcript before
    it, through ``hook``. Raises ConfigurationError without a store, or for a hook that
    returns something other than items of JSON data; HookError (the hook's exception as its
    ``__cause__``, the run's state in ``state``) for a hook that raises."""
    assert state.session is not None
    if store is None:
        raise ConfigurationError(
            f"run {state.run_id} belongs to session {state.session!r}; sessions live in a "
            "store: Runner(store=...)"
        )
    items: tuple[Item, ...] = tuple(
        await store.session_transcript(state.session, before=state.run_id)
    )
    if hook is None:
        return items
    given = SessionHistory(
        session=state.session, run_id=state.run_id, items=items, context=state.context
    )
    try:
        result = hook(given)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        error = HookError(
            f"run {state.run_id}: the session_history hook raised {type(exc).__name__}: {exc}; "
            "the run has not started, and starts when driven again"
        )
        error.state = state
        raise error from exc
    if isinstance(result, str | bytes) or not isinstance(result, Sequence):
        raise ConfigurationError(
            f"the session_history hook must return a list of items, not {type(result).__name__}"
        )
    kept = tuple(result)
    wrong = next((item for item in kept if not isinstance(item, _ITEM_TYPES)), None)
    if wrong is not None:
        raise ConfigurationError(
            "the session_history hook must return items (UserMessage, AssistantMessage, ...), "
            f"not {type(wrong).__name__}"
        )
    check_json_data(
        msgspec.to_builtins(list(kept)), "the session_history hook's items", ConfigurationError
    )
    return kept


async def check_restart(store: Store | None, state: RunState) -> None:
    """ConflictError unless the session run ``state``, which failed on its turn limit, is
    still its session's last run: restarting an earlier one would give the session a second
    active run, and a conversation that forks."""
    assert state.session is not None
    if store is None:
        return
    runs = await store.session_runs(state.session)
    if runs and runs[-1].run_id != state.run_id:
        raise ConflictError(
            f"run {state.run_id} cannot be restarted: run {runs[-1].run_id} came after it in "
            f"session {state.session!r}; start a new run of the session instead"
        )
