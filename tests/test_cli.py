"""The CLI for people in the loop and for scripts, run as real processes against a real SQLite
file."""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest

import agentfsm
from agentfsm import idempotency_key
from agentfsm._cli import ExitCode
from agentfsm._cli_json import RunDocument, RunListDocument
from agentfsm._json import digest
from agentfsm._schemas import schema_text
from agentfsm.stores import RunSummary

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


def cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentfsm", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENTFSM_STORE": str(tmp_path / "runs.db"), **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


APP = ["--app", "tests.apps.mailer:agent"]


def shown_digest(tmp_path: Path, run_id: str, call_id: str = "call_1_0") -> str:
    """The digest ``runs show`` prints for a waiting call, as a person would copy it."""
    shown = cli(tmp_path, "runs", "show", run_id).stdout
    line = next(line for line in shown.splitlines() if line.startswith(f"  {call_id}  "))
    return line.split("digest ")[1].split()[0]


def empty_store(tmp_path: Path) -> None:
    """Create the store ``cli`` uses, with no runs in it."""
    import asyncio

    from agentfsm import SQLiteStore

    asyncio.run(SQLiteStore(tmp_path / "runs.db").close())


def test_the_whole_loop_from_the_command_line(tmp_path: Path) -> None:
    started = cli(tmp_path, "run", *APP, "mail ada", "--run-id", "r1")
    assert started.returncode == ExitCode.INTERRUPTED, started.stderr
    assert "status:  interrupted" in started.stdout

    listed = cli(tmp_path, "runs", "list", "--status", "interrupted")
    assert "r1" in listed.stdout
    assert "interrupted" in listed.stdout

    shown = cli(tmp_path, "runs", "show", "r1")
    assert 'call_1_0  send({"body": "hi", "to": "ada@example.com"})' in shown.stdout

    exported = cli(tmp_path, "runs", "export", "r1")
    assert json.loads(exported.stdout)["status"] == "interrupted"

    edited = json.dumps({"to": "ada@example.com", "body": "hello!"})
    seen = shown_digest(tmp_path, "r1")
    approved = cli(
        tmp_path,
        "approve",
        "r1",
        "call_1_0",
        "--digest",
        seen,
        "--arguments",
        edited,
        "--as",
        "ada",
    )
    assert approved.returncode == 0, approved.stderr
    assert "approved with edits call_1_0 of run r1, as ada" in approved.stdout

    resumed = cli(tmp_path, "resume", "r1", *APP)
    assert resumed.returncode == 0, resumed.stderr
    assert "status:  completed" in resumed.stdout
    assert '"sent"' in resumed.stdout
    assert "sent to ada@example.com" in resumed.stdout


def test_reject_then_input_then_resume(tmp_path: Path) -> None:
    assert cli(tmp_path, "run", *APP, "go", "--run-id", "r2").returncode == ExitCode.INTERRUPTED
    seen = shown_digest(tmp_path, "r2")
    rejected = cli(tmp_path, "reject", "r2", "call_1_0", "--digest", seen, "--message", "not today")
    assert rejected.returncode == 0, rejected.stderr
    added = cli(tmp_path, "input", "r2", "and say hi from me")
    assert added.returncode == 0, added.stderr
    done = cli(tmp_path, "resume", "r2", *APP)
    assert "not today" in done.stdout
    assert "user: and say hi from me" in done.stdout


def test_nothing_is_approved_that_the_person_was_not_shown(tmp_path: Path) -> None:
    # No "approve everything": a call id, and the digest of the arguments shown.
    assert cli(tmp_path, "run", *APP, "go", "--run-id", "r3").returncode == ExitCode.INTERRUPTED
    everything = cli(tmp_path, "approve", "r3")
    assert everything.returncode == ExitCode.USAGE
    unbound = cli(tmp_path, "approve", "r3", "call_1_0")
    assert unbound.returncode == ExitCode.ERROR
    assert "pass --digest" in unbound.stderr
    stale = cli(tmp_path, "approve", "r3", "call_1_0", "--digest", "0123456789abcdef")
    assert stale.returncode == ExitCode.ERROR
    assert "now waits with other arguments than the ones this decision was made on" in (
        stale.stderr
    )
    assert '{"body":"hi","to":"ada@example.com"}' in stale.stderr
    assert (
        "--digest needs at least 12"
        in cli(tmp_path, "approve", "r3", "call_1_0", "--digest", "abc").stderr
    )
    shown = cli(tmp_path, "runs", "show", "r3").stdout
    assert "posted, not applied yet" not in shown


