"""Stores keep runs: ``MemoryStore`` for tests, ``SQLiteStore`` (the embedded default) and
``PostgresStore`` for many workers on many machines. ``open_store(dsn)`` picks one from a
string."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from .._errors import ConfigurationError
from ._base import (
    Changed,
    ChangeFeed,
    Inbox,
    Lease,
    RetryPolicy,
    RunSummary,
    RunVersion,
    SessionRun,
    SessionSummary,
    Store,
    WaitingCall,
    WaitingPage,
)
from ._feed import Hub
from ._memory import MemoryStore
from ._sqlite import SQLiteStore

if TYPE_CHECKING:
    from ._postgres import PostgresStore

__all__ = [
    "ChangeFeed",
    "Changed",
    "Hub",
    "Inbox",
    "Lease",
    "MemoryStore",
    "PostgresStore",
    "RetryPolicy",
    "RunSummary",
    "RunVersion",
    "SQLiteStore",
    "SessionRun",
    "SessionSummary",
    "Store",
    "WaitingCall",
    "WaitingPage",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from ._postgres import PostgresStore

        return PostgresStore
    raise AttributeError(name)


# A URL scheme (RFC 3986) and its colon; one letter alone is a Windows drive, not a scheme.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


def open_store(dsn: str | Path, *, create: bool = True) -> Store:
    """A store from a string: ``postgresql://...`` (or ``postgres://``; an extra query
    parameter ``agentfsm_schema=NAME`` picks the schema), ``sqlite:///path``, ``memory:``, or
    a plain file path (SQLite).

    ``create=False`` opens only a store that exists (a SQLite file, a PostgreSQL schema with
    agentfsm's tables) and creates nothing; a missing one raises StoreError. Raises
    ConfigurationError for a string that is none of the above, such as ``sqlite:runs.db``
    (a file whose name starts with a word and a colon is written ``./sqlite:runs.db``).
    """
    text = str(dsn)
    if text.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStore

        url = urlsplit(text)
        query = parse_qsl(url.query, keep_blank_values=True)
        schema = [value for key, value in query if key == "agentfsm_schema"]
        # libpq reads "+" as a plus sign, not a space: spaces (in options=-c ...) are %20.
        rest = urlencode(
            [(key, value) for key, value in query if key != "agentfsm_schema"], quote_via=quote
        )
        text = urlunsplit(url._replace(query=rest))
        if schema:
            return PostgresStore(text, schema=schema[-1], create=create)
        return PostgresStore(text, create=create)
    if text == "memory:":
        return MemoryStore()
    if text.startswith("sqlite://"):
        text = text.removeprefix("sqlite://")
        if not text.startswith("/"):
            raise ConfigurationError("a sqlite DSN is sqlite:///relative/or//absolute/path")
        text = text[1:]
    elif _SCHEME.match(text) and "://" not in text:
        raise ConfigurationError(
            f"malformed store {text!r}: use postgresql://..., sqlite:///path, memory: or a "
            f"path (write ./{text} for a file of that name)"
        )
    if "://" in text:
        raise ConfigurationError(f"unknown store {text!r}: use postgresql://, sqlite:/// or a path")
    return SQLiteStore(text, create=create)
