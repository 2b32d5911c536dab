"""The core imports only the standard library, msgspec, pydantic and transitions; the public
surface is curated."""

from __future__ import annotations

import ast
import importlib
import subprocess
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
    "_newrun",
    "_settle",
    "_trips",
    "_storable",
    "_tools",
    "_guardrails",
    "_agents",
    "_nested",
    "_fork",
    "_handoffs",
    "_settings",
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


# -- the web inbox: an outer ring that nothing else depends on ------------------------------

WEB_ONLY = {"starlette", "uvicorn"}


def _all_imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Every module ``path`` imports, as dotted names relative to the package (``.web``,
    ``..stores``) or absolute (``starlette.requests``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            dots = "." * node.level
            if node.module:
                found.add(dots + node.module)
            else:
                found.update(dots + alias.name for alias in node.names)
    return found


def _outside_web() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "web" not in p.relative_to(PACKAGE).parts]


@pytest.mark.parametrize("path", _outside_web(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_outside_the_web_package_depends_on_it(path: Path) -> None:
    # The CLI's serve command imports the inbox when it runs, never when the CLI loads.
    imports = _all_imports(path, top_level_only=path.name == "_cli.py")
    web = {m for m in imports if m.lstrip(".").split(".")[0] in WEB_ONLY}
    web |= {m for m in imports if m.startswith(".") and m.lstrip(".").split(".")[0] == "web"}
    web |= {m for m in imports if m.startswith("agentfsm.web")}
    assert not web, f"{path.relative_to(PACKAGE)} imports {web}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "web").glob("*.py")), ids=lambda p: p.name)
def test_the_web_package_uses_the_library_not_the_command_line(path: Path) -> None:
    # _cli_json is shared on purpose: the API answers with the documents `--json` prints.
    imports = _all_imports(path)
    cli = {m for m in imports if m.lstrip(".").split(".")[0] in ("_cli", "_cli_parser", "_demo")}
    assert not cli, f"web/{path.name} imports {cli}"


def test_importing_agentfsm_loads_no_web_framework() -> None:
    code = "import sys, agentfsm, agentfsm.stores; print(sorted(m for m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert not [m for m in WEB_ONLY if f"'{m}'" in loaded]


@pytest.mark.parametrize(
    "module", sorted(p.stem for p in (PACKAGE / "web").glob("_*.py") if p.stem != "__init__")
)
def test_every_web_module_declares_its_exports(module: str) -> None:
    pytest.importorskip("starlette")
    loaded = importlib.import_module(f"agentfsm.web.{module}")
    assert isinstance(getattr(loaded, "__all__", None), list), module
    for name in loaded.__all__:
        assert hasattr(loaded, name), f"web.{module}.{name}"
