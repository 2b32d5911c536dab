"""Who makes the choices of an ``AgentMachine`` example: hypothesis while it explores
(``Explorer``), a recorded plan when a printed test replays it (``Replayer``); and the model
every agent of the example talks to, which answers from those choices."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from hypothesis import strategies as st

from .._items import ModelResponse
from .._model import ModelRequest
from .._outcomes import ApprovalRequest
from .._tools import Tool
from ._kit_plan import PersonDecision
from ._kit_world import EndOfScript, Escaped
from ._schema_strategies import arguments_for, output_adapter, outputs_for
from ._scripted import ScriptedCall, Turn, _response, say

if TYPE_CHECKING:
    from ._kit import AgentMachine

__all__ = ["Explorer", "KitModel", "Replayer"]

_KINDS = ("approve", "reject", "approve_always", "reject_always", "edit", "expire", "stale")
#: At which durable boundary a process dies: 0 is never (where shrinking goes), and half of
#: the processes die at one of their first dozen boundaries, if they get that far.
_CRASH_CHOICES = (0,) * 12 + tuple(range(1, 13))
_PICKS: dict[tuple[Any, ...], Any] = {}


@functools.lru_cache(maxsize=64)
def _subsets(count: int) -> Any:
    return st.lists(st.sampled_from(range(count)), min_size=1, unique=True)


class Explorer:
    """Hypothesis makes every choice, through the ``data`` of the rule under way."""

    def __init__(self) -> None:
        self.data: Any = None
        self.countdown = 0

    def draw(self, strategy: Any, label: str) -> Any:
        return self.data.draw(strategy, label=label)

    def pick(self, choices: Sequence[Any], label: str) -> Any:
        """One of ``choices`` (shrinking towards the first); the strategy is built once."""
        key = tuple(choices)
        strategy = _PICKS.get(key)
        if strategy is None:
            strategy = _PICKS[key] = st.sampled_from(key)
        return self.data.draw(strategy, label=label)

    def new_turn(self, kit: AgentMachine, request: ModelRequest) -> Turn:
        agent = kit._originals.agent(request.agent)
        tools = list(agent.tools)
        originals = kit._originals
        # The handoffs' tool names (``transfer_to_<agent>``, or the one handoff() set).
        targets = [
            name
            for name in originals.tool_names(agent.name)
            if originals.handoff_target(agent.name, name) is not None
        ]
        kinds = ["answer"]
        if tools:
            kinds += ["call", "call", "call"]
            if kit.parallel_calls > 1:
                kinds.append("calls")
            if kit.invalid_arguments:
                kinds.append("bad_call")
        if targets:
            kinds.append("handoff")
        if kit.invalid_outputs and output_adapter(agent) is not None:
            kinds.append("bad_answer")
        kind = self.pick(kinds, "the model's answer")

        def one_call(choices: Sequence[Tool | str]) -> ScriptedCall:
            choice = self.pick(choices, "tool")
            if isinstance(choice, str):
                return ScriptedCall(choice, "{}")
            arguments = self.draw(arguments_for(choice), f"arguments of {choice.name}")
            return ScriptedCall(choice.name, msgspec.json.encode(arguments).decode())

        if kind == "answer":
            return say(self.draw(outputs_for(agent), "final answer"))
        if kind == "bad_answer":
            return say(self.draw(outputs_for(agent, valid=False), "refused answer"))
        if kind == "call":
            return one_call(tools)
        if kind == "handoff":
            return ScriptedCall(self.pick(targets, "handoff to"), "{}")
        if kind == "bad_call":
            tool = self.pick(tools, "tool")
            raw = self.draw(arguments_for(tool, valid=False), f"bad arguments of {tool.name}")
            return ScriptedCall(tool.name, raw)
        count = self.pick(range(2, kit.parallel_calls + 1), "parallel calls")
        return [one_call([*tools, *targets]) for _ in range(count)]

    def start(self) -> None:
        """A process takes the run up: draw at which of its durable boundaries it dies
        (one draw per process, not one per boundary: draws are what examples cost)."""
        self.countdown = int(self.pick(_CRASH_CHOICES, "crash at boundary"))

    def crash(self, point: str) -> bool:
        self.countdown -= 1
        return self.countdown == 0

    def decisions(
        self, kit: AgentMachine, requests: Sequence[ApprovalRequest]
    ) -> list[PersonDecision] | None:
        count = len(requests)
        picked = [0] if count == 1 else self.draw(_subsets(count), "calls decided")
        kinds = list(_KINDS) + (["edit_invalid"] if kit.invalid_edits else [])
        made = []
        for index in picked:
            request = requests[index]
            if request.reason == "in_doubt":
                # A careful person: what took effect must not run again.
                if kit.ran(request.idempotency_key):
                    made.append(PersonDecision("reject", request.call_id))
                else:
                    kind = self.pick(("approve", "reject"), "in doubt")
                    made.append(PersonDecision(kind, request.call_id))
                continue
            kind = self.pick(kinds, f"decision on {request.call_id}")
            tool = kit._originals.tool(request.agent, request.tool)
            if kind == "edit" and tool is not None:
                arguments = self.draw(arguments_for(tool), "edited arguments")
                made.append(PersonDecision("approve", request.call_id, arguments=arguments))
            elif kind in ("edit", "edit_invalid"):
                bad = {**request.arguments, "unexpected_argument": 1}
                made.append(PersonDecision("approve", request.call_id, arguments=bad))
            elif kind.endswith("_always"):
                verb = kind.removesuffix("_always")
                made.append(PersonDecision(verb, request.call_id, always=True))
            else:
                made.append(PersonDecision(kind, request.call_id))
        return made

    def resume_from(self, eligible: Sequence[int]) -> int | None:
        if not eligible:
            return None
        return int(self.pick(eligible, "resume from checkpoint"))


class Replayer:
    """The choices of a recorded plan, in order; where the code takes another path than
    the plan knows, the replay ends there."""

    def __init__(
        self,
        decisions: Sequence[Sequence[PersonDecision]],
        crashes: Sequence[str],
        resume_from: int | None,
    ) -> None:
        self.rounds = [list(r) for r in decisions]
        self.crashes = list(crashes)
        self.resume = resume_from

    def start(self) -> None:
        pass

    def new_turn(self, kit: AgentMachine, request: ModelRequest) -> Turn:
        raise EndOfScript(f"the script has no turn {request.turn}")

    def crash(self, point: str) -> bool:
        if point in self.crashes:
            self.crashes.remove(point)
            return True
        return False

    def decisions(
        self, kit: AgentMachine, requests: Sequence[ApprovalRequest]
    ) -> list[PersonDecision] | None:
        return self.rounds.pop(0) if self.rounds else None

    def resume_from(self, eligible: Sequence[int]) -> int | None:
        return self.resume if self.resume in eligible else None


class KitModel:
    """The one model of every agent: its next answer is the plan's, or a new one drawn."""

    def __init__(self, kit: AgentMachine) -> None:
        self.kit = kit

    async def respond(self, request: ModelRequest) -> ModelResponse:
        kit = self.kit
        kit._check_request(request)
        script = kit.plan.script
        if request.turn < len(script):
            turn = script[request.turn]
        else:
            try:
                turn = kit._oracle.new_turn(kit, request)
            except Exception as exc:
                # hypothesis' own errors (flaky data generation, say) must reach hypothesis,
                # not become the model's failure in the driver.
                raise Escaped(exc) from exc
            script.append(turn)
        kit._note_answer(request.agent, turn)
        return _response(turn, request.turn)
