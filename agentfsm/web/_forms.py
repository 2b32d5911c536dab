"""The form that edits a waiting call's arguments, drawn from the argument schema recorded
with the call (``ApprovalRequest.schema``), and read back into arguments.

Each argument gets the widget its schema calls for: a text field (a text area for long or
multi-line text), a number field, a checkbox, a choice among an ``enum``, or, for anything
else (objects, arrays, unions), a text area holding JSON. The browser checks what HTML
attributes can say (required, bounds, lengths); the server checks everything again against
the schema (``_jsonschema`` through the decision path) before the decision is posted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

__all__ = ["Field", "fields_for", "read_arguments"]

Kind = Literal["text", "textarea", "integer", "number", "boolean", "choice", "json"]

#: The form field that holds the whole arguments object when the call has no usable schema.
WHOLE = "*"


class Field(msgspec.Struct, frozen=True):
    """One argument's widget: ``name`` is the argument (``WHOLE`` for all of them, as one
    JSON object), ``value`` the text shown, ``attributes`` the HTML checks."""

    name: str
    kind: Kind
    label: str
    value: str
    description: str | None = None
    required: bool = False
    checked: bool = False
    options: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    error: str | None = None

    @property
    def input_name(self) -> str:
        return f"arg.{self.name}"


def _properties(schema: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(schema, Mapping) or schema.get("type", "object") != "object":
        return None
    properties = schema.get("properties")
    return dict(properties) if isinstance(properties, Mapping) else None


def _resolve(node: Any, root: Mapping[str, Any]) -> Any:
    for _ in range(16):
        ref = node.get("$ref") if isinstance(node, Mapping) else None
        if not (isinstance(ref, str) and ref.startswith("#/")):
            return node
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        node = target
    return node


def _kind(node: Any, value: Any) -> Kind:
    if not isinstance(node, Mapping):
        return "json"
    enum = node.get("enum")
    kind = node.get("type")
    if isinstance(enum, list) and enum and all(isinstance(o, str) for o in enum):
        return "choice"
    if kind == "string":
        long = isinstance(value, str) and (len(value) > 60 or "\n" in value)
        return "textarea" if long or node.get("maxLength", 0) > 200 else "text"
    if kind in ("integer", "number", "boolean"):
        return kind  # type: ignore[no-any-return]
    return "json"


def _shown(kind: Kind, value: Any, present: bool) -> str:
    if not present:
        return ""
    if kind in ("text", "textarea", "choice") and isinstance(value, str):
        return value
    if kind in ("integer", "number") and type(value) in (int, float):
        return json.dumps(value)
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _attributes(kind: Kind, node: Mapping[str, Any], required: bool) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    if kind in ("integer", "number"):
        found.append(("step", "1" if kind == "integer" else "any"))
        for keyword, attribute in (("minimum", "min"), ("maximum", "max")):
            bound = node.get(keyword)
            if type(bound) in (int, float):
                found.append((attribute, json.dumps(bound)))
    if kind in ("text", "textarea"):
        for keyword, attribute in (("minLength", "minlength"), ("maxLength", "maxlength")):
            bound = node.get(keyword)
            if type(bound) is int and bound >= 0:
                found.append((attribute, str(bound)))
    # An empty text field is "" (a valid string), so only a non-empty minimum makes it
    # required in the browser; a number or JSON field cannot be empty when required.
    if required and (kind in ("integer", "number", "json") or node.get("minLength", 0) >= 1):
        found.append(("required", "required"))
    return tuple(found)


def fields_for(
    schema: Mapping[str, Any] | None,
    arguments: Mapping[str, Any],
    *,
    entered: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
) -> list[Field]:
    """The fields of the form that edits ``arguments`` under ``schema``; ``entered`` (the
    form's own values, when it is drawn again) and ``errors`` (by argument) say what a
    person typed and what was wrong with it."""
    errors = errors or {}
    properties = _properties(schema)
    if properties is None or schema is None:
        value = json.dumps(dict(arguments), indent=2, ensure_ascii=False, sort_keys=True)
        if entered is not None:
            value = entered.get(f"arg.{WHOLE}", value)
        return [
            Field(
                name=WHOLE,
                kind="json",
                label="arguments (a JSON object)",
                value=value,
                required=True,
                attributes=(("required", "required"),),
                error=errors.get(WHOLE),
            )
        ]
    required = set(schema.get("required", ()))
    names = [*properties, *(n for n in arguments if n not in properties)]
    fields = []
    for name in names:
        node = _resolve(properties.get(name, {}), schema)
        present = name in arguments
        kind = _kind(node, arguments.get(name))
        value = _shown(kind, arguments.get(name), present)
        checked = present and arguments[name] is True
        if entered is not None:
            value = entered.get(f"arg.{name}", "")
            checked = value == "true"
        described = node.get("description") if isinstance(node, Mapping) else None
        options = tuple(node["enum"]) if kind == "choice" else ()
        fields.append(
            Field(
                name=name,
                kind=kind,
                label=name,
                value=value,
                description=described if isinstance(described, str) else None,
                required=name in required,
                checked=checked,
                options=options,
                attributes=_attributes(
                    kind, node if isinstance(node, Mapping) else {}, name in required
                ),
                error=errors.get(name),
            )
        )
    return fields


def read_arguments(
    schema: Mapping[str, Any] | None, original: Mapping[str, Any], form: Mapping[str, str]
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The arguments a posted form describes, or None and the problems by argument. Only
    the form's text is read here; whether the arguments fit the schema is the decision
    path's check."""
    errors: dict[str, str] = {}
    result: dict[str, Any] = {}
    for field in fields_for(schema, original):
        text = form.get(field.input_name, "")
        if field.kind == "boolean":
            result[field.name] = text == "true"
            continue
        blank = not text.strip()
        if blank and field.kind != "text" and field.kind != "textarea" and field.kind != "choice":
            if field.required or field.name == WHOLE:
                errors[field.name] = "required"
            continue
        if blank and not field.required and field.name not in original:
            continue  # left empty: the tool's default applies
        try:
            result[field.name] = _parse(field.kind, text)
        except ValueError as exc:
            errors[field.name] = str(exc)
    if WHOLE in result:
        whole = result.pop(WHOLE)
        if not isinstance(whole, dict):
            errors[WHOLE] = "must be a JSON object"
        else:
            result = whole
    return (None, errors) if errors else (result, {})


def _parse(kind: Kind, text: str) -> Any:
    if kind in ("text", "textarea", "choice"):
        return text
    if kind == "integer":
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
    if kind == "number":
        try:
            return int(text.strip())
        except ValueError:
            pass
        try:
            number = float(text.strip())
        except ValueError:
            raise ValueError("must be a number") from None
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        return number
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise ValueError("is nested too deeply") from None
