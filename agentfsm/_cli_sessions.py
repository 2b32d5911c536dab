"""``agentfsm sessions list|show|clear``: the sessions (conversation threads) of a store, for
people. ``agentfsm run --session ID`` starts a session's next run."""

from __future__ import annotations

import argparse
from typing import Any

from ._cli_json import SessionDocument, SessionListDocument, encode
from ._errors import ConfigurationError
from ._render import render_session, render_sessions

__all__ = ["sessions"]


async def sessions(args: argparse.Namespace, store: Any) -> int:
    """Do the ``sessions`` action ``args.action`` on ``store``; the exit status."""
    match args.action:
        case "list":
            found = await store.sessions(limit=args.limit)
            if args.json:
                print(encode(SessionListDocument(sessions=tuple(found))))
            else:
                print(render_sessions(found))
        case "show":
            runs = await store.session_runs(args.session)
            if not runs:
                raise ConfigurationError(f"no session {args.session!r} in the store (no runs)")
            transcript = await store.session_transcript(args.session)
            if args.json:
                document = SessionDocument(
                    session=args.session, runs=tuple(runs), transcript=tuple(transcript)
                )
                print(encode(document))
            else:
                print(render_session(args.session, runs, transcript))
        case "clear":
            if not args.yes:
                raise ConfigurationError(
                    f"clearing session {args.session!r} deletes its runs for good; pass --yes"
                )
            deleted = await store.clear_session(args.session)
            print(f"session {args.session}: deleted {deleted} run{'' if deleted == 1 else 's'}")
    return 0
