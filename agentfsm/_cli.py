"""The ``agentfsm`` command line.

Every command that touches runs takes ``--store`` (default: $AGENTFSM_STORE, else the SQLite
file ``agentfsm.db`` in the current directory), and ``--store-wait``: how long each of its
calls of the store is tried again while the store is unavailable. Errors print one line and
exit non-zero; ``ExitCode`` lists the exit statuses scripts can branch on (docs/cli.md
documents them).

``run``, ``resume`` and ``worker`` handle SIGINT and SIGTERM: the first stops the run after
its current step (``Runner.stop``); a second one exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import importlib
import json
import os
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ._cli_parser import build_parser
from ._errors import AgentFSMError, ConfigurationError, ToolArgumentsError
from ._events import Decision

if TYPE_CHECKING:
    from ._runner import Runner, RunResult

__all__ = ["ExitCode", "exit_code", "main"]


class ExitCode(enum.IntEnum):
    """The CLI's exit statuses. ``run`` and ``resume`` say where the run stopped; every other
    command exits ``OK`` when it did what was asked (``runs show`` whatever the run's status),
    and ``ERROR`` when it could not."""

    #: Done; for ``run`` and ``resume``, the run completed.
    OK = 0
    #: Bad input, an unknown run, a refused decision, a store or model error.
    ERROR = 1
    #: The command line itself is wrong (argparse's own status).
    USAGE = 2
    #: The run waits for a human's decision.
    INTERRUPTED = 3
    #: The run failed (for example it ran out of turns).
    FAILED = 4
    #: The run was cancelled.
    CANCELLED = 5
    #: The run was paused (``agentfsm pause``); ``unpause`` or ``resume`` goes on.
    PAUSED = 6
    #: Stopped by Ctrl-C (128 + SIGINT, as shells report it). ``run`` and ``resume`` stop the
    #: run after its current step, saved, and say how to continue it.
    KEYBOARD_INTERRUPT = 130
    #: Whatever read stdout closed it early, as ``| head`` does (128 + SIGPIPE, what a shell
    #: reports for a tool that SIGPIPE stops).
    BROKEN_PIPE = 141
    #: Stopped by SIGTERM (128 + SIGTERM), as ``run`` and ``resume`` stop for Ctrl-C.
    TERMINATED = 143


_BY_STATUS = {
    "completed": ExitCode.OK,
    "interrupted": ExitCode.INTERRUPTED,
    "failed": ExitCode.FAILED,
    "cancelled": ExitCode.CANCELLED,
    "paused": ExitCode.PAUSED,
}


def exit_code(status: str) -> ExitCode:
    """The exit status of ``run`` and ``resume`` for a run that stopped in ``status``."""
    return _BY_STATUS.get(status, ExitCode.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns its exit status, an
    ``ExitCode``. Usage errors exit from here (status 2), as argparse does."""
    parser = build_parser(
        {
            "demo": _demo,
            "run": _run,
            "runs list": _list,
            "runs show": _show,
            "runs history": _history,
            "runs export": _export,
            "runs prune": _prune,
            "fork": _fork,
            "sessions": _sessions,
            "approvals": _approvals,
            "approve": _approve,
            "reject": _reject,
            "cancel": _cancel,
            "pause": _pause,
            "unpause": _unpause,
            "input": _input,
            "resume": _resume,
            "worker": _worker,
            "serve": _serve,
            "schema": _schema,
            "graph": _graph,
        }
    )
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
        # Flushed here, not at exit, so that a reader that went away is seen below.
        sys.stdout.flush()
        return result
    except BrokenPipeError:
        _discard_stdout()
        return ExitCode.BROKEN_PIPE
    except AgentFSMError as exc:
        print(f"agentfsm: error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"agentfsm: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("agentfsm: interrupted", file=sys.stderr)
        return ExitCode.KEYBOARD_INTERRUPT
    except Exception as exc:  # a bug of ours: still one line, never a traceback
        print(f"agentfsm: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return ExitCode.ERROR


def _discard_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's last flush of what is
    still buffered does not fail again and print a traceback at exit."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):  # no file descriptor behind sys.stdout
        pass


# -- helpers -----------------------------------------------------------------------------------


def _with_store(
    args: argparse.Namespace,
    work: Callable[[Any], Coroutine[Any, Any, int]],
    *,
    create: bool = True,
    quiet: bool = True,
) -> int:
    """Run ``work`` on the store named by ``--store``; ``create=False`` for commands that only
    read, so that a mistyped store is an error rather than a new empty database. Every call
    of the store, opening it included, is tried again while the store is unavailable, for
    up to ``--store-wait`` seconds: ``quiet``ly for a command whose result is its one report
    (it prints one line if it gives up), with a warning per episode for the long-running
    ones (``quiet=False``)."""
    from ._patience import PatientStore, patiently
    from .stores import open_store

    async def opened() -> Any:
        return open_store(args.store, create=create)

    async def main() -> int:
        store = await patiently(opened, args.store_wait, "opening the store", quiet=quiet)
        try:
            return await work(PatientStore(store, args.store_wait, quiet=quiet))
        finally:
            await store.close()

    return asyncio.run(main())


def load_app(spec: str) -> Any:
    """The agent named by ``module:attribute`` (an Agent, or a function returning one)."""
    from ._agents import Agent

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--app must be module:attribute, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load the app {spec!r}: {exc}") from None
    agent = target() if callable(target) and not isinstance(target, Agent) else target
    if not isinstance(agent, Agent):
        raise ConfigurationError(f"the app {spec!r} is not an Agent (got {type(agent).__name__})")
    return agent


def _json_argument(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolArgumentsError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ToolArgumentsError(f"{what} is nested too deeply") from None


def _print_run(state: Any, as_json: bool, posted: Sequence[Any] = ()) -> None:
    """The run, with the messages ``posted`` to it that it has not applied yet."""
    if as_json:
        from ._cli_json import encode, run_document

        print(encode(run_document(state, posted)))
    else:
        from ._render import render_run

        print(render_run(state, posted))


# -- commands ----------------------------------------------------------------------------------


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _advance(
    args: argparse.Namespace, run_id: str, start: Callable[[Runner], Awaitable[RunResult]]
) -> int:
    """Advance the run ``run_id`` with ``start`` (a run or a resume), and print where it
    stopped. The first SIGINT or SIGTERM stops it after its current step, which is saved
    (a tool that runs finishes, and its result is kept), and releases its lease: one line
    on stderr says how to continue, and the status is 128 + the signal. A second signal
    exits at once (``_stop_at_once``)."""
    from ._runner import Runner

    async def work(store: Any) -> int:
        runner = Runner(
            store=store,
            hooks=[_event_printer()] if args.events else [],
            store_wait=args.store_wait,
        )

        def at_once(sig: signal.Signals) -> NoReturn:
            _stop_at_once(
                f"stopped run {run_id} at once ({sig.name}); a call that was running is in "
                f"doubt, and the run is leased for up to {runner.lease_seconds:g} s more; then "
                f"`{_resume_command(args, run_id)}` continues it",
                sig,
            )

        with _stopping(runner, at_once) as received:
            result = await start(runner)
        _print_run(result.state, args.json)
        if received and result.status not in _BY_STATUS:  # stopped by the signal, not done
            print(
                f"agentfsm: stopped run {run_id} after its current step ({received[0].name}); "
                f"`{_resume_command(args, run_id)}` continues it",
                file=sys.stderr,
            )
            return 128 + received[0]
        return exit_code(result.status)

    return _with_store(args, work, quiet=False)


def _event_printer() -> Any:
    """``--events``: a consumer of the run's events that prints each as a JSON line."""
    import msgspec

    from ._run_events import RunEvent
    from ._stream import RunHooks

    class Printer(RunHooks):
        async def on_event(self, event: RunEvent) -> None:
            sys.stdout.write(msgspec.json.encode(event).decode() + "\n")
            sys.stdout.flush()

    return Printer()


@contextlib.contextmanager
def _stopping(
    runner: Runner, at_once: Callable[[signal.Signals], NoReturn]
) -> Iterator[list[signal.Signals]]:
    """Handle SIGINT and SIGTERM while the block runs: the first stops ``runner`` after its
    current step, a second calls ``at_once``. Yields the signals received."""
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        if received:
            at_once(sig)
        received.append(sig)
        runner.stop()

    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield received
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def _stop_at_once(message: str, sig: signal.Signals) -> NoReturn:
    """Exit now, on a second signal, without waiting for the step under way, saying
    ``message``. A run under way stays leased to this process until the lease runs out; a
    tool that was running may or may not have taken effect, so on resume its call is in
    doubt, and a person decides."""
    print(f"agentfsm: {message}", file=sys.stderr, flush=True)
    os._exit(128 + sig)


def _resume_command(args: argparse.Namespace, run_id: str) -> str:
    from ._cli_parser import DEFAULT_STORE
    from .stores._postgres import redact

    words = ["agentfsm", "resume", run_id, "--app", args.app]
    if args.store != os.environ.get("AGENTFSM_STORE", DEFAULT_STORE):
        words += ["--store", redact(args.store)]
    return shlex.join(words)


def _run(args: argparse.Namespace) -> int:
    agent = load_app(args.app)
    context = _json_argument(args.context, "--context")
    # Chosen here, so that a signal's message can name the run before it is stored.
    run_id = args.run_id or uuid.uuid4().hex

    def start(runner: Runner) -> Awaitable[RunResult]:
        return runner.run(
            agent,
            args.input,
            context=context,
            max_turns=args.max_turns,
            run_id=run_id,
            session=args.session,
        )

    return _advance(args, run_id, start)


def _sessions(args: argparse.Namespace) -> int:
    from ._cli_sessions import sessions

    return _with_store(args, lambda store: sessions(args, store), create=False)


def _list(args: argparse.Namespace) -> int:
    from ._cli_json import RunListDocument, encode
    from ._render import render_summaries

    async def work(store: Any) -> int:
        summaries = await store.list(status=args.status, limit=args.limit)
        if args.json:
            print(encode(RunListDocument(runs=tuple(summaries))))
        else:
            print(render_summaries(summaries))
        return 0

    return _with_store(args, work, create=False)


def _show(args: argparse.Namespace) -> int:
    async def work(store: Any) -> int:
        if args.version is not None:
            _print_run(await store.load(args.run_id, version=args.version), args.json)
            return 0
        state = await store.load(args.run_id)
        inbox = await store.inbox(args.run_id)
        _print_run(state, args.json, [m for m in inbox.messages if m is not None])
        return 0

    return _with_store(args, work, create=False)


def _history(args: argparse.Namespace) -> int:
    from ._cli_json import RunHistoryDocument, encode
    from ._render import render_history

    async def work(store: Any) -> int:
        versions = await store.history(args.run_id)
        origin = (await store.load(args.run_id)).forked_from
        if args.json:
            document = RunHistoryDocument(
                run_id=args.run_id, versions=tuple(versions), forked_from=origin
            )
            print(encode(document))
        else:
            print(render_history(versions, origin))
        return 0

    return _with_store(args, work, create=False)


def _prune(args: argparse.Namespace) -> int:
    versions = args.keep_versions is not None or args.older_than is not None
    if not versions and args.ended_older_than is None:
        raise ConfigurationError(
            "runs prune needs --keep-versions, --older-than or --ended-older-than"
        )
    if args.run is not None and args.ended_older_than is not None:
        raise ConfigurationError("--ended-older-than prunes every run; it takes no --run")

    async def work(store: Any) -> int:
        now = time.time()
        if args.run is not None:
            await store.load(args.run)  # an unknown run is an error, not "0 dropped"
        if args.ended_older_than is not None:
            deleted = await store.prune_runs(older_than=now - args.ended_older_than)
            print(f"deleted {deleted} run{'' if deleted == 1 else 's'} that ended")
        if versions:
            older_than = None if args.older_than is None else now - args.older_than
            dropped = await store.prune(
                keep_versions=args.keep_versions, older_than=older_than, run_id=args.run
            )
            print(f"dropped {dropped} old version{'' if dropped == 1 else 's'}")
        return 0

    return _with_store(args, work, create=False)


def _fork(args: argparse.Namespace) -> int:
    from ._cli_json import encode
    from ._render import render_fork

    agent = load_app(args.app) if args.app is not None else None

    async def work(store: Any) -> int:
        make = store.fork_plan if args.dry_run else store.fork
        forked = await make(
            args.run_id,
            version=args.version,
            new_run_id=args.new_id,
            input=args.input,
            agents=agent,
        )
        if args.json:
            print(encode(forked.plan))
        else:
            print(render_fork(forked.plan, stored=not args.dry_run))
        return 0

    return _with_store(args, work, create=False)


def _export(args: argparse.Namespace) -> int:
    async def work(store: Any) -> int:
        print((await store.load(args.run_id)).to_json())
        return 0

    return _with_store(args, work, create=False)


def _approvals(args: argparse.Namespace) -> int:
    from ._cli_json import encode
    from ._render import render_waiting

    async def work(store: Any) -> int:
        page = await store.waiting(
            tool=args.tool, agent=args.agent, limit=args.limit, after=args.after
        )
        print(encode(page) if args.json else render_waiting(page))
        return ExitCode.OK

    return _with_store(args, work, create=False)


def _approve(args: argparse.Namespace) -> int:
    return _decide(args, approved=True)


def _reject(args: argparse.Namespace) -> int:
    return _decide(args, approved=False)


def _decide(args: argparse.Namespace, *, approved: bool) -> int:
    """Post one decision, bound to the digest of the arguments the person saw: given with
    --digest, or the one on screen when the call is shown and the person asked."""
    arguments = _json_argument(getattr(args, "arguments", None), "--arguments")
    who = args.who or _login_name()

    async def work(store: Any) -> int:
        from ._decisions import describe

        state = await store.load(args.run_id)
        request = next((r for r in state.interruptions if r.call_id == args.call_id), None)
        digest = args.digest
        if digest is None:
            if request is None or not sys.stdin.isatty():
                raise ConfigurationError(
                    "pass --digest: the digest `agentfsm runs show RUN` prints for the call, "
                    "so that the decision binds to the arguments you saw"
                )
            if not _confirm(request, approved=approved, arguments=arguments):
                print("nothing decided")
                return ExitCode.ERROR
            digest = request.digest
        elif len(digest) < 12:
            raise ConfigurationError("--digest needs at least 12 hex digits of the digest")
        elif request is not None and request.digest.startswith(digest):
            digest = request.digest
        if approved:
            posted = await store.approve(
                args.run_id,
                args.call_id,
                digest=digest,
                always=args.always,
                arguments=arguments,
                by=who,
            )
        else:
            posted = await store.reject(
                args.run_id,
                args.call_id,
                digest=digest,
                message=args.message,
                always=args.always,
                by=who,
            )
        what = describe(
            Decision(call_id=args.call_id, digest=digest, approved=approved, arguments=arguments)
        )
        if posted:
            print(
                f"{what} {args.call_id} of run {args.run_id}, as {who}; it takes effect when "
                "the run resumes"
            )
        else:
            print(f"{args.call_id} of run {args.run_id} was already {what} by {who}: no change")
        if approved and request is not None and request.quorum > 1:
            print(f"  {await _standing(store, args.run_id, args.call_id)}")
        return ExitCode.OK

    return _with_store(args, work, create=False)


async def _standing(store: Any, run_id: str, call_id: str) -> str:
    """Where a call that needs several approvals stands, the posted ones counted."""
    from ._decisions import standing
    from .stores._base import posted_decisions

    state = await store.load(run_id)
    inbox = await store.inbox(run_id)
    posted = (*state.decisions, *posted_decisions([m for m in inbox.messages if m is not None]))
    waiting = next((r for r in state.interruptions if r.call_id == call_id), None)
    if waiting is None:
        return "the call no longer waits"
    return standing(waiting, posted) or ""


def _confirm(request: Any, *, approved: bool, arguments: Any) -> bool:
    """Show the call at the terminal and ask whether to decide as asked."""
    print(f"call {request.call_id}: {request.tool}, for agent {request.agent}")
    print(f"  arguments: {json.dumps(request.arguments, sort_keys=True, indent=2)}")
    if request.reason == "in_doubt":
        from ._render import in_doubt

        print(f"  {in_doubt(request)}")
    if arguments is not None:
        print(f"  to run with: {json.dumps(arguments, sort_keys=True, indent=2)}")
    verb = "approve" if approved else "reject"
    return input(f"{verb} it? [y/N] ").strip().lower() in ("y", "yes")


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container, say)
        return f"uid:{os.getuid()}"


def _posting(args: argparse.Namespace, post: Callable[[Any], Awaitable[None]], said: str) -> int:
    """Post a message to a run's inbox with ``post(store)``, and say ``said``."""

    async def work(store: Any) -> int:
        await post(store)
        print(said)
        return 0

    return _with_store(args, work)


def _cancel(args: argparse.Namespace) -> int:
    return _posting(
        args,
        lambda store: store.cancel(args.run_id, args.reason),
        f"asked run {args.run_id} to cancel; it stops at its next step",
    )


def _pause(args: argparse.Namespace) -> int:
    return _posting(
        args,
        lambda store: store.pause(args.run_id, args.reason),
        f"asked run {args.run_id} to pause; it stops at its next turn",
    )


def _unpause(args: argparse.Namespace) -> int:
    return _posting(
        args,
        lambda store: store.unpause(args.run_id),
        f"run {args.run_id} may go on; a worker resumes it",
    )


def _input(args: argparse.Namespace) -> int:
    return _posting(
        args,
        lambda store: store.add_input(args.run_id, args.text),
        f"added input to run {args.run_id}; the model sees it at its next turn",
    )


def _resume(args: argparse.Namespace) -> int:
    agent = load_app(args.app)

    def start(runner: Runner) -> Awaitable[RunResult]:
        return runner.resume(agent, args.run_id, max_turns=args.max_turns)

    return _advance(args, args.run_id, start)


def _worker(args: argparse.Namespace) -> int:
    from ._runner import Runner

    agent = load_app(args.app)

    async def work(store: Any) -> int:
        runner = Runner(store=store, lease_seconds=args.lease, store_wait=args.store_wait)

        def at_once(sig: signal.Signals) -> NoReturn:
            _stop_at_once(
                f"worker {runner.owner} stopped at once ({sig.name}); the run it was "
                f"advancing, if any, stays leased for up to {runner.lease_seconds:g} s more, "
                "then another worker takes it up, and a call that was running is in doubt",
                sig,
            )

        with _stopping(runner, at_once):
            # Said once the signals are handled: a supervisor (or a test) may stop it now.
            print(f"worker {runner.owner} started", flush=True)
            advanced = await runner.work(agent, poll_interval=args.poll, until_idle=args.until_idle)
        print(f"worker {runner.owner} stopped after advancing {advanced} runs")
        return 0

    return _with_store(args, work, quiet=False)


def _serve(args: argparse.Namespace) -> int:
    """``agentfsm serve``: the inbox on uvicorn, on a socket bound here so that the line
    announcing it names the real port (``--port 0``)."""
    try:
        import uvicorn

        from .web import Permissions, create_app, load_tokens
    except ImportError as exc:
        raise ConfigurationError(
            f"agentfsm serve needs the web extra: pip install 'agentfsm[web]' ({exc})"
        ) from None
    import socket

    auth = load_tokens(args.tokens)
    agent = load_app(args.app) if args.app else None
    starter = not args.starter_may_not_approve
    permissions = (
        Permissions.from_file(args.permissions, starter_may_approve=starter)
        if args.permissions
        else Permissions(starter_may_approve=starter)
    )
    secret = _session_secret(args.secret_file)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # IPPROTO_TCP named, so that asyncio sets TCP_NODELAY on the connections it accepts:
    # else a response written in two parts waits for the client's delayed ACK (40 ms).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(128)
    port = listener.getsockname()[1]

    async def work(store: Any) -> int:
        app = create_app(
            store,
            auth=auth,
            agent=agent,
            permissions=permissions,
            secret=secret,
            poll_interval=args.poll,
        )
        config = uvicorn.Config(
            app,
            log_level="warning",
            http="h11",
            ws="none",
            lifespan="off",
            proxy_headers=True,
            forwarded_allow_ips=args.forwarded_allow_ips,
            root_path=args.root_path.rstrip("/"),
            server_header=False,
        )
        host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
        print(f"agentfsm inbox at http://{host}:{port}/", flush=True)
        if args.host not in ("127.0.0.1", "::1", "localhost"):
            print(
                f"agentfsm: listening on {args.host}, beyond this machine: serve it over "
                "HTTPS (a reverse proxy) so that tokens and cookies never cross a network "
                "in clear",
                file=sys.stderr,
                flush=True,
            )
        await uvicorn.Server(config).serve(sockets=[listener])
        return 0

    try:
        return _with_store(args, work)
    finally:
        listener.close()


def _session_secret(path: Any) -> bytes | None:
    if path is not None:
        try:
            return bytes(path.read_bytes().strip())
        except OSError as exc:
            raise ConfigurationError(f"cannot read the secret file {str(path)!r}: {exc}") from None
    text = os.environ.get("AGENTFSM_SESSION_SECRET")
    return text.encode() if text else None


def _demo(args: argparse.Namespace) -> int:
    from ._demo import resume_from_file, run_demo, run_demo_with_file

    if args.resume_file is not None:
        return resume_from_file(args.resume_file, reject=args.reject)
    if args.json:
        return run_demo_with_file(args.state_file, reject=args.reject)
    return run_demo(args.store, args.state_file, reject=args.reject)


def _schema(args: argparse.Namespace) -> int:
    from . import _schemas

    if args.write:
        for path in _schemas.write(args.root):
            print(f"wrote {path}")
        return 0
    if args.check:
        stale = _schemas.check(args.root)
        for path in stale:
            print(f"stale: {path} (run `make schemas`)", file=sys.stderr)
        return ExitCode.ERROR if stale else ExitCode.OK
    from ._codec import wire_type

    sys.stdout.write(_schemas.schema_text(wire_type(), "RunState"))
    return 0


def _graph(args: argparse.Namespace) -> int:
    from ._machine import mermaid

    print(mermaid())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
