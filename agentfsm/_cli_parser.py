"""The ``agentfsm`` command line's grammar: its commands, their options and their help.

Every option says what it does and its default; every command has a paragraph of
description (``agentfsm COMMAND --help``). What the commands do is in ``_cli``.

Every value goes through a ``type``: numbers are checked for their range, and text for being
UTF-8, here, so that a bad value is argparse's one-line usage error (exit status 2) before
any command runs. What the text says (JSON, a run id that exists) is the command's to check.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

__all__ = ["DEFAULT_STORE", "Handler", "build_parser"]

DEFAULT_STORE = "agentfsm.db"

#: What a command runs: the parsed arguments in, the exit status out.
Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line, like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        from ._cli import ExitCode

        self.exit(ExitCode.USAGE, f"agentfsm: error: {message} (see `{self.prog} --help`)\n")


if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[_Parser]


def _text(value: str) -> str:
    """``value``, unless it holds bytes that are not UTF-8 (Python hands them on as lone
    surrogates, which no store and no JSON document can hold)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        given = os.fsencode(value)
        shown = repr(given[:40]) + ("..." if len(given) > 40 else "")
        raise argparse.ArgumentTypeError(f"not valid UTF-8 text: {shown}") from None
    return value


def _whole(least: int, most: int | None = None) -> Callable[[str], int]:
    """The type of a whole number from ``least`` (to ``most``)."""
    wanted = f"from {least} to {most}" if most is not None else f"of at least {least}"

    def whole(value: str) -> int:
        try:
            number = int(value)
            if number >= least and (most is None or number <= most):
                return number
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"must be a whole number {wanted}, not {value!r}")

    return whole


def _seconds(value: str) -> float:
    """A positive, finite number of seconds."""
    seconds = _number(value)
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return seconds


