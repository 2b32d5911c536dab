"""Test helpers that ship with agentfsm: a scripted model, hypothesis strategies, the store
conformance suite, ``AgentMachine``, a stateful property-test kit for your own agents, and
``CrashKit``, which kills your agent, store and tools with SIGKILL at every durable boundary,
and ``replay``, which checks stored runs against new code before it is deployed.

``ScriptedModel`` runs agents deterministically without a model server; the strategies
generate items, model responses, run states, tool arguments and final outputs for property
tests of your own agents. hypothesis (``pip install agentfsm[testing]``) is imported only by
what needs it (the strategies when built, ``AgentMachine`` and ``StoreConformance`` when first
used), so ``ScriptedModel``, ``FakeClock`` and ``CrashKit`` work without it.
"""

from typing import TYPE_CHECKING, Any

from ._clock import FakeClock
from ._crash import CrashKit, CrashOutcome, CrashReport, CrashScenario, CrashSite, crash_point
from ._kit_plan import PersonDecision, approve, expire, reject, stale
from ._kit_world import Crash, Execution, keyed
from ._replay import Difference, ReplayReport, replay, replay_runs
from ._schema_strategies import arguments_for, from_schema, outputs_for
from ._scripted import ScriptedCall, ScriptedModel, ScriptExhausted, Turn, call, handoff, say
from ._strategies import items, json_values, model_responses, run_states

if TYPE_CHECKING:
    from ._kit import AgentMachine
    from ._store_suite import StoreConformance

__all__ = [
    "AgentMachine",
    "Crash",
    "CrashKit",
    "CrashOutcome",
    "CrashReport",
    "CrashScenario",
    "CrashSite",
    "Difference",
    "Execution",
    "FakeClock",
    "PersonDecision",
    "ReplayReport",
    "ScriptExhausted",
    "ScriptedCall",
    "ScriptedModel",
    "StoreConformance",
    "Turn",
    "approve",
    "arguments_for",
    "call",
    "crash_point",
    "expire",
    "from_schema",
    "handoff",
    "items",
    "json_values",
    "keyed",
    "model_responses",
    "outputs_for",
    "reject",
    "replay",
    "replay_runs",
    "run_states",
    "say",
    "stale",
]


def __getattr__(name: str) -> Any:
    # AgentMachine and StoreConformance are built on hypothesis: import them on first use.
    if name == "AgentMachine":
        from ._kit import AgentMachine

        return AgentMachine
    if name == "StoreConformance":
        from ._store_suite import StoreConformance

        return StoreConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
