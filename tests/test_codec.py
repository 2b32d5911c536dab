"""RunState <-> JSON: exact round trips, refusing bad input with StateFormatError only,
signatures, schema versions and their migrations, the generated JSON Schemas, and JSON-only
contexts.

The frozen fixtures under tests/fixtures/ are states written by real runs of past versions. To
add the one for a new schema version (after bumping SCHEMA_VERSION and adding its migration),
run ``.venv/bin/python tests/test_codec.py``: it writes ``state_v<SCHEMA_VERSION>.json`` from
``interrupted_run()`` and refuses to overwrite an existing fixture. Never regenerate an old one:
they stand for states already stored in users' databases.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import agentfsm
import agentfsm._codec as codec
from agentfsm import (
    Agent,
    ContextError,
    RunState,
    RunStatus,
    StateFormatError,
    ToolCallItem,
    ToolResultItem,
    UserMessage,
)
from agentfsm._schemas import artifacts, check, normalized
from agentfsm.testing import ScriptedModel, call, handoff, json_values, run_states, say

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def loads_or_refuses(data: str | bytes, signing_key: str | bytes | None = None) -> None:
    """from_json either loads ``data`` or raises StateFormatError: never anything else."""
    try:
        state = RunState.from_json(data, signing_key=signing_key)
    except StateFormatError:
        return
    assert isinstance(state, RunState)
    assert state.schema_version == agentfsm.SCHEMA_VERSION


def refused(data: str | bytes, signing_key: str | bytes | None = None) -> str:
    """The message of the StateFormatError that loading ``data`` raises."""
    with pytest.raises(StateFormatError) as info:
        RunState.from_json(data, signing_key=signing_key)
    return str(info.value)


def small_state(**changes: Any) -> RunState:
    state = agentfsm.new_run("helper", "hi", run_id="run-1", context={"user": "u-1"})
    return msgspec.structs.replace(state, **changes)


def document(state: RunState) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(state.to_json())
    return loaded


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- round trips ---------------------------------------------------------------------------------


@given(run_states(), st.binary(min_size=1, max_size=32) | st.text(min_size=1, max_size=32))
def test_any_state_round_trips_exactly_unsigned_and_signed(state: RunState, key: Any) -> None:
    text = state.to_json()
    loaded = RunState.from_json(text)
    assert loaded == state
    assert loaded.to_json() == text
    assert RunState.from_json(text.encode()) == state

    signed = state.to_json(signing_key=key)
    loaded = RunState.from_json(signed, signing_key=key)
    assert loaded == state
    assert loaded.to_json(signing_key=key) == signed


def test_a_str_key_and_its_utf8_bytes_are_the_same_key() -> None:
    state = small_state()
    signed = state.to_json(signing_key="clé")
    assert RunState.from_json(signed, signing_key="clé".encode()) == state


def test_a_loaded_state_keeps_working_as_a_value() -> None:
    state = small_state(
        items=agentfsm.Transcript([UserMessage(content="a"), UserMessage(content="b")])
    )
    loaded = RunState.from_json(state.to_json())
    assert isinstance(loaded.items, agentfsm.Transcript)
    assert loaded.items[-1] == UserMessage(content="b")
    assert loaded.status is RunStatus.NEW
    assert loaded.context == {"user": "u-1"}


# -- fuzz: anything that is not a state is refused with StateFormatError ---------------------------


@given(st.binary(max_size=200))
def test_arbitrary_bytes_load_or_are_refused(data: bytes) -> None:
    loads_or_refuses(data)
    loads_or_refuses(data, signing_key=b"k")


@given(st.text(st.characters(exclude_categories=()), max_size=200))
def test_arbitrary_text_including_lone_surrogates_loads_or_is_refused(text: str) -> None:
    loads_or_refuses(text)
    loads_or_refuses(text, signing_key="k")


@given(json_values(max_leaves=20))
def test_arbitrary_json_loads_or_is_refused(value: Any) -> None:
    data = msgspec.json.encode(value)
    loads_or_refuses(data)
    loads_or_refuses(data, signing_key="k")


@given(json_values(max_leaves=10), json_values(max_leaves=10))
def test_arbitrary_json_with_a_schema_version_loads_or_is_refused(extra: Any, version: Any) -> None:
    for schema_version in (version, 1, agentfsm.SCHEMA_VERSION, 2**70, -1):
        doc = {"schema_version": schema_version, "extra": extra}
        if isinstance(extra, dict):
            doc = {**extra, "schema_version": schema_version}
        loads_or_refuses(dumps(doc))


@given(st.text(max_size=70), json_values(max_leaves=10), st.booleans())
def test_arbitrary_envelopes_are_refused(signature: str, state: Any, valid: bool) -> None:
    body = small_state().to_json() if valid else dumps(state)
    data = f'{{"signature":{dumps(signature)},"state":{body}}}'
    assert "does not match" in refused(data, signing_key="k")


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (the root excluded)."""
    found = []
    children: Any = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in children:
        found.append((*path, key))
        found.extend(_paths(child, (*path, key)))
    return found


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


