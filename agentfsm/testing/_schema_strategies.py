"""Hypothesis strategies from the JSON Schemas agentfsm already generates: a tool's arguments
(``Tool.parameters``) and an agent's final output (its output type's schema).

A small generator of our own covers what pydantic writes: types, properties and required,
additionalProperties, items, prefixItems and uniqueItems, enum and const, anyOf / oneOf /
allOf, local ``$ref``s (recursion bounded), the numeric and length bounds, patterns, and the
formats date-time, date, time, uuid, email and uri. (hypothesis-jsonschema would cover more of
JSON Schema, but its last release no longer runs on current hypothesis versions.)

Values are JSON data. A value that fits the schema may still be refused by a pydantic
validator the schema cannot express; ``exact_schema`` says whether the generator honours every
keyword of a schema, so that a refusal can be blamed on the validator.
"""

from __future__ import annotations

import functools
import math
import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import pydantic

from .._agents import Agent
from .._errors import ToolArgumentsError
from .._tools import Tool

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["arguments_for", "exact_schema", "from_schema", "output_adapter", "outputs_for"]

_INT64 = (-(2**63), 2**63 - 1)
_KNOWN_FORMATS = frozenset({"date-time", "date", "time", "uuid"})
#: Keywords the generator ignores: a schema that uses one is not exact.
_INEXACT = frozenset(
    {
        "not",
        "if",
        "dependentRequired",
        "dependentSchemas",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "contains",
        "pattern",
    }
)
_MAX_DEPTH = 4


def from_schema(schema: dict[str, Any] | bool) -> SearchStrategy[Any]:
    """Values (JSON data) that fit the JSON Schema ``schema``."""
    root = schema if isinstance(schema, dict) else {}
    return _strategy(schema, root, 0)


def arguments_for(tool: Tool, *, valid: bool = True) -> SearchStrategy[Any]:
    """Arguments for ``tool`` drawn from its JSON Schema (``tool.parameters``).

    ``valid=True``: JSON objects (dicts) that fit the schema; pass them as ``call(name,
    **arguments)``. ``valid=False``: the raw JSON text of arguments the tool refuses (not
    JSON, not an object, a required argument missing, an unknown one, one of the wrong
    type), as a model that misbehaves sends them: ``ScriptedCall(name, text)``.
    """
    return _arguments(tool) if valid else _bad_arguments(tool)


def outputs_for(agent: Agent, *, valid: bool = True) -> SearchStrategy[str]:
    """Final answers (the model's text) for ``agent``'s output type.

    ``valid=True``: the JSON text of values that fit the output type's schema (any text
    for an agent without an output type). ``valid=False``: text the output type refuses
    (nothing, for an agent that takes any text).
    """
    return _outputs(agent, valid)


@functools.lru_cache(maxsize=256)
def _outputs(agent: Agent, valid: bool) -> SearchStrategy[str]:
    from hypothesis import strategies as st

    adapter = output_adapter(agent)
    if adapter is None:
        return _texts() if valid else st.nothing()
    schema = adapter.json_schema()
    if valid:
        return from_schema(schema).map(_encode)

    def refused(text: str) -> bool:
        try:
            adapter.validate_json(text)
        except (pydantic.ValidationError, ValueError):
            return True
        return False

    candidates = st.one_of(
        st.sampled_from(["", "not json", "{", "[]", "null", '{"unexpected": true}']),
        _wrong_values(schema).map(_encode),
    )
    return candidates.filter(refused)


def output_adapter(agent: Agent) -> pydantic.TypeAdapter[Any] | None:
    """The validator of ``agent``'s final output, None for plain text."""
    output_type = agent.output_type
    if output_type is None or output_type is str:
        return None
    return pydantic.TypeAdapter(output_type)


