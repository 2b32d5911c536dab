"""A small JSON Schema checker for tool arguments, so that a decision's edited arguments can
be checked where the tool's code is not loaded (the CLI, a web page, another service).

It covers what pydantic writes for function signatures: types, properties, required,
additionalProperties, items and prefixItems, enum and const, anyOf/oneOf/allOf, local
``$ref``s, and the numeric, length and pattern bounds. Keywords it does not know are ignored,
so it may accept what the tool refuses, never the reverse; the tool itself validates again
before the call runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, TypeGuard

__all__ = ["schema_errors"]

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: type(v) is int or (type(v) is float and v.is_integer()),
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}


def schema_errors(value: Any, schema: dict[str, Any], *, limit: int = 5) -> list[str]:
    """Why ``value`` fails ``schema``, as ``"$.path: problem"`` lines (empty if it passes)."""
    errors = []
    for error in _check(value, schema, schema, "$", 0):
        errors.append(error)
        if len(errors) >= limit:
            break
    return errors


def _check(value: Any, schema: Any, root: dict[str, Any], at: str, depth: int) -> Iterator[str]:
    if depth > 64:
        yield f"{at}: nested too deeply to check"
        return
    if schema is False:
        yield f"{at}: no value is allowed here"
        return
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        yield from _check(value, target, root, at, depth + 1)
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_TYPES.get(name, lambda v: True)(value) for name in names):
            yield f"{at}: expected {' or '.join(names)}, got {_kind(value)}"
            return
    if "const" in schema and not _same(value, schema["const"]):
        yield f"{at}: must be {schema['const']!r}"
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        yield f"{at}: must be one of {schema['enum']!r}"
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if (
            isinstance(options, list)
            and options
            and all(any(_check(value, o, root, at, depth + 1)) for o in options)
        ):
            yield f"{at}: matches none of the allowed forms"
    for part in schema.get("allOf", ()):
        yield from _check(value, part, root, at, depth + 1)
    if isinstance(value, dict):
        yield from _object(value, schema, root, at, depth)
    elif isinstance(value, list):
        yield from _array(value, schema, root, at, depth)
    elif isinstance(value, str):
        yield from _string(value, schema, at)
    elif type(value) in (int, float):
        yield from _number(value, schema, at)


def _object(
    value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], at: str, depth: int
) -> Iterator[str]:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            yield f"{at}.{name}: required"
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            yield from _check(item, properties[name], root, f"{at}.{name}", depth + 1)
        elif extra is False:
            yield f"{at}.{name}: not an argument of this tool"
        else:
            yield from _check(item, extra, root, f"{at}.{name}", depth + 1)


def _array(
    value: list[Any], schema: dict[str, Any], root: dict[str, Any], at: str, depth: int
) -> Iterator[str]:
    if len(value) < schema.get("minItems", 0):
        yield f"{at}: needs at least {schema['minItems']} items"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        yield f"{at}: allows at most {schema['maxItems']} items"
    prefix = schema.get("prefixItems", [])
    for index, item in enumerate(value):
        rule = prefix[index] if index < len(prefix) else schema.get("items", True)
        yield from _check(item, rule, root, f"{at}[{index}]", depth + 1)


def _string(value: str, schema: dict[str, Any], at: str) -> Iterator[str]:
    if len(value) < schema.get("minLength", 0):
        yield f"{at}: needs at least {schema['minLength']} characters"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        yield f"{at}: allows at most {schema['maxLength']} characters"
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            if re.search(pattern, value) is None:
                yield f"{at}: must match {pattern!r}"
        except re.error:
            pass  # a pattern Python cannot read is left to the tool


def _number(value: float, schema: dict[str, Any], at: str) -> Iterator[str]:
    low, high = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if _number_like(low) and value < low:
        yield f"{at}: must be >= {low}"
    if _number_like(high) and value > high:
        yield f"{at}: must be <= {high}"
    if _number_like(above) and value <= above:
        yield f"{at}: must be > {above}"
    if _number_like(below) and value >= below:
        yield f"{at}: must be < {below}"
    step = schema.get("multipleOf")
    if _number_like(step) and step > 0 and (value / step) % 1:
        yield f"{at}: must be a multiple of {step}"


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or (_number_like(a) and _number_like(b) and a == b)


def _number_like(value: Any) -> TypeGuard[float]:
    return type(value) in (int, float)


def _kind(value: Any) -> str:
    for name, test in _TYPES.items():
        if name not in ("integer", "number") and test(value):
            return name
    return "number" if _number_like(value) else type(value).__name__
