"""The inbox's pages, as a browser without JavaScript uses them: logging in, deciding with
forms, CSRF, and text from the model shown as text."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Awaitable, Callable

import pytest

pytest.importorskip("starlette", reason="the inbox needs the web extra")

from agentfsm import MemoryStore, Runner
from agentfsm.web import Sessions, create_app
from tests.inboxkit import TOKENS, XSS, agent, client, csrf_of, login, store_with_paused_run


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


def form_of(page: str, call_id: str) -> dict[str, str]:
    """The hidden fields of the decision forms of ``call_id`` on ``page``."""
    card = page[page.index(f'data-id="run-1/{call_id}"') :]
    card = card[: card.index("</article>")]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', card))
    return {k: html.unescape(v) for k, v in fields.items()}


def test_pages_send_strangers_to_log_in_and_back() -> None:
    async def test() -> None:
        store, _ = await store_with_paused_run()
        async with client(create_app(store, auth=TOKENS)) as http:
            response = await http.get("/runs/run-1")
            assert response.status_code == 303
            assert response.headers["location"] == "/login?next=/runs/run-1"
            page = await http.get("/login?next=/runs/run-1")
            assert 'type="password" name="token"' in page.text
            wrong = await http.post(
                "/login", data={"token": "guess-guess-guess-guess", "next": "/"}
            )
            assert wrong.status_code == 401 and "not known" in wrong.text
            assert "set-cookie" not in wrong.headers
            right = await http.post(
                "/login", data={"token": "token-of-ada-0123456789", "next": "/runs/run-1"}
            )
            assert right.status_code == 303 and right.headers["location"] == "/runs/run-1"
            cookie = right.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
            assert "token-of-ada" not in cookie  # the cookie is a signed session, not the token
            assert (await http.get("/runs/run-1")).status_code == 200
            # A login form's next cannot send anyone elsewhere.
            elsewhere = await http.post(
                "/login", data={"token": "token-of-ada-0123456789", "next": "//evil.example/x"}
            )
            assert elsewhere.headers["location"] == "/"
            csrf = csrf_of((await http.get("/")).text)
            out = await http.post("/logout", data={"csrf": csrf})
            assert out.status_code == 303 and 'agentfsm_session=""' in out.headers["set-cookie"]

    run(test)


def test_a_session_is_signed_and_expires() -> None:
    sessions = Sessions(b"k" * 32, seconds=60)
    session, cookie = sessions.new("ada", now=1000.0)
    assert sessions.read(cookie, now=1030.0) == session
    assert sessions.read(cookie, now=1061.0) is None
    payload, signature = cookie.split(".")
    assert sessions.read(f"{payload}.{signature[:-1]}A", now=1030.0) is None
    assert Sessions(b"other-secret-0123456789").read(cookie, now=1030.0) is None
    assert sessions.check_csrf(session, sessions.csrf(session))
    other, _ = sessions.new("ada", now=1000.0)
    assert not sessions.check_csrf(other, sessions.csrf(session))


def test_every_form_post_needs_the_sessions_csrf_token() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()
        email = result.interruptions[0]
        async with client(create_app(store, auth=TOKENS)) as http:
            csrf = await login(http)
            bound = {"call_id": email.call_id, "digest": email.digest, "action": "approve"}
            for data in (bound, {**bound, "csrf": "forged"}, {**bound, "csrf": ""}):
                response = await http.post("/runs/run-1/decide", data=data)
                assert response.status_code == 403, response.text
                assert "CSRF" in response.text
            for path in ("/runs/run-1/cancel", "/runs/run-1/input", "/runs", "/logout"):
                assert (await http.post(path, data={"text": "x"})).status_code == 403
            cross = await http.post(
                "/runs/run-1/decide",
                data={**bound, "csrf": csrf},
                headers={"Origin": "https://evil.example"},
            )
            assert cross.status_code == 403
            # Another person's token is no good with this session.
            async with client(create_app(store, auth=TOKENS)) as other:
                bob = await login(other, "token-of-bob-0123456789")
            forged = await http.post("/runs/run-1/decide", data={**bound, "csrf": bob})
            assert forged.status_code == 403
            assert (await store.inbox("run-1")).ids == ()

    run(test)


def test_model_text_is_shown_as_text_and_pages_carry_no_inline_script() -> None:
    async def test() -> None:
        store, _ = await store_with_paused_run()
        await store.add_input("run-1", XSS)
        async with client(create_app(store, auth=TOKENS, agent=agent())) as http:
            await login(http)
            for path in ("/", "/runs/run-1", "/runs"):
                page = (await http.get(path)).text
                assert XSS not in page and "<img src=x" not in page
                assert re.findall(r"<script[^>]*>", page) == [
                    '<script src="/static/inbox.js" defer>'
                ]
                assert " on" not in re.sub(r"(&[a-z]+;|[^<])*", "", page)  # no on* handlers
            inbox = (await http.get("/")).text
            assert html.escape(XSS) in inbox  # shown, escaped
            assert "Grüße" in inbox  # non-ASCII as it is
            assert "Send an email to a customer." in inbox  # the tool's description

    run(test)


def test_a_person_approves_rejects_and_edits_with_plain_forms() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()
        email, refund = result.interruptions
        async with client(create_app(store, auth=TOKENS, agent=agent())) as http:
            await login(http)
            page = (await http.get("/")).text
            fields = form_of(page, email.call_id)
            assert fields["digest"] == email.digest and fields["next"] == "/"
            # An edit that does not fit the schema comes back with the values typed.
            edit = {
                **fields,
                "action": "edit",
                "arg.to": "bob@example.com",
                "arg.body": "Hallo <b>Bob</b>",
                "arg.priority": "soon",
            }
            again = await http.post("/runs/run-1/decide", data=edit)
            assert again.status_code == 422
            assert "must be a whole number" in again.text
            assert 'value="soon"' in again.text and "Hallo &lt;b&gt;Bob&lt;/b&gt;" in again.text
            assert (await store.inbox("run-1")).ids == ()
            done = await http.post("/runs/run-1/decide", data={**edit, "arg.priority": "3"})
            assert done.status_code == 303 and done.headers["location"] == "/"
            reject = {**form_of(page, refund.call_id), "action": "reject", "message": "Not today."}
            assert (await http.post("/runs/run-1/decide", data=reject)).status_code == 303
            # Deciding again differently is refused: the first decision wins.
            twice = await http.post("/runs/run-1/decide", data={**reject, "action": "approve"})
            assert twice.status_code == 409 and "already decided" in twice.text
            shown = (await http.get("/runs/run-1")).text
            assert "approved with edits by ada" in shown and "rejected by ada" in shown
        finished = await Runner(store=store).resume(agent(), "run-1")
        audit = [(r.decision.kind, r.decision.by) for r in finished.state.audit]
        assert audit == [("edit", "ada"), ("reject", "ada")]
        assert finished.state.audit[0].decision.arguments == {
            "to": "bob@example.com",
            "body": "Hallo <b>Bob</b>",
            "priority": 3,
        }

    run(test)


def test_a_stale_form_is_refused_with_the_reason() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()
        email = result.interruptions[0]
        async with client(create_app(store, auth=TOKENS)) as http:
            await login(http)
            fields = form_of((await http.get("/")).text, email.call_id)
            response = await http.post(
                "/runs/run-1/decide", data={**fields, "digest": "f" * 64, "action": "approve"}
            )
            assert response.status_code == 409
            assert "other arguments than the ones this decision was made on" in html.unescape(
                response.text
            )

    run(test)


def test_runs_are_started_and_steered_from_the_pages() -> None:
    async def test() -> None:
        store = MemoryStore()
        async with client(create_app(store, auth=TOKENS, agent=agent())) as http:
            csrf = await login(http)
            assert "Start a run" in (await http.get("/runs")).text
            started = await http.post("/runs", data={"csrf": csrf, "input": "Hilfe!"})
            assert started.status_code == 303
            run_id = started.headers["location"].rsplit("/", 1)[1]
            await Runner(store=store).work(agent(), until_idle=True)
            for verb, data in [("input", {"text": "more"}), ("cancel", {"reason": "enough"})]:
                response = await http.post(f"/runs/{run_id}/{verb}", data={"csrf": csrf, **data})
                assert response.status_code == 303
            page = (await http.get(f"/runs/{run_id}")).text
            assert "cancel: enough" in page
        async with client(create_app(store, auth=TOKENS)) as http:
            csrf = await login(http)
            assert "Start a run" not in (await http.get("/runs")).text
            response = await http.post("/runs", data={"csrf": csrf, "input": "hi"})
            assert response.status_code == 501 and "--app" in response.text

    run(test)
