"""Generated artifacts: the JSON Schema of every persisted type (schemas/) and the status
diagram (docs/state-machine.md). ``agentfsm schema --write`` regenerates them; ``--check``
fails when the files in the repository are stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from ._codec import SCHEMA_VERSION, wire_type
from ._events import Event
from ._items import Item
from ._machine import mermaid
from ._outcomes import Outcome

__all__ = ["DIAGRAM_BEGIN", "DIAGRAM_END", "artifacts", "check", "schema_text", "write"]

DIAGRAM_BEGIN = "<!-- BEGIN GENERATED DIAGRAM (agentfsm schema --write) -->"
DIAGRAM_END = "<!-- END GENERATED DIAGRAM -->"


def schema_text(kind: Any, title: str) -> str:
    schema: dict[str, Any] = msgspec.json.schema(kind)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "x-agentfsm-schema-version": SCHEMA_VERSION,
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def artifacts(root: Path) -> dict[Path, str]:
    """Every generated file under ``root`` (the repository), with its expected content."""
    files = {
        root / "schemas" / "run_state.schema.json": schema_text(wire_type(), "RunState"),
        root / "schemas" / "item.schema.json": schema_text(Item, "Item"),
        root / "schemas" / "event.schema.json": schema_text(Event, "Event"),
        root / "schemas" / "outcome.schema.json": schema_text(Outcome, "Outcome"),
    }
    doc = root / "docs" / "state-machine.md"
    if doc.exists():
        files[doc] = _with_diagram(doc.read_text())
    return files


def _with_diagram(text: str) -> str:
    begin, end = text.find(DIAGRAM_BEGIN), text.find(DIAGRAM_END)
    if begin < 0 or end < begin:
        return text
    block = f"{DIAGRAM_BEGIN}\n```mermaid\n{mermaid().rstrip()}\n```\n"
    return text[:begin] + block + text[end:]


def write(root: Path) -> list[Path]:
    """Regenerate every artifact; returns the files that changed."""
    changed = []
    for path, content in artifacts(root).items():
        if not path.exists() or path.read_text() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            changed.append(path)
    return changed


def check(root: Path) -> list[Path]:
    """The artifacts that are missing or differ from what the code generates."""
    return [
        path
        for path, content in artifacts(root).items()
        if not path.exists() or path.read_text() != content
    ]
