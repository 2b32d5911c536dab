"""Tools from Model Context Protocol servers (the ``agentfsm[mcp]`` extra).

``MCPServer`` connects to one server, over stdio (a command it starts) or streamable HTTP (a
URL), and turns the tools the server lists into agentfsm Tools::

    async with MCPServer("python", ["server.py"]) as files:
        agent = Agent("a", "...", model, tools=await files.tools())

The server's annotations set each tool's safety defaults (see docs/mcp.md):
``readOnlyHint`` or ``idempotentHint`` make it idempotent (re-run after a crash);
``destructiveHint`` (true when absent, as the MCP specification says, unless the tool is
read-only) makes it need approval; ``openWorldHint`` is kept in ``tool.annotations``.
``overrides`` changes any of it per tool.

The tools are pinned: a run paused with a call of one of them resumes only if the server
still lists that tool with the same input schema, else ``ToolChangedError``.

A call runs on the server's current connection, and reconnects when there is none (the
server crashed or the connection dropped before). A server that breaks off mid-call makes
the call an error the model sees when the tool is idempotent, and in doubt (a person
decides) when it is not: it may have acted before it went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ._errors import ConfigurationError, ToolInDoubt
from ._tools import Tool, ToolContext

try:
    import mcp
    import mcp.types as mcp_types
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("agentfsm.mcp needs the MCP SDK: pip install 'agentfsm[mcp]'") from exc

__all__ = ["MCPError", "MCPServer", "MCPToolError", "tool_options"]

log = logging.getLogger("agentfsm")

#: The ``_meta`` key that carries a call's idempotency key to the server.
IDEMPOTENCY_META = "io.agentfsm/idempotency-key"

#: Tool options a user may override per tool.
_OPTIONS = frozenset(
    {
        "needs_approval",
        "idempotent",
        "timeout",
        "approval_timeout",
        "on_cancel",
        "tool_input_guardrails",
        "tool_output_guardrails",
        "description",
    }
)


class MCPError(ConfigurationError):
    """The server could not be reached, started or listed (not a failed call: those are
    results the model sees)."""


class MCPToolError(Exception):
    """A call the server answered with an error (``isError``); the model sees its text."""


def tool_options(annotations: mcp_types.ToolAnnotations | None) -> dict[str, Any]:
    """The Tool options an MCP tool's annotations imply, with the MCP specification's
    defaults for the hints that are absent (readOnlyHint false, destructiveHint true,
    idempotentHint false, openWorldHint true): ``needs_approval``, ``idempotent`` and
    ``open_world``.

    A read-only tool neither needs approval nor can destroy anything, whatever
    ``destructiveHint`` says (the specification gives that hint meaning only when
    readOnlyHint is false). Idempotent means re-run after a crash: true for a read-only or
    an idempotent tool."""
    hints = annotations or mcp_types.ToolAnnotations()
    read_only = hints.read_only_hint is True
    destructive = hints.destructive_hint is not False and not read_only
    return {
        "needs_approval": destructive,
        "idempotent": read_only or hints.idempotent_hint is True,
        "open_world": hints.open_world_hint is not False,
    }


class MCPServer:
    """A connection to one MCP server, as an async context manager.

    Give ``command`` (and ``args``, ``env``, ``cwd``) to start a server and talk to it over
    stdio, or ``url`` for streamable HTTP. ``name`` names it in messages (default: the
    command or URL). ``timeout`` is the default limit, in seconds, of one call (each tool's
    ``timeout``; override per tool); ``connect_timeout`` bounds connecting and listing.

    ``await server.tools()`` lists the server's tools as agentfsm Tools. Calls reconnect
    by themselves after a crash; ``aclose()`` (or leaving the ``async with``) disconnects.
    """

    def __init__(
        self,
        command: str | None = None,
        args: Sequence[str] = (),
        *,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        name: str | None = None,
        timeout: float | None = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if (command is None) == (url is None):
            raise ConfigurationError("MCPServer needs a command (stdio) or a url, not both")
        self._target: Any
        if command is not None:
            self._target = mcp.StdioServerParameters(
                command=command,
                args=list(args),
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
            self.name = name or " ".join([os.path.basename(command), *args])
        else:
            assert url is not None
            self._target = url
            self.name = name or url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"MCPServer({self.name!r})"

    async def __aenter__(self) -> MCPServer:
        self._closed = False
        await self._connected()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Disconnect (and stop a stdio server). Calls made later reconnect."""
        await self._drop()

    async def tools(
        self,
        *,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        prefix: str = "",
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[Tool]:
        """The server's tools as agentfsm Tools, with the server's JSON Schemas.

        ``include`` keeps only the named tools, ``exclude`` leaves some out; ``prefix`` is
        put before each name (to tell two servers' tools apart). ``overrides`` maps a tool's
        name on the server to Tool options that replace the ones its annotations imply:
        ``needs_approval``, ``idempotent``, ``timeout``, ``approval_timeout``, ``on_cancel``,
        the tool guardrails, ``description``. Raises MCPError when the server cannot be
        reached or listed, ConfigurationError for an override of an unknown tool or option.
        """
        listed = await self._list()
        overrides = dict(overrides or {})
        names = {t.name for t in listed}
        for key, options in overrides.items():
            if key not in names:
                raise ConfigurationError(f"override for {key!r}: {self.name} lists no such tool")
            unknown = set(options) - _OPTIONS
            if unknown:
                raise ConfigurationError(
                    f"override for {key!r}: unknown options {sorted(unknown)} "
                    f"(allowed: {sorted(_OPTIONS)})"
                )
        if include is not None:
            missing = set(include) - names
            if missing:
                raise ConfigurationError(f"{self.name} lists no tools named {sorted(missing)}")
        tools = []
        for listing in listed:
            if (include is not None and listing.name not in include) or listing.name in exclude:
                continue
            tools.append(self._tool(listing, prefix, overrides.get(listing.name, {})))
        return tools

    def _tool(self, listing: mcp_types.Tool, prefix: str, override: Mapping[str, Any]) -> Tool:
        implied = tool_options(listing.annotations)
        open_world = implied.pop("open_world")
        options: dict[str, Any] = {"timeout": self.timeout, **implied, **override}
        description = options.pop("description", None) or listing.description or ""
        remote = listing.name

        async def call(arguments: dict[str, Any], context: ToolContext) -> str:
            return await self._call(remote, arguments, context, bool(options["idempotent"]))

        made = Tool.from_schema(
            call,
            listing.input_schema,
            name=prefix + listing.name,
            description=description,
            pinned=True,
            **options,
        )
        made.annotations = {
            "mcp_server": self.name,
            "mcp_tool": listing.name,
            "open_world": open_world,
            "mcp_annotations": (
                listing.annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
                if listing.annotations is not None
                else {}
            ),
        }
        return made

    async def _list(self) -> list[mcp_types.Tool]:
        client = await self._connected()
        listed: list[mcp_types.Tool] = []
        cursor: str | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                while True:
                    page = await client.list_tools(cursor=cursor)
                    listed.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        return listed
        except Exception as exc:
            await self._drop()
            raise MCPError(f"cannot list the tools of {self.name}: {_describe(exc)}") from exc

    async def _call(
        self, name: str, arguments: dict[str, Any], context: ToolContext, idempotent: bool
    ) -> str:
        try:
            client = await self._connected()
        except MCPError as exc:
            # Nothing was sent: the call did not run.
            raise MCPToolError(f"{exc}; the call was not sent") from None
        try:
            result = await client.call_tool(
                name,
                arguments,
                meta={IDEMPOTENCY_META: context.idempotency_key},
            )
        except mcp.MCPError as exc:
            if not _connection_lost(exc):
                # The server answered with a protocol error: it did not run the tool.
                raise MCPToolError(f"{self.name} refused the call: {exc}") from None
            lost: Exception = exc
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                # A timeout or a cancellation: the connection may be mid-message.
                await self._drop()
                raise
            lost = exc
        else:
            return _result_text(result)
        await self._drop()
        message = f"{self.name} went away during the call ({_describe(lost)})"
        if idempotent:
            raise MCPToolError(f"{message}; it is safe to call it again") from None
        raise ToolInDoubt(f"{message}; it may have taken effect") from None

    async def _connected(self) -> Any:
        """The live client, connecting first when there is none."""
        async with self._lock:
            if self._task is not None and not self._task.done() and self._client is not None:
                return self._client
            await self._drop_locked()
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[Any] = loop.create_future()
            stop = asyncio.Event()
            # The client lives in a task of its own: the SDK's task groups must be entered
            # and left by one task, and calls come from the runner's tasks.
            task = asyncio.ensure_future(self._hold(ready, stop))
            try:
                async with asyncio.timeout(self.connect_timeout):
                    client = await asyncio.shield(ready)
            except Exception as exc:
                stop.set()
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise MCPError(f"cannot connect to {self.name}: {_describe(exc)}") from exc
            self._client, self._task, self._stop = client, task, stop
            return client

    async def _hold(self, ready: asyncio.Future[Any], stop: asyncio.Event) -> None:
        try:
            async with mcp.Client(self._target, cache=None) as client:
                ready.set_result(client)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else MCPError(repr(exc)))
            elif not stop.is_set():
                log.warning("the connection to MCP server %s ended: %s", self.name, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _drop(self) -> None:
        async with self._lock:
            await self._drop_locked()

    async def _drop_locked(self) -> None:
        task, stop = self._task, self._stop
        self._client = self._task = self._stop = None
        if task is None or stop is None:
            return
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.connect_timeout)
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _connection_lost(exc: mcp.MCPError) -> bool:
    text = str(exc).lower()
    return "closed" in text or "connection" in text or "terminated" in text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _result_text(result: mcp_types.CallToolResult) -> str:
    parts = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        else:
            parts.append(msgspec.json.encode(block.model_dump(mode="json")).decode())
    text = "\n".join(parts)
    if not text and result.structured_content is not None:
        text = msgspec.json.encode(result.structured_content).decode()
    if result.is_error:
        raise MCPToolError(text or "the tool failed")
    return text