def _wait(value: str) -> float:
    """A finite number of seconds, 0 or more."""
    seconds = _number(value)
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds of 0 or more, not {value!r}")
    return seconds


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _age(value: str) -> float:
    """An age, such as 30d, 12h, 90m or 3600s, in seconds."""
    number, unit = value[:-1], value[-1:]
    if unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"must be a number with a unit, s, m, h or d (such as 30d), not {value!r}"
        )
    seconds = _number(number) * _UNITS[unit]
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive age, such as 30d, not {value!r}")
    return seconds


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def build_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """The ``agentfsm`` parser; each command's ``handler`` is taken from ``handlers`` by its
    name (``"runs list"`` for a subcommand of ``runs``)."""
    from . import __version__
    from .stores._base import MAX_PAGE

    parser = _Parser(
        prog="agentfsm",
        description="Run, inspect and steer agentfsm runs. `agentfsm COMMAND --help` tells "
        "more about each command.",
    )
    parser.add_argument("--version", action="version", version=f"agentfsm {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of:"
    )
    store = _Parser(add_help=False)
    store.add_argument(
        "--store",
        type=_text,
        default=os.environ.get("AGENTFSM_STORE", DEFAULT_STORE),
        help="where the runs are: postgresql://..., sqlite:///path or a file path (default: "
        f"%(default)s, which is $AGENTFSM_STORE if set, else {DEFAULT_STORE})",
    )
    store.add_argument(
        "--store-wait",
        type=_wait,
        metavar="SECONDS",
        default=30.0,
        help="how long to keep trying a store that cannot be reached or is too busy (a "
        "restart, a dropped connection, a lock held too long) before giving up, in seconds; "
        "0 gives up at once (default: %(default)s)",
    )
    app = _Parser(add_help=False)
    app.add_argument(
        "--app",
        type=_text,
        required=True,
        metavar="MODULE:ATTR",
        help="the starting agent, as module:attribute (an Agent, or a function returning one)",
    )
    as_json = _Parser(add_help=False)
    as_json.add_argument(
        "--json",
        action="store_true",
        help="print the run as one JSON document (schemas/cli_run.schema.json) instead of text",
    )
    max_turns = _Parser(add_help=False)
    max_turns.add_argument(
        "--events",
        action="store_true",
        help="print the run's events as they happen, one JSON document a line "
        "(schemas/run_event.schema.json), before where it stopped",
    )
    max_turns.add_argument(
        "--max-turns",
        type=_whole(0),
        metavar="N",
        default=None,
        help="how many model turns the run may use in all (default: 10 for a new run; a "
        "resumed run keeps its own)",
    )

    def command(
        where: Commands,
        name: str,
        summary: str,
        description: str,
        *parents: _Parser,
    ) -> _Parser:
        return where.add_parser(name, parents=list(parents), help=summary, description=description)

    demo = command(
        commands,
        "demo",
        "pause a run for approval, approve, resume",
        "The approval demo: a support agent's refund pauses for a human's approval; then "
        "separate processes of this CLI show the run, approve (or reject) the refund and "
        "resume it to the end. Exits 0 when the demo ran as it should.",
    )
    demo.add_argument(
        "--reject", action="store_true", help="reject the refund instead of approving it"
    )
    demo.add_argument(
        "--store",
        type=_text,
        default=DEFAULT_STORE,
        help="the SQLite file where the demo keeps its run (default: %(default)s)",
    )
    demo.add_argument(
        "--state-file",
        type=Path,
        metavar="FILE",
        default=Path("demo-state.json"),
        help="where the paused run's state JSON is written (default: %(default)s)",
    )
    demo.add_argument(
        "--json",
        action="store_true",
        help="use no store: hand the paused state to the second process in the JSON file",
    )
    demo.add_argument("--resume-file", type=Path, help=argparse.SUPPRESS)
    demo.set_defaults(handler=handlers["demo"])

    run = command(
        commands,
        "run",
        "start a run",
        "Start a run of the app's agent on a user message, store it, and advance it until it "
        "completes, fails or waits for a decision; then print where it stopped. The exit "
        "status says which: 0 completed, 3 waiting, 4 failed, 5 cancelled, 6 paused. Ctrl-C "
        "or SIGTERM stops it after its current step, saved (exit 130 or 143); a second one "
        "at once.",
        store,
        app,
        max_turns,
        as_json,
    )
    run.add_argument("input", type=_text, help="the user's message")
    run.add_argument(
        "--run-id",
        type=_text,
        default=None,
        metavar="ID",
        help="the new run's id (default: a random one)",
    )
    run.add_argument(
        "--context",
        type=_text,
        default=None,
        metavar="JSON",
        help="the run's context, as JSON (default: no context)",
    )
    run.add_argument(
        "--session",
        type=_text,
        default=None,
        metavar="ID",
        help="continue this session (conversation thread): the run starts from the "
        "transcript of the session's earlier runs and is stored as its next run; refused "
        "while the session's last run is live or waiting (default: no session)",
    )
    run.set_defaults(handler=handlers["run"])

    sessions = command(
        commands,
        "sessions",
        "list, show or clear sessions (conversation threads)",
        "Read or clear the sessions of a store: conversation threads whose runs each start "
        "from the transcript of the ones before (`agentfsm run --session ID`). A store that "
        "does not exist is an error, never created.",
    )
    action = sessions.add_subparsers(dest="action", required=True, metavar="ACTION", help="one of:")
    listing = command(
        action,
        "list",
        "list sessions, latest first",
        "List the sessions, the one whose last run started latest first: how many runs "
        "each holds, its last run and that run's status (a session whose last run is not "
        "completed, failed or cancelled takes no new run).",
        store,
    )
    listing.add_argument(
        "--limit",
        type=_whole(1),
        default=50,
        metavar="N",
        help="list at most this many sessions (default: %(default)s)",
    )
    listing.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (schemas/cli_session_list.schema.json) instead of a table",
    )
    show = command(
        action,
        "show",
        "a session's runs and its conversation",
        "Show one session: its runs in order with their status, then its transcript (each "
        "run's own input and answers, as the next run is given it before any trimming).",
        store,
    )
    show.add_argument("session", type=_text, help="the session")
    show.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (schemas/cli_session.schema.json) instead of text",
    )
    clear = command(
        action,
        "clear",
        "delete a session's runs",
        "Forget a session: delete its runs (transcripts, history, inboxes), so that its next "
        "run starts a new conversation. Refused while its last run is live or waiting.",
        store,
    )
    clear.add_argument("session", type=_text, help="the session")
    clear.add_argument("--yes", action="store_true", help="yes, delete the session's runs for good")
    for parser_ in (listing, show, clear):
        parser_.set_defaults(handler=handlers["sessions"])

    runs = command(
        commands,
        "runs",
        "list, show or export stored runs, or their history",
        "Read the stored runs: list them, show one (now or at a past version), list one's "
        "versions, or export one's state JSON; or prune their history. A store that does "
        "not exist is an error, never created.",
    )
    what = runs.add_subparsers(dest="what", required=True, metavar="ACTION", help="one of:")
    listing = command(
        what,
        "list",
        "list runs, latest first",
        "List the stored runs, most recently updated first, with their status, current "
        "agent, turn and how many calls wait for a decision.",
        store,
    )
    listing.add_argument(
        "--status",
        type=_text,
        default=None,
        metavar="STATUS",
        help="only runs in this status: new, running, tools, interrupted, completed, failed "
        "or cancelled (default: every status)",
    )
    listing.add_argument(
        "--limit",
        type=_whole(1),
        default=50,
        metavar="N",
        help="list at most this many runs (default: %(default)s)",
    )
    listing.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (schemas/cli_run_list.schema.json) instead of a table",
    )
    listing.set_defaults(handler=handlers["runs list"])
    show = command(
        what,
        "show",
        "status, pending calls, transcript",
        "Show one run: its status, agents and turn, its output or error, the calls waiting "
        "for a decision with their arguments, and its transcript. Exits 0 whatever the "
        "run's status.",
        store,
        as_json,
    )
    show.add_argument("run_id", type=_text, help="the run to show")
    show.add_argument(
        "--version",
        type=_whole(0),
        default=None,
        metavar="K",
        help="show the run as it was saved at version K (see `agentfsm runs history`), "
        "without the messages posted to it since (default: as it is now)",
    )
    show.set_defaults(handler=handlers["runs show"])
    history = command(
        what,
        "history",
        "every kept version of a run",
        "List every kept version of one run, oldest first: the version, the status it had, "
        "the event whose step made it, when it was saved and how many items its transcript "
        "held. `agentfsm runs show RUN --version K` shows one of them whole.",
        store,
    )
    history.add_argument("run_id", type=_text, help="the run")
    history.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (schemas/cli_run_history.schema.json) instead of a table",
    )
    history.set_defaults(handler=handlers["runs history"])
    prune = command(
        what,
        "prune",
        "drop old versions from runs' history, and old runs that ended",
        "Drop old versions from the history of the stored runs (of one run, with --run): "
        "the versions beyond the newest --keep-versions of each run, and the versions saved "
        "more than --older-than ago. A run's current version is always kept, and its "
        "transcript and current state stay whole. With --ended-older-than, delete the runs "
        "that ended (completed, failed or cancelled) and were last saved more than that "
        "ago; runs that are live, waiting or paused always stay. Prints what was dropped.",
        store,
    )
    prune.add_argument(
        "--keep-versions",
        type=_whole(1),
        default=None,
        metavar="N",
        help="keep at most the N newest versions of each run (default: no limit)",
    )
    prune.add_argument(
        "--older-than",
        type=_age,
        default=None,
        metavar="AGE",
        help="drop the versions saved more than AGE ago: a number with a unit, s, m, h or d "
        "(30d, 12h, 90m, 3600s) (default: no limit)",
    )
    prune.add_argument(
        "--ended-older-than",
        type=_age,
        default=None,
        metavar="AGE",
        help="delete the runs that ended more than AGE ago, whole (default: none); at least "
        "one of --keep-versions, --older-than and --ended-older-than is needed",
    )
    prune.add_argument(
        "--run", type=_text, default=None, metavar="RUN", help="only this run (default: every run)"
    )
    prune.set_defaults(handler=handlers["runs prune"])
    export = command(
        what,
        "export",
        "print the run's state JSON",
        "Print the run's whole state as JSON, as RunState.to_json writes it and "
        "RunState.from_json reads it (schemas/run_state.schema.json).",
        store,
    )
    export.add_argument("run_id", type=_text, help="the run to export")
    export.set_defaults(handler=handlers["runs export"])

    approvals = command(
        commands,
        "approvals",
        "list the calls waiting for a decision",
        "List the calls that wait for a decision, across every run, oldest first: run, call, "
        "tool, agent, since when, the digest a decision must name, the arguments, and the "
        "decisions posted on it that the run has not applied yet. Read only.",
        store,
    )
    approvals.add_argument(
        "--tool", type=_text, default=None, help="only calls of this tool (default: any)"
    )
    approvals.add_argument(
        "--agent", type=_text, default=None, help="only calls of this agent (default: any)"
    )
    approvals.add_argument(
        "--limit",
        type=_whole(1, MAX_PAGE),
        default=50,
        metavar="N",
        help="list at most this many calls, 1 to 1000 (default: %(default)s)",
    )
    approvals.add_argument(
        "--after",
        type=_text,
        default=None,
        metavar="CURSOR",
        help="start after this cursor: the `next` of the previous page (default: the oldest)",
    )
    approvals.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (schemas/cli_approvals.schema.json) instead of a table",
    )
    approvals.set_defaults(handler=handlers["approvals"])

    decision = _Parser(add_help=False)
    decision.add_argument(
        "--digest",
        type=_text,
        default=None,
        metavar="HEX",
        help="the digest of the arguments you were shown, as `agentfsm runs show RUN` prints "
        "it (12 hex digits or more); the decision applies only while the call waits with "
        "exactly those arguments. Needed when not asking at a terminal (default: show the "
        "call and ask)",
    )
    decision.add_argument(
        "--as",
        type=_text,
        dest="who",
        default=None,
        metavar="NAME",
        help="who decides, for the run's audit trail (default: your login name)",
    )

    approve = command(
        commands,
        "approve",
        "approve a waiting call",
        "Approve one call that waits for a decision. The decision is bound to the arguments "
        "you were shown: at a terminal the call is shown and you are asked; otherwise pass "
        "--digest. It goes to the run's inbox, checked at once (the call waits with those "
        "arguments, nobody decided first, edited arguments fit the tool's schema); the call "
        "runs when something resumes the run (resume, a worker). A refused decision prints "
        "why and exits 1.",
        store,
        decision,
    )
    approve.add_argument("run_id", type=_text, help="the run whose call to approve")
    approve.add_argument("call_id", type=_text, help="the call to approve")
    approve.add_argument(
        "--always", action="store_true", help="also approve later calls of the same tool"
    )
    approve.add_argument(
        "--arguments",
        type=_text,
        default=None,
        metavar="JSON",
        help="run the call with these arguments instead: a JSON object that fits the tool's "
        "schema (default: the arguments shown)",
    )
    approve.set_defaults(handler=handlers["approve"])

    reject = command(
        commands,
        "reject",
        "reject a waiting call",
        "Reject a call that waits for a decision: it never runs, and the model is told why "
        "instead of getting its result. Bound, checked and posted like approve's decision.",
        store,
        decision,
    )
    reject.add_argument("run_id", type=_text, help="the run whose call to reject")
    reject.add_argument("call_id", type=_text, help="the call to reject")
    reject.add_argument(
        "--message",
        type=_text,
        default=None,
        help="what the model is told (default: a standard message)",
    )
    reject.add_argument(
        "--always", action="store_true", help="also reject later calls of the same tool"
    )
    reject.set_defaults(handler=handlers["reject"])

    cancel = command(
        commands,
        "cancel",
        "cancel a run",
        "Ask a run to cancel. The request goes to the run's inbox; the run stops, as "
        "cancelled, at its next step.",
        store,
    )
    cancel.add_argument("run_id", type=_text, help="the run to cancel")
    cancel.add_argument(
        "--reason",
        type=_text,
        default="cancelled",
        help="why, kept as the run's error (default: %(default)s)",
    )
    cancel.set_defaults(handler=handlers["cancel"])

    pause = command(
        commands,
        "pause",
        "pause a run",
        "Ask a run to pause. The request goes to the run's inbox; the run stops, as paused, "
        "at its next turn (never while its tools run). A run waiting for decisions is "
        "stopped already: the request lapses. 'agentfsm unpause' lets workers go on; "
        "'agentfsm resume' goes on here.",
        store,
    )
    pause.add_argument("run_id", type=_text, help="the run to pause")
    pause.add_argument("--reason", type=_text, default="paused", help="why (default: %(default)s)")
    pause.set_defaults(handler=handlers["pause"])

    unpause = command(
        commands,
        "unpause",
        "let workers go on with a paused run",
        "Let workers go on with a paused run: the request goes to the run's inbox, and the "
        "next worker to take the run up resumes it.",
        store,
    )
    unpause.add_argument("run_id", type=_text, help="the paused run")
    unpause.set_defaults(handler=handlers["unpause"])

    staged = command(
        commands,
        "input",
        "add a user message to a run",
        "Add a user message to a run. It goes to the run's inbox; the model sees it at the "
        "run's next turn.",
        store,
    )
    staged.add_argument("run_id", type=_text, help="the run to add the message to")
    staged.add_argument("text", type=_text, help="the user's message")
    staged.set_defaults(handler=handlers["input"])

    forking = command(
        commands,
        "fork",
        "a new run from a past version of a run",
        "Store a new run forked from RUN as it was at version K (see `agentfsm runs "
        "history`), and print its hazards: the calls that were in flight or waiting for a "
        "decision at version K. Calls committed before K keep their results and never run "
        "again; calls in flight at K are in doubt, as after a crash, and wait for a person "
        "unless their tool is idempotent (which only --app can tell); calls waiting at K "
        "wait. Nothing runs: `agentfsm resume` or a worker goes on with the fork. With "
        "--dry-run, only print what the fork would be.",
        store,
    )
    forking.add_argument("run_id", type=_text, help="the run to fork")
    forking.add_argument(
        "--version",
        type=_whole(0),
        required=True,
        metavar="K",
        help="the version to fork from (see `agentfsm runs history RUN`)",
    )
    forking.add_argument(
        "--new-id",
        type=_text,
        default=None,
        metavar="ID",
        help="the fork's run id (default: a random one)",
    )
    forking.add_argument(
        "--input",
        type=_text,
        default=None,
        metavar="TEXT",
        help="replace the last user message at version K by TEXT; the fork goes back to "
        "when that message arrived (default: keep it)",
    )
    forking.add_argument(
        "--app",
        type=_text,
        default=None,
        metavar="MODULE:ATTR",
        help="the starting agent, as module:attribute, to tell which tools are idempotent "
        "(default: none; then every call in flight at K waits for a person)",
    )
    forking.add_argument(
        "--dry-run", action="store_true", help="store nothing; print what the fork would be"
    )
    forking.add_argument(
        "--json",
        action="store_true",
        help="print the fork's plan as one JSON document (schemas/cli_fork.schema.json)",
    )
    forking.set_defaults(handler=handlers["fork"])

    resume = command(
        commands,
        "resume",
        "continue a stored run",
        "Continue a stored run now, in this process, applying the decisions, cancellation "
        "and input waiting in its inbox, until it completes, fails or waits again; then "
        "print where it stopped. The exit status says which, and signals stop it, as for run.",
        store,
        app,
        max_turns,
        as_json,
    )
    resume.add_argument("run_id", type=_text, help="the run to continue")
    resume.set_defaults(handler=handlers["resume"])

    worker = command(
        commands,
        "worker",
        "run runnable runs",
        "Advance the store's runnable runs of the app's agent (new ones, ones whose "
        "decisions arrived, ones whose worker died), one at a time under a lease, until "
        "stopped with SIGTERM or Ctrl-C, or with --until-idle when none is left.",
        store,
        app,
    )
    worker.add_argument(
        "--lease",
        type=_seconds,
        metavar="SECONDS",
        default=30.0,
        help="how long a claim on a run lasts, in seconds, renewed while it runs "
        "(default: %(default)s)",
    )
    worker.add_argument(
        "--poll",
        type=_seconds,
        metavar="SECONDS",
        default=0.5,
        help="the longest wait, in seconds, between looks for work when there is none; the "
        "store's change notifications wake the worker at once (default: %(default)s)",
    )
    worker.add_argument(
        "--until-idle", action="store_true", help="exit when no runnable run is left"
    )
    worker.set_defaults(handler=handlers["worker"])

    serve = command(
        commands,
        "serve",
        "serve the approval inbox (web page and JSON API)",
        "Serve the approval inbox: a web page where people decide on the calls that wait, "
        "watch runs live and steer them, and the JSON API behind it (/api/openapi.json). "
        "Everyone must authenticate with a token: --tokens FILE or $AGENTFSM_TOKENS, lines "
        "of IDENTITY TOKEN. It listens on the loopback interface unless --host says "
        "otherwise; put it behind an HTTPS reverse proxy to reach it from elsewhere "
        "(docs/inbox.md). Needs the web extra: pip install 'agentfsm[web]'.",
        store,
    )
    serve.add_argument(
        "--app",
        type=_text,
        default=None,
        metavar="MODULE:ATTR",
        help="the starting agent the workers run: with it the inbox shows the tools' "
        "descriptions and can start runs (default: none)",
    )
    serve.add_argument(
        "--host",
        type=_text,
        default="127.0.0.1",
        help="the address to listen on (default: %(default)s, this machine only)",
    )
    serve.add_argument(
        "--port",
        type=_whole(0, 65535),
        default=8000,
        help="the port to listen on; 0 picks a free one (default: %(default)s)",
    )
    serve.add_argument(
        "--tokens",
        type=Path,
        default=None,
        metavar="FILE",
        help="the access tokens: lines of IDENTITY TOKEN (default: $AGENTFSM_TOKENS)",
    )
    serve.add_argument(
        "--permissions",
        type=Path,
        default=None,
        metavar="FILE",
        help='who may decide on which tool\'s calls: a JSON object such as {"refund": '
        '["ada"], "*": ["ada", "bob"]} (default: anyone with a token decides on anything)',
    )
    serve.add_argument(
        "--starter-may-not-approve",
        action="store_true",
        help="the person who starts a run in the inbox may not approve its calls (they may "
        "still reject them), nor approve the calls of any run that names them its starter",
    )
    serve.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the key that signs session cookies, to keep people logged in across restarts "
        "and processes (default: $AGENTFSM_SESSION_SECRET, else a random key per process)",
    )
    serve.add_argument(
        "--poll",
        type=_seconds,
        metavar="SECONDS",
        default=0.3,
        help="the longest wait, in seconds, between two looks at the store for live updates; "
        "the store's change notifications bring them at once (default: %(default)s)",
    )
    serve.add_argument(
        "--root-path",
        type=_text,
        default="",
        metavar="PATH",
        help="the path the inbox is served under, when a reverse proxy forwards, say, "
        "/inbox/ to it with the prefix taken off (default: none)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        type=_text,
        default="127.0.0.1",
        metavar="IPS",
        help="the reverse proxies whose X-Forwarded-Proto and X-Forwarded-For are believed, "
        "comma-separated (default: %(default)s)",
    )
    serve.set_defaults(handler=handlers["serve"])

    schema = command(
        commands,
        "schema",
        "print or regenerate the JSON Schemas",
        "Print the JSON Schema of the run state; or regenerate (--write) or check (--check) "
        "every generated file: the schemas in schemas/ and the diagram in "
        "docs/state-machine.md.",
    )
    mode = schema.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="regenerate schemas/ and the diagram")
    mode.add_argument(
        "--check", action="store_true", help="exit 1 if schemas/ or the diagram are stale"
    )
    schema.add_argument(
        "--root", type=Path, default=Path("."), help="the repository root (default: %(default)s)"
    )
    schema.set_defaults(handler=handlers["schema"])

    graph = command(
        commands,
        "graph",
        "print the status machine as a mermaid diagram",
        "Print the run status machine (every legal status change) as a mermaid diagram.",
    )
    graph.set_defaults(handler=handlers["graph"])
    return parser
