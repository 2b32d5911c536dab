"""Guardrails and error handlers, through the Runner: every kind of guardrail allows,
replaces and trips; a trip leaves a saved, loadable, failed run; tool guardrails check a
call before anyone approves it and again right before it runs; guardrails run concurrently;
one that raises trips; hostile input is handled; the max_turns error handler."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import pytest

from agentfsm import (
    Agent,
    ConfigurationError,
    GuardrailChecked,
    GuardrailFunctionOutput,
    GuardrailItem,
    GuardrailTripped,
    MemoryStore,
    ModelResponse,
    ModelToolCall,
    RunErrorHandlerInput,
    RunErrorHandlerResult,
    RunEvent,
    RunHooks,
    Runner,
    RunState,
    RunStatus,
    SQLiteStore,
    ToolDefinitionError,
    ToolGuardrailData,
    ToolResultItem,
    UserMessage,
    input_guardrail,
    new_run,
    output_guardrail,
    tool,
    tool_input_guardrail,
    tool_output_guardrail,
)
from agentfsm.testing import ScriptedModel, call, say

T = TypeVar("T")

#: Every test's runs are bounded: a guardrail that hangs fails the test, it never stalls it.
LIMIT = 30.0


def bounded(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(work, LIMIT))


Allow = GuardrailFunctionOutput.allow
Replace = GuardrailFunctionOutput.replace
Trip = GuardrailFunctionOutput.trip


def verdicts(items: Any) -> list[GuardrailItem]:
    return [i for i in items if isinstance(i, GuardrailItem)]


class Counter:
    """Counts a tool body's executions (thread-safe: sync tools run in threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **arguments: Any) -> None:
        with self.lock:
            self.calls.append(arguments)


def mailer(
    ran: Counter,
    *,
    needs_approval: bool = False,
    inputs: list[Any] | None = None,
    outputs: list[Any] | None = None,
    script: list[Any] | None = None,
    **agent: Any,
) -> Agent:
    @tool(
        needs_approval=needs_approval,
        tool_input_guardrails=inputs,
        tool_output_guardrails=outputs,
    )
    def send(to: str, body: str = "") -> str:
        """Send an email."""
        ran(to=to, body=body)
        return f"sent to {to}: {body} (account secret-42)"

    model = ScriptedModel(script or [call("send", to="ada@example.com", body="hi"), say("done")])
    return Agent("mailer", model=model, tools=[send], **agent)


# -- every kind allows, replaces and trips -----------------------------------------------------


def test_input_guardrails_allow_replace_and_trip() -> None:
    @input_guardrail
    def allow(context: Any, agent: Agent, text: Any) -> GuardrailFunctionOutput:
        return Allow({"length": len(text)})

    @input_guardrail
    async def redact(context: Any, agent: Agent, text: Any) -> GuardrailFunctionOutput:
        return Replace(text.replace("hunter2", "[password]"))

    @input_guardrail
    def block(context: Any, agent: Agent, text: Any) -> GuardrailFunctionOutput:
        return Trip("no passwords", {"found": "password"}) if "hunter2" in text else Allow()

    ran = Counter()
    agent = mailer(ran, input_guardrails=[allow, redact])
    result = bounded(Runner().run(agent, "my password is hunter2"))
    assert result.status == "completed"
    assert result.state.input == (UserMessage(content="my password is [password]"),)
    seen = agent.model.requests[0].input  # what the model was given
    assert seen == (UserMessage(content="my password is [password]"),)
    checked = verdicts(result.items)[:2]
    assert [(v.guardrail, v.kind, v.behavior) for v in checked] == [
        ("allow", "input", "allow"),
        ("redact", "input", "replace"),
    ]
    assert checked[0].info == {"length": 22}
    assert "hunter2" not in result.state.to_json(), "a redaction must not keep what it redacted"

    ran = Counter()
    agent = mailer(ran, input_guardrails=[block])
    with pytest.raises(GuardrailTripped, match="no passwords") as raised:
        bounded(Runner().run(agent, "my password is hunter2"))
    assert raised.value.guardrail == "block"
    assert raised.value.kind == "input"
    assert raised.value.info == {"found": "password"}
    state = raised.value.state
    assert state is not None and state.status is RunStatus.FAILED
    assert state.error is not None and state.error.kind == "guardrail_tripped"
    assert agent.model.requests == [], "the model is never called on input that tripped"
    assert ran.calls == []


