"""The package as an index would publish it: built from the repository's files with warnings
as errors, carrying its metadata, license and typing marker, and an sdist without tests."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from pathlib import Path

import pytest

import agentfsm

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist and a wheel built from the sdist, from a copy of the repository's files."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files belong to the repository")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    )
    source = tmp_path_factory.mktemp("source")
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-W", "error", "-m", "build", "--no-isolation", "--outdir", out, source],
        env={**os.environ, "PYTHONWARNINGS": "error"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "Warning" not in built.stdout + built.stderr, built.stdout + built.stderr
    return out


def _metadata(text: str) -> Message:
    return email.message_from_string(text)


def test_the_sdist_ships_the_package_and_its_license_but_no_tests(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        top = sdist.name.removesuffix(".tar.gz")
        pkg_info = archive.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        metadata = _metadata(pkg_info.read().decode())
    assert {"LICENSE", "README.md", "pyproject.toml", "agentfsm/py.typed"} <= names
    assert not [name for name in names if name.startswith(("tests/", "tests"))]
    assert metadata["License-Expression"] == "MIT"


def test_the_wheel_carries_complete_metadata(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"agentfsm-{agentfsm.__version__}.dist-info"
        metadata = _metadata(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "agentfsm/py.typed" in names
    assert f"{info}/licenses/LICENSE" in names
    # The inbox's script and style ship with it (they are not Python files).
    assert {"agentfsm/web/static/inbox.js", "agentfsm/web/static/inbox.css"} <= names
    assert metadata["Version"] == agentfsm.__version__
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Author"] or metadata["Author-email"]
    assert metadata["Keywords"]
    assert {url.split(",")[0] for url in metadata.get_all("Project-URL", [])} >= {
        "Homepage",
        "Source",
        "Issues",
        "Documentation",
    }
    classifiers = metadata.get_all("Classifier", [])
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    requires = metadata.get_all("Requires-Dist", [])
    assert requires, "the wheel names no dependencies"
    assert not [r for r in requires if "==" in r.split(";")[0]], "a library must not pin its users"
    assert 'psycopg[binary]>=3.1; extra == "postgres"' in requires
    assert 'starlette>=0.40; extra == "web"' in requires
    assert 'hypothesis>=6.131; extra == "testing"' in requires
    assert "agentfsm = agentfsm._cli:main" in entry_points
    # The index page is the README: it must not lean on files of the repository.
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert "pip install agentfsm" in description
    assert "](docs/" not in description


def test_the_readme_links_work_outside_the_repository() -> None:
    # On a package index the README stands alone: links are absolute, and those into this
    # repository name files that exist.
    import re
    import tomllib

    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    links = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    assert links
    assert [link for link in links if not link.startswith("https://")] == []
    for link in links:
        if link.startswith(f"{repository}/blob/main/"):
            assert (ROOT / link.removeprefix(f"{repository}/blob/main/")).is_file(), link


def test_the_scripted_model_demo_and_crash_kit_need_no_hypothesis() -> None:
    """hypothesis comes with the ``testing`` extra: without it, agentfsm.testing still
    imports, and so do ScriptedModel, FakeClock, CrashKit and the demo that uses them."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'hypothesis':\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from agentfsm.testing import CrashKit, FakeClock, ScriptedModel, crash_point\n"
        "import agentfsm._demo\n"
        "assert 'hypothesis' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
