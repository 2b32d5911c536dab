"""Helpers for the inbox's tests: an agent whose calls wait, a store with a paused run, an
httpx client on the ASGI app (no network), logging in, and reading Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

from agentfsm import Agent, MemoryStore, Runner, RunResult, Store, tool
from agentfsm.testing import ScriptedModel, call, say

TOKENS = {"token-of-ada-0123456789": "ada", "token-of-bob-0123456789": "bob"}
ADA = {"Authorization": "Bearer token-of-ada-0123456789"}
BOB = {"Authorization": "Bearer token-of-bob-0123456789"}
XSS = '<script>window.__xss = 1</script><img src=x onerror="alert(1)">'


@tool(needs_approval=True)
def send_email(to: str, body: str, priority: int = 1) -> str:
    """Send an email to a customer.

    Args:
        to: the address.
        body: the text.
        priority: 1 (low) to 5.
    """
    return f"sent to {to}"


@tool(needs_approval=True)
def refund(order: str, cents: int) -> str:
    """Refund an order."""
    return f"refunded {cents}"


def agent() -> Agent:
    model = ScriptedModel(
        [
            [
                call("send_email", to="ada@example.com", body=f"Grüße {XSS}"),
                call("refund", order="A-1", cents=500),
            ],
            say("done"),
        ]
    )
    return Agent("support", "You help.", model, tools=[send_email, refund])


async def paused(store: Store, run_id: str = "run-1") -> RunResult:
    """A run of ``agent`` waiting for decisions on its two calls."""
    result = await Runner(store=store).run(agent(), "help me", run_id=run_id)
    assert result.status == "interrupted"
    return result


async def store_with_paused_run() -> tuple[MemoryStore, RunResult]:
    store = MemoryStore()
    return store, await paused(store)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://inbox.test", follow_redirects=False
    )


async def login(http: httpx.AsyncClient, token: str = "token-of-ada-0123456789") -> str:
    """Log in like a browser; returns the CSRF token of the session's forms."""
    response = await http.post("/login", data={"token": token, "next": "/"})
    assert response.status_code == 303, response.text
    page = await http.get("/")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "no CSRF token on the page"
    return found[1]


def is_problem(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """The problem document of ``response``, checked to be one."""
    assert response.headers["content-type"] == "application/problem+json", response.text
    problem = response.json()
    assert set(problem) == {"type", "title", "status", "detail"}, problem
    assert problem["status"] == response.status_code
    assert problem["type"].startswith("urn:agentfsm:problem:")
    if status is not None:
        assert response.status_code == status, problem
    return problem


class Stream:
    """A Server-Sent Events response read as it arrives, straight from the ASGI app (httpx's
    ASGI transport waits for a response to end, and these do not)."""

    def __init__(self, app: Any, path: str, headers: dict[str, str]) -> None:
        path, _, query = path.partition("?")
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            + [(b"host", b"inbox.test")],
            "server": ("inbox.test", 80),
            "client": ("127.0.0.1", 1234),
        }
        self.app = app
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._gone = asyncio.Event()
        self._buffer = b""
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._requested = False

    async def _receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            self._started.set()
        elif message["type"] == "http.response.body":
            self._chunks.put_nowait(message.get("body", b""))
            if not message.get("more_body", False):
                self._chunks.put_nowait(None)

    async def _run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        finally:
            self._chunks.put_nowait(None)
            self._started.set()

    async def __aenter__(self) -> Stream:
        self._task = asyncio.ensure_future(self._run())
        await asyncio.wait_for(self._started.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._gone.set()
        assert self._task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 10)

    async def body(self) -> str:
        """The whole body of a response that ends (an error)."""
        parts = []
        while (chunk := await asyncio.wait_for(self._chunks.get(), 10)) is not None:
            parts.append(chunk)
        return b"".join(parts).decode()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Each event: ``id`` (or None), ``event`` and ``data`` (decoded JSON)."""
        while True:
            while b"\n\n" not in self._buffer:
                chunk = await self._chunks.get()
                if chunk is None:
                    return
                self._buffer += chunk
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.decode().splitlines():
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            if "data" in fields:
                yield {
                    "id": fields.get("id"),
                    "event": fields.get("event"),
                    "data": json.loads(fields["data"]),
                }

    async def take(self, until: str, seconds: float = 10) -> list[dict[str, Any]]:
        """The events up to and including the first of type ``until``."""
        taken: list[dict[str, Any]] = []

        async def collect() -> None:
            async for event in self.events():
                taken.append(event)
                if event["event"] == until:
                    return
            raise AssertionError(f"the stream ended before {until}: {taken}")

        try:
            await asyncio.wait_for(collect(), seconds)
        except TimeoutError:
            raise AssertionError(f"no {until} within {seconds} s; got {taken}") from None
        return taken
