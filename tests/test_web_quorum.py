"""Quorum and the starter rule through the inbox's API and pages (httpx's ASGI transport):
the count shown while a call waits for more approvals, a repeated approver told so without
an error, stale digests refused, and the person who started a run kept from approving it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the inbox needs the web extra")

from agentfsm import MemoryStore, Runner, RunState, new_run
from agentfsm.web import Permissions, create_app
from tests.apps.quorum import agent
from tests.fleet import wait_until
from tests.inboxkit import client, csrf_of, is_problem

TOKENS = {f"token-of-{who}-0123456789": who for who in ("ada", "bob", "cy")}
AS = {who: {"Authorization": f"Bearer token-of-{who}-0123456789"} for who in TOKENS.values()}


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def paused(store: MemoryStore, run_id: str = "q-1", **options: Any) -> RunState:
    a = agent()
    await store.create(new_run(a, "pay acme", run_id=run_id, **options))
    result = await Runner(store=store).resume(a, run_id)
    assert result.status == "interrupted"
    return result.state


async def resume(store: MemoryStore, run_id: str = "q-1") -> RunState:
    return (await Runner(store=store).resume(agent(), run_id)).state


def body(request: Any, action: str = "approve", **more: Any) -> dict[str, Any]:
    return {"call_id": request.call_id, "digest": request.digest, "action": action, **more}


def test_two_approvals_through_the_api_with_the_count_shown_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    effects = tmp_path / "effects.jsonl"
    monkeypatch.setenv("QUORUM_EFFECTS", str(effects))

    async def test() -> None:
        store = MemoryStore()
        (request,) = (await paused(store)).interruptions
        async with client(create_app(store, auth=TOKENS)) as http:
            first = await http.post(
                "/api/runs/q-1/decisions", headers=AS["ada"], json=body(request)
            )
            assert first.status_code == 201, first.text
            assert first.json()["detail"] == "1 of 2 approvals (ada)"
            again = await http.post(
                "/api/runs/q-1/decisions", headers=AS["ada"], json=body(request)
            )
            assert again.status_code == 200, again.text
            assert again.json()["posted"] is False
            assert again.json()["detail"] == "ada's approval counts already: 1 of 2 approvals (ada)"
            listed = (await http.get("/api/approvals", headers=AS["bob"])).json()["calls"]
            assert [c["approvals"] for c in listed] == ["1 of 2 approvals (ada)"]
            assert listed[0]["request"]["quorum"] == 2
            # Once a worker applied it, the count is in the run, and shown the same way.
            await resume(store)
            listed = (await http.get("/api/approvals", headers=AS["bob"])).json()["calls"]
            assert listed[0]["request"]["approved_by"] == ["ada"]
            assert listed[0]["approvals"] == "1 of 2 approvals (ada)"
            shown = (await http.get("/api/runs/q-1", headers=AS["bob"])).json()
            assert [(d["outcome"], d["decision"]["by"]) for d in shown["decisions"]] == [
                ("counted", "ada")
            ]
            # Ada's browser says her approval counts; Bob's offers him the buttons.
            ada_page = (await http.get("/", headers=AS["ada"])).text
            assert "1 of 2 approvals (ada)" in ada_page and "Your approval counts" in ada_page
            http.cookies.clear()  # a browser each
            bob_page = (await http.get("/", headers=AS["bob"])).text
            http.cookies.clear()
            assert 'value="approve"' in bob_page and "Your approval counts" not in bob_page
            second = await http.post(
                "/api/runs/q-1/decisions", headers=AS["bob"], json=body(request)
            )
            assert second.status_code == 201, second.text
            final = await resume(store)
            assert final.status.value == "completed"
            assert len(effects.read_text().splitlines()) == 1
            late = await http.post("/api/runs/q-1/decisions", headers=AS["cy"], json=body(request))
            assert is_problem(late, 409)["type"].endswith(":conflict")  # the run has ended

    run(test)


def test_one_person_posting_twice_at_once_counts_once() -> None:
    async def test() -> None:
        store = MemoryStore()
        (request,) = (await paused(store)).interruptions
        async with client(create_app(store, auth=TOKENS)) as http:
            answers = await asyncio.gather(
                *(
                    http.post("/api/runs/q-1/decisions", headers=AS["ada"], json=body(request))
                    for _ in range(4)
                )
            )
            assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
        state = await resume(store)
        assert state.interruptions[0].approved_by == ("ada",)

    run(test)


def test_a_stale_digest_and_a_rejection_after_an_approval() -> None:
    async def test() -> None:
        store = MemoryStore()
        (request,) = (await paused(store)).interruptions
        async with client(create_app(store, auth=TOKENS)) as http:
            edited = body(request, arguments={"to": "acme", "amount": 90})
            response = await http.post("/api/runs/q-1/decisions", headers=AS["ada"], json=edited)
            assert response.status_code == 201, response.text
            # Until a worker applies the edit, the old arguments can no longer be approved.
            refused = await http.post(
                "/api/runs/q-1/decisions", headers=AS["bob"], json=body(request)
            )
            assert "starts again on the new arguments" in is_problem(refused, 409)["detail"]
            await resume(store)
            stale = await http.post(
                "/api/runs/q-1/decisions", headers=AS["bob"], json=body(request)
            )
            problem = is_problem(stale, 409)
            assert problem["type"].endswith(":decision-refused")
            assert "other arguments" in problem["detail"]
            (now,) = (await store.load("q-1")).interruptions
            assert now.approved_by == ("ada",) and now.arguments["amount"] == 90
            rejected = await http.post(
                "/api/runs/q-1/decisions",
                headers=AS["bob"],
                json=body(now, "reject", message="too much"),
            )
            assert rejected.status_code == 201, rejected.text
        final = await resume(store)
        assert final.status.value == "completed"
        assert [r.outcome for r in final.audit] == ["counted", "applied"]

    run(test)


def test_the_person_who_started_a_run_may_not_approve_its_calls() -> None:
    async def test() -> None:
        store = MemoryStore()
        app = create_app(
            store, auth=TOKENS, agent=agent(), permissions=Permissions(starter_may_approve=False)
        )
        async with client(app) as http:
            started = await http.post("/api/runs", headers=AS["ada"], json={"input": "pay acme"})
            assert started.status_code == 201, started.text
            run_id = started.json()["run_id"]
            state = await resume(store, run_id)
            assert (state.started_by, state.starter_may_approve) == ("ada", False)
            (request,) = state.interruptions
            listed = (await http.get("/api/approvals", headers=AS["ada"])).json()["calls"]
            assert listed[0]["may_approve"] is False and listed[0]["may_decide"] is True
            page = (await http.get("/", headers=AS["ada"])).text
            assert "You started this run" in page and 'value="approve"' not in page
            http.cookies.clear()
            refused = await http.post(
                f"/api/runs/{run_id}/decisions", headers=AS["ada"], json=body(request)
            )
            assert "ada started run" in is_problem(refused, 403)["detail"]
            # The run itself says so: the store refuses Ada however she posts it.
            with pytest.raises(Exception, match="may not approve"):
                await store.approve(run_id, request, by="ada")
            for who in ("bob", "cy"):
                response = await http.post(
                    f"/api/runs/{run_id}/decisions", headers=AS[who], json=body(request)
                )
                assert response.status_code == 201, response.text
        assert (await resume(store, run_id)).status.value == "completed"
        # Without the setting, the starter approves like anyone else.
        async with client(create_app(store, auth=TOKENS, agent=agent())) as http:
            started = await http.post("/api/runs", headers=AS["ada"], json={"input": "again"})
            run_id = started.json()["run_id"]
            (request,) = (await resume(store, run_id)).interruptions
            response = await http.post(
                f"/api/runs/{run_id}/decisions", headers=AS["ada"], json=body(request)
            )
            assert response.status_code == 201, response.text

    run(test)


def test_the_inbox_applies_its_starter_rule_to_runs_started_elsewhere() -> None:
    async def test() -> None:
        store = MemoryStore()
        (request,) = (await paused(store, started_by="ada")).interruptions
        app = create_app(store, auth=TOKENS, permissions=Permissions(starter_may_approve=False))
        async with client(app) as http:
            refused = await http.post(
                "/api/runs/q-1/decisions", headers=AS["ada"], json=body(request)
            )
            is_problem(refused, 403)
            # A rejection stays hers to make, through a form too.
            await http.post("/login", data={"token": "token-of-ada-0123456789", "next": "/"})
            csrf = csrf_of((await http.get("/")).text)
            response = await http.post(
                "/runs/q-1/decide",
                data={"csrf": csrf, **body(request, "reject"), "message": "no"},
            )
            assert response.status_code == 303, response.text
        assert (await resume(store)).status.value == "completed"

    run(test)


def test_agentfsm_serve_keeps_the_starter_from_approving_over_real_http(tmp_path: Path) -> None:
    """``agentfsm serve --starter-may-not-approve`` on loopback, a worker on the same SQLite
    file: Ada starts a run, may not approve its call; Bob and Cy make the quorum."""
    import select
    import signal

    import httpx

    from tests.fleet import spawn, stop

    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{who} {token}\n" for token, who in TOKENS.items()))
    env = {"AGENTFSM_STORE": str(tmp_path / "runs.db"), "QUORUM_EFFECTS": str(tmp_path / "fx")}
    app = ["--app", "tests.apps.quorum:agent"]
    serve = spawn(
        ["serve", *app, "--port", "0", "--tokens", str(tokens), "--starter-may-not-approve"], env
    )
    worker = spawn(["worker", *app, "--poll", "0.05"], env)
    try:
        assert serve.stdout is not None
        ready, _, _ = select.select([serve.stdout], [], [], 30)
        assert ready, "agentfsm serve said nothing"
        base = serve.stdout.readline().split(" at ", 1)[1].strip().rstrip("/")
        with httpx.Client(base_url=base, timeout=10) as http:
            started = http.post("/api/runs", headers=AS["ada"], json={"input": "pay acme"})
            assert started.status_code == 201, started.text
            run_id = started.json()["run_id"]

            def waiting() -> list[dict[str, Any]]:
                calls: list[dict[str, Any]] = http.get("/api/approvals", headers=AS["bob"]).json()[
                    "calls"
                ]
                return calls

            wait_until(lambda: bool(waiting()), 30, "the call to wait")
            request = waiting()[0]["request"]
            decision = {
                "call_id": request["call_id"],
                "digest": request["digest"],
                "action": "approve",
            }
            url = f"/api/runs/{run_id}/decisions"
            assert is_problem(http.post(url, headers=AS["ada"], json=decision), 403)
            for who in ("bob", "cy"):
                assert http.post(url, headers=AS[who], json=decision).status_code == 201

            def status() -> str:
                return str(http.get(f"/api/runs/{run_id}", headers=AS["bob"]).json()["status"])

            wait_until(lambda: status() == "completed", 30, "the run to complete")
            assert len((tmp_path / "fx").read_text().splitlines()) == 1
    finally:
        serve.send_signal(signal.SIGTERM)
        stop([worker])
        for process in (serve, worker):
            process.communicate(timeout=30)
