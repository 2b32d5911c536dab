"""The edge of SQLiteStore: which files are agentfsm stores, and what sqlite3's errors mean.

A file is checked before SQLite opens it, because SQLite takes an empty file for a new
database and opens some damaged ones without complaint until a query reaches the damage.
The checks read the header only, so opening a large store stays cheap: damage deeper in the
file is reported, as a StoreError saying the file is corrupted, by the call that reads it.

Every ``sqlite3.Error`` becomes a StoreError that says what happened in words (the disk is
full, the file is corrupted, the database stayed locked) followed by SQLite's own message,
and chains the original as its ``__cause__``. A database that stayed locked is a
StoreUnavailable: it may be free when tried again. SQLite never commits a write that fails
that way, so a retry cannot write twice.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

from .._errors import StoreError, StoreUnavailable

__all__ = ["check_file", "create_file", "store_error"]

_MAGIC = b"SQLite format 3\x00"
_HEADER = 100


def check_file(path: Path) -> None:
    """Raise StoreError unless ``path`` starts like a whole SQLite database: not empty, not
    zeroed, not another kind of file, and not shorter than its header says."""
    name = repr(str(path))
    try:
        with path.open("rb") as f:
            head = f.read(4096)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise StoreError(f"cannot read the SQLite store {name}: {exc.strerror}") from exc
    if size == 0:
        raise StoreError(
            f"{name} is not an agentfsm store: the file is empty (0 bytes). agentfsm never "
            "leaves an empty store behind, so this is some other program's file, or a "
            "leftover; remove it to start a new store there"
        )
    if not head.strip(b"\x00"):
        raise StoreError(
            f"{name} is not an agentfsm store: where the SQLite header should be, the file "
            "holds only zero bytes (it was zeroed, or never written)"
        )
    if not head.startswith(_MAGIC):
        raise StoreError(f"{name} is not an agentfsm store: it is not a SQLite database")
    if size < _HEADER:
        raise StoreError(f"{name} is truncated: it ends inside the SQLite header ({size} bytes)")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise StoreError(f"{name} is corrupted: its SQLite header names no valid page size")
    if _pending(path):
        return  # a write-ahead log or a journal may hold the rest; SQLite sorts it out
    pages = int.from_bytes(head[28:32], "big")
    counted = head[24:28] == head[92:96]  # else SQLite ignores the page count, and so do we
    if size % page_size or (counted and pages * page_size > size):
        expected = f"{pages * page_size} bytes" if counted else f"whole pages of {page_size}"
        raise StoreError(
            f"{name} is truncated: its SQLite header calls for {expected}, but the file "
            f"holds {size}; restore it from a backup"
        )


def _pending(path: Path) -> bool:
    for suffix in ("-wal", "-journal"):
        with contextlib.suppress(OSError):
            if os.stat(f"{path}{suffix}").st_size > 0:
                return True
    return False


def create_file(path: Path, setup: Callable[[sqlite3.Connection], None]) -> None:
    """Create the store ``path`` whole: ``setup`` fills a new file beside it, which then
    takes the name at once. So a store is never seen empty or half made, even by processes
    starting together: the first to finish wins, and the others open its file."""
    draft = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.new")
    try:
        db = sqlite3.connect(draft, isolation_level=None)
        try:
            setup(db)
        finally:
            db.close()  # the last connection folds the write-ahead log into the file
        try:
            os.link(draft, path)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(draft, path)
    finally:
        for leftover in (draft, Path(f"{draft}-wal"), Path(f"{draft}-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def store_error(
    path: Path, exc: sqlite3.Error, *, timeout: float, opening: bool = False
) -> StoreError:
    """The StoreError for ``exc``, saying what it means; raise it ``from exc``."""
    where = (
        f"cannot open the SQLite store {str(path)!r}" if opening else f"SQLite store {str(path)!r}"
    )
    code = getattr(exc, "sqlite_errorcode", None)
    meaning = _MEANINGS.get(code & 0xFF) if isinstance(code, int) else None
    if meaning is None and isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
        meaning = "the store is closed"
    detail = str(exc) or type(exc).__name__
    if meaning is None:
        return StoreError(f"{where}: {detail}")
    kind = StoreUnavailable if isinstance(code, int) and code & 0xFF in _BUSY else StoreError
    return kind(f"{where}: {meaning.format(timeout=timeout)} ({detail})")


#: SQLITE_BUSY and SQLITE_LOCKED: another connection holds the lock, and may let it go.
_BUSY = frozenset({5, 6})


# By SQLite's primary result code (the low byte of an extended code).
_MEANINGS = {
    13: "the disk is full; this call wrote nothing, and the store keeps what it committed "
    "before",  # SQLITE_FULL
    11: "the file is corrupted; restore it from a backup",  # SQLITE_CORRUPT
    26: "the file is not an agentfsm store: not a SQLite database, or a damaged one",  # NOTADB
    5: "the database is locked: another process or connection held it longer than the "
    "timeout of {timeout:g} s",  # SQLITE_BUSY
    6: "the database is locked by another connection of this process",  # SQLITE_LOCKED
    8: "the database is read-only (the file, its directory or its file system)",  # READONLY
    10: "the operating system reported an I/O error",  # SQLITE_IOERR
    14: "the file cannot be opened (does its directory exist, may we write there?)",  # CANTOPEN
    3: "permission denied",  # SQLITE_PERM
}
