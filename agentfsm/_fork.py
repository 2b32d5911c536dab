"""Forks: a new run from a past version of another, that never fires a side effect again.

``fork(state, run_id=...)`` is pure: it turns the state of a run at some version into the
state of a new run, and says what the new run would do with the calls it inherits before
anything runs (its hazards). Stores persist the result (``Store.fork``).

What a fork inherits from the version it starts from:

- Calls committed before it: their results are in the transcript, and nothing runs them
  again.
- Calls in flight (started, their result not recorded): the parent may have run them, or
  may be running them now. They are in doubt in the fork, exactly as after a crash: a call
  of a tool declared idempotent is run again when the fork resumes (as the driver runs it
  again after a crash), and every other call waits for a person (``reason="in_doubt"``).
  Without the tools' code (``agents``), no call is known to be idempotent, so all of them
  wait.
- Calls waiting for a decision: they wait in the fork too, without the deadline they had in
  the parent (which says nothing of when the fork runs).
- Decisions recorded on the state and not applied yet are left behind (``Fork.dropped``):
  they were taken for the parent, which may have acted on them since. ``decisions`` gives
  the fork its own.

``input`` replaces the run's last user message, and takes the fork back to the moment that
message arrived: what the run did after it is not part of the fork (``dropped_calls``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import msgspec

from ._agents import Agent, AgentSet
from ._decisions import admit
from ._errors import ConfigurationError
from ._events import Decision
from ._items import HandoffItem, Item, Record, ToolCallItem, ToolResultItem, Usage, UserMessage
from ._json import check_json_data
from ._machine import RunStatus
from ._outcomes import Starter
from ._state import CallRecord, ForkOrigin, RunState, Transcript

__all__ = ["Fork", "ForkHazard", "ForkPlan", "fork"]


class ForkHazard(Record, frozen=True):
    """A call a fork inherits unfinished from the version it starts from.

    ``at_fork`` is what the call was doing then: ``"in_flight"`` (started, its result not
    recorded: it may have taken effect in the parent) or ``"waiting"`` (waiting for a
    decision). ``idempotent`` is whether its tool is declared idempotent (None: the tools'
    code was not given, or the tool no longer exists). ``asks``: the fork waits for a
    person's decision before the call runs; False only for an in-flight call of an idempotent
    tool, which the fork runs again when it resumes, as after a crash.
    """

    call_id: str
    tool: str
    agent: str
    arguments: dict[str, Any]
    idempotency_key: str
    at_fork: Literal["in_flight", "waiting"]
    idempotent: bool | None
    asks: bool


class ForkPlan(Record, frozen=True):
    """What a fork is, before anything runs: the new run (``run_id``), where it comes from
    (``parent``, ``version``), its status, its ``hazards``, the decisions pending at that
    version that it leaves behind (``dropped``), and, when its input was replaced, the calls
    of the parent that it no longer holds (``dropped_calls``: the model may ask for them
    again, and they run again only as any new call does)."""

    run_id: str
    parent: str
    version: int
    status: str
    hazards: tuple[ForkHazard, ...] = ()
    dropped: tuple[Decision, ...] = ()
    dropped_calls: tuple[str, ...] = ()

    @property
    def asks(self) -> tuple[str, ...]:
        """The call ids the fork waits on for a person before they run."""
        return tuple(h.call_id for h in self.hazards if h.asks)


class Fork(NamedTuple):
    """The forked run's state, and its plan."""

    state: RunState
    plan: ForkPlan


def fork(
    state: RunState,
    *,
    run_id: str,
    input: str | None = None,
    decisions: Sequence[Decision] | None = None,
    agents: Agent | AgentSet | None = None,
) -> Fork:
    """The run ``state`` (at some version of run ``state.run_id``) forked as a new run
    ``run_id``. Pure.

    ``input`` replaces the last user message at that version (see the module's docstring).
    ``decisions`` are the fork's decisions on the calls it waits on (checked as
    ``RunState.decide`` checks them); the decisions pending at that version are left
    behind. ``agents`` (the starting agent) tells which tools are idempotent.

    Raises ConfigurationError for a run id that is empty or the parent's, or for a replaced
    input when the run has no user message; ContextError for input that is not text;
    DecisionRefused for a decision the fork cannot take.
    """
    if not isinstance(run_id, str) or not run_id:
        raise ConfigurationError(f"a fork needs a run id, not {run_id!r}")
    if run_id == state.run_id:
        raise ConfigurationError(f"a fork needs a run id of its own, not its parent's {run_id!r}")
    spec = agents if isinstance(agents, AgentSet) or agents is None else AgentSet(agents)
    origin = ForkOrigin(run_id=state.run_id, version=state.version)
    dropped_calls: tuple[str, ...] = ()
    if input is not None:
        new, dropped_calls = _with_input(state, input)
    else:
        new = state
    # A fork is a run of its own, outside its parent's session (a session has one active run,
    # its last): the session's transcript it started from is already in its input.
    new = msgspec.structs.replace(
        new, run_id=run_id, version=0, forked_from=origin, trace={}, decisions=(), session=None
    )
    hazards: list[ForkHazard] = []
    if not new.status.is_terminal:
        new, hazards = _inherit(new, spec, origin)
    for decision in decisions or ():
        if admit(new, decision, new.decisions):
            new = msgspec.structs.replace(new, decisions=(*new.decisions, decision))
    plan = ForkPlan(
        run_id=run_id,
        parent=state.run_id,
        version=state.version,
        status=new.status.value,
        hazards=tuple(hazards),
        dropped=state.decisions,
        dropped_calls=dropped_calls,
    )
    return Fork(new, plan)


