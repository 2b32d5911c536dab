"""The inbox's Server-Sent Events: a run's events and the approvals feed, derived by
polling the store while another runner advances the runs, and resumed with Last-Event-ID."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the inbox needs the web extra")

from agentfsm import Position, Runner
from agentfsm.web import create_app
from tests.inboxkit import ADA, TOKENS, Stream, agent, paused, store_with_paused_run


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


async def decide_all(store: Any, run_id: str, who: str = "ada") -> None:
    state = await store.load(run_id)
    for request in state.interruptions:
        await store.approve(run_id, request, by=who)


def test_a_runs_events_arrive_as_another_runner_advances_it_and_resume_exactly() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()
        app = create_app(store, auth=TOKENS, poll_interval=0.01)
        version = result.state.version
        async with Stream(app, f"/api/runs/run-1/events?after={version}", ADA) as stream:
            assert stream.status == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            await decide_all(store, "run-1")
            await Runner(store=store).resume(agent(), "run-1")
            events = await stream.take("run_finished")
        kinds = [e["event"] for e in events]
        assert kinds.count("approval_decided") == 2 and kinds[-1] == "run_finished"
        assert {
            e["data"]["record"]["decision"]["by"]
            for e in events
            if e["event"] == "approval_decided"
        } == {"ada"}
        assert events[-1]["data"]["output"] == "done"
        positions = [Position.parse(e["id"]) for e in events]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        assert all(p.version > version for p in positions)

        # Coming back after the first event: exactly the rest, at the same positions.
        headers = {**ADA, "Last-Event-ID": events[0]["id"]}
        async with Stream(app, "/api/runs/run-1/events", headers) as again:
            rest = await again.take("run_finished")
        assert rest == events[1:]
        # From the last one: nothing more (the run has ended; the stream stays quiet).
        headers = {**ADA, "Last-Event-ID": events[-1]["id"]}
        async with Stream(app, "/api/runs/run-1/events", headers) as quiet:
            with pytest.raises(AssertionError, match="no run_finished"):
                await quiet.take("run_finished", seconds=0.3)

    run(test)


def test_a_stream_this_process_cannot_resume_says_reset() -> None:
    async def test() -> None:
        store, result = await store_with_paused_run()
        await decide_all(store, "run-1")
        await Runner(store=store).resume(agent(), "run-1")
        fresh = create_app(store, auth=TOKENS, poll_interval=0.01)  # a restarted server
        headers = {**ADA, "Last-Event-ID": str(Position(result.state.version, 0, 3))}
        async with Stream(fresh, "/api/runs/run-1/events", headers) as stream:
            [reset] = await stream.take("reset")
        assert reset["id"] is None and "reload" in reset["data"]["reason"]
        async with Stream(fresh, "/api/runs/run-1/events?after=not.a.position", ADA) as bad:
            assert bad.status == 422
            assert '"status":422' in await bad.body()
        async with Stream(fresh, "/api/runs/nope/events", ADA) as missing:
            assert missing.status == 404

    run(test)


def test_the_approvals_feed_tells_what_is_requested_and_decided_across_runs() -> None:
    async def test() -> None:
        store, _ = await store_with_paused_run()
        app = create_app(store, auth=TOKENS, poll_interval=0.01)
        async with Stream(app, "/api/approvals/events", ADA) as feed:
            await asyncio.sleep(0.05)  # the feed takes its baseline
            await paused(store, "run-2")
            requested = await feed.take("approval_requested")
            assert requested[-1]["data"]["request"]["tool"] == "send_email"
            assert requested[-1]["id"].startswith("run-2/")
            await decide_all(store, "run-1", who="bob")
            await Runner(store=store).resume(agent(), "run-1")
            seen = await feed.take("run_finished")
        decided = [e["data"]["record"] for e in seen if e["event"] == "approval_decided"]
        assert {(r["tool"], r["decision"]["by"]) for r in decided} == {
            ("send_email", "bob"),
            ("refund", "bob"),
        }
        assert seen[-1]["data"]["run_id"] == "run-1"
        # The feed keeps no history: a client that comes back is told to reload.
        async with Stream(
            app, "/api/approvals/events", {**ADA, "Last-Event-ID": seen[-1]["id"]}
        ) as back:
            [reset] = await back.take("reset")
        assert "reload" in reset["data"]["reason"]
        # Filtered by tool, only that tool's requests arrive.
        async with Stream(app, "/api/approvals/events?tool=refund", ADA) as only:
            await asyncio.sleep(0.05)
            await paused(store, "run-3")
            events = await only.take("approval_requested")
        assert [e["data"]["request"]["tool"] for e in events] == ["refund"]

    run(test)


def test_the_approvals_feed_sees_decisions_on_calls_that_waited_before_it_started() -> None:
    async def test() -> None:
        store, _ = await store_with_paused_run()
        # A fresh process: no state of run-1 in its memory; the feed's baseline is the
        # store's index of waiting calls.
        app = create_app(store, auth=TOKENS, poll_interval=0.01)
        async with Stream(app, "/api/approvals/events", ADA) as feed:
            await asyncio.sleep(0.05)
            await decide_all(store, "run-1")
            await Runner(store=store).resume(agent(), "run-1")
            seen = await feed.take("run_finished")
        assert [e["event"] for e in seen] == [
            "approval_decided",
            "approval_decided",
            "run_finished",
        ]

    run(test)
