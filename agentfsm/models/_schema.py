"""JSON Schemas as OpenAI's strict mode (Structured Outputs) accepts them.

Strict mode makes the server constrain the model's output to the schema, so tool arguments
and structured output always parse. It accepts a subset of JSON Schema: every object lists
all its properties as required and forbids others, and some keywords are not allowed. A
schema that fits is sent strict (with ``additionalProperties: false`` added where pydantic
left it out, which changes nothing for its validators); one that does not, for example a tool
argument with a default, is sent as it is, non-strict, rather than changed in meaning.
"""

from __future__ import annotations

from typing import Any

__all__ = ["strict_schema"]

# Keywords strict mode refuses (OpenAI's Structured Outputs guide, "supported schemas").
_UNSUPPORTED = frozenset(
    {
        "allOf",
        "not",
        "oneOf",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "patternProperties",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
        "minProperties",
        "maxProperties",
        "contains",
        "minContains",
        "maxContains",
        "uniqueItems",
        "minLength",
        "maxLength",
    }
)
# Keywords whose values are schemas, or maps or lists of schemas.
_SCHEMA = ("items", "additionalProperties")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "prefixItems")


class _NotStrict(Exception):
    pass


def strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of ``schema`` that strict mode accepts, or None when strict mode would refuse it
    or change what it means. The root must be an object."""
    if schema.get("type") != "object" or "anyOf" in schema:
        return None
    try:
        strict: dict[str, Any] = _strict(schema)
    except _NotStrict:
        return None
    return strict


def _strict(node: Any) -> Any:
    if not isinstance(node, dict):
        if isinstance(node, list):
            raise _NotStrict  # a schema is an object or a boolean
        return node
    if _UNSUPPORTED.intersection(node):
        raise _NotStrict
    out = dict(node)
    if node.get("type") == "object" or "properties" in node:
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        if extra not in (None, False) or not isinstance(properties, dict):
            raise _NotStrict  # a mapping type, or extra properties allowed
        if not properties and extra is None:
            raise _NotStrict  # an open object (``dict[str, Any]``)
        if set(node.get("required", ())) != set(properties):
            raise _NotStrict  # an optional property
        out["additionalProperties"] = False
    for key in _SCHEMA:
        if isinstance(node.get(key), dict):
            out[key] = _strict(node[key])
    for key in _SCHEMA_MAPS:
        if key in node:
            if not isinstance(node[key], dict):
                raise _NotStrict
            out[key] = {name: _strict(sub) for name, sub in node[key].items()}
    for key in _SCHEMA_LISTS:
        if key in node:
            if not isinstance(node[key], list):
                raise _NotStrict
            out[key] = [_strict(sub) for sub in node[key]]
    return out
