"""Test helpers that ship with agentfsm: a scripted model and hypothesis strategies.

``ScriptedModel`` runs agents deterministically without a model server; the strategies
generate items, model responses and run states for property tests of your own agents.
"""

from ._scripted import ScriptedCall, ScriptedModel, ScriptExhausted, Turn, call, handoff, say
from ._store_suite import FakeClock, StoreConformance
from ._strategies import items, json_values, model_responses, run_states

__all__ = [
    "FakeClock",
    "ScriptExhausted",
    "ScriptedCall",
    "ScriptedModel",
    "StoreConformance",
    "Turn",
    "call",
    "handoff",
    "items",
    "json_values",
    "model_responses",
    "run_states",
    "say",
]
