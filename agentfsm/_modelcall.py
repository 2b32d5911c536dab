"""The model call: a request built from the run, the model's answer (streamed to the run's
event stream when someone listens), and what the step needs beside it that is the user's
code or the clock: approval rules' answers, guardrails' verdicts, deadlines. Part of the
driver."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ._agents import Agent, AgentSet
from ._errors import (
    AgentFSMError,
    ConfigurationError,
    ModelBehaviorError,
    ModelError,
    ToolArgumentsError,
)
from ._events import ModelResponded
from ._guardrun import check_response
from ._items import ModelResponse, ToolCallItem
from ._json import copy_json
from ._model import (
    ModelProvider,
    ModelRequest,
    PreviousResponse,
    ResponseDone,
    TextDelta,
    ToolCallDelta,
    ToolCallStarted,
    stream_events,
)
from ._run_events import ModelCallFinished, ModelCallStarted, ModelTextDelta, ModelToolCallDelta
from ._settings import ModelSettings
from ._state import RunState
from ._storable import storable_response
from ._stream import Emitter
from ._toolrun import carrying

__all__ = ["ModelCalls"]

log = logging.getLogger("agentfsm")


class ModelCalls:
    """Asks agents' models for their turns, for one runner: ``provider`` resolves model
    names (the OpenAI-compatible provider of ``agentfsm.models`` when None, configured from
    the environment), ``approval_timeout`` and ``clock`` set the calls' deadlines."""

    def __init__(
        self,
        provider: ModelProvider | None,
        approval_timeout: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.provider = provider
        self.approval_timeout = approval_timeout
        self.clock = clock
        self._cache: dict[str, Any] = {}

    async def ask(
        self, agents: AgentSet, state: RunState, emitter: Emitter | None
    ) -> ModelResponded:
        """The model of the run's current agent, asked for its next turn, as the event the
        step takes: its answer, the approval rules' and guardrails' verdicts, deadlines."""
        agent = agents.agent(state.current_agent)
        model = agent.model
        if isinstance(model, str):
            model = self._named_model(model, state)
        if not callable(getattr(model, "respond", None)):
            raise carrying(
                ConfigurationError(
                    f"agent {agent.name!r} has no usable model (got {model!r}); give it an object "
                    "with an async respond(request) method"
                ),
                state,
            )
        given, items = state.conversation()
        request = ModelRequest(
            run_id=state.run_id,
            agent=agent.name,
            instructions=_instructions(agent, copy_json(state.context)),
            input=given,
            items=items,
            tools=agents.tool_specs(agent.name),
            output_schema=agents.output_schema(agent.name),
            turn=state.turn,
            settings=_settings(agent, state),
            previous=_previous(state),
        )
        if emitter is None:
            response = await _answer(model, request, agent.name, state)
        else:
            name = _model_name(model)
            await emitter.live(ModelCallStarted, agent=agent.name, model=name, turn=state.turn)
            try:
                response = await _answer(model, request, agent.name, state, emitter)
            except BaseException as exc:
                cancelled = isinstance(exc, asyncio.CancelledError)
                await emitter.live(
                    ModelCallFinished,
                    agent=agent.name,
                    model=name,
                    error="cancelled" if cancelled else str(exc),
                    error_type="cancelled" if cancelled else _error_type(exc),
                )
                raise
            usage = response.usage if isinstance(response, ModelResponse) else None
            await emitter.live(ModelCallFinished, agent=agent.name, model=name, usage=usage)
        if not isinstance(response, ModelResponse):
            raise carrying(
                ModelBehaviorError(
                    f"model of agent {agent.name!r} returned {type(response).__name__}, "
                    "not a ModelResponse"
                ),
                state,
            )
        response = storable_response(response)
        checks = await check_response(
            agents, agent.name, state.run_id, copy_json(state.context), response
        )
        return ModelResponded(
            response=response,
            needs_approval=await self._approval_rules(
                agents, state, response, checks.arguments, checks.blocked
            ),
            deadlines=self._deadlines(agents, state, response),
            guardrails=tuple(checks.verdicts),
            arguments=checks.arguments,
            final_output=checks.final_output,
        )

    def _deadlines(
        self, agents: AgentSet, state: RunState, response: ModelResponse
    ) -> dict[str, float]:
        """When each call expires if it must wait for a decision (the step keeps only the
        deadlines of calls that wait)."""
        deadlines: dict[str, float] = {}
        now = None
        for call in response.tool_calls:
            tool = agents.tool(state.current_agent, call.name)
            timeout = None if tool is None else tool.approval_timeout or self.approval_timeout
            if timeout is not None:
                now = self.clock() if now is None else now
                deadlines[call.call_id] = now + timeout
        return deadlines

    def _named_model(self, name: str, state: RunState) -> Any:
        model = self._cache.get(name)
        if model is None:
            provider = self.provider
            if provider is None:
                try:
                    from .models import default_provider
                except ImportError as exc:
                    raise carrying(
                        ConfigurationError(f"no model provider for the model name {name!r}: {exc}"),
                        state,
                    ) from None
                provider = self.provider = default_provider()
            model = self._cache[name] = provider.get_model(name)
        return model

    async def _approval_rules(
        self,
        agents: AgentSet,
        state: RunState,
        response: ModelResponse,
        replaced: Mapping[str, dict[str, Any]],
        blocked: set[str],
    ) -> dict[str, bool]:
        """Evaluate the approval functions of the called tools (the step cannot: they are the
        user's code and may await), on the arguments the guardrails left, for the calls they
        did not block. A function that raises counts as 'needs approval'."""
        answers: dict[str, bool] = {}
        for call in response.tool_calls:
            tool = agents.tool(state.current_agent, call.name)
            if tool is None or isinstance(tool.needs_approval, bool) or call.call_id in blocked:
                continue
            try:
                arguments = replaced.get(call.call_id) or tool.validate_json(call.arguments)
            except ToolArgumentsError:
                continue
            try:
                verdict = tool.needs_approval(copy_json(state.context), arguments)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                answers[call.call_id] = bool(verdict)
            except Exception:
                log.exception("needs_approval of tool %r raised; asking a human", tool.name)
                answers[call.call_id] = True
        return answers


async def _answer(
    model: Any,
    request: ModelRequest,
    agent: str,
    state: RunState,
    emitter: Emitter | None = None,
) -> Any:
    """The model's answer to ``request``: streamed, its deltas emitted, when someone listens
    and the model can stream. Its failures become ModelErrors carrying the state."""
    try:
        if emitter is None or not callable(getattr(model, "stream", None)):
            return await model.respond(request)
        async for part in stream_events(model, request):
            match part:
                case TextDelta(text=text):
                    await emitter.live(ModelTextDelta, agent=agent, text=text)
                case ToolCallStarted(call_id=call_id, name=name):
                    await emitter.live(
                        ModelToolCallDelta, agent=agent, call_id=call_id, name=name, arguments=""
                    )
                case ToolCallDelta(call_id=call_id, arguments=arguments):
                    await emitter.live(
                        ModelToolCallDelta,
                        agent=agent,
                        call_id=call_id,
                        name=None,
                        arguments=arguments,
                    )
                case ResponseDone(response=response):
                    return response
        raise ModelBehaviorError(f"the stream of agent {agent!r}'s model ended without a response")
    except AgentFSMError as exc:
        exc.state = exc.state or state
        raise
    except Exception as exc:
        raise carrying(ModelError(f"model of agent {agent!r} failed: {exc!r}"), state) from exc


def _error_type(exc: BaseException) -> str:
    """What failed, in few words: the exception's name, or for our ModelError, the name of
    the exception it translated (the model client's own)."""
    cause = exc.__cause__
    if isinstance(exc, ModelError) and cause is not None and type(exc) is ModelError:
        return type(cause).__name__
    return type(exc).__name__


def _model_name(model: Any) -> str:
    name = getattr(model, "model", None)
    return name if isinstance(name, str) else type(model).__name__


def _settings(agent: Agent, state: RunState) -> ModelSettings | None:
    """The agent's model settings for its next turn: a tool choice they force is reset to
    ``"auto"`` once the agent has called a tool in the run (``reset_tool_choice``)."""
    settings = agent.model_settings
    if settings is None or not settings.forces_tool or not agent.reset_tool_choice:
        return settings
    # Newest first: a forced choice makes the agent call at once, so this stops early.
    if any(isinstance(i, ToolCallItem) and i.agent == agent.name for i in reversed(state.items)):
        return msgspec.structs.replace(settings, tool_choice="auto")
    return settings


def _previous(state: RunState) -> PreviousResponse | None:
    """The response the server keeps for the run, with what it holds counted in the items
    the request sends (after a filtered handoff, the items since)."""
    stored = state.stored_response
    if stored is None:
        return None
    start = state.handoff_input.start if state.handoff_input is not None else 0
    if stored.items < start:
        return None
    return PreviousResponse(id=stored.id, items=stored.items - start)


def _instructions(agent: Agent, context: Any) -> str:
    if callable(agent.instructions):
        return str(agent.instructions(context))
    return agent.instructions
