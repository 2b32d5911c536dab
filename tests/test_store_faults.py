"""SQLiteStore at its edge: files that are not stores, a full disk, a database that stays
locked, and one store shared by threads and tasks. Every fault is a StoreError that says
what happened, through the API and through the CLI (one line, no traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentfsm import (
    Agent,
    ConflictError,
    Runner,
    RunState,
    RunStatus,
    SQLiteStore,
    StoreError,
    UnknownRunError,
    new_run,
    open_store,
    tool,
)
from agentfsm.testing import ScriptedModel, call, say

ROOT = Path(__file__).resolve().parent.parent


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def adder() -> Agent:
    return Agent("adder", "", ScriptedModel([call("add", a=1, b=2), say("3")]), tools=[add])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentfsm", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "AGENTFSM_STORE"},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("agentfsm: error: "), done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n"), done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


async def _fill(path: Path, runs: int = 30, text: str = "x" * 3000) -> None:
    store = SQLiteStore(path)
    for n in range(runs):
        await store.create(new_run("a", text, run_id=f"r{n}"))
    await store.close()


async def fill_until_full(
    store: SQLiteStore, text: Callable[[], str]
) -> tuple[list[RunState], StoreError]:
    """Create runs until a write fails; the runs committed, and the error."""
    committed: list[RunState] = []
    for n in range(100_000):
        state = new_run("a", text(), run_id=f"r{n}")
        try:
            await store.create(state)
        except StoreError as exc:
            return committed, exc
        committed.append(state)
    raise AssertionError("the store never filled up")


def a_store(path: Path) -> bytes:
    """Bytes of a closed store holding 30 runs (about 45 pages)."""
    asyncio.run(_fill(path))
    return path.read_bytes()


def foreign(path: Path) -> None:
    """Another application's database; it even has a table named like ours."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO customers (name) VALUES ('ada')")


def damage_page_1(path: Path) -> None:
    data = a_store(path)
    path.write_bytes(data[:100] + b"\xff" * 8 + data[108:])  # the schema table's b-tree


# Each maker leaves a file that is not an agentfsm store, and what the error must say.
BAD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty": (lambda p: p.touch(), "the file is empty (0 bytes)"),
    "zeroed": (lambda p: p.write_bytes(bytes(len(a_store(p)))), "only zero bytes"),
    "truncated": (lambda p: p.write_bytes(a_store(p)[: 5 * 4096]), "is truncated"),
    "truncated mid-page": (lambda p: p.write_bytes(a_store(p)[:20_007]), "is truncated"),
    "corrupted": (damage_page_1, "the file is corrupted"),
    "foreign": (foreign, "another application's SQLite database"),
    "text": (lambda p: p.write_text("name,email\nada,ada@example.com\n"), "not a SQLite"),
}