def test_output_guardrails_allow_replace_and_trip() -> None:
    class Answer(pydantic.BaseModel):
        text: str
        confidence: float

    seen: list[Any] = []

    @output_guardrail
    def look(context: Any, agent: Agent, output: Any) -> GuardrailFunctionOutput:
        seen.append(output)
        return Allow()

    @output_guardrail
    def redact(context: Any, agent: Agent, output: Answer) -> GuardrailFunctionOutput:
        return Replace(output.model_copy(update={"text": output.text.replace("42", "[n]")}))

    @output_guardrail
    async def block(context: Any, agent: Agent, output: Answer) -> GuardrailFunctionOutput:
        return Trip("too confident") if output.confidence > 0.9 else Allow()

    def agent(guards: list[Any], confidence: float = 0.5) -> Agent:
        answer = f'{{"text": "the answer is 42", "confidence": {confidence}}}'
        return Agent(
            "oracle",
            model=ScriptedModel([say(answer)]),
            output_type=Answer,
            output_guardrails=guards,
        )

    result = bounded(Runner().run(agent([look]), "?"))
    assert result.final_output == Answer(text="the answer is 42", confidence=0.5)
    assert seen == [Answer(text="the answer is 42", confidence=0.5)], "the validated output"

    result = bounded(Runner().run(agent([look, redact]), "?"))
    assert result.final_output == Answer(text="the answer is [n]", confidence=0.5)
    assert "the answer is 42" not in result.state.to_json()

    with pytest.raises(GuardrailTripped, match="too confident") as raised:
        bounded(Runner().run(agent([redact, block], confidence=0.99), "?"))
    assert raised.value.kind == "output"
    assert raised.value.state is not None
    assert raised.value.state.final_output is None


