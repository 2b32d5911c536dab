"""Every Python example in README.md and docs/*.md runs.

Each file's ```python blocks run in order in one fresh namespace, so a later block can use
what an earlier one defined. A block fenced as ```python no-run is shown, not run.
"""

from __future__ import annotations

import importlib
import re
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# An opening fence (up to three spaces of indent, three or more backticks or tildes) and its
# info string; the block ends at a closing fence of the same character, at least as long.
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """The ```python blocks of a markdown text: (first line number, code, runnable)."""
    blocks: list[tuple[int, str, bool]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        fence, words = opening["fence"], opening["info"].split()
        start, body = index, []
        while index < len(lines):
            closing = re.match(r"^ {0,3}(`{3,}|~{3,})\s*$", lines[index])
            index += 1
            if closing and closing[1][0] == fence[0] and len(closing[1]) >= len(fence):
                break
            body.append(lines[index - 1])
        if words and words[0] in ("python", "py"):
            blocks.append((start + 1, "\n".join(body) + "\n", "no-run" not in words[1:]))
    return blocks


def test_the_block_finder_sees_fences_and_no_run() -> None:
    text = "\n".join(
        [
            "```python",
            "x = 1",
            "```",
            "````markdown",
            "```python",
            "not a block",
            "```",
            "````",
            "```python no-run",
            "boom()",
            "```",
            "```sh",
            "ls",
            "```",
        ]
    )
    assert python_blocks(text) == [(2, "x = 1\n", True), (10, "boom()\n", False)]


#: Docs whose examples need an optional package, and the module they import.
NEEDS = {"tracing.md": "opentelemetry.sdk.trace", "mcp.md": "mcp"}


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_examples_run(path: Path) -> None:
    if path.name in NEEDS:
        try:
            importlib.import_module(NEEDS[path.name])
        except ImportError as exc:  # make test-oldest: the SDK cannot sit on the floor API
            pytest.skip(f"{path.name} needs {NEEDS[path.name]}: {exc}")
    blocks = python_blocks(path.read_text())
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    name = path.relative_to(ROOT)
    for number, (line, code, runnable) in enumerate(blocks, start=1):
        if not runnable:
            continue
        # Padding puts the code at its own line numbers, so tracebacks point into the file.
        source = "\n" * (line - 1) + code
        try:
            exec(compile(source, str(name), "exec"), namespace)
        except Exception:
            failure = traceback.format_exc()
        else:
            continue
        pytest.fail(
            f"{name}, python block {number} (line {line}) failed:\n{failure}", pytrace=False
        )


def test_every_doc_has_a_runnable_example() -> None:
    assert [
        p.name for p in DOCS if not any(run for _, _, run in python_blocks(p.read_text()))
    ] == []