def exact_schema(schema: Any, root: dict[str, Any] | None = None, depth: int = 0) -> bool:
    """Whether every value ``from_schema`` draws for ``schema`` truly fits it: the schema
    uses only keywords and formats the generator honours."""
    if root is None:
        root = schema if isinstance(schema, dict) else {}
    if not isinstance(schema, dict) or depth > 32:
        return True
    if _INEXACT & schema.keys():
        return False
    if "format" in schema and schema["format"] not in _KNOWN_FORMATS:
        return False
    for key in ("anyOf", "oneOf"):
        options = schema.get(key, [])
        # pydantic writes Decimal as "a number or any string"; only numeric strings pass.
        kinds = {o.get("type") for o in options if isinstance(o, dict)}
        bare = any(
            isinstance(o, dict) and o.get("type") == "string" and len(o) == 1 for o in options
        )
        if bare and kinds & {"number", "integer"}:
            return False
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve(ref, root)
        if target is None:
            return False
        if depth < 8 and not exact_schema(target, root, depth + 1):
            return False
    children: list[Any] = [
        *schema.get("properties", {}).values(),
        *schema.get("prefixItems", []),
        *schema.get("anyOf", []),
        *schema.get("oneOf", []),
        *schema.get("allOf", []),
        schema.get("items"),
        schema.get("additionalProperties"),
    ]
    return all(exact_schema(child, root, depth + 1) for child in children)


# -- the generator --------------------------------------------------------------------------


def _strategy(schema: Any, root: dict[str, Any], depth: int) -> SearchStrategy[Any]:
    from hypothesis import strategies as st

    from ._strategies import json_values

    if schema is True or schema == {}:
        return json_values(max_leaves=3)
    if schema is False or not isinstance(schema, dict):
        return st.nothing()
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve(ref, root)
        if target is None or depth > _MAX_DEPTH:
            return st.nothing()
        rest = {k: v for k, v in schema.items() if k not in ("$ref", "$defs", "definitions")}
        merged = {**target, **rest} if isinstance(target, dict) else target
        return _strategy(merged, root, depth + 1)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            rest = {k: v for k, v in schema.items() if k != key}
            return st.one_of(
                [
                    _strategy({**rest, **o} if isinstance(o, dict) else o, root, depth)
                    for o in options
                ]
            )
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in all_of:
            if isinstance(part, dict):
                if "$ref" in part:
                    part = _resolve(part["$ref"], root) or {}
                merged.update(part)
        return _strategy(merged, root, depth + 1)
    kinds = schema.get("type")
    if isinstance(kinds, list):
        return st.one_of([_strategy({**schema, "type": k}, root, depth) for k in kinds])
    if kinds is None:
        if "properties" in schema:
            kinds = "object"
        elif "items" in schema or "prefixItems" in schema:
            kinds = "array"
        else:
            return json_values(max_leaves=3)
    maker = _MAKERS.get(kinds)
    return maker(schema, root, depth) if maker is not None else st.nothing()


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    if not ref.startswith("#"):
        return None
    target: Any = root
    for part in ref[1:].split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        target = target.get(part) if isinstance(target, dict) else None
    return target


def _object(schema: dict[str, Any], root: dict[str, Any], depth: int) -> SearchStrategy[Any]:
    from hypothesis import strategies as st

    properties: dict[str, Any] = schema.get("properties", {})
    required = [name for name in schema.get("required", []) if name in properties]
    extra = schema.get("additionalProperties", True)
    if not properties and isinstance(extra, dict):
        return st.dictionaries(_texts(8), _strategy(extra, root, depth + 1), max_size=3)
    return st.fixed_dictionaries(
        {name: _strategy(properties[name], root, depth + 1) for name in required},
        optional={
            name: _strategy(sub, root, depth + 1)
            for name, sub in properties.items()
            if name not in required
        },
    )


