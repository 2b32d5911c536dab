"""What the examples of one ``AgentMachine`` class share: an event loop, the store and
the runners, set up once (a store's connection and a runner's lease heartbeat cost more
than an example)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import ConfigurationError
from .._runner import Runner
from .._state import RunState
from ..stores._base import Store
from ..stores._memory import MemoryStore
from ._clock import FakeClock

if TYPE_CHECKING:
    from ._kit import AgentMachine

__all__ = ["Shared", "shared"]

_T = TypeVar("_T")


class Shared:
    """What the examples of one machine class share: the store (and its runner), so
    that a store, its connection and its lease heartbeat are set up once."""

    def __init__(self, kind: Any) -> None:
        self.current: AgentMachine | None = None
        self._folder: Any = None
        # One event loop for every step of every example: a loop per step costs more than
        # the step.
        self.loop = asyncio.new_event_loop()
        atexit.register(self._close)
        self.store = self._open(kind)
        inner = self.store.save

        async def save(state: RunState, **options: Any) -> int:
            if self.current is not None:
                self.current._boundary(f"in_save:{state.version}")
            return await inner(state, **options)

        self.store.save = save  # type: ignore[method-assign]
        clock = FakeClock()
        self.store_runner = Runner(store=self.store, clock=clock, on_step=self._on_step)
        self.json_runner = Runner(clock=clock, on_step=self._on_step)

    def _on_step(self, state: RunState) -> None:
        assert self.current is not None
        self.current._on_step(state)

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` to its end on the shared loop. What a crash left running (the
        sibling calls of a turn) is cancelled: the process it ran in is gone."""
        loop = self.loop
        try:
            return loop.run_until_complete(coroutine)
        finally:
            left = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.store.close())
        self.loop.close()
        if self._folder is not None:
            self._folder.cleanup()

    def _open(self, kind: Any) -> Store:
        if kind == "memory":
            return MemoryStore(clock=FakeClock())
        if kind == "sqlite":
            import tempfile

            from ..stores._sqlite import SQLiteStore

            self._folder = tempfile.TemporaryDirectory(prefix="agentfsm-kit-")
            return SQLiteStore(f"{self._folder.name}/runs.db", clock=FakeClock())
        if callable(kind):
            store: Store = kind()
            return store
        raise ConfigurationError(f"store must be 'memory', 'sqlite' or a factory, not {kind!r}")


_SHARED: dict[type, Shared] = {}


def shared(cls: type[AgentMachine]) -> Shared:
    """The class's shared loop, store and runners (made on first use)."""
    found = _SHARED.get(cls)
    if found is None:
        found = _SHARED[cls] = Shared(cls.store)
    return found