def test_the_first_decision_wins_and_everyone_is_told_the_truth(tmp_path: Path) -> None:
    assert cli(tmp_path, "run", *APP, "go", "--run-id", "r5").returncode == ExitCode.INTERRUPTED
    seen = shown_digest(tmp_path, "r5")
    first = cli(tmp_path, "approve", "r5", "call_1_0", "--digest", seen, "--as", "ada")
    assert first.returncode == ExitCode.OK, first.stderr
    again = cli(tmp_path, "approve", "r5", "call_1_0", "--digest", seen, "--as", "ada")
    assert again.returncode == ExitCode.OK
    assert "was already approved by ada: no change" in again.stdout
    other = cli(tmp_path, "reject", "r5", "call_1_0", "--digest", seen, "--as", "bob")
    assert other.returncode == ExitCode.ERROR
    assert "already decided: approved by ada at " in other.stderr
    shown = cli(tmp_path, "runs", "show", "r5")
    assert "posted, not applied yet:\n  call_1_0  approved by ada at " in shown.stdout
    listed = cli(tmp_path, "runs", "list", "--json")
    (summary,) = one_document(listed, RunListDocument).runs
    assert summary.posted == 1
    assert cli(tmp_path, "resume", "r5", *APP).returncode == ExitCode.OK
    late = cli(tmp_path, "reject", "r5", "call_1_0", "--digest", seen, "--as", "carol")
    assert late.returncode == ExitCode.ERROR
    assert "completed" in late.stderr
    document = one_document(cli(tmp_path, "runs", "show", "r5", "--json"), RunDocument)
    (record,) = document.decisions
    assert (record.outcome, record.decision.by, record.decision.kind) == (
        "applied",
        "ada",
        "approve",
    )
    assert record.shown == {"to": "ada@example.com", "body": "hi"}
    assert document.posted == ()


def test_run_and_resume_exit_with_where_the_run_stopped_and_show_exits_0(tmp_path: Path) -> None:
    failed = cli(tmp_path, "run", *APP, "go", "--run-id", "f1", "--max-turns", "1")
    assert failed.returncode == ExitCode.FAILED == 4, failed.stderr
    assert "status:  failed" in failed.stdout
    assert cli(tmp_path, "runs", "show", "f1").returncode == ExitCode.OK
    assert cli(tmp_path, "run", *APP, "go", "--run-id", "c1").returncode == 3
    assert cli(tmp_path, "cancel", "c1").returncode == 0
    cancelled = cli(tmp_path, "resume", "c1", *APP)
    assert cancelled.returncode == ExitCode.CANCELLED == 5, cancelled.stderr
    assert cli(tmp_path, "runs", "show", "c1").returncode == ExitCode.OK
    assert cli(tmp_path, "run", "--no-such-option").returncode == ExitCode.USAGE == 2


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(tmp_path: Path) -> None:
    import asyncio

    from agentfsm import Runner, SQLiteStore, UserMessage, new_run
    from tests.apps.mailer import agent

    # Far more output than a pipe holds, so the command is still writing when it closes.
    async def fill() -> None:
        store = SQLiteStore(tmp_path / "runs.db")
        for n in range(2000):
            await store.create(new_run(agent(), "go", run_id=f"run-{n:04}-{'x' * 200}"))
        lines = [UserMessage(content=f"line {n} {'y' * 100}") for n in range(20_000)]
        await Runner(store=store).run(agent(), lines, run_id="long")
        await store.close()

    asyncio.run(fill())
    for args, first in (
        (["runs", "show", "long"], "run long\n"),
        (["runs", "list", "--limit", "5000"], "RUN "),
    ):
        with (tmp_path / "stderr.txt").open("w+") as stderr:
            reader = subprocess.Popen(
                [sys.executable, "-m", "agentfsm", *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, "AGENTFSM_STORE": str(tmp_path / "runs.db")},
                text=True,
            )
            assert reader.stdout is not None
            assert reader.stdout.readline().startswith(first)
            reader.stdout.close()
            assert reader.wait(timeout=60) == ExitCode.BROKEN_PIPE == 141
            stderr.seek(0)
            assert stderr.read() == ""