_OTHER_TYPE = {
    dict: [],
    list: {},
    str: 7,
    int: "7",
    float: "1.5",
    bool: "true",
    type(None): {"x": None},
}


@given(run_states(max_items=4), st.data())
def test_a_state_with_a_deleted_key_loads_or_is_refused(
    state: RunState, data: st.DataObject
) -> None:
    doc = document(state)
    path = data.draw(st.sampled_from(_paths(doc)))
    parent = _at(doc, path[:-1])
    del parent[path[-1]]
    if len(path) == 1:
        # Every top-level field is required: its absence is named.
        assert path[0] in refused(dumps(doc))
    else:
        loads_or_refuses(dumps(doc))


@given(run_states(max_items=4), st.data())
def test_a_state_with_a_value_of_another_type_loads_or_is_refused(
    state: RunState, data: st.DataObject
) -> None:
    doc = document(state)
    path = data.draw(st.sampled_from(_paths(doc)))
    parent = _at(doc, path[:-1])
    parent[path[-1]] = _OTHER_TYPE[type(parent[path[-1]])]
    loads_or_refuses(dumps(doc))


@given(
    run_states(max_items=4),
    st.data(),
    st.text(min_size=1, max_size=12).filter(
        lambda t: (
            t
            not in {
                "user_message",
                "assistant_message",
                "tool_call",
                "tool_result",
                "handoff",
                "feedback",
            }
        )
    ),
)
def test_a_state_with_an_unknown_item_tag_is_refused(
    state: RunState, data: st.DataObject, tag: str
) -> None:
    doc = document(state)
    items = [(field, i) for field in ("input", "items", "staged") for i in range(len(doc[field]))]
    if not items:
        doc["input"] = [{"type": tag, "content": "hi"}]
        field, index = "input", 0
    else:
        field, index = data.draw(st.sampled_from(items))
        doc[field][index]["type"] = tag
    message = refused(dumps(doc))
    assert f"$.{field}[{index}].type" in message


@given(run_states(max_items=4), st.data())
def test_a_truncated_state_is_refused(state: RunState, data: st.DataObject) -> None:
    text = state.to_json()
    cut = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    refused(text[:cut])
    refused(text.encode()[:cut])


# -- specific refusals say what is wrong -----------------------------------------------------------


def test_a_newer_schema_version_is_refused_with_upgrade_advice() -> None:
    doc = document(small_state())
    doc["schema_version"] = 99
    message = refused(dumps(doc))
    assert "99" in message
    assert "upgrade" in message


def test_a_newer_schema_version_is_refused_even_when_its_fields_are_unknown_here() -> None:
    doc = {"schema_version": 99, "a_field_of_the_future": [1, 2], "status": "pondering"}
    message = refused(dumps(doc))
    assert "99" in message
    assert "upgrade" in message


@pytest.mark.parametrize("field", ["status", "run_id", "items", "ledger", "context", "version"])
def test_a_missing_field_is_refused_by_name(field: str) -> None:
    doc = document(small_state())
    del doc[field]
    assert f"`{field}`" in refused(dumps(doc))


def test_an_unknown_field_is_refused_by_name() -> None:
    doc = document(small_state())
    doc["turns"] = 3
    assert "turns" in refused(dumps(doc))


def test_an_unknown_item_tag_is_refused() -> None:
    doc = document(small_state())
    doc["input"][0]["type"] = "pickled_python_object"
    message = refused(dumps(doc))
    assert "pickled_python_object" in message
    assert "$.input[0].type" in message


def test_an_item_without_a_tag_is_refused() -> None:
    doc = document(small_state())
    del doc["input"][0]["type"]
    assert "type" in refused(dumps(doc))


def test_an_unknown_status_is_refused() -> None:
    doc = document(small_state())
    doc["status"] = "sleeping"
    assert "$.status" in refused(dumps(doc))


