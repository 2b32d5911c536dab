"""The lock files in requirements/ agree with pyproject.toml, and this environment was built
from them.

Each lock file names the command that wrote it (its second line), so the check knows which
extras and groups of pyproject.toml it must cover. It works offline, from the lock's own
dependency graph (the ``# via`` notes): every requirement of pyproject.toml is pinned at a
version its range allows, and every pin is needed by one of them. A change to pyproject.toml
without `make lock` fails here.
"""

from __future__ import annotations

import copy
import importlib.metadata
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
OLDEST = ROOT / ".venv" / "oldest"

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)(?P<rest>.*)$")
_ROOT_NOTE = re.compile(r"^agentfsm \(pyproject\.toml")


@dataclass
class Pin:
    version: Version
    marker: Marker | None
    hashes: int = 0
    via: set[str] = field(default_factory=set)
    direct: bool = False


@dataclass
class Lock:
    extras: list[str]
    groups: list[str]
    lowest: bool
    pins: dict[str, Pin]


def read_lock(text: str) -> Lock:
    lines = text.splitlines()
    command = shlex.split(lines[1].lstrip("# "))
    if command[:3] != ["uv", "pip", "compile"]:
        raise ValueError(f"the lock does not say which command wrote it: {lines[1]!r}")
    extras = [command[i + 1] for i, word in enumerate(command) if word == "--extra"]
    groups = [command[i + 1] for i, word in enumerate(command) if word == "--group"]
    lowest = "lowest-direct" in command
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in lines[2:]:
        if (match := _PIN.match(line)) is not None:
            rest = match["rest"].rstrip(" \\").strip()
            marker = Marker(rest.lstrip("; ")) if rest.startswith(";") else None
            current = Pin(Version(match["version"]), marker)
            pins[canonicalize_name(match["name"])] = current
            continue
        note = line.strip()
        if current is None or not note:
            continue
        if note.startswith("--hash="):
            current.hashes += 1
        elif note.startswith("#"):
            note = note.lstrip("#").strip().removeprefix("via").strip()
            if _ROOT_NOTE.match(note):
                current.direct = True
            elif note:
                current.via.add(canonicalize_name(note))
    return Lock(extras, groups, lowest, pins)


def group(project: dict[str, Any], name: str) -> list[Requirement]:
    found = []
    for entry in project["dependency-groups"][name]:
        if isinstance(entry, dict):
            found += group(project, entry["include-group"])
        else:
            found.append(Requirement(entry))
    return found


def requirements(project: dict[str, Any], lock: Lock) -> list[Requirement]:
    """What the lock was asked to satisfy: the dependencies, the extras and groups named."""
    found = [Requirement(r) for r in project["project"]["dependencies"]]
    for extra in lock.extras:
        found += [Requirement(r) for r in project["project"]["optional-dependencies"][extra]]
    for name in lock.groups:
        found += group(project, name)
    return found


def disagreements(project: dict[str, Any], lock: Lock) -> list[str]:
    """Every way the lock fails to match pyproject.toml (empty when it matches)."""
    wanted = requirements(project, lock)
    problems = []
    names = set()
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        names.add(name)
        pin = lock.pins.get(name)
        if pin is None:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} does not allow the locked {name}=={pin.version}")
        elif lock.lowest and not _at_floor(requirement, pin.version):
            problems.append(f"{name}=={pin.version} is not the floor of {requirement}")
    for name, pin in lock.pins.items():
        if pin.direct and name not in names:
            problems.append(f"{name} is locked for pyproject.toml, which no longer asks for it")
        if pin.hashes == 0:
            problems.append(f"{name} has no hash")
    needed = set(names)
    while True:
        more = {name for name, pin in lock.pins.items() if pin.via & needed} - needed
        if not more:
            break
        needed |= more
    unneeded = sorted(set(lock.pins) - needed)
    return problems + [f"{name} is locked but nothing needs it" for name in unneeded]


def _at_floor(requirement: Requirement, version: Version) -> bool:
    """Whether ``version`` is the lowest release ``requirement`` allows (``>=3.1`` is met by
    3.1.4 when that is the first 3.1 release published)."""
    floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    if not floors:
        return True
    bound = max(floors)
    return version.release[: len(bound.release)] == bound.release


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock(name: str) -> Lock:
    return read_lock((LOCKS / name).read_text())


@pytest.mark.parametrize("name", ["dev.txt", "demo.txt", "oldest.txt"])
def test_each_lock_agrees_with_pyproject(project: dict[str, Any], name: str) -> None:
    assert disagreements(project, lock(name)) == [], "run `make lock`"


def test_the_checker_sees_a_pyproject_change_that_was_not_locked(project: dict[str, Any]) -> None:
    dev = lock("dev.txt")
    added = copy.deepcopy(project)
    added["project"]["dependencies"].append("rich>=13")
    assert disagreements(added, dev) == ["rich>=13 is not in the lock"]
    narrowed = copy.deepcopy(project)
    narrowed["project"]["dependencies"] = [
        "msgspec>=99" if r.startswith("msgspec") else r for r in project["project"]["dependencies"]
    ]
    assert disagreements(narrowed, dev) == [
        f"msgspec>=99 does not allow the locked msgspec=={dev.pins['msgspec'].version}"
    ]
    removed = copy.deepcopy(project)
    removed["dependency-groups"]["dev"].remove("mypy>=1.11")
    problems = disagreements(removed, dev)
    assert "mypy is locked for pyproject.toml, which no longer asks for it" in problems
    assert "mypy-extensions is locked but nothing needs it" in problems


def test_the_demo_lock_is_the_dev_lock_cut_down(project: dict[str, Any]) -> None:
    dev, demo = lock("dev.txt"), lock("demo.txt")
    assert {name: pin.version for name, pin in demo.pins.items()} == {
        name: dev.pins[name].version for name in demo.pins
    }
    tools = {"pytest", "hypothesis", "ruff", "mypy", "uv", "openai", "build"}
    assert not tools & set(demo.pins), "make demo must not install the test and lint tools"


def test_the_build_backend_is_locked(project: dict[str, Any]) -> None:
    assert project["dependency-groups"]["build"] == project["build-system"]["requires"]


def test_this_environment_was_installed_from_the_lock() -> None:
    dev, oldest = lock("dev.txt"), lock("oldest.txt")
    wrong = []
    for name, pin in dev.pins.items():
        if pin.marker is not None and not pin.marker.evaluate():
            continue
        distribution = importlib.metadata.distribution(name)
        expected = pin.version
        where = Path(str(distribution.locate_file("")))
        if where == OLDEST:  # `make test-oldest` shadows some packages with their floors
            expected = oldest.pins[name].version
        if Version(distribution.version) != expected:
            wrong.append(f"{name} {distribution.version} (locked: {expected})")
    assert wrong == [], "rebuild the environment from the lock: make clean test"
