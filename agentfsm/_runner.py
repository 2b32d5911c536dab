"""The driver: the only part that awaits.

It asks the pure core what to do next, does exactly one kind of I/O for that outcome (ask the
model, or run tools), turns the result into the next event, and steps again, checkpointing
after every step.

This module holds ``Runner`` (its settings, its entry points, and the loop). The rest of the
driver lives beside it: ``_worker`` (leases, checkpoints, the loop of ``work``), ``_control``
(what a run's handle and deadlines bring), ``_result`` (``RunResult``), ``_modelcall``,
``_toolrun``, ``_guardrun``, ``_handoffrun``, ``_nestrun``, ``_stream``, ``_session`` and
``_patience``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import msgspec

from ._agents import Agent, AgentSet
from ._control import MAIL_STATUSES, controlled, decided, expiries, guarded
from ._conversations import SessionHistoryHook, check_restart, session_history
from ._errors import (
    AgentFSMError,
    ConfigurationError,
    ConflictError,
    InboxChanged,
)
from ._events import (
    ApprovalsDecided,
    Cancelled,
    Event,
    Resumed,
    Started,
)
from ._guardrun import (
    ERROR_KINDS,
    ErrorHandler,
    checked_event,
    handle_error,
)
from ._handoffrun import take_handoff
from ._items import Item
from ._machine import RunStatus
from ._model import (
    ModelProvider,
)
from ._modelcall import ModelCalls
from ._nestrun import tools_of
from ._outcomes import (
    FinalOutput,
    Handoff,
    Interruption,
    Outcome,
    RunAgain,
    ToolCall,
)
from ._patience import PatientStore, check_wait
from ._result import RunResult, finished, run_result, undecided
from ._session import Heartbeat, Session
from ._state import RunState
from ._step import (
    ToolErrors,
    check_max_turns,
    new_run,
    pending_outcome,
    step,
)
from ._stream import Control, Emitter, Listener, Live, RunHandle, RunHooks
from ._toolrun import ToolRunner, ToolsCancelled, carrying
from ._worker import checkpoint, release, with_lease, work_loop
from .stores._base import ChangeFeed, RetryPolicy, Store

__all__ = ["RunResult", "Runner"]

log = logging.getLogger("agentfsm")

#: Called with every new state, after every step (sync or async).
Checkpoint = Callable[[RunState], Awaitable[None] | None]


class Runner:
    """Runs agents: starts runs, resumes them, executes tools, checkpoints every step.

    Args:
        tool_errors: ``"feed"`` (default) tells the model about a tool that raised, timed
            out, does not exist or got malformed arguments, as the call's result; ``"raise"``
            raises ToolError / ModelBehaviorError instead.
        on_step: called with the new state after every step (sync or async), to persist it.
        model_provider: resolves agents whose ``model`` is a name (default: the
            OpenAI-compatible provider of ``agentfsm.models``, configured from the environment).
        approval_timeout: seconds a call may wait for a decision before it expires, for tools
            that set no ``approval_timeout`` of their own (default: no limit). An expired call
            does not run; the model is told, and the audit trail says expired. Workers expire
            calls by themselves.
        clock: the time of deadlines and expiries (default ``time.time``).
        lease_seconds: how long this runner's claim on a run lasts, renewed while it runs
            (default 30): a positive, finite number of seconds.
        retry: how ``work`` retries a run that fails (a tool or model error that the run
            raises, data it cannot read): with a growing delay, then parked, set aside
            until someone resumes it by id (default: ``RetryPolicy()``, 5 attempts).
        hooks: lifecycle hooks (``RunHooks``) for every run of this runner; they consume
            the run's event stream (see ``run_streamed``).
        store_wait: how long each call of the store is tried again while the store is
            unavailable (StoreUnavailable: a lost connection, a server restart, a lock
            timeout, a busy database), in seconds, with a growing, jittered delay (default
            30; 0 does not retry). After that the call raises StoreUnavailable, saying it
            gave up. ``run``, ``resume`` and ``work`` wait so, and a write tried again
            is never applied twice (docs/durability.md says how).
        error_handlers: ``{"max_turns": handler}``: when a run uses all its turns, the
            handler (sync or async, given a ``RunErrorHandlerInput``) may end it with a final
            output instead (a ``RunErrorHandlerResult``, or the output itself), which the
            output guardrails check; None leaves the run failed. A handler that raises
            leaves it failed, and its error says so (see docs/guardrails.md).
        session_history: for a new run of a session, given the session's transcript so far
            (a ``SessionHistory``), returns the items the run starts from, before its own
            input (sync or async): keep the last items (``keep_last(n)``), or summarise
            them. Called once, when the run starts; the earlier runs stay in the store as
            they are (see docs/sessions.md). Default: the whole transcript.
    """

    def __init__(
        self,
        *,
        tool_errors: ToolErrors = "feed",
        on_step: Checkpoint | None = None,
        model_provider: ModelProvider | None = None,
        store: Store | None = None,
        owner: str | None = None,
        lease_seconds: float = 30.0,
        approval_timeout: float | None = None,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        hooks: RunHooks | Sequence[RunHooks] = (),
        store_wait: float = 30.0,
        error_handlers: Mapping[str, ErrorHandler] | None = None,
        session_history: SessionHistoryHook | None = None,
    ):
        if tool_errors not in ("feed", "raise"):
            raise ConfigurationError("tool_errors must be 'feed' or 'raise'")
        if approval_timeout is not None and not approval_timeout > 0:
            raise ConfigurationError("approval_timeout must be a positive number of seconds")
        if not isinstance(lease_seconds, int | float) or not 0 < lease_seconds < math.inf:
            raise ConfigurationError(
                f"lease_seconds must be a positive number of seconds, not {lease_seconds!r}"
            )
        self.store_wait = check_wait(store_wait)
        self.clock = clock
        self._calls = ModelCalls(model_provider, approval_timeout, clock)
        self.retry = retry or RetryPolicy()
        self.tool_errors: ToolErrors = tool_errors
        self.on_step = on_step
        self.store = store
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.hooks: tuple[RunHooks, ...] = (hooks,) if isinstance(hooks, RunHooks) else tuple(hooks)
        if not all(isinstance(h, RunHooks) for h in self.hooks):
            raise ConfigurationError("hooks must be RunHooks (or a list of them)")
        self._tools = ToolRunner(tool_errors=tool_errors, owner=self.owner)
        self._tools.runner = self
        self.lease_seconds = lease_seconds
        self._stops = 0  # calls of stop(): work started before the latest one stops
        self._heartbeat: Heartbeat | None = None  # renews the leases of this runner's runs
        self._feeds: set[ChangeFeed] = set()  # what ``work`` loops wait on: stop() wakes them
        handlers = dict(error_handlers or {})
        unknown = sorted(set(handlers) - set(ERROR_KINDS))
        if unknown or not all(callable(h) for h in handlers.values()):
            raise ConfigurationError(
                f"error_handlers maps {', '.join(map(repr, ERROR_KINDS))} to a function "
                f"(unknown: {unknown})"
                if unknown
                else "error_handlers values are functions"
            )
        self.error_handlers: dict[str, ErrorHandler] = handlers
        if session_history is not None and not callable(session_history):
            raise ConfigurationError("session_history must be a function (sync or async)")
        self.session_history = session_history

    @property
    def model_provider(self) -> ModelProvider | None:
        """What resolves agents' model names (set on first use when None)."""
        return self._calls.provider

    @property
    def approval_timeout(self) -> float | None:
        return self._calls.approval_timeout

    def stop(self) -> None:
        """Stop the work under way: its runs stop after their current step, which is saved
        (calls that the step started run to the end and their results are recorded, so none
        is left in doubt), and ``work`` returns. For SIGTERM handlers: the stopped runs stay
        runnable, and resume where they were.

        It stops what was started before it, only: a ``run``, ``resume`` or ``work`` called
        after ``stop()`` goes on as usual. So a stopped runner can be started again, and work
        started while the old work winds down does not undo the stop."""
        self._stops += 1
        for feed in list(self._feeds):
            feed.wake()

    # -- entry points ----------------------------------------------------------------------

    def run_sync(
        self,
        agent: Agent,
        input: str | Sequence[Item] | RunState,
        *,
        context: Any = None,
        max_turns: int | None = None,
        run_id: str | None = None,
        session: str | None = None,
    ) -> RunResult:
        """``run`` for code without an event loop."""
        return _sync(
            self.run(
                agent, input, context=context, max_turns=max_turns, run_id=run_id, session=session
            )
        )

    def resume_sync(self, agent: Agent, run_id: str, *, max_turns: int | None = None) -> RunResult:
        """``resume`` for code without an event loop."""
        return _sync(self.resume(agent, run_id, max_turns=max_turns))

    async def run(
        self,
        agent: Agent,
        input: str | Sequence[Item] | RunState,
        *,
        context: Any = None,
        max_turns: int | None = None,
        run_id: str | None = None,
        session: str | None = None,
    ) -> RunResult:
        """Run ``agent`` on ``input`` until it completes, fails, or pauses for approvals.

        With ``session`` (a conversation thread's id; needs a store), the run continues that
        conversation: it starts from the transcript of the session's earlier runs (through
        the runner's ``session_history`` hook) plus ``input``, and is stored as the
        session's next run. A session has one active run at a time: SessionBusy, and
        nothing stored, while its last run is live or waiting (docs/sessions.md).

        Passing a RunState resumes it: ``agent`` is then the starting agent, the names in the
        state are resolved against every agent reachable from it, and decisions recorded on
        the state (``approve`` / ``reject``) are applied. ``max_turns`` (default 10) limits
        the model turns; resuming a run that failed on its limit with a higher one goes on.
        With a store, the run is stored and checkpointed after every step.

        Raises ContextError for a context that is not JSON data, StoreUnavailable when the
        store stays unavailable for longer than ``store_wait``, ConfigurationError for a
        ``max_turns`` that is not an int of at least 0, ResolutionError when the
        state names an agent or tool that no longer exists, ModelError when the model fails,
        ToolError (with ``tool_errors="raise"``), ConflictError when the stored run is being
        run elsewhere or changed since the state was loaded, UndecidedError for a paused state
        with no decision to apply (``approve`` returns a new state: pass that one),
        DecisionRefused when the state's decisions conflict with ones posted to the store,
        SessionBusy (a ConflictError) for a session whose last run is still active,
        HookError when the ``session_history`` hook raises (the run stays new, stored).
        GuardrailTripped when a guardrail trips or raises (the run is saved ``failed``; a run
        that one failed raises it again whenever it is driven). Errors raised mid-run carry
        the last state in ``error.state``.
        """
        return await self._run(
            agent,
            input,
            context=context,
            max_turns=max_turns,
            run_id=run_id,
            session=session,
            live=None,
        )

    def run_streamed(
        self,
        agent: Agent,
        input: str | Sequence[Item] | RunState,
        *,
        context: Any = None,
        max_turns: int | None = None,
        run_id: str | None = None,
        session: str | None = None,
    ) -> RunHandle:
        """``run`` in the background: returns its handle at once. ``handle.events()`` yields
        the run's events as they happen (the model's text as it arrives, with a model that
        streams), ``await handle.result()`` returns the RunResult, and ``cancel``, ``pause``
        and ``inject`` steer the run while it goes on. Call it from a running event loop. With
        ``session``, a session that is busy raises SessionBusy from ``handle.result()``."""
        _require_loop("run_streamed")
        if isinstance(input, RunState):
            run_id = input.run_id
        handle = RunHandle(run_id or uuid.uuid4().hex)
        handle._start(
            lambda live: self._run(
                agent,
                input,
                context=context,
                max_turns=max_turns,
                run_id=handle.run_id,
                session=session,
                live=live,
            )
        )
        return handle

    def resume_streamed(
        self, agent: Agent, run_id: str, *, max_turns: int | None = None
    ) -> RunHandle:
        """``resume`` in the background, with the handle of ``run_streamed``."""
        _require_loop("resume_streamed")
        handle = RunHandle(run_id)
        handle._start(lambda live: self._resume(agent, run_id, max_turns=max_turns, live=live))
        return handle

    async def _run(
        self,
        agent: Agent,
        input: str | Sequence[Item] | RunState,
        *,
        context: Any,
        max_turns: int | None,
        run_id: str | None,
        live: Live | None,
        session: str | None = None,
    ) -> RunResult:
        since = self._stops
        agents = AgentSet(agent)
        if session is not None:
            if isinstance(input, RunState):
                raise ConfigurationError(
                    "a resumed run keeps the session it was started in; pass session only "
                    "with new input"
                )
            if self.store is None:
                raise ConfigurationError(
                    "sessions live in a store: a run with a session needs Runner(store=...)"
                )
            # A store without sessions says so here, before a run is stored.
            await self.store.session_runs(session)
        if isinstance(input, RunState):
            if context is not None:
                raise ConfigurationError(
                    "a resumed run keeps the context stored in its state; do not pass context"
                )
            state = input
            agents.check(state)
        else:
            state = new_run(
                agent,
                input,
                run_id=run_id or uuid.uuid4().hex,
                context=context,
                max_turns=10 if max_turns is None else max_turns,
                session=session,
            )
            if self.store is not None:
                await self._require_store().create(state)
        given = isinstance(input, RunState)
        if self.store is None:
            return await self._drive(
                agents, state, max_turns, None, given=given, since=since, live=live
            )
        return await with_lease(
            self, agents, state, max_turns, None, 0.0, given=given, since=since, live=live
        )

    async def resume(self, agent: Agent, run_id: str, *, max_turns: int | None = None) -> RunResult:
        """Continue the stored run ``run_id`` (decisions may have been recorded in the store
        by another process; a paused run goes on). Raises UnknownRunError, ResolutionError,
        ConflictError (the run is leased to another worker), and the errors of ``run``."""
        return await self._resume(agent, run_id, max_turns=max_turns, live=None)

    async def _resume(
        self, agent: Agent, run_id: str, *, max_turns: int | None, live: Live | None
    ) -> RunResult:
        since = self._stops
        store = self._require_store()
        claimed_at = time.monotonic()
        lease = await store.claim(self.owner, lease_seconds=self.lease_seconds, run_id=run_id)
        if lease is None:
            raise ConflictError(f"run {run_id} is being run by another worker (it holds a lease)")
        try:
            state = await store.load(run_id)
            agents = AgentSet(agent)
            agents.check(state)
        except BaseException:
            await release(store, lease, failed=True)
            raise
        return await with_lease(
            self, agents, state, max_turns, lease, claimed_at, since=since, live=live
        )

    async def work(
        self,
        agent: Agent,
        *,
        poll_interval: float = 0.5,
        until_idle: bool = False,
    ) -> int:
        """Run the store's runnable runs of ``agent`` (new ones, resumed ones whose decisions
        arrived, ones whose worker died) until ``stop()`` is called, or, with ``until_idle``,
        until none is left. Returns how many runs it advanced. A run that raises is logged
        and retried later (see ``retry``); a store that fails (a database restart, a dropped
        connection) is retried with a growing delay, and never stops the worker: looking for
        work, for as long as it takes; inside a run, for up to ``store_wait`` seconds per
        call, after which the run is left leased, and retried when its lease runs out.
        ``poll_interval`` is the longest pause between looks when there is no work: a
        positive, finite number of seconds (ConfigurationError otherwise). The worker looks
        again at once when the store tells of a change that may have made a run claimable
        (a run created, a decision or input posted, a lease given back: see
        ``Store.changes``), so an approval starts its tool at once; the interval bounds how
        late it notices what no one announces (a dead worker's lease running out, a retry
        coming due, a deadline passing), and is the pace of a store that cannot notify."""
        if (
            isinstance(poll_interval, bool)
            or not isinstance(poll_interval, int | float)
            or not 0 < poll_interval < math.inf
        ):
            raise ConfigurationError(
                f"poll_interval must be a positive number of seconds, not {poll_interval!r}"
            )
        store = self._require_store()
        agents = AgentSet(agent)
        since = self._stops
        # Until idle, nothing is waited for: no need to listen.
        feed = ChangeFeed(None) if until_idle else store.changes(claimable=True)
        async with feed:
            self._feeds.add(feed)
            try:
                return await work_loop(self, store, agents, poll_interval, until_idle, feed, since)
            finally:
                self._feeds.discard(feed)

    def _require_store(self) -> PatientStore:
        """The store, its calls tried again while it is unavailable (``store_wait``)."""
        if self.store is None:
            raise ConfigurationError("this needs a Runner with a store: Runner(store=...)")
        return PatientStore.of(self.store, self.store_wait)

    # -- the loop --------------------------------------------------------------------------

    async def _drive(
        self,
        agents: AgentSet,
        state: RunState,
        max_turns: int | None,
        session: Session | None,
        *,
        given: bool = False,
        since: int,
        live: Live | None,
        worker: bool = False,
    ) -> RunResult:
        """``_loop``, with the run's event stream: it ends with RunStopped, whatever ends
        the loop, so that its consumers know this process no longer drives the run."""
        emitter = self._emitter(agents, state, session, live)
        control = None if live is None else live.control
        if emitter is None:
            return await self._loop(
                agents, state, max_turns, session, None, control, given, since, worker
            )
        try:
            result = await self._loop(
                agents, state, max_turns, session, emitter, control, given, since, worker
            )
        except BaseException as exc:
            await emitter.stop(None, exc)
            raise
        await emitter.stop(result.state, None)
        return result

    async def _loop(
        self,
        agents: AgentSet,
        state: RunState,
        max_turns: int | None,
        session: Session | None,
        emitter: Emitter | None,
        control: Control | None,
        given: bool,
        since: int,
        worker: bool,
    ) -> RunResult:
        """Step the run until it stops (waits, pauses or ends), or until ``stop()`` is called
        again (it had been called ``since`` times when the work started). A paused state
        ``given`` by the caller that has no decision to apply raises UndecidedError: the
        decision was most likely made on a copy and lost. (A run resumed by id just reports
        that it still waits.) A run paused on request goes on, unless a ``worker`` drives it:
        workers wait for it to be unpaused."""
        outcome: Outcome
        event: Event | None = None
        acknowledge: tuple[int, ...] = ()
        mail = session is not None
        stepped = False
        recovering = False
        if max_turns is not None:
            check_max_turns(max_turns)
        if (
            max_turns is not None
            and max_turns != state.max_turns
            and state.status in (RunStatus.RUNNING, RunStatus.TOOLS)
        ):
            raise ConfigurationError(
                f"a run in status {state.status.value!r} keeps its max_turns; change it when "
                "the run is new, interrupted or failed on its limit"
            )
        match state.status:
            case RunStatus.NEW:
                event = Started(max_turns=max_turns)
            case RunStatus.INTERRUPTED if state.decisions or (
                max_turns is not None and max_turns != state.max_turns
            ):
                event = ApprovalsDecided(max_turns=max_turns)
            case RunStatus.FAILED if (
                max_turns is not None and max_turns > state.turn and _out_of_turns(state)
            ):
                event = Started(max_turns=max_turns)
            case RunStatus.PAUSED if not worker:
                event = Resumed()
            case RunStatus.TOOLS:
                # Loaded while its tools ran: the process that ran them is gone.
                outcome, recovering = pending_outcome(state), True
            case _:
                outcome = pending_outcome(state)
        if isinstance(event, Started) and state.session is not None:
            store = None if session is None else session.store
            if state.status is RunStatus.NEW:
                # The user's hook runs here, once; its items enter the run as event data.
                history = await session_history(store, state, self.session_history)
                event = msgspec.structs.replace(event, history=history)
            else:
                await check_restart(store, state)
        if emitter is not None:
            await emitter.start(state)
            if isinstance(event, Started) and not state.trace:
                # The run's trace context, from whoever traces it, is kept with the run as
                # data of the step that starts it.
                trace = emitter.trace_context()
                if trace:
                    event = msgspec.structs.replace(event, trace=trace)
        seen: int | None = None
        handled = False  # the error handler was called in this drive
        while True:
            if event is None and control is not None:
                event = controlled(state, control)
            if event is None and mail and session is not None and state.status in MAIL_STATUSES:
                event, acknowledge, seen = await session.take_mail(state)
                mail = event is not None
            if event is not None:
                event = await checked_event(agents, state, event)
                previous = state
                state, outcome = self._step(agents, state, event)
                try:
                    waiting = await checkpoint(
                        self.on_step,
                        previous,
                        state,
                        session,
                        acknowledge,
                        seen,
                        type(event).__name__,
                    )
                except InboxChanged:
                    # Something was posted while this step was taken from the inbox: take
                    # it again, with everything posted, so no decision is passed over.
                    state, outcome = previous, pending_outcome(previous)
                    event, acknowledge, seen, mail = None, (), None, True
                    continue
                mail = waiting or mail
                event, acknowledge, seen = None, (), None
                stepped, recovering = True, False
                if emitter is not None:
                    await emitter.stepped(previous, state)
                # Never between recording calls as started and running them: they would be in
                # doubt on resume, though none of them ran.
                if (
                    self._stops != since
                    and not state.status.is_terminal
                    and state.status is not RunStatus.TOOLS
                ):
                    return run_result(agents, state)  # the emitter was checked in stepped()
                continue
            match outcome:
                case Handoff() if state.handoff_due is not None:
                    event = await guarded(control, take_handoff(agents, state))
                case RunAgain() | Handoff():
                    event = await guarded(control, self._calls.ask(agents, state, emitter))
                case ToolCall(calls=calls):
                    tools = (
                        self._tools.recover(agents, state, session, emitter, control)
                        if recovering
                        else self._tools.run(agents, state, calls, session, emitter, control)
                    )
                    # The nested runs of agent tools move the run on (each of their steps
                    # is saved): the next step goes from where they left it.
                    outer = tools_of(state, session, self.on_step) if agents.nests else None
                    try:
                        if outer is None:
                            event = await guarded(control, tools)
                        else:
                            with outer as running:
                                try:
                                    event = await guarded(control, tools)
                                finally:
                                    state = running.state
                    except ToolsCancelled as cancelled:
                        assert control is not None
                        assert control.cancel_reason is not None
                        report = cancelled.report
                        event = Cancelled(
                            reason=control.cancel_reason,
                            results=report.results,
                            in_doubt=report.in_doubt,
                            started_by=report.started_by,
                        )
                case Interruption(requests=requests) if decided(state, requests):
                    # Decisions recorded on the state while its tools ran (the caller's, or
                    # another process's) apply now, without waiting for another resume.
                    event = ApprovalsDecided()
                case Interruption(requests=requests) if expired := expiries(requests, self.clock):
                    if session is not None:
                        # What people posted comes first; an expiry saved while something
                        # was posted is taken again (InboxChanged), after it.
                        if (await session.store.inbox(state.run_id)).ids:
                            mail = True
                            continue
                        seen = 0
                    event = ApprovalsDecided(decisions=expired)
                case Interruption(requests=requests) if requests and given and not stepped:
                    raise carrying(undecided(state, requests), state)
                case FinalOutput() if (
                    (handler := self.error_handlers.get("max_turns"))
                    and _out_of_turns(state)
                    and not handled
                ):
                    handled = True
                    event = await handle_error(handler, agents, state)
                    if event is None:
                        return finished(agents, state, emitter)
                case Interruption() | FinalOutput():
                    return finished(agents, state, emitter)
            if event is None:  # the model call was cancelled
                assert control is not None
                assert control.cancel_reason is not None
                event = Cancelled(reason=control.cancel_reason)

    def _emitter(
        self, agents: AgentSet, state: RunState, session: Session | None, live: Live | None
    ) -> Emitter | None:
        """The run's event stream, if anyone consumes it (no cost otherwise)."""
        listeners: list[Listener] = [hooks.on_event for hooks in self.hooks]
        if live is not None:
            listeners.append(live.listener)
        agent_hooks = {name: a.hooks for name, a in agents.items() if a.hooks is not None}
        if not listeners and not agent_hooks:
            return None
        # Positions: the lease's fencing token orders this process's events after those of
        # any process that drove the run before; without a store, the clock does.
        epoch = session.lease.token if session is not None else max(1, int(self.clock() * 1000))
        return Emitter(state, epoch, listeners, agent_hooks, self.hooks)

    def _step(self, agents: AgentSet, state: RunState, event: Event) -> tuple[RunState, Outcome]:
        try:
            return step(state, event, agents, tool_errors=self.tool_errors)
        except AgentFSMError as exc:
            exc.state = state
            raise


def _require_loop(method: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigurationError(f"Runner.{method} needs a running event loop") from None


def _sync(coroutine: Coroutine[Any, Any, RunResult]) -> RunResult:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise ConfigurationError("the *_sync methods cannot be called from a running event loop")


def _out_of_turns(state: RunState) -> bool:
    return state.error is not None and state.error.kind == "max_turns_exceeded"
