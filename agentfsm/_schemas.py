"""Generated artifacts: the JSON Schema of every persisted type and of the CLI's ``--json``
documents (schemas/), and the status diagram (docs/state-machine.md). ``agentfsm schema
--write`` regenerates them; ``--check`` fails when the files in the repository are stale.

The files must come out byte-identical whichever supported version of msgspec generated
them, so what varies between releases without changing meaning is normalised: descriptions
(taken from docstrings, which releases indent, dedent or strip differently) are reflowed to one
line per paragraph, and unordered lists (``anyOf``, ``oneOf``, ``required``) are sorted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec

from ._cli_json import (
    RunDocument,
    RunHistoryDocument,
    RunListDocument,
    SessionDocument,
    SessionListDocument,
)
from ._codec import SCHEMA_VERSION, wire_type
from ._events import Event
from ._fork import ForkPlan
from ._items import Item
from ._machine import mermaid
from ._outcomes import Outcome
from ._run_events import RunEvent
from .stores._base import WaitingPage

__all__ = [
    "DIAGRAM_BEGIN",
    "DIAGRAM_END",
    "artifacts",
    "check",
    "normalized",
    "reflow",
    "schema_text",
    "write",
]

DIAGRAM_BEGIN = "<!-- BEGIN GENERATED DIAGRAM (agentfsm schema --write) -->"
DIAGRAM_END = "<!-- END GENERATED DIAGRAM -->"


def schema_text(kind: Any, title: str) -> str:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "x-agentfsm-schema-version": SCHEMA_VERSION,
        **normalized(msgspec.json.schema(kind)),
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


_UNORDERED = frozenset({"anyOf", "oneOf", "required"})
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def normalized(schema: Any) -> Any:
    """``schema`` with docstring-derived text reflowed and unordered lists sorted."""
    if isinstance(schema, list):
        return [normalized(value) for value in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description" and isinstance(value, str):
            result[key] = reflow(value)
        elif key in _UNORDERED and isinstance(value, list):
            result[key] = sorted(normalized(value), key=lambda v: json.dumps(v, sort_keys=True))
        else:
            result[key] = normalized(value)
    return result


def reflow(text: str) -> str:
    """Docstring text as paragraphs of single-spaced words, separated by one blank line."""
    paragraphs = (" ".join(p.split()) for p in _PARAGRAPH_BREAK.split(text))
    return "\n\n".join(p for p in paragraphs if p)


def artifacts(root: Path) -> dict[Path, str]:
    """Every generated file under ``root`` (the repository), with its expected content."""
    files = {
        root / "schemas" / "run_state.schema.json": schema_text(wire_type(), "RunState"),
        root / "schemas" / "item.schema.json": schema_text(Item, "Item"),
        root / "schemas" / "event.schema.json": schema_text(Event, "Event"),
        root / "schemas" / "outcome.schema.json": schema_text(Outcome, "Outcome"),
        root / "schemas" / "run_event.schema.json": schema_text(RunEvent, "RunEvent"),
        root / "schemas" / "cli_run.schema.json": schema_text(RunDocument, "RunDocument"),
        root / "schemas" / "cli_run_list.schema.json": schema_text(
            RunListDocument, "RunListDocument"
        ),
        root / "schemas" / "cli_approvals.schema.json": schema_text(WaitingPage, "WaitingPage"),
        root / "schemas" / "cli_fork.schema.json": schema_text(ForkPlan, "ForkPlan"),
        root / "schemas" / "cli_run_history.schema.json": schema_text(
            RunHistoryDocument, "RunHistoryDocument"
        ),
        root / "schemas" / "cli_session_list.schema.json": schema_text(
            SessionListDocument, "SessionListDocument"
        ),
        root / "schemas" / "cli_session.schema.json": schema_text(
            SessionDocument, "SessionDocument"
        ),
    }
    doc = root / "docs" / "state-machine.md"
    if doc.exists():
        files[doc] = _with_diagram(doc.read_text())
    return files


def _with_diagram(text: str) -> str:
    begin, end = text.find(DIAGRAM_BEGIN), text.find(DIAGRAM_END)
    if begin < 0 or end < begin:
        return text
    diagram = "\n".join(line.rstrip() for line in mermaid().strip().splitlines())
    block = f"{DIAGRAM_BEGIN}\n```mermaid\n{diagram}\n```\n"
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
