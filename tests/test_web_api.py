"""The inbox's JSON API through httpx's ASGI transport: every route, who may call it, and
how each refusal reads (a problem document with the status the error calls for)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the inbox needs the web extra")

from agentfsm import ConfigurationError, MemoryStore, Runner, UnknownRunError
from agentfsm.web import CSP, Permissions, TokenAuth, create_app, load_tokens
from tests.inboxkit import (
    ADA,
    BOB,
    TOKENS,
    agent,
    client,
    is_problem,
    login,
    store_with_paused_run,
)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


def requests_of(result: Any) -> dict[str, Any]:
    return {r.tool: r for r in result.interruptions}


# -- authentication ------------------------------------------------------------------------


def test_every_api_route_needs_authentication() -> None:
    async def test() -> None:
        store, _ = await store_with_paused_run()
        async with client(create_app(store, auth=TOKENS)) as http:
            for method, path in [
                ("GET", "/api/approvals"),
                ("GET", "/api/runs"),
                ("GET", "/api/runs/run-1"),
                ("GET", "/api/openapi.json"),
                ("GET", "/api/me"),
                ("GET", "/api/runs/run-1/events"),
                ("GET", "/api/approvals/events"),
                ("POST", "/api/runs"),
                ("POST", "/api/runs/run-1/decisions"),
                ("POST", "/api/runs/run-1/cancel"),
                ("POST", "/api/runs/run-1/input"),
            ]:
                for headers in ({}, {"Authorization": "Bearer not-a-token-we-know-at-all"}):
                    response = await http.request(method, path, headers=headers, json={})
                    problem = is_problem(response, 401)
                    assert problem["type"].endswith(":unauthenticated"), (method, path)
                    assert response.headers["www-authenticate"].startswith("Bearer")
            me = await http.get("/api/me", headers=BOB)
            assert me.json() == {"identity": "bob"}

    run(test)


def test_tokens_come_from_a_file_or_the_environment_and_must_be_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokens"
    path.write_text("# the team\nada  aaaaaaaaaaaaaaaaaaaaaaaa\n\nbob bbbbbbbbbbbbbbbbbbbbbbbb\n")
    auth = load_tokens(path)
    assert auth.identity("aaaaaaaaaaaaaaaaaaaaaaaa") == "ada"
    assert auth.identity("bbbbbbbbbbbbbbbbbbbbbbbb") == "bob"
    assert auth.identity("cccccccccccccccccccccccc") is None
    monkeypatch.setenv(
        "AGENTFSM_TOKENS", "eve eeeeeeeeeeeeeeeeeeeeeeee, zoe zzzzzzzzzzzzzzzzzzzzzzzz"
    )
    assert load_tokens().identity("zzzzzzzzzzzzzzzzzzzzzzzz") == "zoe"
    monkeypatch.delenv("AGENTFSM_TOKENS")
    with pytest.raises(ConfigurationError, match="needs tokens"):
        load_tokens()
    path.write_text("ada short\n")
    with pytest.raises(ConfigurationError, match="at least 16 characters"):
        load_tokens(path)
    path.write_text("ada aaaaaaaaaaaaaaaaaaaaaaaa extra\n")
    with pytest.raises(ConfigurationError, match="line 1: expected IDENTITY TOKEN"):
        load_tokens(path)
    with pytest.raises(ConfigurationError, match="auth must be"):
        create_app(MemoryStore(), auth=42)  # type: ignore[arg-type]


def test_a_hook_can_authenticate_and_its_identity_decides() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()

        async def from_proxy(request: Any) -> str | None:
            return request.headers.get("x-forwarded-user")

        async with client(create_app(store, auth=from_proxy)) as http:
            email = requests_of(result)["send_email"]
            response = await http.post(
                "/api/runs/run-1/decisions",
                headers={"X-Forwarded-User": "carol"},
                json={"call_id": email.call_id, "digest": email.digest, "action": "approve"},
            )
            assert response.status_code == 201, response.text
            assert response.json()["decision"]["by"] == "carol"
            # A browser vouched for by the hook gets a session (and so CSRF tokens).
            page = await http.get("/", headers={"X-Forwarded-User": "carol"})
            assert page.status_code == 200 and "carol" in page.text
            assert "agentfsm_session=" in page.headers["set-cookie"]

    run(test)


# -- reading -------------------------------------------------------------------------------


def test_the_waiting_calls_are_listed_with_what_a_person_needs() -> None:
    async def test() -> None:
        store, _ = await store_with_paused_run()
        await Runner(store=store).run(agent(), "again", run_id="run-2")
        app = create_app(store, auth=TOKENS, agent=agent(), permissions={"refund": ["bob"]})
        async with client(app) as http:
            page = (await http.get("/api/approvals", headers=ADA)).json()
            assert [(c["run_id"], c["request"]["tool"]) for c in page["calls"]] == [
                ("run-1", "send_email"),
                ("run-1", "refund"),
                ("run-2", "send_email"),
                ("run-2", "refund"),
            ]
            email = page["calls"][0]
            assert email["description"].startswith("Send an email to a customer.")
            assert email["said"] is None  # the model called its tools without a word
            assert email["request"]["schema"]["properties"]["priority"]["type"] == "integer"
            assert [c["may_decide"] for c in page["calls"]] == [True, False, True, False]
            assert page["next"] is None
            only = (await http.get("/api/approvals?tool=refund&limit=1", headers=BOB)).json()
            assert [c["run_id"] for c in only["calls"]] == ["run-1"] and only["calls"][0][
                "may_decide"
            ]
            rest = await http.get(f"/api/approvals?tool=refund&after={only['next']}", headers=BOB)
            assert [c["run_id"] for c in rest.json()["calls"]] == ["run-2"]
            assert (await http.get("/api/approvals?agent=nobody", headers=ADA)).json()[
                "calls"
            ] == []
            for bad in ("limit=0", "limit=1001", "limit=ten", "after=not-a-cursor"):
                is_problem(await http.get(f"/api/approvals?{bad}", headers=ADA), 422)

    run(test)


def test_runs_are_listed_and_shown_with_their_audit_trail() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()
        async with client(create_app(store, auth=TOKENS)) as http:
            runs = (await http.get("/api/runs", headers=ADA)).json()["runs"]
            assert [(r["run_id"], r["status"], r["waiting"]) for r in runs] == [
                ("run-1", "interrupted", 2)
            ]
            assert (await http.get("/api/runs?status=completed", headers=ADA)).json() == {
                "runs": []
            }
            is_problem(await http.get("/api/runs?status=sleeping", headers=ADA), 422)
            email = requests_of(result)["send_email"]
            await http.post(
                "/api/runs/run-1/decisions",
                headers=ADA,
                json={"call_id": email.call_id, "digest": email.digest, "action": "approve"},
            )
            shown = (await http.get("/api/runs/run-1", headers=BOB)).json()
            assert shown["status"] == "interrupted"
            assert [w["tool"] for w in shown["waiting"]] == ["send_email", "refund"]
            assert [(p["call_id"], p["by"]) for p in shown["posted"]] == [(email.call_id, "ada")]
            assert shown["input"][0]["content"] == "help me"
            problem = is_problem(await http.get("/api/runs/nope", headers=ADA), 404)
            assert problem["type"].endswith(":unknown-run") and "nope" in problem["detail"]

    run(test)


def test_the_openapi_document_describes_every_route() -> None:
    async def test() -> None:
        store = MemoryStore()
        app = create_app(store, auth=TOKENS)
        async with client(app) as http:
            document = (await http.get("/api/openapi.json", headers=ADA)).json()
        assert document["openapi"].startswith("3.1")
        routes = {
            (method.upper(), path)
            for path, operations in document["paths"].items()
            for method in operations
        }
        served = {
            (method, route.path)  # type: ignore[attr-defined]
            for route in app.routes
            if route.path.startswith("/api/")  # type: ignore[attr-defined]
            for method in route.methods  # type: ignore[attr-defined]
            if method != "HEAD"
        }
        assert routes == served
        body = document["components"]["schemas"]["DecisionBody"]
        assert "by" not in body["properties"] and body["additionalProperties"] is False

    run(test)


# -- deciding ------------------------------------------------------------------------------


def test_a_decision_is_the_authenticated_identitys_and_binds_to_the_digest() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()
        email = requests_of(result)["send_email"]
        async with client(create_app(store, auth=TOKENS)) as http:
            url = "/api/runs/run-1/decisions"
            approve = {"call_id": email.call_id, "digest": email.digest, "action": "approve"}
            # Who decides comes from the token, never from the body.
            problem = is_problem(
                await http.post(url, headers=ADA, json={**approve, "by": "bob"}), 422
            )
            assert "by" in problem["detail"]
            stale = {**approve, "digest": "0" * 64}
            problem = is_problem(await http.post(url, headers=ADA, json=stale), 409)
            assert problem["type"].endswith(":decision-refused")
            assert "other arguments" in problem["detail"]
            first = await http.post(url, headers=ADA, json=approve)
            assert first.status_code == 201, first.text
            assert first.json()["posted"] is True and first.json()["decision"]["by"] == "ada"
            again = await http.post(url, headers=ADA, json=approve)  # a double click
            assert again.status_code == 200 and again.json()["posted"] is False
            other = {**approve, "action": "reject", "message": "no"}
            problem = is_problem(await http.post(url, headers=BOB, json=other), 409)
            assert "already decided: approved by ada" in problem["detail"]
            missing = {**approve, "call_id": "call_9_9"}
            problem = is_problem(await http.post(url, headers=ADA, json=missing), 409)
            assert problem["type"].endswith(":call-not-waiting")
            problem = is_problem(
                await http.post("/api/runs/nope/decisions", headers=ADA, json=approve), 404
            )
        inbox = await store.inbox("run-1")
        assert [m.decision.by for m in inbox.messages] == ["ada"]  # type: ignore[union-attr]
        done = await Runner(store=store).resume(agent(), "run-1")
        assert [r.decision.by for r in done.state.audit] == ["ada"]

    run(test)


def test_edited_arguments_are_checked_against_the_recorded_schema() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()
        email = requests_of(result)["send_email"]
        refund = requests_of(result)["refund"]
        url = "/api/runs/run-1/decisions"
        bound = {"call_id": email.call_id, "digest": email.digest, "action": "approve"}
        async with client(create_app(store, auth=TOKENS)) as http:
            wrong = {
                **bound,
                "arguments": {"to": "ada@example.com", "body": "hi", "priority": "high"},
            }
            problem = is_problem(await http.post(url, headers=ADA, json=wrong), 409)
            assert "$.priority: expected integer" in problem["detail"]
            is_problem(await http.post(url, headers=ADA, json={**bound, "arguments": [1]}), 422)
            reject = {**bound, "action": "reject", "arguments": {"to": "x", "body": "y"}}
            is_problem(await http.post(url, headers=ADA, json=reject), 422)
            is_problem(await http.post(url, headers=ADA, json={**bound, "message": "hi"}), 422)
            edited = {**bound, "arguments": {"to": "bob@example.com", "body": "Grüße 東京"}}
            assert (await http.post(url, headers=ADA, json=edited)).status_code == 201
            rejected = {
                "call_id": refund.call_id,
                "digest": refund.digest,
                "action": "reject",
                "message": "Not this one.",
            }
            assert (await http.post(url, headers=ADA, json=rejected)).status_code == 201
        done = await Runner(store=store).resume(agent(), "run-1")
        assert done.status == "completed"
        kinds = [(r.tool, r.decision.kind, r.decision.by) for r in done.state.audit]
        assert kinds == [("send_email", "edit", "ada"), ("refund", "reject", "ada")]
        assert done.state.audit[0].decision.arguments == {
            "to": "bob@example.com",
            "body": "Grüße 東京",
        }

    run(test)


def test_permissions_say_who_may_decide_on_which_tool() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()
        refund = requests_of(result)["refund"]
        email = requests_of(result)["send_email"]
        permissions = Permissions({"refund": ["bob"]}, allow=lambda who, r: who != "mallory")
        tokens = {**TOKENS, "token-of-mallory-0123456789": "mallory"}
        async with client(create_app(store, auth=tokens, permissions=permissions)) as http:
            url = "/api/runs/run-1/decisions"
            body = {"call_id": refund.call_id, "digest": refund.digest, "action": "approve"}
            problem = is_problem(await http.post(url, headers=ADA, json=body), 403)
            assert "ada may not decide on calls of the tool 'refund'" in problem["detail"]
            mallory = {"Authorization": "Bearer token-of-mallory-0123456789"}
            email_body = {"call_id": email.call_id, "digest": email.digest, "action": "approve"}
            is_problem(await http.post(url, headers=mallory, json=email_body), 403)
            assert (await http.post(url, headers=BOB, json=body)).status_code == 201
        assert Permissions({"*": ["ada"]}).may_decide("bob", refund) is False
        with pytest.raises(ConfigurationError, match="list of identities"):
            Permissions({"refund": "bob"})

    run(test)


# -- starting and steering runs ------------------------------------------------------------


def test_runs_are_started_for_the_workers_only_when_the_inbox_knows_the_agent() -> None:
    async def test() -> None:
        store = MemoryStore()
        async with client(create_app(store, auth=TOKENS)) as http:
            problem = is_problem(
                await http.post("/api/runs", headers=ADA, json={"input": "hi"}), 501
            )
            assert "--app" in problem["detail"]
        async with client(create_app(store, auth=TOKENS, agent=agent())) as http:
            started = await http.post(
                "/api/runs", headers=ADA, json={"input": "hi", "run_id": "r-7", "context": {"a": 1}}
            )
            assert started.status_code == 201, started.text
            assert started.json() == {"run_id": "r-7", "status": "new", "version": 0}
            assert started.headers["location"] == "/api/runs/r-7"
            again = await http.post("/api/runs", headers=ADA, json={"input": "hi", "run_id": "r-7"})
            is_problem(again, 409)
            is_problem(
                await http.post("/api/runs", headers=ADA, json={"input": "hi", "max_turns": -1}),
                422,
            )
            as_json = {**ADA, "Content-Type": "application/json"}
            is_problem(await http.post("/api/runs", headers=as_json, content=b"{"), 400)
            is_problem(
                await http.post(
                    "/api/runs", headers={**ADA, "Content-Type": "text/plain"}, content=b"{}"
                ),
                415,
            )
            is_problem(await http.post("/api/runs", headers=as_json, content=b"x" * (1 << 21)), 413)
        assert (await store.load("r-7")).context == {"a": 1}
        advanced = await Runner(store=store).work(agent(), until_idle=True)
        assert advanced == 1 and (await store.load("r-7")).status == "interrupted"

    run(test)


def test_cancel_pause_unpause_and_input_go_to_the_runs_inbox() -> None:
    async def test() -> None:
        store, _ = await store_with_paused_run()
        async with client(create_app(store, auth=TOKENS)) as http:
            for verb, body in [
                ("input", {"text": "also CC Bob"}),
                ("pause", {}),
                ("unpause", None),
                ("cancel", {"reason": "wrong customer"}),
            ]:
                kwargs: dict[str, Any] = {"json": body} if body is not None else {}
                response = await http.post(f"/api/runs/run-1/{verb}", headers=ADA, **kwargs)
                assert response.status_code == 202, (verb, response.text)
                assert response.json()["run_id"] == "run-1"
            is_problem(await http.post("/api/runs/run-1/input", headers=ADA, json={}), 422)
            is_problem(await http.post("/api/runs/nope/cancel", headers=ADA), 404)
            inbox = await store.inbox("run-1")
            assert [type(m).__name__ for m in inbox.messages] == [
                "InputMessage",
                "PauseMessage",
                "UnpauseMessage",
                "CancelMessage",
            ]
            done = await Runner(store=store).resume(agent(), "run-1")
            assert done.status == "cancelled"
            problem = is_problem(await http.post("/api/runs/run-1/cancel", headers=ADA), 409)
            assert "cancelled" in problem["detail"]

    run(test)


# -- errors, headers -----------------------------------------------------------------------


def test_an_unexpected_failure_is_a_problem_document_that_names_no_internals() -> None:
    class Broken(MemoryStore):
        async def list(self, **kwargs: Any) -> Any:
            raise RuntimeError("secret internals /etc/passwd")

        async def load(self, run_id: str) -> Any:
            raise UnknownRunError(f"no run {run_id!r} in the store")

    async def test() -> None:
        async with client(create_app(Broken(), auth=TOKENS)) as http:
            response = await http.get("/api/runs", headers=ADA)
            problem = is_problem(response, 500)
            assert "secret" not in response.text and "Traceback" not in response.text
            assert problem["type"].endswith(":internal")
            is_problem(await http.get("/api/nothing-here", headers=ADA), 404)
            is_problem(await http.delete("/api/runs", headers=ADA), 405)

    run(test)


def test_every_response_carries_the_security_headers() -> None:
    async def test() -> None:
        store, _ = await store_with_paused_run()
        async with client(create_app(store, auth=TOKENS)) as http:
            for path in ("/api/runs", "/login", "/static/inbox.js", "/nowhere"):
                response = await http.get(path, headers=ADA)
                assert response.headers["content-security-policy"] == CSP
                assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
                assert response.headers["x-content-type-options"] == "nosniff"
                assert response.headers["x-frame-options"] == "DENY"
            script = await http.get("/static/inbox.js")
            assert script.headers["content-type"].startswith("text/javascript")
            assert "EventSource" in script.text

    run(test)


def test_a_browser_session_calls_the_api_only_with_its_csrf_token() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()
        email = requests_of(result)["send_email"]
        async with client(create_app(store, auth=TOKENS)) as http:
            csrf = await login(http)
            assert (await http.get("/api/me")).json() == {"identity": "ada"}
            body = {"call_id": email.call_id, "digest": email.digest, "action": "approve"}
            problem = is_problem(await http.post("/api/runs/run-1/decisions", json=body), 403)
            assert problem["type"].endswith(":csrf")
            wrong = {"X-CSRF-Token": csrf[:-2] + "xx"}
            is_problem(await http.post("/api/runs/run-1/decisions", json=body, headers=wrong), 403)
            ok = await http.post(
                "/api/runs/run-1/decisions", json=body, headers={"X-CSRF-Token": csrf}
            )
            assert ok.status_code == 201 and ok.json()["decision"]["by"] == "ada"

    run(test)


def test_token_auth_is_a_plain_callable() -> None:
    auth = TokenAuth({"x" * 16: "ada"})
    assert auth.identity("x" * 16) == "ada" and auth.identity("y" * 16) is None