def _inherit(
    state: RunState, spec: AgentSet | None, origin: ForkOrigin
) -> tuple[RunState, list[ForkHazard]]:
    """The ledger of a fork: in-flight calls of tools not known to be idempotent put in
    doubt, as the driver puts them after a crash; and the hazards of every unfinished call."""
    hazards: list[ForkHazard] = []
    ledger: list[CallRecord] = []
    starter = Starter(worker=f"run {origin.run_id} (forked at version {origin.version})")
    for call in state.ledger:
        if call.status == "committed":
            ledger.append(call)
            continue
        tool = spec.tool(call.agent, call.tool) if spec is not None else None
        idempotent = None if tool is None else tool.idempotent
        in_flight = call.status == "started"
        asks = not (in_flight and idempotent)
        if in_flight and asks:
            call = msgspec.structs.replace(
                call, status="awaiting_approval", reason="in_doubt", started_by=starter
            )
        # The parent's deadlines say nothing of when the fork runs: a fork made after one
        # passed would expire its calls at once, a decision nobody took.
        call = msgspec.structs.replace(call, deadline=None)
        ledger.append(call)
        hazards.append(
            ForkHazard(
                call_id=call.call_id,
                tool=call.tool,
                agent=call.agent,
                arguments=call.arguments,
                idempotency_key=call.idempotency_key,
                at_fork="in_flight" if in_flight else "waiting",
                idempotent=idempotent,
                asks=asks,
            )
        )
    status = state.status
    if status is RunStatus.TOOLS and not any(c.status == "started" for c in ledger):
        status = RunStatus.INTERRUPTED
    return msgspec.structs.replace(state, ledger=tuple(ledger), status=status), hazards


def _with_input(state: RunState, text: str) -> tuple[RunState, tuple[str, ...]]:
    """``state`` with its last user message replaced by ``text``, as it was when that message
    arrived; and the calls dropped with what came after it."""
    if not isinstance(text, str):
        raise ConfigurationError(f"a fork's input must be text, not {type(text).__name__}")
    check_json_data(text, "input")
    message = UserMessage(content=text)
    staged = _last_user_message(state.staged)
    if staged is not None:
        # Not seen by the model yet: nothing that came after it to drop.
        replaced = (*state.staged[:staged], message, *state.staged[staged + 1 :])
        return msgspec.structs.replace(state, staged=replaced), ()
    at = _last_user_message(state.items)
    if at is not None:
        later = state.items[at + 1 :]
        # The agent that answered the message: the one before the first handoff after it.
        agent = next((i.source for i in later if isinstance(i, HandoffItem)), state.current_agent)
        items = Transcript([*state.items[:at], message])
        dropped = _calls(later, state.ledger)
        return (
            msgspec.structs.replace(
                state,
                status=RunStatus.RUNNING,
                items=items,
                current_agent=agent,
                ledger=(),
                pending_handoff=None,
                staged=(),
                final_output=None,
                error=None,
            ),
            dropped,
        )
    first = _last_user_message(state.input)
    if first is None:
        raise ConfigurationError(
            f"run {state.run_id!r} has no user message at version {state.version} to replace"
        )
    dropped = _calls(state.items[:], state.ledger)
    return (
        msgspec.structs.replace(
            state,
            status=RunStatus.NEW,
            input=(*state.input[:first], message, *state.input[first + 1 :]),
            items=Transcript(),
            current_agent=state.starting_agent,
            turn=0,
            ledger=(),
            pending_handoff=None,
            policies=(),
            usage=Usage(),
            final_output=None,
            error=None,
            staged=(),
            audit=(),
        ),
        dropped,
    )


def _last_user_message(items: Sequence[Item]) -> int | None:
    for index in range(len(items) - 1, -1, -1):
        if isinstance(items[index], UserMessage):
            return index
    return None


def _calls(items: Sequence[Item], ledger: Sequence[CallRecord]) -> tuple[str, ...]:
    """The ids of the tool calls among ``items`` and in ``ledger``, in order, once each."""
    ids = [i.call_id for i in items if isinstance(i, ToolCallItem | ToolResultItem)]
    ids += [c.call_id for c in ledger]
    return tuple(dict.fromkeys(ids))
