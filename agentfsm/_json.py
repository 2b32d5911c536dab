"""JSON data helpers shared by the core: strict checks and stable digests."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import msgspec

from ._errors import AgentFSMError, ConfigurationError, ContextError

__all__ = ["MAX_SESSION", "check_json_data", "check_session", "copy_json", "digest", "valid_text"]

_encoder = msgspec.json.Encoder(order="sorted")


def check_json_data(
    value: Any, what: str = "context", error: type[AgentFSMError] = ContextError
) -> None:
    """Raise ``error`` unless ``value`` is plain JSON data that survives a round trip
    unchanged: dicts with str keys, lists, str, int, finite float, bool, None."""
    try:
        path = _first_non_json(value, "$")
    except RecursionError:
        raise error(f"{what} is nested too deeply to be JSON data") from None
    if path is not None:
        where, bad = path
        if type(bad) is str:
            raise error(
                f"{what} holds text that is not valid Unicode at {where} (a lone surrogate, "
                "as undecodable bytes become); it cannot be stored as JSON"
            )
        raise error(
            f"{what} must be JSON data (dict with str keys, list, str, int, float, bool, None); "
            f"found {type(bad).__name__} at {where}. Convert it first, for a pydantic model "
            f"with model.model_dump(mode='json')."
        )


def _first_non_json(value: Any, where: str) -> tuple[str, Any] | None:
    kind = type(value)
    if kind is str:
        # A lone surrogate (from os.fsdecode, say) cannot be encoded as UTF-8 JSON.
        return None if value.isascii() or _encodable(value) else (where, value)
    if value is None or kind is bool or kind is int:
        return None
    if kind is float:
        return None if math.isfinite(value) else (where, value)
    if kind is list:
        for index, item in enumerate(value):
            found = _first_non_json(item, f"{where}[{index}]")
            if found is not None:
                return found
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return (f"{where} (a key)", key)
            found = _first_non_json(item, f"{where}.{key}")
            if found is not None:
                return found
        return None
    return (where, value)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (which UTF-8 JSON cannot hold) replaced by U+FFFD."""
    return text if text.isascii() or _encodable(text) else _SURROGATE.sub("\ufffd", text)


def digest(arguments: Any) -> str:
    """A stable digest of JSON arguments: sha256 of their key-sorted JSON encoding."""
    return hashlib.sha256(_encoder.encode(arguments)).hexdigest()


#: The longest session id, in characters.
MAX_SESSION = 200


def check_session(session: object) -> str:
    """``session`` if it is a valid session id: a str of 1 to ``MAX_SESSION`` printable
    characters (no control characters, line breaks, lone surrogates or other invisible
    ones), as the store keeps it and the CLI prints it on one line. ConfigurationError
    otherwise, quoting at most the id's start."""
    if type(session) is not str:
        raise ConfigurationError(f"a session id is a str, not {type(session).__name__}")
    if not session:
        raise ConfigurationError("a session id must not be empty")
    if len(session) > MAX_SESSION:
        raise ConfigurationError(
            f"a session id has at most {MAX_SESSION} characters, not {len(session)} "
            f"({session[:20]!r}...)"
        )
    if not session.isprintable():
        bad = next(c for c in session if not c.isprintable())
        shown = valid_text(session[:40]).encode("unicode_escape").decode()
        raise ConfigurationError(
            f"a session id must be printable text; '{shown}' holds U+{ord(bad):04X}"
        )
    return session


def copy_json(value: Any) -> Any:
    """A copy of JSON data for the user's code (tools, approval rules, guardrails, hooks,
    instructions): what it does to the copy cannot change a state, stored or held."""
    if isinstance(value, dict | list):
        return msgspec.json.decode(msgspec.json.encode(value))
    return value
