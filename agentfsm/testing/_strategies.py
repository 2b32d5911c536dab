"""Hypothesis strategies for agentfsm values: JSON data, items, model responses, run states.

Use them to property-test your own agents, stores and codecs::

    from hypothesis import given
    from agentfsm.testing import run_states

    @given(run_states())
    def test_my_store_round_trips(state):
        assert load(save(state)) == state

hypothesis is imported when a strategy is built, not when ``agentfsm.testing`` is imported, so
``ScriptedModel`` works without it (install it with the ``agentfsm[testing]`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from .._codec import SCHEMA_VERSION
from .._decisions import DecisionRecord
from .._events import Decision
from .._items import (
    AssistantMessage,
    Feedback,
    HandoffItem,
    Item,
    ModelResponse,
    ModelToolCall,
    ToolCallItem,
    ToolResultItem,
    Usage,
    UserMessage,
)
from .._json import digest
from .._machine import RunStatus
from .._outcomes import RunError
from .._state import (
    CallRecord,
    ForkOrigin,
    HandoffDue,
    HandoffInput,
    Policy,
    RunState,
    StoredResponse,
    Transcript,
)
from .._step import idempotency_key

if TYPE_CHECKING:
    from hypothesis.strategies import DrawFn, SearchStrategy

__all__ = ["items", "json_values", "model_responses", "run_states"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_CALL_STATUSES: list[Literal["awaiting_approval", "started", "committed"]] = [
    "awaiting_approval",
    "started",
    "committed",
]
_REASONS: list[Literal["approval", "in_doubt"]] = ["approval", "in_doubt"]


def json_values(*, max_leaves: int = 8) -> SearchStrategy[Any]:
    """JSON data as agentfsm accepts it in contexts, arguments and outputs.

    Values are None, bools, ints (within 64-bit signed range), finite floats, strs, lists of
    JSON values and dicts with str keys, nested up to about ``max_leaves`` scalars. Every
    value survives a JSON round trip unchanged (lists stay lists; no tuples, NaN or
    non-str keys).
    """
    from hypothesis import strategies as st

    scalars: SearchStrategy[Any] = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=_INT64_MIN, max_value=_INT64_MAX),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def _json_objects() -> SearchStrategy[dict[str, Any]]:
    from hypothesis import strategies as st

    return st.dictionaries(st.text(max_size=8), json_values(max_leaves=4), max_size=4)


def _names() -> SearchStrategy[str]:
    """Short non-empty names (agents, tools, call ids)."""
    from hypothesis import strategies as st

    return st.text(min_size=1, max_size=12)


def items() -> SearchStrategy[Item]:
    """Transcript items of every kind: user and assistant messages, tool calls (arguments as
    JSON text, not always valid), tool results (some errors), handoffs and feedback."""
    from hypothesis import strategies as st

    text = st.text(max_size=40)
    return st.one_of(
        st.builds(UserMessage, content=text),
        st.builds(AssistantMessage, content=text, agent=_names()),
        st.builds(
            ToolCallItem,
            call_id=_names(),
            tool=_names(),
            arguments=_arguments_text(malformed=True),
            agent=_names(),
        ),
        st.builds(
            ToolResultItem,
            call_id=_names(),
            tool=_names(),
            output=text,
            agent=_names(),
            is_error=st.booleans(),
        ),
        st.builds(HandoffItem, call_id=_names(), source=_names(), target=_names()),
        st.builds(Feedback, content=text),
    )


def _usages() -> SearchStrategy[Usage]:
    from hypothesis import strategies as st

    count = st.integers(min_value=0, max_value=10**9)
    return st.builds(
        Usage,
        requests=count,
        input_tokens=count,
        output_tokens=count,
        cached_tokens=count,
        reasoning_tokens=count,
    )


def _arguments_text(*, malformed: bool) -> SearchStrategy[str]:
    """Tool-call arguments as the model sends them: a JSON object as text, or (``malformed``)
    sometimes text that is not one: not JSON, JSON that is not an object, a cut-off object."""
    from hypothesis import strategies as st

    valid = _json_objects().map(lambda value: msgspec.json.encode(value).decode())
    if not malformed:
        return valid
    not_an_object = json_values(max_leaves=3).filter(lambda v: not isinstance(v, dict))
    return st.one_of(
        valid,
        st.text(max_size=20),
        not_an_object.map(lambda value: msgspec.json.encode(value).decode()),
        valid.filter(lambda s: len(s) > 1).map(lambda s: s[: len(s) // 2]),
    )


def model_responses(
    tool_names: Sequence[str] | None = None, *, malformed: bool = False, max_calls: int = 4
) -> SearchStrategy[ModelResponse]:
    """Model responses: text, tool calls, or both (never neither), with usage.

    Tool calls have distinct, non-empty call ids. Their names come from ``tool_names`` when
    given (for example ``[t.name for t in agent.tools]``; an empty list gives text-only
    responses), otherwise arbitrary names. Their arguments are a JSON object as text; with
    ``malformed=True`` they are sometimes not (invalid JSON, a JSON array, a cut-off object),
    to test how a run reacts to a model that misbehaves.
    """
    from hypothesis import strategies as st

    text = st.text(max_size=40)
    usage = _usages()
    if tool_names is not None and not tool_names:
        return st.builds(ModelResponse, text=text, usage=usage)
    names = st.sampled_from(list(tool_names)) if tool_names else _names()

    def calls(min_size: int) -> SearchStrategy[tuple[ModelToolCall, ...]]:
        return st.lists(
            st.builds(
                ModelToolCall,
                call_id=_names(),
                name=names,
                arguments=_arguments_text(malformed=malformed),
            ),
            min_size=min_size,
            max_size=max(max_calls, min_size),
            unique_by=lambda call: call.call_id,
        ).map(tuple)

    return st.one_of(
        st.builds(ModelResponse, text=text, tool_calls=calls(0), usage=usage),
        st.builds(ModelResponse, tool_calls=calls(1), usage=usage),
    )


def run_states(
    *, statuses: Sequence[RunStatus] | None = None, max_items: int = 6
) -> SearchStrategy[RunState]:
    """Structurally valid RunStates, of the current schema version.

    Any status (or one of ``statuses``), a transcript of up to ``max_items`` items, input and
    staged input, a ledger of calls with distinct ids (their digests and idempotency keys
    computed as the engine does), decisions and their audit trail, sticky policies, usage, a
    JSON context and final output, an error or none. The fields need not tell a story a real
    run could produce (a completed run may have an error); every value is one ``to_json`` /
    ``from_json`` and the stores must carry unchanged.
    """
    from hypothesis import strategies as st

    status_choices = list(statuses) if statuses else list(RunStatus)
    # Every strategy is built once here: building them inside the draw costs more than drawing.
    names = _names()
    objects = _json_objects()
    values = json_values()
    some_items = st.lists(items(), max_size=max_items)
    few_items = st.lists(items(), max_size=2)
    maybe_text = st.none() | st.text(max_size=20)
    call_statuses = st.sampled_from(_CALL_STATUSES)
    reasons = st.sampled_from(_REASONS)
    policies = st.lists(
        st.builds(Policy, tool=names, approved=st.booleans(), message=maybe_text),
        max_size=2,
        unique_by=lambda policy: policy.tool,
    )
    errors = st.none() | st.builds(
        RunError,
        kind=st.sampled_from(["max_turns_exceeded", "cancelled"]) | names,
        message=st.text(max_size=40),
    )
    indexes = st.integers(min_value=0, max_value=3)
    moments = st.none() | st.floats(min_value=0, max_value=4e9, allow_nan=False)

    @st.composite
    def draw_state(draw: DrawFn) -> RunState:
        run_id = draw(names)
        agents = draw(st.lists(names, min_size=1, max_size=3, unique=True))

        def agent() -> str:
            return agents[draw(indexes) % len(agents)]

        max_turns = draw(st.integers(min_value=0, max_value=100))
        turn = draw(st.integers(min_value=0, max_value=max_turns))
        ledger = []
        for call_id in draw(st.lists(names, max_size=3, unique=True)):
            arguments = draw(objects)
            approvals = tuple(
                Decision(
                    call_id=call_id,
                    digest=digest(arguments),
                    approved=True,
                    by=by,
                    at=draw(moments),
                )
                for by in draw(st.lists(st.text(min_size=1, max_size=8), max_size=2, unique=True))
            )
            ledger.append(
                CallRecord(
                    call_id=call_id,
                    tool=draw(names),
                    agent=agent(),
                    arguments=arguments,
                    digest=digest(arguments),
                    idempotency_key=idempotency_key(run_id, turn, call_id),
                    status=draw(call_statuses),
                    reason=draw(reasons),
                    schema=draw(st.none() | objects),
                    quorum=draw(st.integers(min_value=1, max_value=5)),
                    approvals=approvals,
                )
            )
        decisions = [
            Decision(
                # A decision for the exact arguments, or for arguments that have changed.
                call_id=call.call_id,
                digest=call.digest if draw(st.booleans()) else "0" * 64,
                approved=draw(st.booleans()),
                always=draw(st.booleans()),
                message=draw(maybe_text),
                arguments=draw(st.none() | objects),
                by=draw(st.text(max_size=10)),
                at=draw(moments),
                expired=draw(st.booleans()),
            )
            for call in ledger
            if draw(st.booleans())
        ]
        audit = [
            DecisionRecord(
                decision=decision,
                tool=draw(names),
                agent=agent(),
                shown=draw(objects),
                outcome=draw(st.sampled_from(["applied", "refused", "counted"])),
                reason=draw(maybe_text),
            )
            for decision in decisions
            if draw(st.booleans())
        ]
        return RunState(
            schema_version=SCHEMA_VERSION,
            run_id=run_id,
            status=draw(st.sampled_from(status_choices)),
            starting_agent=agents[0],
            current_agent=agent(),
            turn=turn,
            max_turns=max_turns,
            input=tuple(draw(few_items)),
            items=Transcript(draw(some_items)),
            ledger=tuple(ledger),
            pending_handoff=agent() if draw(st.booleans()) else None,
            decisions=tuple(decisions),
            policies=tuple(draw(policies)),
            usage=draw(_usages()),
            final_output=draw(values),
            error=draw(errors),
            context=draw(values),
            staged=tuple(draw(few_items)),
            version=draw(st.integers(min_value=0, max_value=10**6)),
            audit=tuple(audit),
            forked_from=draw(
                st.none()
                | st.builds(
                    ForkOrigin,
                    run_id=st.text(min_size=1, max_size=8),
                    version=st.integers(min_value=0, max_value=10**6),
                )
            ),
            started_by=draw(st.text(max_size=10)),
            starter_may_approve=draw(st.booleans()),
            handoff_due=(
                HandoffDue(source=agent(), target=agent()) if draw(st.booleans()) else None
            ),
            handoff_input=(
                HandoffInput(
                    source=agent(),
                    target=agent(),
                    items=tuple(draw(few_items)),
                    start=draw(indexes),
                )
                if draw(st.booleans())
                else None
            ),
            stored_response=(
                StoredResponse(id=draw(names), items=draw(indexes)) if draw(st.booleans()) else None
            ),
        )

    return draw_state()