def test_tool_input_guardrails_allow_replace_reject_and_trip() -> None:
    @tool_input_guardrail
    def allow(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        return Allow()

    @tool_input_guardrail
    def internal_only(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        return Replace({**data.arguments, "to": "review@example.com"})

    @tool_input_guardrail
    def no_ada(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        if data.arguments["to"].startswith("ada"):
            return GuardrailFunctionOutput.reject_content("Ada asked not to be emailed.")
        return Allow()

    @tool_input_guardrail
    async def stop(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        return Trip("sending mail is switched off")

    ran = Counter()
    result = bounded(Runner().run(mailer(ran, inputs=[allow]), "mail ada"))
    assert result.status == "completed"
    assert ran.calls == [{"to": "ada@example.com", "body": "hi"}]

    ran = Counter()
    result = bounded(Runner().run(mailer(ran, inputs=[internal_only]), "mail ada"))
    assert ran.calls == [{"to": "review@example.com", "body": "hi"}]
    answered = next(i for i in result.items if isinstance(i, ToolResultItem))
    assert answered.arguments == {"to": "review@example.com", "body": "hi"}, "the model is told"

    ran = Counter()
    result = bounded(Runner().run(mailer(ran, inputs=[allow, no_ada]), "mail ada"))
    assert result.status == "completed", "a rejection tells the model; the run goes on"
    assert ran.calls == []
    answered = next(i for i in result.items if isinstance(i, ToolResultItem))
    assert answered.output == "Ada asked not to be emailed."
    assert [v.behavior for v in verdicts(result.items)] == ["allow", "reject"]

    ran = Counter()
    with pytest.raises(GuardrailTripped, match="switched off") as raised:
        bounded(Runner().run(mailer(ran, inputs=[no_ada, stop]), "mail ada"))
    assert ran.calls == []
    assert (raised.value.kind, raised.value.tool, raised.value.call_id) == (
        "tool_input",
        "send",
        "call_0_0",
    )
    state = raised.value.state
    assert state is not None
    results = [i for i in state.items if isinstance(i, ToolResultItem)]
    assert [r.call_id for r in results] == ["call_0_0"], "every call gets a result"
    assert results[0].is_error


def test_tool_output_guardrails_allow_replace_and_trip() -> None:
    @tool_output_guardrail
    def allow(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        assert data.output is not None and not data.is_error
        return Allow()

    @tool_output_guardrail
    async def redact(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        assert data.output is not None
        return Replace(data.output.replace("secret-42", "[account]"))

    @tool_output_guardrail
    def leak(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        return Trip("the result holds an account number")

    ran = Counter()
    result = bounded(Runner().run(mailer(ran, outputs=[allow]), "mail ada"))
    answered = next(i for i in result.items if isinstance(i, ToolResultItem))
    assert "secret-42" in answered.output

    result = bounded(Runner().run(mailer(ran, outputs=[allow, redact]), "mail ada"))
    answered = next(i for i in result.items if isinstance(i, ToolResultItem))
    assert answered.output == "sent to ada@example.com: hi (account [account])"
    assert "secret-42" not in result.state.to_json()

    with pytest.raises(GuardrailTripped, match="account number") as raised:
        bounded(Runner().run(mailer(ran, outputs=[leak]), "mail ada"))
    state = raised.value.state
    assert state is not None
    assert "secret-42" not in state.to_json(), "a result a guardrail tripped on is withheld"
    assert len(ran.calls) == 3, "the tool ran: its effect happened, its result is withheld"


# -- a trip leaves a saved, loadable run ------------------------------------------------------


def test_a_tripped_run_is_saved_loadable_and_stays_failed(tmp_path: Path) -> None:
    @tool_input_guardrail
    def stop(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        return Trip("no mail today")

    async def main() -> None:
        store = SQLiteStore(tmp_path / "runs.db")
        ran = Counter()
        agent = mailer(ran, inputs=[stop])
        with pytest.raises(GuardrailTripped) as raised:
            await Runner(store=store).run(agent, "mail ada", run_id="r1")
        await store.close()
        reopened = SQLiteStore(tmp_path / "runs.db")
        loaded = await reopened.load("r1")
        assert loaded == raised.value.state
        assert RunState.from_json(loaded.to_json()) == loaded
        assert loaded.status is RunStatus.FAILED
        [trip] = [v for v in verdicts(loaded.items) if v.behavior == "trip"]
        assert trip.message == "no mail today", "the audit shows why the call was blocked"
        for again in (
            Runner(store=reopened).resume(agent, "r1"),
            Runner(store=reopened).resume(agent, "r1", max_turns=50),
            Runner().run(agent, loaded, max_turns=50),
        ):
            with pytest.raises(GuardrailTripped, match="no mail today"):
                await again
        assert await reopened.load("r1") == loaded, "driving it again changed nothing"
        assert (await reopened.waiting()).calls == ()
        assert ran.calls == []
        await reopened.close()

    bounded(main())


# -- approvals ---------------------------------------------------------------------------------


class Policy:
    """A policy that may change while a call waits for a person."""

    def __init__(self) -> None:
        self.mode = "allow"
        self.checks: list[bool] = []

    def guardrail(self, data: ToolGuardrailData) -> GuardrailFunctionOutput:
        self.checks.append(data.recheck)
        if self.mode == "trip":
            return Trip("mail was switched off while the call waited")
        if self.mode == "reject":
            return GuardrailFunctionOutput.reject_content("not any more")
        if self.mode == "replace":
            return Replace({**data.arguments, "body": "[reviewed]"})
        return Allow()


@pytest.mark.parametrize("mode", ["trip", "reject", "replace", "allow"])
def test_an_approved_call_is_checked_again_right_before_it_runs(mode: str) -> None:
    async def main() -> None:
        store = MemoryStore()
        policy = Policy()
        ran = Counter()
        agent = mailer(ran, needs_approval=True, inputs=[policy.guardrail])
        paused = await Runner(store=store).run(agent, "mail ada", run_id="r")
        assert paused.status == "interrupted"
        assert policy.checks == [False], "checked before anyone was asked"
        await store.approve("r", paused.interruptions[0], by="ann")
        policy.mode = mode
        if mode == "trip":
            with pytest.raises(GuardrailTripped, match="switched off") as raised:
                await Runner(store=store).resume(agent, "r")
            assert raised.value.kind == "tool_input"
            assert ran.calls == [], "an approval a guardrail trips on after it never runs"
            state = await store.load("r")
            [trip] = [v for v in verdicts(state.items) if v.behavior == "trip"]
            assert trip.recheck
            assert "after its approval" in str(state.error)
        elif mode == "reject":
            result = await Runner(store=store).resume(agent, "r")
            assert result.status == "completed"
            assert ran.calls == []
            answered = next(i for i in result.items if isinstance(i, ToolResultItem))
            assert answered.output == "not any more"
        elif mode == "replace":
            # A person approved other arguments: the call waits for a decision on these.
            again = await Runner(store=store).resume(agent, "r")
            assert again.status == "interrupted"
            assert ran.calls == []
            [request] = again.interruptions
            assert request.arguments == {"to": "ada@example.com", "body": "[reviewed]"}
            await store.approve("r", request)
            result = await Runner(store=store).resume(agent, "r")
            assert result.status == "completed"
            assert ran.calls == [{"to": "ada@example.com", "body": "[reviewed]"}]
        else:
            result = await Runner(store=store).resume(agent, "r")
            assert result.status == "completed"
            assert ran.calls == [{"to": "ada@example.com", "body": "hi"}]
        assert policy.checks[:2] == [False, True]

    bounded(main())


@pytest.mark.parametrize("how", ["reject", "trip"])
def test_no_one_is_asked_about_a_call_a_guardrail_blocks(tmp_path: Path, how: str) -> None:
    @tool_input_guardrail
    def block(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        if how == "trip":
            return Trip("blocked")
        return GuardrailFunctionOutput.reject_content("blocked")

    async def main() -> None:
        store = SQLiteStore(tmp_path / "runs.db")
        ran = Counter()
        agent = mailer(ran, needs_approval=True, inputs=[block])
        if how == "trip":
            with pytest.raises(GuardrailTripped):
                await Runner(store=store).run(agent, "mail ada", run_id="r")
        else:
            result = await Runner(store=store).run(agent, "mail ada", run_id="r")
            assert result.status == "completed"
            assert result.interruptions == []
        assert (await store.waiting()).calls == ()
        assert ran.calls == []
        await store.close()

    bounded(main())


# -- concurrency, failures, hostile input ------------------------------------------------------


def test_guardrails_run_concurrently() -> None:
    """Each guardrail waits for the other at a barrier: they pass only if they overlap."""
    barrier = asyncio.Barrier(2)

    async def meet(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        await asyncio.wait_for(barrier.wait(), 10)
        return Allow()

    first = tool_input_guardrail(name="first")(meet)
    second = tool_input_guardrail(name="second")(meet)
    threads = threading.Barrier(2, timeout=10)

    def meet_in_a_thread(context: Any, agent: Agent, text: Any) -> GuardrailFunctionOutput:
        threads.wait()
        return Allow()

    ran = Counter()
    agent = mailer(
        ran,
        inputs=[first, second],
        input_guardrails=[
            input_guardrail(name="a")(meet_in_a_thread),
            input_guardrail(name="b")(meet_in_a_thread),
        ],
    )
    result = bounded(Runner().run(agent, "mail ada"))
    assert result.status == "completed"
    assert {v.guardrail: v.behavior for v in verdicts(result.items)} == {
        "a": "allow",
        "b": "allow",
        "first": "allow",
        "second": "allow",
    }


def test_a_guardrail_that_raises_or_answers_nonsense_trips() -> None:
    @tool_input_guardrail
    def broken(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        raise RuntimeError("moderation service unreachable")

    @tool_input_guardrail
    def sloppy(data: ToolGuardrailData) -> Any:
        return True

    @tool_input_guardrail
    def misfit(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        return Replace({"to": 42, "unknown": "field"})

    for guard, why in [
        (broken, "raised RuntimeError: moderation service unreachable"),
        (sloppy, "returned bool, not a GuardrailFunctionOutput"),
        (misfit, "does not fit"),
    ]:
        ran = Counter()
        with pytest.raises(GuardrailTripped, match=why) as raised:
            bounded(Runner().run(mailer(ran, inputs=[guard]), "mail ada"))
        assert raised.value.state is not None
        assert RunState.from_json(raised.value.state.to_json()) == raised.value.state
        assert ran.calls == []


def test_a_worker_outlives_a_guardrail_that_raises() -> None:
    @input_guardrail
    def broken(context: Any, agent: Agent, text: Any) -> GuardrailFunctionOutput:
        raise ValueError("boom")

    async def main() -> None:
        store = MemoryStore()
        ran = Counter()
        agent = mailer(ran, input_guardrails=[broken])
        await store.create(new_run(agent, "mail ada", run_id="w1"))
        runner = Runner(store=store)
        assert await runner.work(agent, until_idle=True) == 1
        state = await store.load("w1")
        assert state.status is RunStatus.FAILED
        assert "raised ValueError: boom" in str(state.error)
        summaries = await store.list()
        assert [s.status for s in summaries] == ["failed"]
        # The run ended; the worker holds no lease on it and is not retrying it.
        assert await store.claim("other", lease_seconds=5) is None

    bounded(main())


def test_hostile_input_is_checked_and_stored_safely() -> None:
    seen: list[Any] = []

    @tool_input_guardrail
    def no_markup(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        seen.append(data.arguments)
        if "<script>" in data.arguments["body"]:
            return GuardrailFunctionOutput.reject_content(
                "No markup, please \udcff.", output_info={"bad": "<script>\udcff"}
            )
        return Allow()

    @input_guardrail
    def size(context: Any, agent: Agent, text: Any) -> GuardrailFunctionOutput:
        if len(text) > 100_000:
            return Replace(text[:100] + " [truncated]", {"length": len(text)})
        return Allow()

    ran = Counter()
    hostile = 'x", "to": "evil@example.com'
    script = [
        call("send", to="ada@example.com", body="<script>alert(1)</script>"),
        # Half an emoji from a broken model: a lone surrogate in the arguments.
        ModelResponse(
            tool_calls=(
                ModelToolCall(
                    call_id="call_1_0",
                    name="send",
                    arguments=json.dumps(
                        {"to": "ada@example.com", "body": hostile + "\udcff"}, ensure_ascii=False
                    ),
                ),
            )
        ),
        say("done"),
    ]
    agent = mailer(ran, inputs=[no_markup], input_guardrails=[size], script=script)
    huge = "a" * 2_000_000
    result = bounded(Runner().run(agent, huge))
    assert result.status == "completed"
    assert result.state.input == (UserMessage(content="a" * 100 + " [truncated]"),)
    assert ran.calls == [{"to": "ada@example.com", "body": hostile + "\ufffd"}]
    reject = next(v for v in verdicts(result.items) if v.behavior == "reject")
    assert reject.message == "No markup, please \ufffd."
    assert reject.info == "{'bad': '<script>\\udcff'}", "info that is not JSON is kept as its repr"
    assert RunState.from_json(result.state.to_json()) == result.state
    assert any("<script>" in a["body"] for a in seen)


# -- the stream --------------------------------------------------------------------------------


def test_verdicts_are_in_the_event_stream_and_reach_hooks() -> None:
    heard: list[GuardrailChecked] = []

    class Hooks(RunHooks):
        def on_guardrail(self, event: GuardrailChecked) -> None:
            heard.append(event)

    @tool_output_guardrail
    def redact(data: ToolGuardrailData) -> GuardrailFunctionOutput:
        return Replace("[redacted]")

    async def main() -> list[RunEvent]:
        ran = Counter()
        handle = Runner(hooks=Hooks()).run_streamed(mailer(ran, outputs=[redact]), "mail ada")
        events = [e async for e in handle.events()]
        await handle.result()
        return events

    events = bounded(main())
    checked = [e for e in events if isinstance(e, GuardrailChecked)]
    assert [(e.verdict.guardrail, e.verdict.behavior) for e in checked] == [("redact", "replace")]
    assert heard == checked
    finished = [e for e in events if type(e).__name__ == "ToolFinished"]
    assert [e.output for e in finished] == ["[redacted]"], "live events carry the redaction"
    positions = [e.position for e in events]
    assert positions == sorted(positions)


# -- error handlers ----------------------------------------------------------------------------


def looping(ran: Counter, **agent: Any) -> Agent:
    return mailer(ran, script=[call("send", to="a@example.com")] * 5, **agent)


def test_the_max_turns_handler_may_end_the_run_with_an_output() -> None:
    got: list[RunErrorHandlerInput] = []

    async def handler(data: RunErrorHandlerInput) -> RunErrorHandlerResult:
        got.append(data)
        return RunErrorHandlerResult(final_output="Sorry, I ran out of steps.")

    ran = Counter()
    result = bounded(
        Runner(error_handlers={"max_turns": handler}).run(looping(ran), "go", max_turns=2)
    )
    assert result.status == "completed"
    assert result.final_output == "Sorry, I ran out of steps."
    assert result.items[-1].content == "Sorry, I ran out of steps."  # type: ignore[union-attr]
    [data] = got
    assert data.error.kind == "max_turns_exceeded"
    assert data.state.status is RunStatus.FAILED
    assert data.agent.name == "mailer"

    plain = Runner(error_handlers={"max_turns": lambda data: "no history"})
    result = bounded(plain.run(looping(ran), "go", max_turns=1))
    assert result.final_output == "no history"

    quiet = Runner(
        error_handlers={
            "max_turns": lambda d: RunErrorHandlerResult("quiet", include_in_history=False)
        }
    )
    result = bounded(quiet.run(looping(ran), "go", max_turns=1))
    assert result.final_output == "quiet"
    assert isinstance(result.items[-1], ToolResultItem)


def test_a_max_turns_handler_that_declines_raises_or_misfits_leaves_the_run_failed() -> None:
    class Count(pydantic.BaseModel):
        n: int

    def boom(data: RunErrorHandlerInput) -> Any:
        raise RuntimeError("handler bug")

    ran = Counter()
    for handler, agent, why in [
        (lambda d: None, looping(ran), "used all 1 of its turns"),
        (boom, looping(ran), "handler failed: it raised RuntimeError: handler bug"),
        (lambda d: {"n": "many"}, looping(ran, output_type=Count), "does not fit"),
    ]:
        result = bounded(
            Runner(error_handlers={"max_turns": handler}).run(agent, "go", max_turns=1)
        )
        assert result.status == "failed"
        assert result.error is not None and why in result.error
        assert result.state.error is not None
        assert result.state.error.kind == "max_turns_exceeded"
    # Still out of turns, only: a higher limit goes on.
    more = bounded(Runner().run(looping(ran), result.state, max_turns=2))
    assert more.state.turn == 2


def test_output_guardrails_check_the_handlers_output() -> None:
    @output_guardrail
    def no_apologies(context: Any, agent: Agent, output: Any) -> GuardrailFunctionOutput:
        return Trip("no apologies") if "Sorry" in output else Allow()

    ran = Counter()
    runner = Runner(error_handlers={"max_turns": lambda d: "Sorry."})
    with pytest.raises(GuardrailTripped, match="no apologies"):
        bounded(runner.run(looping(ran, output_guardrails=[no_apologies]), "go", max_turns=1))


def test_handler_with_a_store_saves_the_failure_first(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(tmp_path / "runs.db")
        saved: list[str] = []
        ran = Counter()
        runner = Runner(
            store=store,
            error_handlers={"max_turns": lambda d: "done anyway"},
            on_step=lambda s: saved.append(s.status.value),
        )
        result = await runner.run(looping(ran), "go", max_turns=1, run_id="h")
        assert result.status == "completed"
        assert saved[-2:] == ["failed", "completed"]
        assert await store.load("h") == result.state
        await store.close()

    bounded(main())


# -- configuration -----------------------------------------------------------------------------


def test_misdeclared_guardrails_and_handlers_are_refused() -> None:
    @output_guardrail
    def out(context: Any, agent: Agent, output: Any) -> GuardrailFunctionOutput:
        return Allow()

    with pytest.raises(ConfigurationError, match="output_guardrail"):
        Agent("a", input_guardrails=[out])
    with pytest.raises(ConfigurationError, match="needs a name"):
        Agent("a", input_guardrails=[lambda c, a, i: Allow()])
    with pytest.raises(ConfigurationError, match="two guardrails"):
        Agent("a", output_guardrails=[out, out])
    with pytest.raises(ToolDefinitionError, match="tool_input_guardrail"):

        @tool(tool_input_guardrails=[out])
        def f() -> None: ...

    with pytest.raises(ConfigurationError, match="max_turns"):
        Runner(error_handlers={"tool_error": lambda d: None})
