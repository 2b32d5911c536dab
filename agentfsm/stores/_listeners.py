"""How SQLiteStore and PostgresStore hear the changes other processes make (see ``_feed``).

psycopg is imported when a PostgreSQL listener starts, so this module imports without it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._feed import Hub, Listener
from ._postgres_text import untext

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

__all__ = ["DataVersionListener", "NotifyListener", "notice"]


class DataVersionListener(Listener):
    """Polls a SQLite file's change counter (``PRAGMA data_version``) every ``interval``
    seconds, on a connection of its own. The counter moves when any other connection
    commits, in this process or another; it does not say what changed."""

    def __init__(self, hub: Hub, path: Path, interval: float) -> None:
        super().__init__(hub, f"agentfsm-sqlite-changes {path}")
        self.path = path
        self.interval = interval

    def describe(self) -> str:
        return f"SQLite store {str(self.path)!r}"

    def listen(self) -> None:
        db = sqlite3.connect(
            f"{self.path.absolute().as_uri()}?mode=rw",
            timeout=self.interval,
            isolation_level=None,
            check_same_thread=False,
            uri=True,
        )
        try:
            (seen,) = db.execute("PRAGMA data_version").fetchone()
            self.listening()
            while not self.stopping.wait(self.interval):
                (version,) = db.execute("PRAGMA data_version").fetchone()
                if version != seen:
                    seen = version
                    self.hub.publish(None, claimable=True)
        finally:
            db.close()


#: The kinds of change a notification names: one that may let a worker claim the run (it
#: was created, posted to, or its lease given back), or any other (saved, deleted).
CLAIMABLE, CHANGED = "c", "s"

#: PostgreSQL refuses a payload of 8000 bytes or more: a longer run id is left unnamed.
_MAX_PAYLOAD = 7900


def notice(run_id: str, claimable: bool) -> str:
    """The payload of the notification of a change of the run ``run_id`` (as stored)."""
    kind = CLAIMABLE if claimable else CHANGED
    if len(run_id.encode()) > _MAX_PAYLOAD:
        return kind
    return kind + run_id


class NotifyListener(Listener):
    """LISTENs on ``channel`` on a blocking connection of its own (made by ``connect``),
    and publishes what it hears. Every ``keepalive`` seconds of silence it asks the server
    for an answer, so that a connection the network dropped without a word is noticed
    within ``keepalive`` twice over; a dropped connection is opened again."""

    def __init__(
        self,
        hub: Hub,
        connect: Callable[[], psycopg.Connection[TupleRow]],
        channel: str,
        where: str,
        *,
        keepalive: float = 10.0,
    ) -> None:
        super().__init__(hub, f"agentfsm-postgres-changes {channel}")
        self.connect = connect
        self.channel = channel
        self.where = where
        self.keepalive = keepalive
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)

    def describe(self) -> str:
        return f"PostgreSQL store {self.where!r}"

    def interrupt(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def listen(self) -> None:
        conn = self.connect()
        try:
            conn.execute(f"LISTEN {self.channel}")  # a name of letters, digits and _
            self.listening()
            pg = conn.pgconn
            fd = conn.fileno()
            wake = self._wake_r.fileno()
            while not self.stopping.is_set():
                ready, _, _ = select.select([fd, wake], [], [], self.keepalive)
                if wake in ready:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                if ready:
                    pg.consume_input()  # OperationalError when the connection is gone
                else:
                    self._ping(pg, fd)
                self._heard(pg)
        finally:
            conn.close()

    def _heard(self, pg: Any) -> None:
        while (notify := pg.notifies()) is not None:
            payload = bytes(notify.extra).decode("utf-8", "replace")
            run_id = untext(payload[1:]) if len(payload) > 1 else None
            self.hub.publish(run_id, claimable=payload[:1] == CLAIMABLE)

    def _ping(self, pg: Any, fd: int) -> None:
        """Ask the server for an answer within ``keepalive`` seconds; raise if none comes."""
        import psycopg
        from psycopg import pq

        deadline = time.monotonic() + self.keepalive
        pg.send_query(b"SELECT 1")
        while pg.flush():  # the connection is non-blocking: send what is left
            if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
                raise psycopg.OperationalError("cannot send to the server")
        while True:
            pg.consume_input()
            if not pg.is_busy():
                break
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise psycopg.OperationalError(
                    f"no answer from the server within {self.keepalive:g} s"
                )
        while (result := pg.get_result()) is not None:
            if result.status != pq.ExecStatus.TUPLES_OK:
                message = (result.error_message or b"").decode("utf-8", "replace")
                raise psycopg.OperationalError(f"the keep-alive query failed: {message}")
