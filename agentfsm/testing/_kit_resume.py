"""The check that a finished run, resumed from one of its checkpoints, ends the same."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import AgentFSMError, DecisionRefused
from .._machine import RunStatus
from .._runner import Runner
from .._state import RunState
from .._tools import Tool, ToolContext
from ._clock import FakeClock
from ._kit_choices import Explorer
from ._kit_plan import decision_of
from ._kit_world import copy_agents, fake_of, wrap_tool
from ._scripted import ScriptedModel

if TYPE_CHECKING:
    from ._kit import AgentMachine

__all__ = ["check_resume"]


def check_resume(kit: AgentMachine) -> None:
    """The run is over: resume a copy from one of its checkpoints (through JSON, in a
    new runner, with the same answers, decisions and tool results) and check that it
    ends the same. Checkpoints before the last crash are left out (a crash changes the
    path: calls in doubt), and so are ones taken while calls that may not run twice
    were running."""
    eligible = [
        index
        for index, state in enumerate(kit.checkpoints)
        if index >= kit._last_crash_at
        and not state.status.is_terminal
        and state.status is not RunStatus.NEW
        and all(
            kit._agents.require_tool(c.agent, c.tool).idempotent
            for c in state.ledger
            if c.status == "started"
        )
    ]
    index = kit._oracle.resume_from(eligible)
    if index is None:
        return
    if isinstance(kit._oracle, Explorer):
        kit.plan.resume_from = index
    kit._event(f"resumed from a checkpoint in status {kit.checkpoints[index].status.value}")
    final = kit.state
    try:
        ended = kit._shared.run(_resumed(kit, index))
    except AgentFSMError as exc:
        kit._violation(
            "resuming_from_a_checkpoint_ends_the_same",
            f"resumed from checkpoint {index} (version {kit.checkpoints[index].version}), "
            f"the run failed: {type(exc).__name__}: {exc}",
        )
        return
    same = (
        list(ended.items) == list(final.items)
        and ended.status == final.status
        and ended.final_output == final.final_output
    )
    if not same:
        at = next(
            (i for i, (a, b) in enumerate(zip(ended.items, final.items, strict=False)) if a != b),
            min(len(ended.items), len(final.items)),
        )
        kit._violation(
            "resuming_from_a_checkpoint_ends_the_same",
            f"resumed from checkpoint {index} (version {kit.checkpoints[index].version}), "
            f"the run ended {ended.status.value} with {len(ended.items)} items, not "
            f"{final.status.value} with {len(final.items)}; first difference at item {at}",
        )


async def _resumed(kit: AgentMachine, index: int) -> RunState:
    state = RunState.from_json(kit.checkpoints[index].to_json())
    rounds = [list(r) for at, r in kit.plan.rounds if at >= index]

    async def recorded(
        tool: Tool, fn: Callable[..., Any], ctx: ToolContext, args: Any, kwargs: Any
    ) -> Any:
        if ctx.idempotency_key in kit._outputs:
            output = kit._outputs[ctx.idempotency_key]
            if isinstance(output, Exception):
                raise output
            return output
        result = fn(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    def tools(tool: Tool) -> Tool:
        body, _, _ = fake_of(kit.fakes, tool)
        return wrap_tool(tool, body, recorded)

    model = ScriptedModel(kit.plan.script)
    agent = copy_agents(type(kit).agent, tools, lambda _: model)
    runner = Runner(clock=FakeClock())
    for _ in range(2 * len(kit.checkpoints) + 2):
        if state.status.is_terminal:
            break
        if state.status is RunStatus.INTERRUPTED and not state.decisions:
            if not rounds:
                break
            waiting = {r.call_id: r for r in state.interruptions}
            for made in rounds.pop(0):
                request = waiting.get(made.call_id)
                if request is not None:
                    with contextlib.suppress(DecisionRefused):
                        state = state.decide(decision_of(made, request))
            continue
        state = (await runner.run(agent, state)).state
    return state
