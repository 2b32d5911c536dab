"""A new run: its state, in status ``new``, and the checks of what it starts with. Part of the
pure core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ._agents import Agent
from ._errors import ConfigurationError
from ._items import Item, Usage, UserMessage
from ._json import check_json_data, check_session
from ._machine import RunStatus
from ._state import RunState, Transcript

__all__ = ["check_max_turns", "new_run"]


def check_max_turns(max_turns: object) -> None:
    """ConfigurationError unless ``max_turns`` is an int of at least 0 (0 lets the run take
    no model turn: it fails at once, and can be resumed with a higher limit)."""
    if type(max_turns) is not int or max_turns < 0:
        raise ConfigurationError(f"max_turns must be an int of at least 0, not {max_turns!r}")


def new_run(
    agent: Agent | str,
    input: str | Sequence[Item],
    *,
    run_id: str,
    context: Any = None,
    max_turns: int = 10,
    started_by: str = "",
    starter_may_approve: bool = True,
    session: str | None = None,
) -> RunState:
    """A new run in status ``new``; ``step`` it with ``Started()`` to begin. With
    ``session``, the run is that session's next run (``Started.history`` brings the
    session's earlier transcript).

    ``started_by`` records who started it (an identity the caller vouches for). With
    ``starter_may_approve=False``, that person's approvals of the run's calls are refused
    (a rejection is still theirs to make), whichever way they are posted.

    Raises ContextError if ``context`` is not JSON data, ConfigurationError if ``max_turns``
    is not an int of at least 0, if ``starter_may_approve`` is False without a
    ``started_by``, or if ``session`` is not a valid session id.
    """
    check_max_turns(max_turns)
    if not isinstance(started_by, str):
        raise ConfigurationError(f"started_by must be a str, not {type(started_by).__name__}")
    if not starter_may_approve and not started_by.strip():
        raise ConfigurationError("starter_may_approve=False needs started_by: who started the run")
    check_json_data(started_by, "started_by", ConfigurationError)
    if session is not None:
        check_session(session)
    check_json_data(context)
    items = (UserMessage(content=input),) if isinstance(input, str) else tuple(input)
    check_json_data(msgspec.to_builtins(list(items)), "input")
    name = agent.name if isinstance(agent, Agent) else agent
    from ._codec import SCHEMA_VERSION

    return RunState(
        schema_version=SCHEMA_VERSION,
        run_id=run_id,
        status=RunStatus.NEW,
        starting_agent=name,
        current_agent=name,
        turn=0,
        max_turns=max_turns,
        input=items,
        items=Transcript(),
        ledger=(),
        pending_handoff=None,
        decisions=(),
        policies=(),
        usage=Usage(),
        final_output=None,
        error=None,
        context=context,
        staged=(),
        version=0,
        audit=(),
        started_by=started_by,
        starter_may_approve=bool(starter_may_approve),
        session=session,
    )