def _array(schema: dict[str, Any], root: dict[str, Any], depth: int) -> SearchStrategy[Any]:
    from hypothesis import strategies as st

    low = schema.get("minItems", 0)
    high = schema.get("maxItems")
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list):
        head = st.tuples(*(_strategy(p, root, depth + 1) for p in prefix)).map(list)
        if high is not None and high <= len(prefix):
            return head
        items = schema.get("items", True)
        if items is False:
            return head
        tail = st.lists(_strategy(items, root, depth + 1), max_size=2)
        return st.tuples(head, tail).map(lambda parts: parts[0] + parts[1])
    items = _strategy(schema.get("items", True), root, depth + 1)
    size = {"min_size": low, "max_size": high if high is not None else max(low, 3)}
    if schema.get("uniqueItems"):
        return st.lists(items, unique_by=_encode, **size)
    return st.lists(items, **size)


def _string(schema: dict[str, Any], root: dict[str, Any], depth: int) -> SearchStrategy[Any]:
    from hypothesis import strategies as st

    low = schema.get("minLength", 0)
    high = schema.get("maxLength")
    kind = schema.get("format")
    formatted = _FORMATS.get(kind) if isinstance(kind, str) else None
    if formatted is not None:
        return formatted()
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            text = st.from_regex(pattern)
        except Exception:  # a pattern Python's re cannot read: plain text
            text = _texts()
        return text.filter(lambda s: low <= len(s) <= (high if high is not None else len(s)))
    return _texts(high if high is not None else max(low, 12), low)