@pytest.fixture(params=sorted(BAD_FILES))
def bad_file(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    make, says = BAD_FILES[request.param]
    path = tmp_path / "runs.db"
    make(path)
    before = path.read_bytes()
    yield path, says
    assert path.read_bytes() == before, "the file was changed"
    assert [p.name for p in tmp_path.iterdir()] == ["runs.db"], "files were left beside it"


# -- files that are not stores ---------------------------------------------------------------


@pytest.mark.parametrize("create", [True, False])
def test_a_file_that_is_not_a_store_is_refused_on_open_and_left_as_it_is(
    bad_file: tuple[Path, str], create: bool
) -> None:
    path, says = bad_file
    with pytest.raises(StoreError, match=r"runs\.db") as caught:
        SQLiteStore(path, create=create)
    assert says in str(caught.value)
    with pytest.raises(StoreError, match=r"runs\.db"):
        open_store(path, create=create)


@pytest.mark.parametrize(
    "command",
    [
        ["runs", "list"],
        ["runs", "show", "r1"],
        ["run", "--app", "tests.apps.mailer:agent", "hi"],
    ],
    ids=["runs list", "runs show", "run"],
)
def test_the_cli_refuses_a_file_that_is_not_a_store_in_one_line(
    bad_file: tuple[Path, str], command: list[str]
) -> None:
    path, says = bad_file
    assert_one_error_line(cli(*command, "--store", str(path)), says)


def test_damage_deeper_in_a_store_is_a_store_error_when_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    data = a_store(path)
    page = 4096
    # Garbage over the transcript's pages; the header and the schema are intact.
    path.write_bytes(data[: 5 * page] + os.urandom(10 * page) + data[15 * page :])

    async def load_all() -> None:
        async with SQLiteStore(path, create=False) as store:
            for n in range(30):
                await store.load(f"r{n}")

    with pytest.raises(StoreError, match="the file is corrupted") as caught:
        asyncio.run(load_all())
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    for n in range(30):
        done = cli("runs", "show", f"r{n}", "--store", str(path))
        if done.returncode:
            assert_one_error_line(done, "the file is corrupted")
            break
    else:
        pytest.fail("no run read the damaged pages")


def test_an_empty_sqlite_database_becomes_a_store_only_when_creating(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("VACUUM")  # a valid database with nothing in it
    assert path.stat().st_size > 0
    with pytest.raises(StoreError, match="it has no agentfsm tables"):
        SQLiteStore(path, create=False)

    async def use() -> list[str]:
        async with SQLiteStore(path) as store:
            await store.create(new_run("a", "go", run_id="r"))
            return [s.run_id for s in await store.list()]

    assert asyncio.run(use()) == ["r"]


def test_a_new_store_is_never_seen_half_made_by_processes_opening_it_together(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    script = (
        "import asyncio, sys\n"
        "from agentfsm import SQLiteStore, new_run\n"
        "async def main():\n"
        "    async with SQLiteStore(sys.argv[1]) as store:\n"
        "        await store.create(new_run('a', 'go', run_id=sys.argv[2]))\n"
        "asyncio.run(main())\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), f"r{n}"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr

    async def ids() -> list[str]:
        async with SQLiteStore(path, create=False) as store:
            return sorted(s.run_id for s in await store.list())

    assert asyncio.run(ids()) == [f"r{n}" for n in range(6)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]


def test_a_store_in_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="nowhere"):
        SQLiteStore(tmp_path / "nowhere" / "runs.db")


# -- errors while in use -----------------------------------------------------------------------


def test_a_full_database_is_a_store_error_and_the_store_keeps_what_it_committed(
    tmp_path: Path,
) -> None:
    # SQLite's page limit fails writes exactly as a full disk does (SQLITE_FULL), and
    # rolls the transaction back itself: a second ROLLBACK used to hide the cause.
    path = tmp_path / "runs.db"

    async def check() -> None:
        store = SQLiteStore(path)
        store._db.execute("PRAGMA max_page_count = 40")
        committed, error = await fill_until_full(store, lambda: "x" * 3000)
        message = str(error)
        assert "the disk is full" in message and "database or disk is full" in message
        assert "rollback" not in message
        assert isinstance(error.__cause__, sqlite3.OperationalError)
        assert len(committed) > 3
        # The store still works: reads, errors of ours, and writes that fit.
        assert [(await store.load(s.run_id)) for s in committed] == committed
        with pytest.raises(ConflictError):
            await store.create(committed[0])
        await store.delete(committed[0].run_id)
        await store.create(committed[0])
        await store.close()
        async with SQLiteStore(path, create=False) as again:
            assert len(await again.list()) == len(committed)

    asyncio.run(check())


def test_a_database_locked_longer_than_the_timeout_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteStore(path)
    assert Runner(store=store).run_sync(adder(), "go", run_id="r").final_output == "3"
    asyncio.run(store.close())
    frozen = sqlite3.connect(path, isolation_level=None)
    frozen.execute("BEGIN IMMEDIATE")  # a process stopped in the middle of a write
    try:

        async def check() -> None:
            async with SQLiteStore(path, timeout=0.2) as store:
                assert (await store.load("r")).status is RunStatus.COMPLETED  # reads go on
                started = time.monotonic()
                with pytest.raises(StoreError, match="the database is locked") as caught:
                    await store.create(new_run("a", "go", run_id="s"))
                assert time.monotonic() - started < 5
                assert "timeout of 0.2 s" in str(caught.value)
                assert isinstance(caught.value.__cause__, sqlite3.OperationalError)

        asyncio.run(check())
    finally:
        frozen.close()


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    async def check() -> None:
        store = SQLiteStore(tmp_path / "runs.db")
        await store.close()
        with pytest.raises(StoreError, match="the store is closed"):
            await store.list()

    asyncio.run(check())


def test_text_sqlite_cannot_hold_is_a_store_error(tmp_path: Path) -> None:
    async def check() -> None:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            with pytest.raises(StoreError, match="text that SQLite cannot hold"):
                await store.load("\ud800")
            with pytest.raises(UnknownRunError):
                await store.load("r")

    asyncio.run(check())


# -- one store, many threads and tasks ---------------------------------------------------------


def test_one_store_shared_by_threads_finishes_every_run(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        for n in range(5):
            try:
                result = Runner(store=store).run_sync(adder(), "go", run_id=f"t{thread}-{n}")
                assert result.final_output == "3"
            except BaseException as exc:  # collected, and the test fails below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    summaries = asyncio.run(store.list())
    assert len(summaries) == 20
    assert {s.status for s in summaries} == {"completed"}
    asyncio.run(store.close())


def test_one_store_shared_by_tasks_finishes_every_run(tmp_path: Path) -> None:
    async def check() -> None:
        async with SQLiteStore(tmp_path / "runs.db") as store:

            async def work(task: int) -> None:
                for n in range(5):
                    result = await Runner(store=store).run(adder(), "go", run_id=f"a{task}-{n}")
                    assert result.final_output == "3"

            await asyncio.gather(*(work(t) for t in range(4)))
            summaries = await store.list()
            assert len(summaries) == 20
            assert {s.status for s in summaries} == {"completed"}

    asyncio.run(check())


# -- a real full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 2 MB tmpfs, mounted for one test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = Path(tempfile.mkdtemp(prefix="agentfsm-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def test_a_full_disk_is_one_clear_error_and_the_last_committed_state_survives(
    small_disk: Path,
) -> None:
    path = small_disk / "runs.db"
    ballast = small_disk / "ballast"
    ballast.write_bytes(bytes(256 * 1024))  # to free once the disk is full

    async def fill() -> list[RunState]:
        async with SQLiteStore(path) as store:
            committed, error = await fill_until_full(store, lambda: os.urandom(8000).hex())
            message = str(error)
            assert "the disk is full" in message, message
            assert "rollback" not in message, message
            assert isinstance(error.__cause__, sqlite3.Error)
            done = cli("run", "--app", "tests.apps.mailer:agent", "hi", "--store", str(path))
            assert_one_error_line(done, "the disk is full")
        return committed

    committed = asyncio.run(fill())
    assert len(committed) > 10
    ballast.unlink()

    async def reopen() -> None:
        async with SQLiteStore(path, create=False) as store:
            assert [await store.load(s.run_id) for s in committed] == committed
            # The command's run was stored whole, or not at all: when its creation still
            # fitted and its first step did not, it waits, resumable, at its last version.
            extra = {s.run_id for s in await store.list()} - {s.run_id for s in committed}
            assert len(extra) <= 1, extra
            for run_id in extra:
                left = await store.load(run_id)
                assert left.starting_agent == "mailer" and not left.status.is_terminal
            await store.create(new_run("a", "go", run_id="after"))

    asyncio.run(reopen())