@pytest.mark.parametrize(
    "data", [b"\x00\xff\xfe not json", b"", b"{", "{'single': 'quotes'}", b"NaN"]
)
def test_text_that_is_not_json_is_refused(data: str | bytes) -> None:
    assert "not valid JSON" in refused(data)


@pytest.mark.parametrize(
    ("value", "kind"), [([], "list"), ([document(small_state())], "list"), ("a", "str"), (1, "int")]
)
def test_json_that_is_not_an_object_is_refused(value: Any, kind: str) -> None:
    assert f"must be a JSON object, not {kind}" in refused(dumps(value))


@pytest.mark.parametrize("version", [0, -1])
def test_a_schema_version_below_1_is_refused(version: int) -> None:
    doc = document(small_state())
    doc["schema_version"] = version
    assert f"unknown schema_version {version}" in refused(dumps(doc))


@pytest.mark.parametrize("version", ["1", 1.0, True, None, [1]])
def test_a_schema_version_that_is_not_an_int_is_refused(version: Any) -> None:
    doc = document(small_state())
    doc["schema_version"] = version
    assert "schema_version" in refused(dumps(doc))


def test_a_missing_schema_version_is_refused() -> None:
    doc = document(small_state())
    del doc["schema_version"]
    assert "schema_version" in refused(dumps(doc))


@pytest.mark.parametrize("data", [None, 42, ["{}"], {"schema_version": 1}])
def test_a_value_that_is_neither_str_nor_bytes_is_refused(data: Any) -> None:
    assert "str or bytes" in refused(data)


def test_a_number_too_large_for_a_float_is_refused() -> None:
    doc = document(small_state())
    text = dumps(doc).replace('"context": {"user": "u-1"}', '"context": 1e400')
    assert "1e400" in text
    refused(text)


def test_deeply_nested_json_is_refused_with_state_format_error() -> None:
    depth = 100_000
    refused(b"[" * depth + b"]" * depth)
    nested = b'{"schema_version":1,"context":' + b"[" * depth + b"]" * depth + b"}"
    refused(nested)


# -- signatures ------------------------------------------------------------------------------------


def test_a_signed_state_round_trips_with_its_key() -> None:
    state = small_state()
    signed = state.to_json(signing_key=b"secret")
    assert json.loads(signed).keys() == {"signature", "state"}
    assert RunState.from_json(signed, signing_key=b"secret") == state


def test_changing_any_single_character_of_a_signed_state_is_refused() -> None:
    signed = small_state().to_json(signing_key="secret")
    assert len(signed) < 1000
    for position, char in enumerate(signed):
        for other in ("1" if char == "0" else "0", "y" if char == "x" else "x", " "):
            if other == char:
                continue
            forged = signed[:position] + other + signed[position + 1 :]
            with pytest.raises(StateFormatError):
                RunState.from_json(forged, signing_key="secret")


def test_flipping_any_single_bit_of_a_signed_state_is_refused() -> None:
    signed = small_state().to_json(signing_key="secret").encode()
    for position in range(len(signed)):
        for bit in (0x01, 0x20):
            forged = bytearray(signed)
            forged[position] ^= bit
            with pytest.raises(StateFormatError):
                RunState.from_json(bytes(forged), signing_key="secret")


def test_a_signed_state_with_a_valid_but_changed_body_is_refused_as_forged() -> None:
    signed = json.loads(small_state().to_json(signing_key="secret"))
    original = small_state().to_json()
    forged_body = original.replace('"turn":0', '"turn":5')
    assert forged_body != original
    forged = f'{{"signature":"{signed["signature"]}","state":{forged_body}}}'
    assert "does not match" in refused(forged, signing_key="secret")


def test_a_non_ascii_signature_is_refused_with_state_format_error() -> None:
    signed = small_state().to_json(signing_key="secret")
    start = signed.index('"signature":"') + len('"signature":"')
    forged = signed[:start] + "é" + signed[start + 1 :]
    assert "does not match" in refused(forged, signing_key="secret")


def test_an_unsigned_state_is_refused_when_a_key_is_given() -> None:
    # The message is about signing, not about the state's fields (see the test below).
    assert "sign" in refused(small_state().to_json(), signing_key="secret")


def test_an_unsigned_state_loaded_with_a_key_is_refused_naming_the_missing_signature() -> None:
    message = refused(small_state().to_json(), signing_key="secret")
    assert "signature" in message
    assert "schema_version" not in message


