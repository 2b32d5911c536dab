"""The exceptions agentfsm raises.

Every error agentfsm raises on purpose is an ``AgentFSMError``; errors from the libraries it
uses (msgspec, pydantic, httpx, sqlite3) are translated at the edge and never reach the user
bare. The tree::

    AgentFSMError
    ├── IllegalTransition      an event the run's status does not accept
    ├── InvalidEvent           a legal event whose content does not fit the state
    ├── StateFormatError       stored state that cannot be loaded (bad JSON, schema, signature)
    ├── ResolutionError        a name in the state that the code no longer defines
    │   ├── UnknownAgentError
    │   └── UnknownToolError
    │       └── ToolChangedError   a pinned tool (an MCP tool) gone or changed under a call
    ├── DecisionRefused        a decision that cannot be taken (says why; nothing changed)
    │   ├── UnknownCallError   a decision for a call that is not awaiting one
    │   └── UndecidedError     a paused run resumed with no decision to apply
    ├── ContextError           a run context that is not JSON data
    ├── ToolDefinitionError    a function that cannot become a tool
    ├── ToolArgumentsError     tool arguments that fail the tool's schema
    ├── ToolError              a tool raised or timed out (when configured to raise)
    ├── ToolInDoubt            raised by a tool: it may or may not have acted (call in doubt)
    ├── ModelError             the model failed, or answered something unusable
    │   ├── ModelBehaviorError
    │   │   └── ModelOutputError        (agentfsm.models) an answer the API does not define
    │   ├── ModelConnectionError        (agentfsm.models) unreachable, or the connection broke
    │   │   └── ModelTimeoutError
    │   └── ModelStatusError            (agentfsm.models) AuthenticationError, RateLimitError,
    │                                    BadRequestError, ServerError
    ├── ConfigurationError     agents or runner set up in a way that cannot work
    ├── HookError              a lifecycle hook or event listener raised (the run stopped)
    ├── HandoffError           a handoff's input filter or on_handoff failed (the run stopped)
    ├── GuardrailTripped       a guardrail tripped or raised: the run ended failed, saved
    └── StoreError             a store could not do what was asked
        ├── StoreUnavailable   unreachable or too busy for now; trying again later may work
        ├── ConflictError      a write based on a stale version (nothing was written)
        │   ├── LeaseLost      a write by a worker whose lease on the run has passed
        │   ├── InboxChanged   a step from the inbox, saved after more was posted to it
        │   └── SessionBusy    a session's run started while its last run is live or waiting
        └── UnknownRunError    no run with that id
            └── UnknownVersionError  no such version of a run (never saved, or pruned)

Errors raised by the runner while a run is under way carry the run's last consistent state
in ``state``, so nothing is lost: it can be saved and resumed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._state import RunState

__all__ = [
    "AgentFSMError",
    "ConfigurationError",
    "ConflictError",
    "ContextError",
    "DecisionRefused",
    "GuardrailTripped",
    "HandoffError",
    "HookError",
    "IllegalTransition",
    "InboxChanged",
    "InvalidEvent",
    "LeaseLost",
    "ModelBehaviorError",
    "ModelError",
    "ResolutionError",
    "SessionBusy",
    "StateFormatError",
    "StoreError",
    "StoreUnavailable",
    "ToolArgumentsError",
    "ToolChangedError",
    "ToolDefinitionError",
    "ToolError",
    "ToolInDoubt",
    "UndecidedError",
    "UnknownAgentError",
    "UnknownCallError",
    "UnknownRunError",
    "UnknownToolError",
    "UnknownVersionError",
]


class AgentFSMError(Exception):
    """Base class of every error agentfsm raises on purpose."""

    #: The run's last consistent state, when the error interrupted a run under way.
    state: RunState | None = None


class IllegalTransition(AgentFSMError):
    """An event that the run's current status does not accept.

    The state is unchanged. ``status`` and ``event`` name the pair that is not in the table.
    """

    def __init__(self, status: Any, event: str, detail: str = "") -> None:
        self.status = status
        self.event = event
        message = f"a run in status {str(status)!r} does not accept the event {event!r}"
        super().__init__(f"{message}: {detail}" if detail else message)


class InvalidEvent(AgentFSMError):
    """An event the status accepts, whose content does not fit the state (state unchanged)."""


class StateFormatError(AgentFSMError):
    """Serialized state that cannot be loaded: not JSON, wrong shape, unknown version or tag,
    or a missing or wrong signature."""


class ResolutionError(AgentFSMError):
    """A name stored in the state that no longer resolves against the code."""


class UnknownAgentError(ResolutionError):
    """The state names an agent that is not reachable from the starting agent."""


class UnknownToolError(ResolutionError):
    """The state names a tool that its agent no longer has."""


class ToolChangedError(UnknownToolError):
    """A call recorded against a pinned tool (an MCP server's tool) that is waiting or must
    run, whose tool is gone or has another argument schema now: the run was paused with one
    tool and would resume with another. The message names the tool, the call and what
    changed; ``tool`` and ``call_id`` say it too."""

    def __init__(self, message: str, *, tool: str = "", call_id: str = "") -> None:
        super().__init__(message)
        self.tool = tool
        self.call_id = call_id


class DecisionRefused(AgentFSMError):
    """A decision that cannot be taken: the call is not waiting, its arguments changed since
    they were shown, the edited arguments fail the tool's schema, or someone else decided
    first. The message says which; nothing was recorded."""


class UnknownCallError(DecisionRefused):
    """A decision names a call that is not awaiting one."""


class UndecidedError(DecisionRefused):
    """A paused run was resumed with no decision to apply, so it would only pause again
    (``approve`` and ``reject`` return a new state: resume that one)."""


class ContextError(AgentFSMError):
    """The run context is not JSON data (dicts with str keys, lists, str, int, float, bool,
    None)."""


class ToolDefinitionError(AgentFSMError):
    """A function that cannot be turned into a tool (for example ``*args``)."""


class ToolArgumentsError(AgentFSMError):
    """Arguments that do not validate against a tool's schema."""


class ToolError(AgentFSMError):
    """A tool raised or timed out, and the runner was told to raise instead of telling the
    model."""


class ToolInDoubt(AgentFSMError):
    """Raised by a tool whose call may or may not have taken effect (the service it called
    went away mid-call). The call is in doubt, like one a crash interrupted: re-run if the
    tool is idempotent, else a person decides."""


class ModelError(AgentFSMError):
    """The model could not be asked, or failed to answer."""


class ModelBehaviorError(ModelError):
    """The model answered something the engine cannot use (for example two tool calls with
    one id)."""


class ConfigurationError(AgentFSMError):
    """Agents, tools or the runner are set up in a way that cannot work."""


class HookError(AgentFSMError):
    """A consumer of a run's events (a lifecycle hook, a listener), or the runner's
    ``session_history`` hook, raised. The run stopped
    between two steps, its last state saved (``error.state``); it resumes once the hook is
    fixed. The hook's own exception is the ``__cause__``."""


class HandoffError(AgentFSMError):
    """A handoff's ``input_filter`` or ``on_handoff`` raised, or the filter gave something
    that is not a list of items. The run stopped before the next agent's first turn, its
    last state saved (``error.state``) and intact: it resumes, running them again, once they
    are fixed. The user's own exception, if any, is the ``__cause__``."""


class GuardrailTripped(AgentFSMError):
    """A guardrail tripped (or raised, which counts as tripping): the run ended ``failed``,
    its state saved and loadable (``state``), the verdict in its transcript. Driving the run
    again raises this again; it cannot be restarted.

    ``guardrail`` names it, ``kind`` says what it checked (``"input"``, ``"output"``,
    ``"tool_input"``, ``"tool_output"``), ``call_id`` and ``tool`` the call for a tool
    guardrail, ``info`` its ``output_info``."""

    def __init__(
        self,
        message: str,
        *,
        guardrail: str = "",
        kind: str = "",
        call_id: str | None = None,
        tool: str | None = None,
        info: Any = None,
    ) -> None:
        super().__init__(message)
        self.guardrail = guardrail
        self.kind = kind
        self.call_id = call_id
        self.tool = tool
        self.info = info


class StoreError(AgentFSMError):
    """A store could not do what was asked. Raised as it is, the cause will not pass by
    itself: a file that is not a store, a corrupted one, a full disk, missing tables, a
    closed store, a DSN or credentials the server refuses."""


class StoreUnavailable(StoreError):
    """The store could not be reached, or was too busy, for now: the connection was lost or
    refused, the server is shutting down or starting up, a lock or statement timeout ran
    out, SQLite's database stayed locked. Trying again later may succeed; ``Runner`` and the
    CLI do, for up to ``store_wait`` seconds. A write that raised it may still have been
    committed (the connection died before the answer came back)."""


class ConflictError(StoreError):
    """A write based on a stale version of the run: someone else wrote first. Nothing was
    written; load the run again."""


class LeaseLost(ConflictError):
    """A worker wrote to a run whose lease it no longer holds (it expired, and another worker
    may have claimed the run). Nothing was written."""


class InboxChanged(ConflictError):
    """A step taken from a run's inbox could not be saved: more was posted to the inbox after
    it was read, and the step did not account for it. Nothing was written; read the inbox
    again and take the step again."""


class SessionBusy(ConflictError):
    """A run of a session (a conversation thread) was started while the session's last run
    is still live or waiting (new, running, running tools, waiting for a decision, or
    paused). A session has one active run at a time: the new run was not created. Finish,
    cancel or resume the active run (``active_run`` names it; it is empty when another run
    joined the session at the same moment) and start the new one again."""

    def __init__(self, message: str, *, session: str = "", active_run: str = "") -> None:
        super().__init__(message)
        self.session = session
        self.active_run = active_run


class UnknownRunError(StoreError):
    """No run with that id in the store."""


class UnknownVersionError(UnknownRunError):
    """The run is stored, but not that version of it: it was never saved, or its history
    was pruned (``Store.prune``)."""
