"""The MCP server of docs/mcp.md: a notebook with a read-only tool and a destructive one."""

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("notes")
notes: dict[str, str] = {"todo": "buy milk"}


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False))
def read_note(name: str) -> str:
    """Read a note."""
    return notes.get(name, "no such note")


@server.tool(annotations=ToolAnnotations(destructiveHint=True, idempotentHint=True))
def erase_note(name: str) -> str:
    """Erase a note."""
    notes.pop(name, None)
    return f"erased {name}"


if __name__ == "__main__":
    server.run()