def _integer(schema: dict[str, Any], root: dict[str, Any], depth: int) -> SearchStrategy[Any]:
    from hypothesis import strategies as st

    low, high = _bounds(schema, integer=True)
    step = schema.get("multipleOf")
    if isinstance(step, int) and step > 0:
        return st.integers(-(-low // step), high // step).map(lambda n: n * step)
    return st.integers(low, high)


def _number(schema: dict[str, Any], root: dict[str, Any], depth: int) -> SearchStrategy[Any]:
    from hypothesis import strategies as st

    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        low, high = _bounds(schema, integer=False)
        first = int(-(-low // step)) if low is not None else -1000
        last = int(high // step) if high is not None else 1000
        return st.integers(first, last).map(lambda n: n * step)
    low, high = _bounds(schema, integer=False)
    exclude_min = "exclusiveMinimum" in schema and low is not None
    exclude_max = "exclusiveMaximum" in schema and high is not None
    floats = st.floats(
        min_value=low,
        max_value=high,
        exclude_min=exclude_min,
        exclude_max=exclude_max,
        allow_nan=False,
        allow_infinity=False,
    )
    # Whole numbers as often as any float: amounts, counts and limits in business rules
    # are whole (a refund of 16 EUR on a 15 EUR order), and a search that finds them does
    # not lean on the constants hypothesis happens to have seen in other modules.
    first = -1000 if low is None else math.ceil(low) + (exclude_min and math.ceil(low) == low)
    last = 1000 if high is None else math.floor(high) - (exclude_max and math.floor(high) == high)
    if first > last:
        return floats
    return st.one_of(st.integers(first, last).map(float), floats)


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[Any, Any]:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if not integer:
        return low, high
    lo = _INT64[0] if low is None else int(-(-low // 1))
    hi = _INT64[1] if high is None else int(high // 1)
    if "exclusiveMinimum" in schema and "minimum" not in schema and lo == low:
        lo += 1
    if "exclusiveMaximum" in schema and "maximum" not in schema and hi == high:
        hi -= 1
    return lo, hi


def _boolean(schema: dict[str, Any], root: dict[str, Any], depth: int) -> SearchStrategy[Any]:
    from hypothesis import strategies as st

    return st.booleans()


def _null(schema: dict[str, Any], root: dict[str, Any], depth: int) -> SearchStrategy[Any]:
    from hypothesis import strategies as st

    return st.none()


_MAKERS: dict[str, Callable[[dict[str, Any], dict[str, Any], int], SearchStrategy[Any]]] = {
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "null": _null,
}


def _datetimes() -> SearchStrategy[str]:
    import datetime as dt

    from hypothesis import strategies as st

    return st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2100, 1, 1)).map(
        lambda moment: moment.isoformat()
    )


def _dates() -> SearchStrategy[str]:
    import datetime as dt

    from hypothesis import strategies as st

    return st.dates(min_value=dt.date(1970, 1, 2), max_value=dt.date(2100, 1, 1)).map(
        lambda day: day.isoformat()
    )


def _times() -> SearchStrategy[str]:
    from hypothesis import strategies as st

    return st.times().map(lambda moment: moment.isoformat())


def _uuids() -> SearchStrategy[str]:
    from hypothesis import strategies as st

    return st.uuids().map(str)


def _emails() -> SearchStrategy[str]:
    from hypothesis import strategies as st

    name = st.text(string.ascii_lowercase, min_size=1, max_size=6)
    return st.builds("{}@{}.example".format, name, name)


def _uris() -> SearchStrategy[str]:
    from hypothesis import strategies as st

    return st.text(string.ascii_lowercase, max_size=8).map("https://example.com/{}".format)


_FORMATS: dict[str, Callable[[], SearchStrategy[str]]] = {
    "date-time": _datetimes,
    "date": _dates,
    "time": _times,
    "uuid": _uuids,
    "email": _emails,
    "uri": _uris,
}


def _texts(max_size: int = 12, min_size: int = 0) -> SearchStrategy[str]:
    from hypothesis import strategies as st

    return st.text(min_size=min_size, max_size=max(max_size, min_size))


def _encode(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# -- arguments -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _arguments(tool: Tool) -> SearchStrategy[Any]:
    return from_schema(tool.parameters)


@functools.lru_cache(maxsize=512)
def _bad_arguments(tool: Tool) -> SearchStrategy[str]:
    from hypothesis import strategies as st

    schema = tool.parameters
    properties: dict[str, Any] = schema.get("properties", {})
    required = [name for name in schema.get("required", []) if name in properties]
    valid = _arguments(tool)
    mutations: list[SearchStrategy[Any]] = [
        st.sampled_from(["{", "not json", "[]", "null", "1"]),
        valid.map(lambda args: {**args, "unexpected_argument": 1}),
    ]
    if required:
        mutations.append(
            st.tuples(valid, st.sampled_from(required)).map(
                lambda pair: {k: v for k, v in pair[0].items() if k != pair[1]}
            )
        )
    if properties:
        wrong = {name: _wrong_values(sub, schema) for name, sub in properties.items()}
        mutations.append(
            st.tuples(valid, st.sampled_from(sorted(wrong))).flatmap(
                lambda pair: wrong[pair[1]].map(lambda bad: {**pair[0], pair[1]: bad})
            )
        )

    def refused(raw: str) -> bool:
        try:
            tool.validate_json(raw)
        except ToolArgumentsError:
            return True
        return False

    return (
        st.one_of(mutations).map(lambda v: v if isinstance(v, str) else _encode(v)).filter(refused)
    )


def _wrong_values(schema: Any, root: Any = None) -> SearchStrategy[Any]:
    """Values of another JSON type than ``schema`` asks for (some may still fit it)."""
    from hypothesis import strategies as st

    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        schema = _resolve(schema["$ref"], root if isinstance(root, dict) else schema) or {}
    kind = schema.get("type") if isinstance(schema, dict) else None
    others: dict[str, list[Any]] = {
        "string": [12345, None, [], {}],
        "integer": ["seven", 1.5, None, []],
        "number": ["seven", None, [], {}],
        "boolean": ["yes", 2, None],
        "array": ["a list", 1, {}],
        "object": ["an object", 1, []],
        "null": ["x", 0],
    }
    anything: list[Any] = ["seven", 12345, None, [], {}]
    return st.sampled_from(others.get(kind, anything) if isinstance(kind, str) else anything)
