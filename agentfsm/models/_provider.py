"""OpenAIProvider: where requests go (base URL, key, Azure routes), how they are sent
(timeouts, retries, streaming), and ``default_provider()``, configured from the environment.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal

import httpx

from .._errors import ConfigurationError
from .._version import __version__
from ._chat import OpenAIChatModel
from ._common import ModelSettings, OpenAIModel
from ._http import Connection, RetryPolicy
from ._responses import OpenAIResponsesModel

__all__ = ["OpenAIProvider", "default_provider"]

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider:
    """Makes models for an OpenAI-compatible server, and holds their shared HTTP client.

    Every argument has a default; ``api_key`` and ``base_url`` come from ``OPENAI_API_KEY``
    and ``OPENAI_BASE_URL`` when not given, ``organization`` and ``project`` from
    ``OPENAI_ORG_ID`` and ``OPENAI_PROJECT_ID``. Nothing is sent until a model is asked.

    Args:
        api_key: sent as ``Authorization: Bearer``. Local servers need none; OpenAI does
            (a request without one raises ConfigurationError).
        base_url: the API root, up to and including ``/v1`` (default OpenAI's).
        api: ``"chat"`` (Chat Completions, the default: every compatible server has it) or
            ``"responses"`` (the Responses API); ``get_model`` makes models of this kind.
        connect_timeout, read_timeout: seconds to connect, and to wait for the next bytes of
            an answer (for a stream: between two events).
        max_retries, backoff, max_backoff, max_retry_after: retries after connection
            errors, timeouts, 429 and 5xx; see RetryPolicy. ``max_retries=0`` disables them.
        settings: default ModelSettings of this provider's models.
        stream: when True, ``respond`` asks for a stream and assembles it: the connection
            carries bytes the whole time, so a long answer does not hit ``read_timeout``.
        strict: send tool schemas and output schemas in strict mode where they allow it.
        stream_usage: ask for usage in Chat Completions streams (``stream_options``); turn
            off for a server that refuses the option.
        headers: more headers for every request.
        http_client: an httpx.AsyncClient to send with (your proxies, certificates, auth
            flows, transport); you close it. By default the provider keeps one per event
            loop and closes it with the loop.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        api: Literal["chat", "responses"] = "chat",
        organization: str | None = None,
        project: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        settings: ModelSettings | None = None,
        stream: bool = False,
        strict: bool = True,
        stream_usage: bool = True,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if api not in ("chat", "responses"):
            raise ConfigurationError(f"api must be 'chat' or 'responses', not {api!r}")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigurationError("timeouts must be positive numbers of seconds")
        if max_retries < 0 or backoff < 0 or max_backoff < 0 or max_retry_after < 0:
            raise ConfigurationError("retry settings cannot be negative")
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise ConfigurationError("http_client must be an httpx.AsyncClient")
        env = os.environ
        self.api_key = api_key if api_key is not None else env.get("OPENAI_API_KEY") or None
        self.base_url = (base_url or env.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be an http or https URL: {self.base_url!r}")
        self.api: Literal["chat", "responses"] = api
        self.settings = settings
        self.stream = stream
        self.strict = strict
        self.stream_usage = stream_usage
        self._query: dict[str, str] = {}
        self._deployments = False
        self._needs_key = self.base_url == OPENAI_BASE_URL
        self._own_client = http_client is None
        request_headers = {
            "user-agent": f"agentfsm/{__version__}",
            "content-type": "application/json",
            "accept": "application/json",
        }
        if self.api_key:
            request_headers["authorization"] = f"Bearer {self.api_key}"
        organization = organization or env.get("OPENAI_ORG_ID")
        project = project or env.get("OPENAI_PROJECT_ID")
        if organization:
            request_headers["openai-organization"] = organization
        if project:
            request_headers["openai-project"] = project
        request_headers.update({k.lower(): v for k, v in (headers or {}).items()})
        for name, value in request_headers.items():
            if not (name + value).isascii():
                what = "the API key" if name == "authorization" else f"the header {name!r}"
                raise ConfigurationError(f"{what} has characters that are not ASCII")
        self._connection = Connection(
            headers=request_headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            retries=RetryPolicy(max_retries, backoff, max_backoff, max_retry_after),
            http_client=http_client,
        )

    @classmethod
    def azure(
        cls,
        endpoint: str | None = None,
        *,
        api_key: str | None = None,
        api_version: str | None = None,
        **options: Any,
    ) -> OpenAIProvider:
        """A provider for Azure OpenAI.

        ``endpoint`` is the resource's URL (``https://NAME.openai.azure.com``; default
        ``AZURE_OPENAI_ENDPOINT``); ``api_key`` is sent as ``api-key`` (default
        ``AZURE_OPENAI_API_KEY``; for Microsoft Entra ID pass ``http_client`` with an auth
        flow, or an ``Authorization`` header). Without ``api_version`` the provider uses
        Azure's v1 API (``/openai/v1``), where a model's name is its deployment's name. With
        one (default ``OPENAI_API_VERSION``) it uses the dated API: Chat Completions at
        ``/openai/deployments/<model>/chat/completions?api-version=...``. Other options are
        OpenAIProvider's.
        """
        env = os.environ
        endpoint = (endpoint or env.get("AZURE_OPENAI_ENDPOINT") or "").rstrip("/")
        if not endpoint:
            raise ConfigurationError("Azure OpenAI needs an endpoint (or AZURE_OPENAI_ENDPOINT)")
        endpoint = endpoint.removesuffix("/openai/v1").removesuffix("/openai")
        api_key = api_key or env.get("AZURE_OPENAI_API_KEY") or None
        api_version = api_version or env.get("OPENAI_API_VERSION") or None
        base_url = endpoint if api_version else f"{endpoint}/openai/v1"
        provider = cls(api_key="", base_url=base_url, **options)
        provider.api_key = api_key
        headers = provider._connection.headers
        if api_key:
            if not api_key.isascii():
                raise ConfigurationError("the API key has characters that are not ASCII")
            headers["api-key"] = api_key
        provider._needs_key = "authorization" not in headers and provider._own_client
        if api_version:
            provider._deployments = True
            provider._query = {"api-version": api_version}
        return provider

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self.base_url!r}, api={self.api!r})"

    def get_model(self, name: str) -> OpenAIModel:
        """The model ``name`` behind this provider's ``api`` (the ModelProvider protocol)."""
        return self.chat(name) if self.api == "chat" else self.responses(name)

    def chat(
        self,
        name: str,
        *,
        settings: ModelSettings | None = None,
        stream: bool | None = None,
        strict: bool | None = None,
    ) -> OpenAIChatModel:
        """The model ``name`` behind the Chat Completions API."""
        return OpenAIChatModel(name, provider=self, settings=settings, stream=stream, strict=strict)

    def responses(
        self,
        name: str,
        *,
        settings: ModelSettings | None = None,
        stream: bool | None = None,
        strict: bool | None = None,
    ) -> OpenAIResponsesModel:
        """The model ``name`` behind the Responses API."""
        return OpenAIResponsesModel(
            name, provider=self, settings=settings, stream=stream, strict=strict
        )

    def url(self, api: Literal["chat", "responses"], model: str) -> str:
        """Where a request of ``api`` for ``model`` goes."""
        if self._deployments:
            deployment = urllib.parse.quote(model, safe="")
            path = (
                f"/openai/deployments/{deployment}/chat/completions"
                if api == "chat"
                else "/openai/responses"
            )
        else:
            path = "/chat/completions" if api == "chat" else "/responses"
        url = self.base_url + path
        if self._query:
            url += "?" + urllib.parse.urlencode(self._query)
        return url

    def connection(self) -> Connection:
        """The connection to send with; raises ConfigurationError when the server needs an
        API key and none is configured."""
        if self._needs_key and not self.api_key:
            raise ConfigurationError(
                f"no API key for {self.base_url}: set OPENAI_API_KEY or pass api_key= (for a "
                "local server, set OPENAI_BASE_URL to its URL, such as "
                "http://localhost:11434/v1)"
            )
        return self._connection

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop (not a client you passed in)."""
        await self._connection.aclose()

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


_ENVIRONMENT = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID")
_default: tuple[tuple[str | None, ...], OpenAIProvider] | None = None
_default_lock = threading.Lock()


def default_provider() -> OpenAIProvider:
    """The provider that ``Agent(model="name")`` resolves names with when the Runner has no
    ``model_provider``: an OpenAIProvider configured from the environment
    (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ...), made on first use, and made again when
    those variables change. One provider, so one connection pool, for every Runner."""
    global _default
    snapshot = tuple(os.environ.get(name) for name in _ENVIRONMENT)
    with _default_lock:
        if _default is None or _default[0] != snapshot:
            _default = (snapshot, OpenAIProvider())
        return _default[1]
