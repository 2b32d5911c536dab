"""MCP tools against a real MCP server (tests/mcp_server.py, written with the SDK's server
side), started by the test on stdio and on streamable HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

# ImportError too: under make test-oldest the SDK is present but cannot import beside the
# floor pydantic it does not support.
pytest.importorskip(
    "mcp",
    reason="the mcp extra is not installed, or cannot import here (pip install 'agentfsm[mcp]')",
    exc_type=ImportError,
)

from agentfsm import Agent, Runner, ToolChangedError
from agentfsm.mcp import MCPServer
from agentfsm.testing import ScriptedModel, call, say

SERVER = Path(__file__).with_name("mcp_server.py")
LIMIT = 60.0


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, LIMIT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def http_server(env: Mapping[str, str]) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(SERVER), str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


Launch = Callable[..., contextlib.AbstractContextManager[MCPServer]]


@pytest.fixture(params=["stdio", "http"])
def launch(request: pytest.FixtureRequest) -> Launch:
    """Makes an MCPServer for a fresh test server (``env`` changes its tools)."""

    @contextlib.contextmanager
    def make(env: Mapping[str, str] | None = None) -> Iterator[MCPServer]:
        env = dict(env or {})
        if request.param == "stdio":
            yield MCPServer(
                sys.executable, [str(SERVER)], env={**os.environ, **env}, name="test", timeout=30
            )
        else:
            with http_server(env) as url:
                yield MCPServer(url=url, name="test", timeout=30)

    return make


def by_name(tools: list[Any]) -> dict[str, Any]:
    return {t.name: t for t in tools}


def test_tools_are_listed_with_their_schemas_and_annotations_mapped(launch: Launch) -> None:
    async def scenario() -> dict[str, Any]:
        with launch() as server:
            async with server:
                return by_name(await server.tools())

    tools = run(scenario())
    assert set(tools) == {"add", "delete_file", "echo", "crash", "fail"}
    add = tools["add"]
    assert add.parameters["properties"]["a"]["type"] == "integer"
    assert add.parameters["required"] == ["a", "b"]
    assert add.description == "Add two numbers."
    assert add.pinned
    # readOnlyHint: no approval, retried after a crash; openWorldHint recorded.
    assert (add.needs_approval, add.idempotent, add.annotations["open_world"]) == (
        False,
        True,
        False,
    )
    assert add.annotations["mcp_annotations"] == {"readOnlyHint": True, "openWorldHint": False}
    delete = tools["delete_file"]
    assert (delete.needs_approval, delete.idempotent) == (True, True)
    # No annotations at all: the specification's defaults (destructive, open world).
    echo = tools["echo"]
    assert (echo.needs_approval, echo.idempotent, echo.annotations["open_world"]) == (
        True,
        False,
        True,
    )
    assert (tools["crash"].needs_approval, tools["crash"].idempotent) == (False, False)


def test_overrides_include_and_prefix() -> None:
    async def scenario() -> list[Any]:
        async with MCPServer(sys.executable, [str(SERVER)], name="test") as server:
            return await server.tools(
                include=["add", "echo"],
                prefix="t_",
                overrides={"echo": {"needs_approval": False, "idempotent": True}},
            )

    tools = by_name(run(scenario()))
    assert set(tools) == {"t_add", "t_echo"}
    assert (tools["t_echo"].needs_approval, tools["t_echo"].idempotent) == (False, True)


def test_a_call_runs_end_to_end_through_the_runner(launch: Launch) -> None:
    async def scenario() -> Any:
        with launch() as server:
            async with server:
                model = ScriptedModel([call("add", a=2, b=3), say("five")])
                agent = Agent("a", "", model, tools=await server.tools())
                return await Runner().run(agent, "add")

    result = run(scenario())
    assert result.final_output == "five"
    assert "5" in [getattr(i, "output", None) for i in result.state.items]


def test_a_destructive_tool_waits_for_approval(launch: Launch) -> None:
    async def scenario() -> tuple[Any, Any]:
        with launch() as server:
            async with server:
                model = ScriptedModel([call("delete_file", path="/tmp/x"), say("gone")])
                agent = Agent("a", "", model, tools=await server.tools())
                paused = await Runner().run(agent, "delete it")
                (request,) = paused.interruptions
                done = await Runner().run(agent, paused.state.approve(request))
                return paused, done

    paused, done = run(scenario())
    assert paused.status == "interrupted"
    assert paused.interruptions[0].reason == "approval"
    assert paused.interruptions[0].schema["properties"]["path"]["type"] == "string"
    assert done.final_output == "gone"
    assert "deleted /tmp/x" in [getattr(i, "output", None) for i in done.state.items]


def test_a_server_that_crashes_mid_call_leaves_the_call_in_doubt_then_reconnects() -> None:
    async def scenario() -> tuple[Any, Any]:
        async with MCPServer(sys.executable, [str(SERVER)], name="test", timeout=30) as server:
            tools = await server.tools()
            model = ScriptedModel([call("crash", text="hi")])
            crashed = await Runner().run(Agent("a", "", model, tools=tools), "go")
            # The next call starts the server again.
            again = ScriptedModel([call("add", a=1, b=1), say("two")])
            after = await Runner().run(Agent("a", "", again, tools=tools), "go")
            return crashed, after

    crashed, after = run(scenario())
    assert crashed.status == "interrupted"
    (request,) = crashed.interruptions
    assert (request.tool, request.reason) == ("crash", "in_doubt")
    assert after.final_output == "two"


def test_a_server_error_is_a_result_the_model_sees(launch: Launch) -> None:
    async def scenario() -> Any:
        with launch() as server:
            async with server:
                model = ScriptedModel([call("fail", text="x"), say("sorry")])
                agent = Agent("a", "", model, tools=await server.tools())
                return await Runner().run(agent, "go")

    result = run(scenario())
    assert result.final_output == "sorry"
    (output,) = [i for i in result.state.items if getattr(i, "is_error", False)]
    assert "fail" in output.output


@pytest.mark.parametrize(
    ("tool", "arguments", "env", "match"),
    [
        ("echo", {"text": "hi"}, {"MCP_TEST_DROP": "echo"}, "'echo'.*gone"),
        ("add", {"a": 1, "b": 2}, {"MCP_TEST_WIDE": "1"}, "'add'.*schema.*added: c"),
    ],
)
def test_a_tool_that_changes_while_a_run_is_paused_is_a_clear_error_on_resume(
    launch: Launch, tool: str, arguments: dict[str, Any], env: dict[str, str], match: str
) -> None:
    gate = {"add": {"needs_approval": True}}

    async def scenario() -> None:
        model = ScriptedModel([call(tool, **arguments), say("done")])
        with launch() as server:
            async with server:
                agent = Agent("a", "", model, tools=await server.tools(overrides=gate))
                paused = await Runner().run(agent, "go")
        assert paused.status == "interrupted"
        (request,) = paused.interruptions
        with launch(env) as changed:
            async with changed:
                agent = Agent("a", "", model, tools=await changed.tools(overrides=gate))
                with pytest.raises(ToolChangedError, match=match):
                    await Runner().run(agent, paused.state.approve(request))

    run(scenario())
