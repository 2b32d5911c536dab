"""The core imports only the standard library, msgspec, pydantic and transitions; the public
surface is curated."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import agentfsm

PACKAGE = Path(agentfsm.__file__).parent
CORE = [
    "_errors",
    "_items",
    "_events",
    "_outcomes",
    "_machine",
    "_json",
    "_jsonschema",
    "_decisions",
    "_state",
    "_codec",
    "_step",
    "_tools",
    "_guardrails",
    "_agents",
]
THIRD_PARTY_ALLOWED = {"msgspec", "pydantic", "pydantic_core", "transitions"}


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(absolute top-level packages, sibling modules) imported by ``module``."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    absolute: set[str] = set()
    siblings: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                absolute.add(node.module.split(".")[0])
            elif node.level == 1:
                siblings.add((node.module or "").split(".")[0])
    return absolute, siblings


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_only_the_core_and_its_allowed_dependencies(module: str) -> None:
    absolute, siblings = _imports(module)
    foreign = {m for m in absolute if m not in sys.stdlib_module_names} - THIRD_PARTY_ALLOWED
    assert not foreign, f"{module} imports {foreign}"
    assert siblings <= set(CORE), f"{module} imports outer modules {siblings - set(CORE)}"


def test_every_public_name_exists_and_is_listed_once() -> None:
    assert len(agentfsm.__all__) == len(set(agentfsm.__all__))
    for name in agentfsm.__all__:
        assert hasattr(agentfsm, name), name


@pytest.mark.parametrize(
    "module",
    sorted(p.stem for p in PACKAGE.glob("_*.py") if p.stem not in ("__init__", "__main__")),
)
def test_every_private_module_declares_its_exports(module: str) -> None:
    loaded = importlib.import_module(f"agentfsm.{module}")
    assert isinstance(getattr(loaded, "__all__", None), list), module
    for name in loaded.__all__:
        assert hasattr(loaded, name), f"{module}.{name}"


def test_errors_are_all_agentfsm_errors() -> None:
    for name in agentfsm.__all__:
        value = getattr(agentfsm, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, agentfsm.AgentFSMError), name
    assert issubclass(agentfsm.IllegalTransition, agentfsm.AgentFSMError)
    assert issubclass(agentfsm.StateFormatError, agentfsm.AgentFSMError)