def test_a_signed_state_is_refused_without_a_key_with_advice_to_pass_one() -> None:
    message = refused(small_state().to_json(signing_key="secret"))
    assert "signing_key" in message


def test_a_signed_state_is_refused_with_the_wrong_key() -> None:
    signed = small_state().to_json(signing_key="secret")
    assert "does not match" in refused(signed, signing_key="secret2")
    assert "does not match" in refused(signed, signing_key=b"")


def test_a_signed_state_with_an_extra_envelope_member_is_refused() -> None:
    signed = json.loads(small_state().to_json(signing_key="secret"))
    signed["note"] = "hello"
    refused(dumps(signed), signing_key="secret")


# -- schema versions: frozen fixtures and migrations -----------------------------------------------


@agentfsm.tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order.

    Args:
        order_id: the order's id.
    """
    return {"order_id": order_id, "paid_eur": 249.0}


EFFECTS: list[str] = []


@agentfsm.tool(needs_approval=True)
def issue_refund(order_id: str, amount_eur: float) -> str:
    """Refund an order; a human approves every refund.

    Args:
        order_id: the order to refund.
        amount_eur: how much, in euros.
    """
    EFFECTS.append(f"refund {order_id} {amount_eur}")
    return f"refunded {amount_eur:.2f} EUR"


@agentfsm.tool
def add_note(text: str) -> str:
    """Add a note to the customer's file.

    Args:
        text: the note.
    """
    EFFECTS.append(f"note {text}")
    return "noted"


def fixture_agents() -> Agent:
    """A triage agent that hands off to a support agent, which looks an order up, then in
    one turn asks for a refund (needs approval) and adds a note (does not), then answers."""
    model = ScriptedModel(
        [
            handoff("support"),
            call("lookup_order", order_id="A-1001"),
            [
                call("issue_refund", order_id="A-1001", amount_eur=249.0),
                call("add_note", text="refund requested"),
            ],
            say("Your refund is on its way."),
        ]
    )
    support = Agent("support", "Help.", model, tools=[lookup_order, issue_refund, add_note])
    return Agent("triage", "Route.", model, handoffs=[support])


def interrupted_run() -> RunState:
    """A real run, stopped while the refund waits for approval."""
    result = agentfsm.Runner().run_sync(
        fixture_agents(),
        "Order A-1001 arrived broken; refund please.",
        context={"customer": "c-42", "tier": "gold", "limits": [100, 250.5], "vip": True},
        run_id="fixture-run",
    )
    assert result.status == "interrupted", result
    return result.state


def write_fixture() -> Path:
    path = FIXTURES / f"state_v{codec.SCHEMA_VERSION}.json"
    if path.exists():
        raise SystemExit(f"{path} exists; fixtures are frozen, never regenerated")
    doc = json.loads(interrupted_run().to_json())
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return path


def _fixture_version(path: Path) -> int:
    match = re.fullmatch(r"state_v(\d+)\.json", path.name)
    assert match, f"unexpected fixture name {path.name}"
    return int(match.group(1))


FIXTURE_FILES = sorted(FIXTURES.glob("state_v*.json"), key=_fixture_version)


def test_there_is_a_frozen_fixture_for_every_schema_version() -> None:
    versions = [_fixture_version(path) for path in FIXTURE_FILES]
    assert versions == list(range(1, agentfsm.SCHEMA_VERSION + 1)), (
        "every schema version needs a frozen fixture; run .venv/bin/python tests/test_codec.py "
        "to write the current one"
    )


def test_there_is_a_migration_for_every_older_schema_version() -> None:
    assert agentfsm.SCHEMA_VERSION == codec.SCHEMA_VERSION
    assert sorted(codec.MIGRATIONS) == list(range(1, agentfsm.SCHEMA_VERSION))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_every_fixture_loads_at_the_current_schema_version(path: Path) -> None:
    text = path.read_text()
    assert json.loads(text)["schema_version"] == _fixture_version(path)
    state = RunState.from_json(text)
    assert state.schema_version == agentfsm.SCHEMA_VERSION
    assert state.run_id == "fixture-run"
    assert state.status is RunStatus.INTERRUPTED
    assert state.current_agent == "support"
    assert [r.tool for r in state.interruptions] == ["issue_refund"]
    assert state.context == {
        "customer": "c-42",
        "tier": "gold",
        "limits": [100, 250.5],
        "vip": True,
    }
    assert RunState.from_json(state.to_json()) == state


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_every_fixture_resumes_to_completion_running_the_refund_once(path: Path) -> None:
    EFFECTS.clear()
    state = RunState.from_json(path.read_text())
    (request,) = state.interruptions
    result = agentfsm.Runner().run_sync(fixture_agents(), state.approve(request.call_id))
    assert result.status == "completed"
    assert result.final_output == "Your refund is on its way."
    # The note ran before the state was frozen: only the refund runs now.
    assert EFFECTS == ["refund A-1001 249.0"]
    results = [i for i in result.state.items if isinstance(i, ToolResultItem)]
    assert [r.tool for r in results].count("issue_refund") == 1


def test_the_current_fixture_matches_what_this_code_writes() -> None:
    """Changing the wire format without bumping SCHEMA_VERSION fails here: bump it, add a
    migration, and write a new fixture instead."""
    path = FIXTURES / f"state_v{agentfsm.SCHEMA_VERSION}.json"
    stored = json.loads(path.read_text())
    assert json.loads(RunState.from_json(path.read_text()).to_json()) == stored


def _as_version(doc: dict[str, Any], version: int) -> dict[str, Any]:
    return {**doc, "schema_version": version}


def _rename(doc: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {(new if key == old else key): value for key, value in doc.items()}


@pytest.fixture
def three_versions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Pretend the code is at schema version 3: version 1 stored ``turn`` as ``turns`` and
    ``max_turns`` as ``turn_limit``; version 2 renamed ``turns`` to ``turn``; version 3
    renamed ``turn_limit`` to ``max_turns``. Every call of a migration is recorded."""
    seen: list[tuple[int, int]] = []

    def v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
        seen.append((1, doc["schema_version"]))
        return _rename(doc, "turns", "turn")

    def v2_to_v3(doc: dict[str, Any]) -> dict[str, Any]:
        seen.append((2, doc["schema_version"]))
        return _rename(doc, "turn_limit", "max_turns")

    monkeypatch.setattr(codec, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(codec, "MIGRATIONS", {1: v1_to_v2, 2: v2_to_v3})
    return seen


def test_an_old_document_goes_through_every_migration_in_order(
    three_versions: list[tuple[int, int]],
) -> None:
    state = small_state(turn=4, max_turns=9, schema_version=3)
    v3 = document(state)
    v2 = _rename(_as_version(v3, 2), "max_turns", "turn_limit")
    v1 = _rename(_as_version(v2, 1), "turn", "turns")

    assert RunState.from_json(dumps(v1)) == state
    assert three_versions == [(1, 1), (2, 2)]
    three_versions.clear()
    assert RunState.from_json(dumps(v2)) == state
    assert three_versions == [(2, 2)]
    three_versions.clear()
    assert RunState.from_json(dumps(v3)) == state
    assert three_versions == []

    assert "upgrade" in refused(dumps(_as_version(v3, 4)))


def test_an_old_document_that_already_looks_current_is_still_migrated(
    three_versions: list[tuple[int, int]],
) -> None:
    # The fast path decodes it, but its version says the migrations must run.
    state = small_state(schema_version=3)
    v1 = _as_version(document(state), 1)
    assert RunState.from_json(dumps(v1)) == state
    assert three_versions == [(1, 1), (2, 2)]


def test_a_document_invalid_after_migrating_is_refused_naming_its_version(
    three_versions: list[tuple[int, int]],
) -> None:
    v1 = _rename(_as_version(document(small_state()), 1), "turn", "turns")
    del v1["status"]
    message = refused(dumps(v1))
    assert "version 1" in message
    assert "`status`" in message


def test_a_migration_that_fails_on_a_damaged_document_gives_state_format_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
        doc["turn"] = doc.pop("turns")  # as migrations are usually written
        return doc

    monkeypatch.setattr(codec, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(codec, "MIGRATIONS", {1: v1_to_v2})
    damaged = _as_version(document(small_state()), 1)  # has "turn", not "turns"
    assert "version 1" in refused(dumps(damaged))


# -- the generated JSON Schemas ----------------------------------------------------------------


def test_the_generated_schemas_are_up_to_date() -> None:
    stale = check(ROOT)
    assert stale == [], f"generated files are stale: {stale}; run `make schemas`"


def test_schemas_do_not_depend_on_how_a_msgspec_release_formats_docstrings() -> None:
    # msgspec 0.22 kept a docstring's indentation; 0.23 dedents it; 0.18 orders anyOf
    # differently. The same meaning must give the same bytes.
    indented = {
        "description": "First line of a\n    docstring.\n\n    Second paragraph,\n    wrapped.  ",
        "anyOf": [{"type": "null"}, {"$ref": "#/$defs/RunError"}],
        "required": ["b", "a"],
    }
    dedented = {
        "description": "First line of a\ndocstring.\n\nSecond paragraph,\nwrapped.",
        "anyOf": [{"$ref": "#/$defs/RunError"}, {"type": "null"}],
        "required": ["a", "b"],
    }
    assert normalized(indented) == normalized(dedented)
    assert normalized(dedented)["description"] == (
        "First line of a docstring.\n\nSecond paragraph, wrapped."
    )


def test_every_schema_file_is_generated_and_carries_the_schema_version() -> None:
    files = sorted((ROOT / "schemas").glob("*.json"))
    generated = sorted(p for p in artifacts(ROOT) if p.parent == ROOT / "schemas")
    assert files == generated, "schemas/ holds a file the code does not generate"
    for path in files:
        schema = json.loads(path.read_text())
        assert schema["x-agentfsm-schema-version"] == agentfsm.SCHEMA_VERSION, path.name
        assert schema["$schema"].startswith("https://json-schema.org/")


def test_the_run_state_schema_names_every_field_as_required() -> None:
    schema = json.loads((ROOT / "schemas" / "run_state.schema.json").read_text())
    definition = schema["$defs"]["RunState"]
    fields = list(msgspec.structs.fields(RunState))
    assert set(definition["required"]) == {f.name for f in fields}
    assert definition.get("additionalProperties") is False


# -- contexts must be JSON data -------------------------------------------------------------------


def _agent() -> tuple[Agent, ScriptedModel]:
    model = ScriptedModel([say("hello")])
    return Agent("helper", "Help.", model), model


def _context_error(context: Any) -> str:
    agent, model = _agent()
    with pytest.raises(ContextError) as info:
        agentfsm.Runner().run_sync(agent, "hi", context=context)
    assert model.requests == [], "the model was called before the context was checked"
    return str(info.value)


@pytest.mark.parametrize(
    ("context", "kind", "where"),
    [
        ({"when": datetime(2024, 1, 2, 3, 4, 5)}, "datetime", "$.when"),
        ((1, 2), "tuple", "$"),
        ({"ids": {1, 2}}, "set", "$.ids"),
        ({"score": math.nan}, "float", "$.score"),
        ({"score": -math.inf}, "float", "$.score"),
        ({1: "one"}, "int", "$ (a key)"),
        ({"raw": b"bytes"}, "bytes", "$.raw"),
        ({"a": {"b": [1, {"c": datetime(2024, 1, 1)}]}}, "datetime", "$.a.b[1].c"),
        ({"a": [[], [0, (1,)]]}, "tuple", "$.a[1][1]"),
        ({"flag": RunStatus.NEW}, "RunStatus", "$.flag"),
    ],
)
def test_a_context_that_is_not_json_is_refused_before_any_model_call(
    context: Any, kind: str, where: str
) -> None:
    message = _context_error(context)
    assert f"found {kind} at {where}" in message


@given(json_values())
def test_a_json_context_survives_the_run_and_the_round_trip(context: Any) -> None:
    agent, _ = _agent()
    result = agentfsm.Runner().run_sync(agent, "hi", context=context, run_id="r")
    assert result.status == "completed"
    assert RunState.from_json(result.state.to_json()).context == context


def test_a_context_with_a_lone_surrogate_is_refused() -> None:
    agent, _ = _agent()
    try:
        result = agentfsm.Runner().run_sync(agent, "hi", context={"path": "caf\udce9"})
    except ContextError:
        return
    result.state.to_json()
    pytest.fail("a context that cannot be persisted was accepted")


def test_a_too_deeply_nested_context_is_refused_with_context_error() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    _context_error(deep)


def test_tool_call_arguments_are_kept_as_raw_text() -> None:
    raw = '{"b": 1,  "a": [1.0, 2]}'
    item = ToolCallItem(call_id="c", tool="t", arguments=raw, agent="helper")
    state = small_state(items=agentfsm.Transcript([item]))
    assert RunState.from_json(state.to_json()).items[0] == item


if __name__ == "__main__":
    print(f"wrote {write_fixture()}", file=sys.stderr)
