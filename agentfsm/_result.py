"""What a run that stopped returns to its caller: its RunResult, or the error of a run that a
guardrail failed or that waits for a decision it was not given. Part of the driver."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import pydantic

from ._agents import AgentSet
from ._errors import GuardrailTripped, UndecidedError
from ._items import GuardrailItem, Item, Usage
from ._machine import RunStatus
from ._outcomes import ApprovalRequest, RunError
from ._state import RunState
from ._stream import Emitter
from ._toolrun import carrying

__all__ = ["RunResult", "finished", "run_result", "tripped", "undecided"]

log = logging.getLogger("agentfsm")


@dataclass(frozen=True)
class RunResult:
    """Where a run stands after ``Runner.run`` returns.

    ``status`` is ``"completed"``, ``"interrupted"``, ``"paused"``, ``"failed"`` or
    ``"cancelled"``;
    ``interruptions`` lists the calls waiting for a decision; ``items`` are the items the run
    generated (its input is ``state.input``).
    """

    status: str
    final_output: Any
    interruptions: list[ApprovalRequest]
    state: RunState
    error: str | None

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def items(self) -> list[Item]:
        return list(self.state.items)

    @property
    def usage(self) -> Usage:
        return self.state.usage


def finished(agents: AgentSet, state: RunState, emitter: Emitter | None) -> RunResult:
    """The result of a run that stopped; raises GuardrailTripped for one a guardrail
    failed."""
    if emitter is not None:
        emitter.check(state)
    if state.error is not None and state.error.kind == "guardrail_tripped":
        raise carrying(tripped(state, state.error), state)
    return run_result(agents, state)


def run_result(agents: AgentSet, state: RunState) -> RunResult:
    output = state.final_output
    if state.status is RunStatus.COMPLETED:
        adapter = agents.output_adapter(state.current_agent)
        if adapter is not None:
            # The output is stored as JSON data, so it is read back as JSON: strict models
            # then take their datetimes, UUIDs and enums from strings, as the model gave them.
            try:
                output = adapter.validate_json(msgspec.json.encode(output))
            except pydantic.ValidationError as exc:
                # The output type changed since the run completed: the run stays completed,
                # with its output as the JSON data it was stored as.
                log.warning(
                    "run %s: its stored output no longer validates against the output type of "
                    "agent %r, so it is returned as JSON data: %s",
                    state.run_id,
                    state.current_agent,
                    exc,
                )
    return RunResult(
        status=state.status.value,
        final_output=output,
        interruptions=state.interruptions,
        state=state,
        error=state.error.message if state.error is not None else None,
    )


def tripped(state: RunState, error: RunError) -> GuardrailTripped:
    """The error of a run a guardrail failed, from the trip recorded in its transcript."""
    trip = next(
        (i for i in reversed(state.items) if isinstance(i, GuardrailItem) and i.behavior == "trip"),
        None,
    )
    if trip is None:
        return GuardrailTripped(f"run {state.run_id} failed: {error.message}")
    return GuardrailTripped(
        f"run {state.run_id} failed: {error.message}",
        guardrail=trip.guardrail,
        kind=trip.kind,
        call_id=trip.call_id,
        tool=trip.tool,
        info=trip.info,
    )


def undecided(state: RunState, requests: Sequence[ApprovalRequest]) -> UndecidedError:
    calls = ", ".join(f"{r.call_id} ({r.tool})" for r in requests)
    return UndecidedError(
        f"run {state.run_id} waits for a decision on {calls}, and has none to apply; "
        "approve() and reject() return a new state: resume that one "
        "(state = state.approve(request))"
    )
