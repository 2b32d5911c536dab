"""PostgresStore's text at the edge: names and values as PostgreSQL text, DSNs with their
passwords hidden, and which database errors are faults that pass."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["one_line", "redact", "redact_text", "text", "transient", "unreachable", "untext"]


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


#: The SQLSTATEs of faults that pass: the server is shutting down, restarting or starting
#: (57P01-57P03), it ended an idle session or our frozen transaction (57P05, 25P03), a lock
#: was not granted in time (55P03), a transaction lost a race with another (40001, 40P01),
#: too many connections (53300). Class 08 (the connection failed) too; and 57014, a
#: cancelled statement, when the statement timeout cancelled it.
_TRANSIENT_STATES = frozenset(
    {"57P01", "57P02", "57P03", "57P05", "25P03", "55P03", "40001", "40P01", "53300"}
)


def transient(exc: Exception) -> bool:
    """Whether the error of a call on an open connection may pass if the call is tried
    again. psycopg's errors without a SQLSTATE are its own: an OperationalError among them
    is a connection that broke (the server closed it, the network dropped it)."""
    import psycopg

    state = getattr(exc, "sqlstate", None)
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    if state == "57014":
        return "statement timeout" in str(exc)
    return state.startswith("08") or state in _TRANSIENT_STATES


#: What libpq (or psycopg) says when a connection cannot be made for now: the network, or a
#: server that is restarting or full. libpq gives no SQLSTATE for a failed connection, so
#: this is read from its message; anything else (a database or role that does not exist, a
#: refused password, a host name that does not resolve) is a StoreError at once.
_UNREACHABLE = re.compile(
    "|".join(
        (
            "connection refused",
            "timeout expired",
            "timed out",
            "connection reset",
            "no route to host",
            "network is unreachable",
            "server closed the connection unexpectedly",
            "could not receive data from server",
            "could not send data to server",
            "ssl syscall error",
            "ssl connection has been closed unexpectedly",
            "temporary failure in name resolution",
            "the database system is (starting up|shutting down|in recovery mode|not yet "
            "accepting connections|not accepting connections)",
            "too many clients already",
            "remaining connection slots are reserved",
            "terminating connection",
        )
    ),
    re.IGNORECASE,
)


def unreachable(message: str) -> bool:
    return _UNREACHABLE.search(message) is not None


def text(value: str) -> str:
    """``value`` as PostgreSQL text, which cannot hold NUL: NUL becomes ``\\x01\\x02`` and
    ``\\x01`` is doubled, so every string keeps a distinct, reversible spelling (and names
    without these two control characters, that is all real ones, are stored as they are)."""
    if "\x00" in value or "\x01" in value:
        return value.replace("\x01", "\x01\x01").replace("\x00", "\x01\x02")
    return value


_ESCAPED = re.compile("\x01(.)", re.DOTALL)


def untext(value: str) -> str:
    if "\x01" in value:
        return _ESCAPED.sub(lambda m: "\x01" if m[1] == "\x01" else "\x00", value)
    return value


_PASSWORD_IN_TEXT = re.compile(r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)""", re.I)


def redact_text(text: str) -> str:
    return _PASSWORD_IN_TEXT.sub(r"\1***", text)


def redact(dsn: str) -> str:
    """``dsn`` with its password, if any, replaced by ``***``."""
    if "://" not in dsn:
        return redact_text(dsn)
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            users, hosts = netloc.rsplit("@", 1)
            if ":" in users:
                users = users.split(":", 1)[0] + ":***"
            netloc = f"{users}@{hosts}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable DSN>"
