"""A small MCP server for the tests and docs, written with the SDK's server side.

``python tests/mcp_server.py`` serves on stdio; ``python tests/mcp_server.py PORT`` serves
streamable HTTP on 127.0.0.1:PORT at /mcp. ``MCP_TEST_DROP`` names tools to leave out (a
comma-separated list), and ``MCP_TEST_WIDE`` gives ``add`` one more argument, so a test can
make a tool disappear or change between two runs of the server.
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("agentfsm-test")
drop = set(filter(None, os.environ.get("MCP_TEST_DROP", "").split(",")))


def register(fn, annotations: ToolAnnotations | None = None) -> None:  # type: ignore[no-untyped-def]
    if fn.__name__ not in drop:
        server.tool(annotations=annotations)(fn)


if os.environ.get("MCP_TEST_WIDE"):

    def add(a: int, b: int, c: int = 0) -> int:
        """Add numbers."""
        return a + b + c

else:

    def add(a: int, b: int) -> int:  # type: ignore[misc]
        """Add two numbers."""
        return a + b


def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


def echo(text: str) -> str:
    """Say the text back."""
    return text


def crash(text: str) -> str:
    """Send a message, then die before answering."""
    os._exit(3)


def fail(text: str) -> str:
    """Always fail."""
    raise ValueError(f"cannot do {text}")


register(add, ToolAnnotations(readOnlyHint=True, openWorldHint=False))
register(delete_file, ToolAnnotations(destructiveHint=True, idempotentHint=True))
register(echo)
register(crash, ToolAnnotations(destructiveHint=False))
register(fail, ToolAnnotations(destructiveHint=False, idempotentHint=True))

if __name__ == "__main__":
    if len(sys.argv) > 1:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
    else:
        server.run()
