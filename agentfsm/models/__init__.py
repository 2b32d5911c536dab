"""Model clients for OpenAI-compatible servers, on httpx.

``OpenAIChatModel`` speaks Chat Completions (OpenAI, Azure, Ollama, vLLM, LM Studio,
llama.cpp's server, LiteLLM, OpenRouter); ``OpenAIResponsesModel`` speaks the Responses API.
Both take their server, key, timeouts and retries from an ``OpenAIProvider``; by default the
one ``default_provider()`` configures from ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``. See
docs/models.md.
"""

from .._model import (
    ResponseDone,
    StreamEvent,
    StreamingModel,
    TextDelta,
    ToolCallDelta,
    ToolCallStarted,
    stream_events,
)
from ._chat import OpenAIChatModel
from ._common import ModelSettings, OpenAIModel
from ._errors import (
    AuthenticationError,
    BadRequestError,
    ModelConnectionError,
    ModelOutputError,
    ModelStatusError,
    ModelTimeoutError,
    RateLimitError,
    ServerError,
)
from ._http import RetryPolicy
from ._provider import OpenAIProvider, default_provider
from ._responses import OpenAIResponsesModel
from ._schema import strict_schema

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ModelConnectionError",
    "ModelOutputError",
    "ModelSettings",
    "ModelStatusError",
    "ModelTimeoutError",
    "OpenAIChatModel",
    "OpenAIModel",
    "OpenAIProvider",
    "OpenAIResponsesModel",
    "RateLimitError",
    "ResponseDone",
    "RetryPolicy",
    "ServerError",
    "StreamEvent",
    "StreamingModel",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallStarted",
    "default_provider",
    "stream_events",
    "strict_schema",
]
