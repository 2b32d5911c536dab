"""agentfsm model-client benchmarks: client overhead per request, and stream assembly.

Run with ``.venv/bin/python bench/models.py`` (``--quick`` for fewer repetitions, ``--strict``
to exit 1 on a missed goal). Needs the test extra (the ``openai`` package, for comparison).

1. Per-request time against the loopback server of the tests (``tests/openai_server.py``, run
   in a subprocess so that it does not share our interpreter's GIL), for the same exchange
   through three clients: a bare ``httpx.AsyncClient`` that posts a pre-encoded body and reads
   the bytes (the floor: server, loopback and HTTP), agentfsm's model, and the official
   ``openai`` package. A client's overhead is its time above the floor. The rounds
   interleave the clients, so load from elsewhere on the machine hits them alike.
2. Assembling a streamed response of 1,000 text deltas (and of one tool call whose arguments
   come in 1,000 deltas): the SSE bytes, fed in 4 KiB reads to agentfsm's decoder and
   assembler, in-process (no network); and the same stream over loopback, for agentfsm and
   for the ``openai`` package.

Figures are medians (and the best) of the repetitions, after a warm-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
import msgspec  # noqa: E402
import openai  # noqa: E402
from openai_server import Call, Reply, chat_chunks, response_events  # noqa: E402

from agentfsm import ModelRequest, UserMessage  # noqa: E402
from agentfsm.models import OpenAIProvider, ResponseDone  # noqa: E402
from agentfsm.models._chat import ChatAssembler  # noqa: E402
from agentfsm.models._common import CallIds  # noqa: E402
from agentfsm.models._responses import ResponsesAssembler  # noqa: E402
from agentfsm.models._wire import SSEDecoder  # noqa: E402

QUICK = "--quick" in sys.argv
STRICT = "--strict" in sys.argv
ROUNDS = 10 if QUICK else 30
PER_ROUND = 10  # requests per client per round
STREAM_REPS = 15 if QUICK else 41
ASSEMBLY_REPS = 51 if QUICK else 201

# -- goals ------------------------------------------------------------------------------------

OVERHEAD_RATIO = 1.0  # agentfsm's overhead per request at most the openai package's
# Assemble 1,000 streamed deltas, in-process: 10 µs a delta, a small fraction of the time
# between two deltas of any model (milliseconds).
ASSEMBLY_MS = 10.0


@dataclass(frozen=True)
class Timing:
    median: float  # ns
    best: float


@dataclass(frozen=True)
class Row:
    label: str
    median: str
    best: str = ""
    goal: str = ""
    ok: bool | None = None


def timing(samples: list[float]) -> Timing:
    return Timing(statistics.median(samples), min(samples))


def us(ns: float) -> str:
    return f"{ns / 1e3:,.1f} µs"


def ms(ns: float) -> str:
    return f"{ns / 1e6:,.2f} ms"


class Report:
    def __init__(self) -> None:
        self.misses: list[str] = []

    def section(self, title: str, rows: list[Row]) -> None:
        print(f"\n{title}")
        width = max(len(r.label) for r in rows)
        print(f"  {'':{width}}  {'median':>12}  {'best':>12}  goal")
        for r in rows:
            verdict = "" if r.ok is None else ("PASS" if r.ok else "MISS")
            print(f"  {r.label:{width}}  {r.median:>12}  {r.best:>12}  {r.goal} {verdict}".rstrip())
            if r.ok is False:
                self.misses.append(r.label)


# -- the loopback server ----------------------------------------------------------------------


@contextlib.contextmanager
def loopback_server() -> Any:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "openai_server.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def model_request(text: str = "Hello!") -> ModelRequest:
    return ModelRequest(
        run_id="bench",
        agent="bench",
        instructions="You are a helpful assistant.",
        input=(UserMessage(content=text),),
        items=(),
        tools=(),
        output_schema=None,
        turn=0,
    )


MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
]


# -- 1. overhead per request ------------------------------------------------------------------


async def per_request(url: str, api: str) -> dict[str, tuple[Timing, Timing]]:
    """Per-request times of the floor, agentfsm and the openai package, for one API."""
    provider = OpenAIProvider(base_url=url, api_key="sk-bench", max_retries=0)
    ours = provider.chat("gpt-bench") if api == "chat" else provider.responses("gpt-bench")
    request = model_request()
    body = msgspec.json.encode(ours.request_body(request))
    path = "/chat/completions" if api == "chat" else "/responses"
    headers = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
    async with (
        httpx.AsyncClient() as bare,
        openai.AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=0) as theirs,
    ):

        async def floor() -> None:
            response = await bare.post(url + path, content=body, headers=headers)
            assert response.status_code == 200

        async def agentfsm_model() -> None:
            response = await ours.respond(request)
            assert response.text

        async def openai_package() -> None:
            if api == "chat":
                completion = await theirs.chat.completions.create(
                    model="gpt-bench",
                    messages=MESSAGES,  # type: ignore[arg-type]
                )
                assert completion.choices[0].message.content
            else:
                answer = await theirs.responses.create(
                    model="gpt-bench",
                    instructions="You are a helpful assistant.",
                    input=[{"type": "message", "role": "user", "content": "Hello!"}],
                    store=False,
                )
                assert answer.output_text

        clients: dict[str, Callable[[], Awaitable[None]]] = {
            "floor": floor,
            "agentfsm": agentfsm_model,
            "openai": openai_package,
        }
        return await interleaved(clients, ROUNDS, PER_ROUND)


async def interleaved(
    clients: dict[str, Callable[[], Awaitable[None]]], rounds: int, per_round: int
) -> dict[str, tuple[Timing, Timing]]:
    """Per call of each client: (wall-clock time, this process's CPU time). The server runs
    in another process, so the CPU time is the client's own work, free of the server's."""
    wall: dict[str, list[float]] = {name: [] for name in clients}
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    for body in clients.values():  # warm-up: connections, caches
        for _ in range(5):
            await body()
    gc.collect()
    for _ in range(rounds):
        for name, body in clients.items():
            start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
            for _ in range(per_round):
                await body()
            cpu[name].append((time.process_time_ns() - start_cpu) / per_round)
            wall[name].append((time.perf_counter_ns() - start) / per_round)
    return {name: (timing(wall[name]), timing(cpu[name])) for name in clients}


def overhead(report: Report, url: str) -> None:
    labels = {
        "floor": "bare httpx (the floor)",
        "agentfsm": "agentfsm",
        "openai": "openai package",
    }
    for api, title in (("chat", "Chat Completions"), ("responses", "Responses")):
        figures = asyncio.run(per_request(url, api))
        rows = [
            Row(f"{labels[n]}, wall clock", us(w.median), us(w.best))
            for n, (w, _) in figures.items()
        ]
        rows += [
            Row(f"{labels[n]}, client CPU", us(c.median), us(c.best))
            for n, (_, c) in figures.items()
        ]
        floor = figures["floor"][1]
        ours = figures["agentfsm"][1].median - floor.median
        theirs = figures["openai"][1].median - floor.median
        rows.append(Row("agentfsm CPU above the floor", us(ours)))
        rows.append(Row("openai CPU above the floor", us(theirs)))
        ratio = ours / theirs
        rows.append(
            Row(
                "agentfsm / openai, CPU above the floor",
                f"{ratio:.2f}x",
                goal=f"≤ {OVERHEAD_RATIO:g}x",
                ok=ratio <= OVERHEAD_RATIO,
            )
        )
        own = own_work(api)
        rows.append(Row("agentfsm's own work, in-process (no I/O)", us(own.median), us(own.best)))
        report.section(
            f"1. {title}: one short exchange against the loopback server, per request "
            f"({ROUNDS * PER_ROUND} requests per client)",
            rows,
        )


def own_work(api: str) -> Timing:
    """What agentfsm itself does per request, without the network: build and encode the
    body, then parse the answer (the answer's bytes rendered by the test server's code)."""
    from openai_server import _render

    provider = OpenAIProvider(base_url="http://127.0.0.1:9/v1", api_key="sk-bench")
    model = provider.chat("gpt-bench") if api == "chat" else provider.responses("gpt-bench")
    request = model_request()
    answer = _render(api, Reply(text="Hello! How can I help you today?"), False, "gpt-bench")
    assert isinstance(answer, bytes)
    samples = []
    for _ in range(ASSEMBLY_REPS):
        start = time.perf_counter_ns()
        for _ in range(100):
            body, taken = model._build(request, model.settings, stream=False)
            msgspec.json.encode(body)
            model._parse(answer, CallIds(0, taken))
        samples.append((time.perf_counter_ns() - start) / 100)
    return timing(samples)


# -- 2. assembling streams --------------------------------------------------------------------

TEXT = Reply(text="x" * 1_000, piece=1)
ARGUMENTS = Reply(calls=(Call("write", '{"text": "' + "y" * 988 + '"}'),), piece=1)


def chat_stream_bytes(reply: Reply) -> bytes:
    chunks = chat_chunks(reply, "gpt-bench")
    return b"".join(b"data: " + c + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def responses_stream_bytes(reply: Reply) -> bytes:
    return b"".join(
        b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        for kind, data in response_events(reply, "gpt-bench")
    )


def assemble(data: bytes, assembler: Any) -> Any:
    decoder = SSEDecoder()
    for start in range(0, len(data), 4096):
        for event in decoder.feed(data[start : start + 4096]):
            assembler.feed(event)
    for event in decoder.flush():
        assembler.feed(event)
    return assembler.response()


def time_assembly(data: bytes, make: Callable[[], Any], check: Callable[[Any], bool]) -> Timing:
    assert check(assemble(data, make()))
    samples = []
    gc.collect()
    for _ in range(ASSEMBLY_REPS):
        start = time.perf_counter_ns()
        assemble(data, make())
        samples.append(time.perf_counter_ns() - start)
    return timing(samples)


async def streamed_over_loopback(url: str) -> dict[str, tuple[Timing, Timing]]:
    provider = OpenAIProvider(base_url=url, api_key="sk-bench", max_retries=0)
    ours = provider.chat("deltas-1000")
    request = model_request()
    async with openai.AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=0) as theirs:

        async def agentfsm_model() -> None:
            async with contextlib.aclosing(ours.stream(request)) as events:
                async for event in events:
                    if isinstance(event, ResponseDone):
                        assert event.response.text == "x" * 1_000

        async def openai_package() -> None:
            stream = await theirs.chat.completions.create(
                model="deltas-1000",
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            parts = []
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
            assert "".join(parts) == "x" * 1_000

        clients: dict[str, Callable[[], Awaitable[None]]] = {
            "agentfsm": agentfsm_model,
            "openai": openai_package,
        }
        return await interleaved(clients, STREAM_REPS, 1)


def assembly(report: Report, url: str) -> None:
    rows = []
    cases = [
        (
            "Chat Completions, 1,000 text deltas",
            chat_stream_bytes(TEXT),
            lambda: ChatAssembler(CallIds(0, set())),
            lambda r: r.text == "x" * 1_000,
        ),
        (
            "Chat Completions, 1,000 argument deltas",
            chat_stream_bytes(ARGUMENTS),
            lambda: ChatAssembler(CallIds(0, set())),
            lambda r: len(r.tool_calls[0].arguments) == 1_000,
        ),
        (
            "Responses, 1,000 text deltas",
            responses_stream_bytes(TEXT),
            lambda: ResponsesAssembler(CallIds(0, set())),
            lambda r: r.text == "x" * 1_000,
        ),
    ]
    for label, data, make, check in cases:
        t = time_assembly(data, make, check)
        ok = t.median <= ASSEMBLY_MS * 1e6
        rows.append(
            Row(
                f"{label} ({len(data) // 1024} KiB)",
                ms(t.median),
                ms(t.best),
                f"≤ {ASSEMBLY_MS:g} ms",
                ok,
            )
        )
    report.section("2. Assembling a streamed response, in-process (SSE bytes in 4 KiB reads)", rows)
    figures = asyncio.run(streamed_over_loopback(url))
    report.section(
        "   The same 1,000 text deltas streamed over loopback, end to end (for reference)",
        [
            Row(f"{name}, {kind}", ms(t.median), ms(t.best))
            for name, pair in figures.items()
            for kind, t in zip(("wall clock", "client CPU"), pair, strict=True)
        ],
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def main() -> int:
    started = time.perf_counter()
    versions = ", ".join(f"{p} {_version(p)}" for p in ("httpx", "msgspec", "openai"))
    print(
        f"agentfsm model bench: Python {platform.python_version()} on {platform.machine()}, "
        f"{versions}"
    )
    report = Report()
    with loopback_server() as url:
        overhead(report, url)
        assembly(report, url)
    if report.misses:
        print(f"\n{len(report.misses)} goal(s) missed: {'; '.join(report.misses)}")
    else:
        print("\nevery goal met")
    print(f"took {time.perf_counter() - started:.1f} s")
    return 1 if STRICT and report.misses else 0


if __name__ == "__main__":
    sys.exit(main())
