"""The ``agentfsm`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._errors import AgentFSMError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentfsm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="pause a run for approval, then approve and resume it in a second process"
    )
    demo.add_argument("--reject", action="store_true", help="reject the call instead")
    demo.add_argument(
        "--state-file", type=Path, default=Path("demo-state.json"), help="where the state goes"
    )
    demo.add_argument("--resume", type=Path, metavar="STATE_FILE", help=argparse.SUPPRESS)

    schema = commands.add_parser("schema", help="print or regenerate the JSON Schemas")
    mode = schema.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="regenerate schemas/ and the diagram")
    mode.add_argument("--check", action="store_true", help="fail if schemas/ or docs are stale")
    schema.add_argument("--root", type=Path, default=Path("."), help="repository root")

    commands.add_parser("graph", help="print the status machine as a mermaid diagram")

    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except AgentFSMError as exc:
        print(f"agentfsm: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"agentfsm: error: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from ._demo import resume_demo, run_demo

        if args.resume is not None:
            return resume_demo(args.resume, reject=args.reject)
        return run_demo(args.state_file, reject=args.reject)
    if args.command == "schema":
        from . import _schemas

        if args.write:
            for path in _schemas.write(args.root):
                print(f"wrote {path}")
            return 0
        if args.check:
            stale = _schemas.check(args.root)
            for path in stale:
                print(f"stale: {path} (run `make schemas`)", file=sys.stderr)
            return 1 if stale else 0
        from ._codec import wire_type
        from ._schemas import _schema

        sys.stdout.write(_schema(wire_type(), "RunState"))
        return 0
    if args.command == "graph":
        from ._machine import mermaid

        print(mermaid())
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
