"""agentfsm: LLM agents as explicit state machines with serializable, resumable run state.

A run is a ``RunState`` value advanced by the pure ``step`` function; ``Runner`` is the thin
async driver that calls models and tools and checkpoints after every step.
"""

from ._agents import Agent, AgentSet, handoff_tool_name
from ._codec import SCHEMA_VERSION
from ._errors import (
    AgentFSMError,
    ConfigurationError,
    ContextError,
    IllegalTransition,
    InvalidEvent,
    ModelBehaviorError,
    ModelError,
    ResolutionError,
    StateFormatError,
    ToolArgumentsError,
    ToolDefinitionError,
    ToolError,
    UnknownAgentError,
    UnknownCallError,
    UnknownToolError,
)
from ._events import (
    ApprovalsDecided,
    Cancelled,
    Decision,
    Event,
    Injected,
    ModelResponded,
    Started,
    ToolOutput,
    ToolsFinished,
)
from ._items import (
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
from ._machine import RunStatus
from ._model import Model, ModelProvider, ModelRequest
from ._outcomes import (
    ApprovalRequest,
    FinalOutput,
    Handoff,
    Interruption,
    Invocation,
    Outcome,
    RunAgain,
    RunError,
    ToolCall,
)
from ._runner import Runner, RunResult
from ._state import CallRecord, Policy, RunState, Transcript
from ._step import Step, idempotency_key, new_run, pending_outcome, step
from ._tools import Tool, ToolContext, ToolSpec, tool

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "Agent",
    "AgentFSMError",
    "AgentSet",
    "ApprovalRequest",
    "ApprovalsDecided",
    "AssistantMessage",
    "CallRecord",
    "Cancelled",
    "ConfigurationError",
    "ContextError",
    "Decision",
    "Event",
    "Feedback",
    "FinalOutput",
    "Handoff",
    "HandoffItem",
    "IllegalTransition",
    "Injected",
    "Interruption",
    "InvalidEvent",
    "Invocation",
    "Item",
    "Model",
    "ModelBehaviorError",
    "ModelError",
    "ModelProvider",
    "ModelRequest",
    "ModelResponded",
    "ModelResponse",
    "ModelToolCall",
    "Outcome",
    "Policy",
    "ResolutionError",
    "RunAgain",
    "RunError",
    "RunResult",
    "RunState",
    "RunStatus",
    "Runner",
    "Started",
    "StateFormatError",
    "Step",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolCallItem",
    "ToolContext",
    "ToolDefinitionError",
    "ToolError",
    "ToolOutput",
    "ToolResultItem",
    "ToolSpec",
    "ToolsFinished",
    "Transcript",
    "UnknownAgentError",
    "UnknownCallError",
    "UnknownToolError",
    "Usage",
    "UserMessage",
    "handoff_tool_name",
    "idempotency_key",
    "new_run",
    "pending_outcome",
    "step",
    "tool",
]
