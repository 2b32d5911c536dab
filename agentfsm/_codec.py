"""RunState <-> JSON: the wire type, schema versions, migrations and signatures.

The wire form of a state is the RunState's fields with the transcript as a plain JSON array.
Signed states are wrapped as ``{"signature": "<hex HMAC-SHA256 of the state's bytes>",
"state": {...}}``; the signature covers the exact bytes of the ``state`` member.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ._errors import StateFormatError
from ._items import Item
from ._state import RunState, Transcript

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "WireState",
    "decode",
    "decode_parts",
    "encode",
    "encode_head",
    "encode_items",
    "wire_type",
]

#: The schema version this code writes. One line per version:
#:   1: first release.
#:   2: the decisions' audit trail (``audit``); decisions say who decided, when, and whether
#:      the call expired; waiting calls keep their tool's argument schema.
#:   3: a call in doubt says who started it (``started_by``: the worker, and its lease's end);
#:      the run keeps its trace context (``trace``) for tracing consumers; a new status,
#:      ``paused``. Guardrails: their verdicts in the transcript (``GuardrailItem``, tag
#:      ``guardrail``), a waiting call's ``recheck`` (its input guardrails check it again
#:      before it runs), and ``guardrail_tripped`` runs.
#:   4: agents as tools (``nested``: the nested runs of agent tool calls); forks
#:      (``forked_from``); who started the run and whether they may approve its calls
#:      (``started_by``, ``starter_may_approve``); sessions (``session``, ``session_items``);
#:      handoff options (``handoff_due``, ``handoff_input``); server-side continuation
#:      (``stored_response``). A call's quorum and the approvals counted so far (``quorum``,
#:      ``approvals``, with defaults), and a decision's ``counted`` outcome in the audit trail.
SCHEMA_VERSION = 4


def _v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
    # The new fields of decisions and calls have defaults; only the trail is new and required.
    document["audit"] = []
    return document


def _v2_to_v3(document: dict[str, Any]) -> dict[str, Any]:
    # ``started_by`` has a default: nobody knew who started the calls in doubt of version 2.
    # Runs of version 2 kept no trace context.
    document["trace"] = {}
    return document


def _v3_to_v4(document: dict[str, Any]) -> dict[str, Any]:
    # Runs of version 3 had none of these: no nested runs, no fork, no recorded starter (so
    # nothing bars anyone from approving), no session, no handoff options pending, and no
    # response kept by a server. Calls had no quorum: their defaults (one approval) apply.
    document.update(
        nested={},
        forked_from=None,
        started_by="",
        starter_may_approve=True,
        session=None,
        session_items=0,
        handoff_due=None,
        handoff_input=None,
        stored_response=None,
    )
    return document


#: ``MIGRATIONS[n]`` turns a version-n document (a dict) into a version n+1 document. Each
#: one has a frozen fixture under tests/fixtures/ that a test loads.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
}


def _wire_fields() -> list[tuple[str, Any]]:
    # Every field is required on the wire: a document names each one, and an older version's
    # document is migrated (MIGRATIONS) rather than filled in with defaults.
    fields: list[tuple[str, Any]] = []
    for field in msgspec.structs.fields(RunState):
        kind = field.type
        if field.name == "items":
            kind = tuple[Item, ...]
        elif field.name == "nested":
            # Nested runs are states too: the wire type refers to itself (resolved by name
            # in this module).
            kind = dict[str, "WireState"]
        fields.append((field.name, kind))
    return fields


WireState: Any = msgspec.defstruct(
    "RunState",
    _wire_fields(),
    frozen=True,
    forbid_unknown_fields=True,
    module=__name__,
)


HeadWire: Any = msgspec.defstruct(
    "RunHead",
    [(name, kind) for name, kind in _wire_fields() if name != "items"],
    frozen=True,
    forbid_unknown_fields=True,
    module=__name__,
)
_HEAD_FIELDS = [name for name, _ in _wire_fields() if name != "items"]
_HEAD_NESTED_INDEX = _HEAD_FIELDS.index("nested")


def wire_type() -> Any:
    """The persisted type of a RunState (for JSON Schema generation)."""
    return WireState


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    signature: str
    state: msgspec.Raw


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WireState)
_envelope_decoder = msgspec.json.Decoder(_Envelope)


def _key(signing_key: bytes | str) -> bytes:
    return signing_key.encode() if isinstance(signing_key, str) else signing_key


def _sign(body: bytes, signing_key: bytes | str) -> str:
    return hmac.new(_key(signing_key), body, hashlib.sha256).hexdigest()


def _to_wire(state: RunState) -> Any:
    values = list(msgspec.structs.astuple(state))
    values[_ITEMS_INDEX] = state.items.to_tuple()
    if state.nested:
        values[_NESTED_INDEX] = {k: _to_wire(v) for k, v in state.nested.items()}
    return WireState(*values)


def encode(state: RunState, *, signing_key: bytes | str | None = None) -> bytes:
    try:
        body = _encoder.encode(_to_wire(state))
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise StateFormatError(f"run state cannot be written as JSON: {exc}") from None
    if signing_key is None:
        return body
    signature = _sign(body, signing_key).encode()
    return b'{"signature":"' + signature + b'","state":' + body + b"}"


_ITEMS_INDEX = RunState.__struct_fields__.index("items")
_NESTED_INDEX = RunState.__struct_fields__.index("nested")


def encode_head(state: RunState) -> bytes:
    """The state without its transcript: the small row a store rewrites at every step."""
    values = [getattr(state, name) for name in _HEAD_FIELDS]
    if state.nested:
        values[_HEAD_NESTED_INDEX] = {k: _to_wire(v) for k, v in state.nested.items()}
    return _encoder.encode(HeadWire(*values))


def encode_items(items: Sequence[Item]) -> list[bytes]:
    """Each item as its own JSON document: the rows a store appends."""
    return [_encoder.encode(item) for item in items]


def decode_parts(head: bytes, items: Sequence[bytes]) -> RunState:
    """Rebuild a state from ``encode_head`` and the ``encode_items`` of its whole transcript.

    The parts are spliced into one document and loaded like ``from_json``, so stored runs get
    the same validation, errors and migrations."""
    if not head.endswith(b"}"):
        raise StateFormatError("stored run head is not a JSON object")
    return decode(head[:-1] + b',"items":[' + b",".join(items) + b"]}")


def decode(data: str | bytes, *, signing_key: bytes | str | None = None) -> RunState:
    if isinstance(data, str):
        try:
            data = data.encode()
        except UnicodeEncodeError as exc:
            raise StateFormatError(f"run state is not valid text: {exc}") from None
    elif not isinstance(data, bytes | bytearray | memoryview):
        raise StateFormatError(f"run state must be str or bytes, not {type(data).__name__}")
    try:
        body = bytes(data) if signing_key is None else _verified(bytes(data), signing_key)
        try:
            wire = _decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            wire = _decode_slowly(body, exc)
        if wire.schema_version != SCHEMA_VERSION:
            wire = _decode_slowly(body, None)
    except RecursionError:
        raise StateFormatError("run state is nested too deeply to load") from None
    return _from_wire(wire)


def _verified(data: bytes, signing_key: bytes | str) -> bytes:
    try:
        envelope = _envelope_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        if _is_unsigned_state(data):
            raise StateFormatError(
                "run state has no `signature`, but a signing key was given: it was saved "
                "without signing_key, or its signature was stripped"
            ) from None
        raise StateFormatError(
            f"run state is not signed as expected (a signing key was given): {exc}"
        ) from None
    body = bytes(envelope.state)
    expected = _sign(body, signing_key).encode()
    if not hmac.compare_digest(envelope.signature.encode(), expected):
        raise StateFormatError("run state signature does not match: it was changed or forged")
    return body


def _is_unsigned_state(data: bytes) -> bool:
    try:
        document = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False
    return (
        isinstance(document, dict) and "signature" not in document and "schema_version" in document
    )


def _decode_slowly(body: bytes, error: Exception | None) -> Any:
    """Diagnose a document the fast path refused, and migrate older versions."""
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise StateFormatError(f"run state is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise StateFormatError(f"run state must be a JSON object, not {type(document).__name__}")
    if "signature" in document and "state" in document:
        raise StateFormatError("run state is signed; pass signing_key to load it")
    version = document.get("schema_version")
    if type(version) is not int:
        raise StateFormatError("run state has no integer `schema_version`")
    if version > SCHEMA_VERSION:
        raise StateFormatError(
            f"run state has schema_version {version}, newer than this agentfsm understands "
            f"({SCHEMA_VERSION}); upgrade agentfsm to load it"
        )
    if version < 1:
        raise StateFormatError(f"run state has unknown schema_version {version}")
    if version == SCHEMA_VERSION and error is not None:
        raise StateFormatError(f"invalid run state: {error}") from None
    for step in range(version, SCHEMA_VERSION):
        migrate = MIGRATIONS.get(step)
        if migrate is None:
            raise StateFormatError(f"no migration from schema_version {step} to {step + 1}")
        try:
            document = migrate(document)
        except Exception as exc:
            raise StateFormatError(
                f"run state of schema version {step} could not be migrated to "
                f"version {step + 1}: {exc!r}"
            ) from exc
        document["schema_version"] = step + 1
    try:
        return msgspec.convert(document, WireState)
    except msgspec.ValidationError as exc:
        raise StateFormatError(
            f"invalid run state (after migrating from version {version}): {exc}"
        ) from None


def _from_wire(wire: Any) -> RunState:
    fields = msgspec.structs.asdict(wire)
    fields["items"] = Transcript(wire.items)
    if wire.nested:
        fields["nested"] = {k: _from_wire(v) for k, v in wire.nested.items()}
    return RunState(**fields)
