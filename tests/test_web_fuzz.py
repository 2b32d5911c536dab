"""The JSON API fuzzed from its own OpenAPI document: requests drawn from each operation's
parameters and body schema (and garbage beside them) never get a 500, every error is a
problem document, and no request that is refused changes a run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette", reason="the inbox needs the web extra")

import httpx

from agentfsm import Runner
from agentfsm.web import create_app, openapi
from tests.inboxkit import ADA, BOB, TOKENS, agent, client, is_problem, paused

DOCUMENT = openapi()
COMPONENTS = DOCUMENT["components"]["schemas"]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def from_schema(schema: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that fit ``schema`` (the subset of JSON Schema msgspec writes), mostly."""
    if not isinstance(schema, dict) or depth > 6:
        return JSON
    if "$ref" in schema:
        return from_schema(COMPONENTS[schema["$ref"].rsplit("/", 1)[1]], depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, depth + 1) for s in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, depth) for k in kind])
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: from_schema(v, depth + 1) for k, v in properties.items() if k in required},
            optional={
                k: from_schema(v, depth + 1) for k, v in properties.items() if k not in required
            },
        )
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), depth + 1), max_size=3)
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(
            min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40)
        )
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**40)), schema.get("maximum", 2**40))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON


OPERATIONS = [
    (method.upper(), path, operation)
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
    if "text/event-stream" not in json.dumps(operation["responses"])  # streams never end
]


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[asyncio.AbstractEventLoop, Any, Any, list[str], list[Any]]]:
    """One event loop, a store with a paused run and a completed one, the app, and bodies
    of real decisions on the paused run's calls (so that some requests are posted, and
    later ones repeat or contradict them)."""
    loop = asyncio.new_event_loop()

    async def build() -> tuple[Any, Any, list[Any]]:
        from agentfsm import MemoryStore

        store = MemoryStore()
        waiting = await paused(store, "waiting")
        real = [
            {"call_id": r.call_id, "digest": r.digest, **verdict}
            for r in waiting.interruptions
            for verdict in (
                {"action": "approve"},
                {"action": "reject", "message": "no"},
                {"action": "approve", "arguments": dict(r.arguments)},
            )
        ]
        done = await paused(store, "done")
        for request in done.interruptions:
            await store.approve("done", request, by="ada")
        await Runner(store=store).resume(agent(), "done")
        app = create_app(store, auth=TOKENS, agent=agent(), permissions={"refund": ["bob"]})
        return store, app, real

    store, app, real = loop.run_until_complete(build())
    yield loop, store, app, ["waiting", "done"], real
    loop.close()


async def snapshot(store: Any) -> list[tuple[str, int, tuple[int, ...]]]:
    found = []
    for summary in await store.list():
        found.append((summary.run_id, summary.version, (await store.inbox(summary.run_id)).ids))
    return sorted(found)


def request_for(
    method: str, path: str, operation: dict[str, Any], runs: list[str], real: list[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    run_ids = st.sampled_from([*runs, "nope"]) | st.text(min_size=1, max_size=12)
    parameters = {
        p["name"]: st.none() | from_schema(p["schema"]) | st.text(max_size=12)
        for p in operation.get("parameters", [])
        if p["in"] == "query"
    }
    body: st.SearchStrategy[Any] = st.none()
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        body = st.one_of(
            from_schema(schema).map(lambda b: ("json", b)),
            st.sampled_from(real if path.endswith("/decisions") else [{}]).map(
                lambda b: ("json", b)
            ),
            JSON.map(lambda b: ("json", b)),
            st.binary(max_size=64).map(lambda b: ("raw", b)),
        )
    return st.fixed_dictionaries(
        {
            "run_id": run_ids,
            "query": st.fixed_dictionaries({}, optional=parameters),
            "body": body,
            "headers": st.sampled_from(
                [ADA, BOB, {}, {"Authorization": "Bearer nope-nope-nope-nope-nope"}]
            ),
            "media": st.sampled_from(["application/json", "text/plain", None]),
        }
    )


@pytest.mark.parametrize(
    ("method", "path", "operation"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_request_gets_a_500_and_no_refused_one_changes_a_run(
    world: tuple[asyncio.AbstractEventLoop, Any, Any, list[str], list[Any]],
    method: str,
    path: str,
    operation: dict[str, Any],
    data: st.DataObject,
) -> None:
    loop, store, app, runs, real = world
    drawn = data.draw(request_for(method, path, operation, runs, real))
    url = path.replace("{run_id}", quote(drawn["run_id"], safe=""))
    query = {
        k: v if isinstance(v, str) else json.dumps(v)
        for k, v in drawn["query"].items()
        if v is not None
    }
    if query:
        url += "?" + urlencode(query)
    headers = dict(drawn["headers"])
    content = None
    if drawn["body"] is not None:
        kind, value = drawn["body"]
        content = json.dumps(value).encode() if kind == "json" else value
        if drawn["media"] is not None:
            headers["Content-Type"] = drawn["media"]

    async def send() -> tuple[httpx.Response, Any, Any]:
        before = await snapshot(store)
        async with client(app) as http:
            response = await http.request(method, url, headers=headers, content=content)
        return response, before, await snapshot(store)

    response, before, after = loop.run_until_complete(asyncio.wait_for(send(), 10))
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        is_problem(response)
        assert after == before, f"a refused request ({response.status_code}) changed a run"
    else:
        assert response.headers["content-type"] == "application/json"
        response.json()