def _commands(
    parser: argparse.ArgumentParser, name: str = "agentfsm"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _commands(subparser, f"{name} {sub}")


def test_every_command_has_a_description_and_every_option_help_with_its_default() -> None:
    from agentfsm._cli_parser import build_parser

    parser = build_parser(collections.defaultdict(lambda: lambda args: 0))
    commands = dict(_commands(parser))
    assert {"agentfsm run", "agentfsm runs list", "agentfsm worker"} <= set(commands)
    for name, command in commands.items():
        assert command.description, f"{name} has no description"
        for action in command._actions:
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            # Hidden on purpose: the demo's own second process passes it.
            if action.help == argparse.SUPPRESS:
                assert what == "agentfsm demo --resume-file"
                continue
            assert action.help, f"{what} has no help"
            if action.nargs != 0 and not isinstance(action, argparse._SubParsersAction):
                # Every value is checked where it is parsed: a number's range, text's UTF-8.
                assert action.type is not None, f"{what} takes any value"
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                shown = action.help % {**vars(action), "prog": command.prog}  # as argparse does
                assert f"(default: {action.default}" in shown, f"{what} hides its default"


def test_version_prints_the_package_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agentfsm", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, f"agentfsm {agentfsm.__version__}\n")


def test_the_exit_statuses_are_documented_as_defined() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    for code in ExitCode:
        assert f"| {code.value} | `{code.name}` |" in text, code


def one_document(done: subprocess.CompletedProcess[str], kind: type[T]) -> T:
    """The one JSON document ``done`` printed, decoded strictly as ``kind``."""
    assert done.stdout.endswith("\n")
    assert done.stdout.count("\n") == 1, done.stdout
    assert done.stderr == ""
    return msgspec.json.decode(done.stdout, type=kind, strict=True)


@pytest.mark.parametrize(
    ("kind", "name"),
    [(RunDocument, "cli_run.schema.json"), (RunListDocument, "cli_run_list.schema.json")],
)
def test_the_json_documents_schemas_are_the_ones_in_schemas(kind: type, name: str) -> None:
    assert (ROOT / "schemas" / name).read_text() == schema_text(kind, kind.__name__)


def test_json_output_is_one_document_a_script_can_follow_a_run_with(tmp_path: Path) -> None:
    started = cli(tmp_path, "run", *APP, "mail ada", "--run-id", "j1", "--json")
    assert started.returncode == ExitCode.INTERRUPTED
    run = one_document(started, RunDocument)
    assert (run.run_id, run.status, run.turn, run.max_turns) == ("j1", "interrupted", 2, 10)
    assert (run.final_output, run.error) == (None, None)
    (call,) = run.waiting
    assert (call.call_id, call.tool, call.reason) == ("call_1_0", "send", "approval")
    assert call.arguments == {"to": "ada@example.com", "body": "hi"}
    assert call.digest == digest(call.arguments)
    assert call.idempotency_key == idempotency_key("j1", run.turn, "call_1_0")
    assert [type(item).__name__ for item in run.input] == ["UserMessage"]
    assert [type(item).__name__ for item in run.items] == [
        "ToolCallItem",
        "ToolResultItem",
        "ToolCallItem",
    ]
    assert json.loads(started.stdout)["items"][0]["type"] == "tool_call"

    shown = cli(tmp_path, "runs", "show", "j1", "--json")
    assert shown.returncode == ExitCode.OK
    assert one_document(shown, RunDocument) == run

    listed = cli(tmp_path, "runs", "list", "--json")
    assert listed.returncode == ExitCode.OK
    (summary,) = one_document(listed, RunListDocument).runs
    assert (summary.run_id, summary.status, summary.waiting) == ("j1", "interrupted", 1)
    assert set(json.loads(listed.stdout)["runs"][0]) == set(RunSummary.__struct_fields__)

    (request,) = run.waiting
    approved = cli(tmp_path, "approve", "j1", request.call_id, "--digest", request.digest)
    assert approved.returncode == ExitCode.OK, approved.stderr
    resumed = cli(tmp_path, "resume", "j1", *APP, "--json")
    assert resumed.returncode == ExitCode.OK
    done = one_document(resumed, RunDocument)
    assert (done.status, done.final_output, done.waiting) == ("completed", "sent", ())
    assert done.usage.requests == 3


def test_json_documents_of_failed_and_cancelled_runs_say_why(tmp_path: Path) -> None:
    failed = cli(tmp_path, "run", *APP, "go", "--run-id", "f1", "--max-turns", "1", "--json")
    assert failed.returncode == ExitCode.FAILED
    error = one_document(failed, RunDocument).error
    assert error is not None
    assert error.kind == "max_turns_exceeded"
    assert cli(tmp_path, "run", *APP, "go", "--run-id", "c1", "--json").returncode == 3
    assert cli(tmp_path, "cancel", "c1", "--reason", "not needed").returncode == 0
    cancelled = cli(tmp_path, "resume", "c1", *APP, "--json")
    assert cancelled.returncode == ExitCode.CANCELLED
    run = one_document(cancelled, RunDocument)
    assert run.status == "cancelled"
    assert run.error is not None
    assert (run.error.kind, run.error.message) == ("cancelled", "not needed")


def test_with_json_an_error_is_still_one_line_on_stderr_and_nothing_on_stdout(
    tmp_path: Path,
) -> None:
    empty_store(tmp_path)
    done = cli(tmp_path, "runs", "show", "nope", "--json")
    assert done.returncode == ExitCode.ERROR
    assert done.stdout == ""
    assert done.stderr == "agentfsm: error: no run 'nope' in the store\n"
    listed = cli(tmp_path, "runs", "list", "--json")
    assert one_document(listed, RunListDocument).runs == ()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "show", "nope"], "no run 'nope'"),
        (["approve", "nope", "c1", "--digest", "0" * 16], "no run 'nope'"),
        (["resume", "nope", *APP], "no run 'nope'"),
        (["resume", "x", "--app", "no.such.module:agent"], "cannot load the app"),
        (["resume", "x", "--app", "tests.apps.mailer"], "module:attribute"),
        (["runs", "list", "--store", "redis://x"], "unknown store"),
        (["runs", "list", "--store", "sqlite:runs.db"], "malformed store 'sqlite:runs.db'"),
        (["run", *APP, "hi", "--store", "sqlite:runs.db"], "malformed store"),
        (["worker", *APP, "--store", "postgresql:test"], "malformed store"),
        (["runs", "list", "--status", "sleeping"], "sleeping"),
        (["runs", "list", "--limit", "many"], "--limit: must be a whole number of at least 1"),
        (["runs", "list", "--limit", "-1"], "--limit: must be a whole number of at least 1"),
        (["runs", "list", "--limit", "0"], "not '0'"),
        (["approvals", "--limit", "1001"], "--limit: must be a whole number from 1 to 1000"),
        (["run", *APP, "hi", "--max-turns", "-1"], "--max-turns: must be a whole number of at"),
        (["resume", "x", *APP, "--max-turns", "1.5"], "not '1.5'"),
        (["worker", *APP, "--lease", "0"], "--lease: must be a positive number of seconds"),
        (["worker", *APP, "--lease", "-5"], "--lease: must be a positive number of seconds"),
        (["worker", *APP, "--lease", "nan"], "not 'nan'"),
        (["worker", *APP, "--poll", "0"], "--poll: must be a positive number of seconds"),
        (["worker", *APP, "--poll", "inf"], "not 'inf'"),
        (["runs", "list", "--store-wait", "-1"], "--store-wait: must be a number of seconds of 0"),
        (["approve", "r1", "c1", "--store-wait", "soon"], "--store-wait: must be a number of"),
        (["worker", *APP, "--store-wait", "inf"], "not 'inf'"),
        # Bytes that are not UTF-8 reach Python as lone surrogates (here: the byte 0xff).
        (["run", *APP, "hi\udcff"], "argument input: not valid UTF-8 text: b'hi\\xff'"),
        (["run", *APP, "hi", "--run-id", "\udcff"], "--run-id: not valid UTF-8"),
        (["run", *APP, "hi", "--context", '"\udcff"'], "--context: not valid UTF-8"),
        (["input", "r1", "\udcff"], "argument text: not valid UTF-8"),
        (["cancel", "r1", "--reason", "\udcff"], "--reason: not valid UTF-8"),
        (["reject", "r1", "c1", "--message", "\udcff"], "--message: not valid UTF-8"),
        (["approve", "r1", "c1", "--as", "\udcff"], "--as: not valid UTF-8"),
        (["runs", "show", "\udcff"], "argument run_id: not valid UTF-8"),
        (["runs", "list", "--store", "\udcff.db"], "--store: not valid UTF-8"),
        (["run", "--app", "\udcff:agent", "hi"], "--app: not valid UTF-8"),
        (["run", *APP, "hi", "--context", "[" * 30000 + "]" * 30000], "nested too deeply"),
        (["run", *APP, "hi", "--context", "{nope"], "--context is not valid JSON"),
        (["run", *APP], "required: input (see `agentfsm run --help`)"),
        (["rnu"], "invalid choice: 'rnu'"),
    ],
)
def test_bad_input_gives_one_clear_line_and_a_non_zero_exit(
    tmp_path: Path, args: list[str], message: str
) -> None:
    empty_store(tmp_path)
    done = cli(tmp_path, *args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert message in done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("agentfsm: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]
    assert not (ROOT / "sqlite:runs.db").exists()


@pytest.mark.parametrize(
    "args", [["runs", "list"], ["runs", "show", "r1"], ["runs", "export", "r1"]]
)
def test_commands_that_only_read_never_create_a_store(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "missing.db"
    done = cli(tmp_path, *args, "--store", str(missing))
    assert done.returncode == 1
    assert done.stderr == f"agentfsm: error: the SQLite store {str(missing)!r} does not exist\n"
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_decisions_on_calls_that_are_not_waiting_and_bad_arguments_are_refused(
    tmp_path: Path,
) -> None:
    assert cli(tmp_path, "run", *APP, "go", "--run-id", "r4").returncode == ExitCode.INTERRUPTED
    seen = shown_digest(tmp_path, "r4")
    approve = ["approve", "r4", "call_1_0", "--digest", seen]
    for args, message in (
        (["approve", "r4", "call_7_7", "--digest", seen], "no call 'call_7_7' awaiting"),
        ([*approve, "--arguments", "{nope"], "not valid JSON"),
        ([*approve, "--arguments", "[1]"], "must be a JSON object, not an array"),
        ([*approve, "--arguments", '{"to": 5, "body": "x"}'], "$.to: expected string"),
        ([*approve, "--arguments", '{"to": "a"}'], "$.body: required"),
        ([*approve, "--arguments", "[" * 30000 + "]" * 30000], "nested too deeply"),
        (["reject", "r4", "call_1_0", "--digest", seen, "--arguments", "{}"], "unrecognized"),
    ):
        done = cli(tmp_path, *args)
        assert done.returncode in (ExitCode.ERROR, ExitCode.USAGE), done
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1
    # Nothing bad reached the run: a plain approval still works.
    assert cli(tmp_path, *approve).returncode == 0
    assert cli(tmp_path, "resume", "r4", *APP).returncode == 0
    late = cli(tmp_path, "cancel", "r4")
    assert late.returncode == 1
    assert "completed" in late.stderr


def test_hostile_text_in_arguments_is_carried_as_data(tmp_path: Path) -> None:
    assert cli(tmp_path, "run", *APP, "go", "--run-id", "h1").returncode == ExitCode.INTERRUPTED
    seen = shown_digest(tmp_path, "h1")
    hostile = json.dumps({"to": "<script>alert(1)</script>", "body": "'; DROP TABLE runs; --"})
    done = cli(tmp_path, "approve", "h1", "call_1_0", "--digest", seen, "--arguments", hostile)
    assert done.returncode == 0, done.stderr
    resumed = cli(tmp_path, "resume", "h1", *APP, "--json")
    assert one_document(resumed, RunDocument).decisions[0].decision.arguments == json.loads(hostile)


def test_a_worker_runs_everything_runnable_then_exits_when_idle(tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    env = {"MAILER_EFFECTS": str(effects)}
    for n in range(3):
        assert (
            cli(tmp_path, "run", *APP, "go", "--run-id", f"w{n}").returncode == ExitCode.INTERRUPTED
        )
    for n in range(3):
        seen = shown_digest(tmp_path, f"w{n}")
        assert cli(tmp_path, "approve", f"w{n}", "call_1_0", "--digest", seen).returncode == 0
    worked = cli(tmp_path, "worker", *APP, "--until-idle", env=env)
    assert worked.returncode == 0, worked.stderr
    assert "after advancing 3 runs" in worked.stdout
    listed = cli(tmp_path, "runs", "list", "--status", "completed")
    assert all(f"w{n}" in listed.stdout for n in range(3))
    assert len(effects.read_text().split()) == 3


def test_a_call_in_doubt_is_shown_with_its_key_and_decided_by_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from agentfsm import Runner, RunStatus, SQLiteStore
    from agentfsm._cli import main
    from tests.apps.mailer import agent

    saved = []
    paused = Runner(on_step=saved.append).run_sync(agent(), "go", run_id="d1")
    Runner(on_step=saved.append).run_sync(agent(), paused.state.approve("call_1_0"))
    crashed = next(s for s in saved if s.status is RunStatus.TOOLS and s.turn == 2)
    store = SQLiteStore(tmp_path / "runs.db")

    async def crash() -> float:
        """A worker saves the run up to its tools starting, and dies holding its lease."""
        states = [s for s in saved if s.version <= crashed.version]
        await store.create(states[0])
        lease = await store.claim("host:1234:gone", lease_seconds=0.05, run_id="d1")
        assert lease is not None
        for previous, state in itertools.pairwise(states):
            await store.save(state, expected_version=previous.version, lease=lease)
        await store.close()
        await asyncio.sleep(0.1)
        return lease.expires_at

    until = asyncio.run(crash())
    where = ["--store", str(tmp_path / "runs.db")]
    assert main(["resume", "d1", *APP, *where]) == ExitCode.INTERRUPTED
    capsys.readouterr()
    assert main(["runs", "show", "d1", *where]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    key = crashed.ledger[0].idempotency_key
    assert "in doubt: it started and its result was never recorded" in shown
    assert f"look for its idempotency key {key} first" in shown
    ended = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    assert f"Worker host:1234:gone started it, and its lease ran until {ended}" in shown
    assert "make sure it is gone, or wait past the tool's timeout" in shown
    seen = shown.split("digest ")[1].split()[0]
    assert main(["approve", "d1", "call_1_0", "--digest", seen, *where]) == 0
    assert "approved call_1_0" in capsys.readouterr().out


def test_approvals_lists_waiting_calls_across_runs_in_pages(tmp_path: Path) -> None:
    for n in range(3):
        assert cli(tmp_path, "run", *APP, "go", "--run-id", f"q{n}").returncode == 3
    table = cli(tmp_path, "approvals")
    assert table.returncode == ExitCode.OK, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "RUN", "CALL", "TOOL", "AGENT", "SINCE", "DIGEST", "ARGUMENTS", "POSTED"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["q0", "q1", "q2"]
    seen = shown_digest(tmp_path, "q1")
    assert seen in lines[2]
    assert (
        cli(tmp_path, "approve", "q1", "call_1_0", "--digest", seen, "--as", "ada").returncode == 0
    )
    assert "approved by ada at " in cli(tmp_path, "approvals").stdout
    first = cli(tmp_path, "approvals", "--limit", "2", "--json")
    page = one_document(first, agentfsm.stores.WaitingPage)
    assert [c.run_id for c in page.calls] == ["q0", "q1"]
    assert page.calls[1].posted[0].by == "ada"
    assert page.calls[0].request.digest == digest(page.calls[0].request.arguments)
    assert page.next is not None
    rest = one_document(
        cli(tmp_path, "approvals", "--limit", "2", "--after", page.next, "--json"),
        agentfsm.stores.WaitingPage,
    )
    assert ([c.run_id for c in rest.calls], rest.next) == (["q2"], None)
    assert cli(tmp_path, "approvals", "--tool", "lookup").stdout == "no calls waiting\n"
    assert "q0" in cli(tmp_path, "approvals", "--agent", "mailer").stdout
    schema = json.loads((ROOT / "schemas" / "cli_approvals.schema.json").read_text())
    assert schema == json.loads(schema_text(agentfsm.stores.WaitingPage, "WaitingPage"))
    for bad, code, message in (
        (["--limit", "0"], ExitCode.USAGE, "--limit: must be a whole number from 1 to 1000"),
        (["--after", "x"], ExitCode.ERROR, "not a cursor"),
    ):
        refused = cli(tmp_path, "approvals", *bad)
        assert refused.returncode == code
        assert message in refused.stderr
    missing = cli(tmp_path, "approvals", "--store", str(tmp_path / "nope.db"))
    assert missing.returncode == ExitCode.ERROR
    assert not (tmp_path / "nope.db").exists()


def test_at_a_terminal_the_call_is_shown_and_the_person_asked(tmp_path: Path) -> None:
    import getpass
    import pty
    import select

    assert cli(tmp_path, "run", *APP, "go", "--run-id", "t1").returncode == ExitCode.INTERRUPTED

    def at_terminal(answer: bytes) -> tuple[int, str]:
        main_fd, terminal = pty.openpty()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "agentfsm", "approve", "t1", "call_1_0"],
                stdin=terminal,
                stdout=terminal,
                stderr=terminal,
                cwd=ROOT,
                env={**os.environ, "AGENTFSM_STORE": str(tmp_path / "runs.db")},
            )
            os.close(terminal)  # the child's now: reading ends when it exits
            seen = b""
            while b"[y/N]" not in seen:  # the question comes after the call is shown
                ready, _, _ = select.select([main_fd], [], [], 30)
                assert ready, f"no question within 30 s: {seen!r}"
                seen += os.read(main_fd, 4096)
            os.write(main_fd, answer)
            code = process.wait(timeout=60)
            try:
                while chunk := os.read(main_fd, 4096):
                    seen += chunk
            except OSError:  # the terminal closed with the process
                pass
            return code, seen.decode(errors="replace")
        finally:
            os.close(main_fd)

    code, screen = at_terminal(b"n\n")
    assert code == ExitCode.ERROR
    assert '"to": "ada@example.com"' in screen and "nothing decided" in screen
    code, screen = at_terminal(b"y\n")
    assert code == ExitCode.OK, screen
    assert f"approved call_1_0 of run t1, as {getpass.getuser()}" in screen
    shown = cli(tmp_path, "runs", "show", "t1").stdout
    assert f"call_1_0  approved by {getpass.getuser()} at " in shown


def test_runs_show_lists_a_cancellation_posted_and_not_applied(tmp_path: Path) -> None:
    assert cli(tmp_path, "run", *APP, "go", "--run-id", "k1").returncode == ExitCode.INTERRUPTED
    assert cli(tmp_path, "cancel", "k1", "--reason", "not needed").returncode == 0
    shown = cli(tmp_path, "runs", "show", "k1")
    assert "posted, not applied yet:\n  cancel: not needed" in shown.stdout
    document = one_document(cli(tmp_path, "runs", "show", "k1", "--json"), RunDocument)
    assert document.cancelling == "not needed"


def test_run_prints_its_events_as_json_lines_with_events(tmp_path: Path) -> None:
    done = cli(tmp_path, "run", *APP, "mail ada", "--run-id", "ev1", "--events", "--json")
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    *lines, last = done.stdout.splitlines()
    events = [msgspec.json.decode(line, type=agentfsm.RunEvent) for line in lines]
    assert isinstance(events[0], agentfsm.RunStarted)
    assert any(isinstance(e, agentfsm.ApprovalRequested) for e in events)
    assert [e.position for e in events] == sorted(e.position for e in events)
    assert json.loads(last)["status"] == "interrupted"


def test_pause_and_unpause_steer_a_run_that_workers_drive(tmp_path: Path) -> None:
    from agentfsm import SQLiteStore, new_run
    from tests.apps.mailer import agent

    store = SQLiteStore(tmp_path / "runs.db")
    asyncio.run(store.create(new_run(agent(), "mail ada", run_id="pw")))
    asyncio.run(store.close())
    paused = cli(tmp_path, "pause", "pw", "--reason", "audit")
    assert paused.returncode == 0, paused.stderr
    assert "asked run pw to pause" in paused.stdout
    assert cli(tmp_path, "worker", *APP, "--until-idle").returncode == 0
    assert "paused" in cli(tmp_path, "runs", "list", "--status", "paused").stdout
    assert cli(tmp_path, "unpause", "pw").returncode == 0
    assert cli(tmp_path, "worker", *APP, "--until-idle").returncode == 0
    shown = cli(tmp_path, "runs", "show", "pw").stdout
    assert "status:  interrupted" in shown  # it went on, to the approval the mailer needs
    assert cli(tmp_path, "pause", "nope").returncode == ExitCode.ERROR


def test_runs_history_lists_every_version_and_show_prints_any_of_them(tmp_path: Path) -> None:
    from agentfsm._cli_json import RunHistoryDocument

    assert cli(tmp_path, "run", *APP, "mail ada", "--run-id", "h1").returncode == (
        ExitCode.INTERRUPTED
    )
    table = cli(tmp_path, "runs", "history", "h1")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "STATUS", "EVENT", "SAVED", "ITEMS"]
    assert lines[1].split()[:3] == ["0", "new", "-"]
    assert lines[2].split()[:3] == ["1", "running", "Started"]
    assert lines[-1].split()[1] == "interrupted"

    document = msgspec.json.decode(
        cli(tmp_path, "runs", "history", "h1", "--json").stdout, type=RunHistoryDocument
    )
    assert document.run_id == "h1"
    assert [v.version for v in document.versions] == list(range(len(document.versions)))
    assert [v.event for v in document.versions][:2] == [None, "Started"]
    schema = json.loads((ROOT / "schemas" / "cli_run_history.schema.json").read_text())
    assert schema["$ref"].endswith("RunHistoryDocument")

    first = msgspec.json.decode(
        cli(tmp_path, "runs", "show", "h1", "--version", "1", "--json").stdout, type=RunDocument
    )
    assert (first.version, first.status, first.items) == (1, "running", ())
    assert "status:  new" in cli(tmp_path, "runs", "show", "h1", "--version", "0").stdout
    missing = cli(tmp_path, "runs", "show", "h1", "--version", "99")
    assert missing.returncode != 0
    assert "no version 99" in missing.stderr
    assert cli(tmp_path, "runs", "history", "nope").returncode != 0
