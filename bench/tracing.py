"""What tracing adds to a turn: ``OpenTelemetryHooks`` on, beside the SDK's own cost.

Run with ``make bench`` (or ``.venv/bin/python bench/tracing.py``; ``--quick`` for fewer
repetitions). Whole 100-turn runs of a ScriptedModel and a no-op async tool (one turn = a
model call + one tool call), per turn, median and best of interleaved rounds:

* no consumer at all (no events are built);
* a consumer that does nothing (the event stream's own cost);
* ``OpenTelemetryHooks`` on the API alone (no SDK: a no-op tracer);
* ``OpenTelemetryHooks`` on the SDK, spans exported to an exporter that drops them, without
  and with content capture;
* and, for scale, the same spans made directly with the SDK, with no run around them: two
  spans per turn (a chat and an execute_tool) with the same attributes, under one parent.

The figure to read: "added per turn" (tracing on, minus the do-nothing consumer) beside
"bare SDK spans per turn". No goal: it is information. Needs the SDK (the dev lock has it).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from agentfsm import Agent, RunEvent, RunHooks, Runner, tool
from agentfsm.testing import ScriptedModel, call, say
from agentfsm.tracing import OpenTelemetryHooks

QUICK = "--quick" in sys.argv
TURNS = 100
ROUNDS = 7 if QUICK else 31


@tool(name="noop")
async def noop(x: int) -> str:
    """Do nothing.

    Args:
        x: ignored.
    """
    return "ok"


class Dropped(SpanExporter):
    """An exporter that drops what it is given: the SDK's cost without any I/O."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class Nothing(RunHooks):
    async def on_event(self, event: RunEvent) -> None:
        pass


def sdk() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Dropped()))
    return provider


def agent() -> Agent:
    turns = [*(call("noop", x=n) for n in range(TURNS - 1)), say("done")]
    return Agent(name="bench", model=ScriptedModel(turns), tools=[noop])


def runs(hooks: Callable[[], Sequence[RunHooks]]) -> Callable[[], Awaitable[int]]:
    runner = Runner(hooks=hooks())

    async def once() -> int:
        model_agent = agent()
        start = time.perf_counter_ns()
        result = await runner.run(model_agent, "go", max_turns=TURNS, run_id="bench")
        elapsed = time.perf_counter_ns() - start
        assert result.status == "completed"
        assert result.state.turn == TURNS
        return elapsed

    return once


def bare_spans() -> Callable[[], Awaitable[int]]:
    """Two spans a turn, made with the SDK directly, as the hooks make them."""
    tracer = sdk().get_tracer("bench")

    async def once() -> int:
        start = time.perf_counter_ns()
        parent = tracer.start_span(
            "invoke_agent bench",
            kind=trace.SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "bench",
                "gen_ai.conversation.id": "bench",
            },
        )
        under = trace.set_span_in_context(parent)
        for n in range(TURNS):
            chat = tracer.start_span(
                "chat ScriptedModel",
                context=under,
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "unknown",
                    "gen_ai.request.model": "ScriptedModel",
                    "gen_ai.conversation.id": "bench",
                },
            )
            chat.set_attribute("gen_ai.usage.input_tokens", 10)
            chat.set_attribute("gen_ai.usage.output_tokens", 5)
            chat.end()
            if n < TURNS - 1:
                tool_span = tracer.start_span(
                    "execute_tool noop",
                    context=under,
                    kind=trace.SpanKind.INTERNAL,
                    attributes={
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": "noop",
                        "gen_ai.tool.call.id": f"call_{n}_0",
                        "gen_ai.tool.type": "function",
                    },
                )
                tool_span.end()
        parent.end()
        return time.perf_counter_ns() - start

    return once


def measure(
    cases: dict[str, Callable[[], Awaitable[int]]],
) -> dict[str, tuple[float, float]]:
    """Per turn (median, best) of each case, in ns, the cases interleaved round by round."""

    async def main() -> dict[str, list[int]]:
        for once in cases.values():
            await once()  # warm-up
        gc.collect()
        samples: dict[str, list[int]] = {name: [] for name in cases}
        for _ in range(ROUNDS):
            for name, once in cases.items():
                samples[name].append(await once())
        return samples

    samples = asyncio.run(main())
    return {name: (statistics.median(xs) / TURNS, min(xs) / TURNS) for name, xs in samples.items()}


def us(ns: float) -> str:
    return f"{ns / 1e3:,.1f} µs"


def main() -> int:
    started = time.perf_counter()
    cases = {
        "no consumer": runs(lambda: ()),
        "a consumer that does nothing": runs(lambda: (Nothing(),)),
        "OpenTelemetryHooks, API only (no SDK)": runs(
            lambda: (OpenTelemetryHooks(tracer_provider=trace.NoOpTracerProvider()),)
        ),
        "OpenTelemetryHooks, SDK": runs(lambda: (OpenTelemetryHooks(tracer_provider=sdk()),)),
        "OpenTelemetryHooks, SDK, capture_content": runs(
            lambda: (OpenTelemetryHooks(tracer_provider=sdk(), capture_content=True),)
        ),
        "bare SDK spans, 2 a turn, no run": bare_spans(),
    }
    figures = measure(cases)
    print(
        f"agentfsm tracing bench: {TURNS}-turn runs, per turn (a model call + a tool call), "
        f"median and best of {ROUNDS}"
    )
    width = max(map(len, figures))
    print(f"\n  {'case':<{width}}  {'median':>10}  {'best':>10}")
    print(f"  {'-' * width}  {'-' * 10}  {'-' * 10}")
    for name, (median, best) in figures.items():
        print(f"  {name:<{width}}  {us(median):>10}  {us(best):>10}")
    base = figures["a consumer that does nothing"]
    bare = figures["bare SDK spans, 2 a turn, no run"]
    print("\n  added per turn by tracing (minus the do-nothing consumer), beside bare SDK spans:")
    for name in (
        "OpenTelemetryHooks, API only (no SDK)",
        "OpenTelemetryHooks, SDK",
        "OpenTelemetryHooks, SDK, capture_content",
    ):
        added = figures[name][0] - base[0]
        print(f"  {name:<{width}}  {us(added):>10}  ({added / bare[0]:.2f}x the bare spans)")
    print(f"\ntook {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
