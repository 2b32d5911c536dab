"""The clients against a real HTTP server on loopback: both APIs, streamed and not; retries,
timeouts, dropped connections, malformed bodies; cancellation; configuration from arguments
and from the environment; one HTTP client per event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai_server import Call, Drop, Fail, OpenAIServer, Raw, Reply

from agentfsm import (
    Agent,
    ConfigurationError,
    ModelRequest,
    ModelResponse,
    ModelToolCall,
    Runner,
    Usage,
    UserMessage,
)
from agentfsm.models import (
    AuthenticationError,
    BadRequestError,
    ModelConnectionError,
    ModelOutputError,
    ModelTimeoutError,
    OpenAIModel,
    OpenAIProvider,
    RateLimitError,
    ResponseDone,
    ServerError,
    StreamEvent,
    TextDelta,
    default_provider,
)

APIS = ["chat", "responses"]


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(api_key="sk-test") as running:
        yield running


def provider_for(server: OpenAIServer, **options: Any) -> OpenAIProvider:
    settings: dict[str, Any] = {
        "base_url": server.url,
        "api_key": "sk-test",
        "backoff": 0.01,
        "max_backoff": 0.02,
    }
    settings.update(options)
    return OpenAIProvider(**settings)


def request(turn: int = 0) -> ModelRequest:
    return ModelRequest(
        run_id="r",
        agent="a",
        instructions="Be brief.",
        input=(UserMessage(content="hi"),),
        items=(),
        tools=(),
        output_schema=None,
        turn=turn,
    )


def respond(model: OpenAIModel) -> ModelResponse:
    return asyncio.run(model.respond(request()))


def stream(model: OpenAIModel) -> list[StreamEvent]:
    async def collect() -> list[StreamEvent]:
        async with contextlib.aclosing(model.stream(request())) as events:
            return [event async for event in events]

    return asyncio.run(collect())


TURN = Reply(
    text="Hello there, traveller.",
    calls=(Call("find", '{"city": "Oslo"}'), Call("find", '{"city": "Bergen"}')),
    usage=(30, 12, 16, 4),
)
EXPECTED = ModelResponse(
    text="Hello there, traveller.",
    tool_calls=(
        ModelToolCall(call_id="call_0", name="find", arguments='{"city": "Oslo"}'),
        ModelToolCall(call_id="call_1", name="find", arguments='{"city": "Bergen"}'),
    ),
    usage=Usage(
        requests=1, input_tokens=30, output_tokens=12, cached_tokens=16, reasoning_tokens=4
    ),
)


@pytest.mark.parametrize("api", APIS)
def test_respond_and_stream_give_the_same_response(server: OpenAIServer, api: Any) -> None:
    server.add(TURN, TURN)
    model = provider_for(server, api=api).get_model("gpt-test")
    assert respond(model) == EXPECTED
    events = stream(model)
    assert events[-1] == ResponseDone(EXPECTED)
    assert len([e for e in events if isinstance(e, TextDelta)]) == 6
    path = "/v1/chat/completions" if api == "chat" else "/v1/responses"
    assert [r.path for r in server.requests] == [path, path]
    assert [r.stream for r in server.requests] == [False, True]
    headers = server.requests[0].headers
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["user-agent"].startswith("agentfsm/")
    assert headers["content-type"] == "application/json"
    assert server.requests[1].headers["accept"] == "text/event-stream"


@pytest.mark.parametrize("api", APIS)
def test_respond_says_it_wants_no_stream(api: Any) -> None:
    # LiteLLM's proxy and `transformers serve` stream a request that does not say otherwise.
    with OpenAIServer(api_key="sk-test", stream_by_default=True) as server:
        server.add(TURN)
        assert respond(provider_for(server, api=api).get_model("gpt-test")) == EXPECTED
    assert server.requests[0].body["stream"] is False


def test_respond_can_stream_under_the_hood(server: OpenAIServer) -> None:
    server.add(TURN)
    assert respond(provider_for(server, stream=True).chat("gpt-test")) == EXPECTED
    assert server.requests[0].stream


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_a_429_is_retried_after_its_retry_after(server: OpenAIServer, api: Any) -> None:
    server.add(Fail(429, "Rate limit reached", headers=(("retry-after", "0.3"),)), TURN)
    model = provider_for(server, api=api, backoff=5.0).get_model("gpt-test")
    start = time.monotonic()
    assert respond(model) == EXPECTED
    assert 0.3 <= time.monotonic() - start < 3.0  # the server's wait, not the 5 s backoff
    assert len(server.requests) == 2


def test_5xx_and_dropped_connections_are_retried(server: OpenAIServer) -> None:
    server.add(Fail(500), Fail(503, headers=(("retry-after-ms", "10"),)), TURN)
    model = provider_for(server, max_retries=2).chat("gpt-test")
    assert respond(model) == EXPECTED
    server.add(Drop(), Drop(), TURN)
    assert respond(model) == EXPECTED
    assert len(server.requests) == 6


def test_when_retries_run_out_the_last_error_is_raised(server: OpenAIServer) -> None:
    server.add(Fail(502, "bad gateway"), Fail(502, "bad gateway"), Fail(500, "still broken"))
    with pytest.raises(ServerError, match="still broken") as caught:
        respond(provider_for(server).chat("gpt-test"))
    assert caught.value.status_code == 500
    assert caught.value.attempts == 3
    assert len(server.requests) == 3


def test_other_4xx_are_not_retried_and_carry_the_servers_message(server: OpenAIServer) -> None:
    message = "Invalid schema for function 'find': 'required' is missing."
    server.add(Fail(400, message, type="invalid_request_error", code="invalid_function_parameters"))
    with pytest.raises(BadRequestError) as caught:
        respond(provider_for(server).chat("gpt-test"))
    error = caught.value
    assert error.message == message
    assert (error.status_code, error.code, error.type) == (
        400,
        "invalid_function_parameters",
        "invalid_request_error",
    )
    assert error.request_id == "req_test"
    assert str(error) == f"the server answered 400: {message} (request id req_test)"
    assert len(server.requests) == 1
    server.add(Fail(404, "The model 'nope' does not exist"))
    with pytest.raises(BadRequestError, match="does not exist"):
        respond(provider_for(server).chat("nope"))
    assert len(server.requests) == 2


def test_the_server_can_say_not_to_retry(server: OpenAIServer) -> None:
    server.add(Fail(503, "maintenance", headers=(("x-should-retry", "false"),)))
    with pytest.raises(ServerError, match="maintenance"):
        respond(provider_for(server).chat("m"))
    assert len(server.requests) == 1


def test_errors_raised_from_a_run_carry_its_state(server: OpenAIServer) -> None:
    server.add(Fail(400, "context_length_exceeded", type="invalid_request_error"))
    runner = Runner(model_provider=provider_for(server))
    with pytest.raises(BadRequestError) as caught:
        runner.run_sync(Agent("a", "", "gpt-test"), "hi", run_id="r1")
    state = caught.value.state
    assert state is not None and state.run_id == "r1" and state.status == "running"


def test_a_wrong_key_is_an_authentication_error(server: OpenAIServer) -> None:
    with pytest.raises(AuthenticationError, match="Incorrect API key") as caught:
        respond(provider_for(server, api_key="sk-wrong").chat("gpt-test"))
    assert caught.value.status_code == 401
    assert len(server.requests) == 1


def test_rate_limits_that_waiting_will_not_cure_are_raised_at_once(server: OpenAIServer) -> None:
    server.add(Fail(429, "You exceeded your current quota", code="insufficient_quota"))
    with pytest.raises(RateLimitError, match="quota"):
        respond(provider_for(server).chat("gpt-test"))
    server.add(Fail(429, "Try again in 2 minutes", headers=(("retry-after", "120"),)))
    start = time.monotonic()
    with pytest.raises(RateLimitError) as caught:
        respond(provider_for(server).chat("gpt-test"))
    assert time.monotonic() - start < 1.0
    assert caught.value.retry_after == 120.0
    assert len(server.requests) == 2


# -- timeouts, connections, malformed answers -------------------------------------------------


def test_a_slow_server_times_out_and_the_timeout_is_retried(server: OpenAIServer) -> None:
    slow = Reply(text="late", delay=1.0)
    server.add(slow)
    start = time.monotonic()
    with pytest.raises(ModelTimeoutError, match="took too long"):
        respond(provider_for(server, read_timeout=0.2, max_retries=0).chat("gpt-test"))
    assert time.monotonic() - start < 0.9
    server.add(slow, TURN)
    assert respond(provider_for(server, read_timeout=0.2, max_retries=1).chat("m")) == EXPECTED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_server_that_is_not_there() -> None:
    provider = OpenAIProvider(base_url=f"http://127.0.0.1:{free_port()}/v1", backoff=0.01)
    with pytest.raises(ModelConnectionError, match="cannot connect") as caught:
        respond(provider.chat("m"))
    assert caught.value.attempts == 3
    assert not isinstance(caught.value, httpx.HTTPError)


def test_a_stream_cut_short_is_a_connection_error(server: OpenAIServer) -> None:
    server.add(Drop(after=4))
    with pytest.raises(ModelConnectionError, match="broke while streaming"):
        stream(provider_for(server).chat("m"))
    server.add(Drop(after=5))
    with pytest.raises(ModelConnectionError):
        stream(provider_for(server).responses("m"))
    assert len(server.requests) == 2  # what was streamed cannot be taken back: no retry


@pytest.mark.parametrize(
    ("entry", "streamed", "match"),
    [
        (Raw(b"{not json"), False, "a chat completion that cannot be read"),
        (Raw(b'{"choices": []}'), False, "without choices"),
        (Raw(b"<html>502</html>", status=200, content_type="text/html"), False, "cannot be read"),
        (Raw(b"data: {broken\n\n", content_type="text/event-stream"), True, "cannot be read"),
        (Raw(b'{"id": "x", "choices": []}'), True, "asked .* for a stream"),
    ],
)
def test_malformed_answers_are_model_output_errors(
    server: OpenAIServer, entry: Raw, streamed: bool, match: str
) -> None:
    server.add(entry)
    model = provider_for(server).chat("m")
    with pytest.raises(ModelOutputError, match=match):
        stream(model) if streamed else respond(model)
    assert len(server.requests) == 1


def test_an_error_body_with_a_200_in_a_stream(server: OpenAIServer) -> None:
    server.add(Raw(b'{"error": {"message": "model overloaded"}}'))
    with pytest.raises(ServerError, match="overloaded"):
        stream(provider_for(server).chat("m"))


def sse(*events: bytes) -> Raw:
    return Raw(b"".join(events), content_type="text/event-stream")


FIRST_CHUNK = b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'


@pytest.mark.parametrize(
    ("api", "entry"),
    [
        ("chat", sse(b'data: {"error": "model overloaded"}\n\n')),
        ("chat", sse(FIRST_CHUNK, b'data: {"error": "model overloaded"}\n\n')),
        ("chat", sse(b'data: {"error": {"message": "model overloaded", "code": null}}\n\n')),
        (
            "responses",
            sse(b'event: error\ndata: {"type": "error", "message": "model overloaded"}\n\n'),
        ),
        (
            "responses",
            sse(b'event: error\ndata: {"type": "error", "error": "model overloaded"}\n\n'),
        ),
        (
            "responses",
            sse(b'data: {"type": "error", "error": {"message": "model overloaded"}}\n\n'),
        ),
        ("responses", sse(b'data: {"error": "model overloaded"}\n\n')),
        (
            "responses",
            sse(
                b'data: {"type": "response.failed", "response": {"error": "model overloaded"}}\n\n'
            ),
        ),
    ],
)
def test_an_error_reported_in_a_stream_is_a_server_error(
    server: OpenAIServer, api: Any, entry: Raw
) -> None:
    # Some servers (Hugging Face's `transformers serve`) report a failure as a bare string.
    server.add(entry)
    with pytest.raises(ServerError) as caught:
        stream(provider_for(server, api=api).get_model("m"))
    assert str(caught.value) == "the server reported: model overloaded"
    assert caught.value.status_code is None
    assert len(server.requests) == 1  # what was streamed cannot be taken back: no retry


NGINX_502 = (
    b"<!DOCTYPE html>\r\n<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body></html>"
)


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        # A server that had begun to stream when it failed (LiteLLM's proxy).
        (
            b"event: error\n"
            b'data: {"error": {"message": "upstream exploded", "type": "server_error"}}\n\n',
            "text/event-stream",
            "upstream exploded",
        ),
        (
            b'data: {"type": "response.created", "response": {"status": "in_progress"}}\n\n'
            b'data: {"type": "response.failed", "response": {"error": {"message": "no GPU"}}}\n\n',
            "text/event-stream",
            "no GPU",
        ),
        (b'data: {"message": "CUDA out of memory"}\n\n', "text/event-stream", "CUDA out of memory"),
        (
            b"data:   upstream exploded  \r\ndata: at line 3\r\n\r\n",
            "text/plain",
            "upstream exploded",
        ),
        # Proxies' pages, and what a hostile server might send.
        (NGINX_502, "text/html", "an HTML page: 502 Bad Gateway"),
        (
            b"<html><body><h1>Service   Unavailable</h1><p>Try &amp; try again.</p></body></html>",
            "text/html",
            "an HTML page: Service Unavailable Try & try again.",
        ),
        (b"bad \xff\xfe gateway\r\n\x1b[31mred", "text/plain", "bad \ufffd\ufffd gateway [31mred"),
        (b'{"error": {"message": "one\\ntwo\\u0007"}}', "application/json", "one two"),
    ],
)
def test_error_bodies_of_any_shape_give_a_one_line_message(
    server: OpenAIServer, body: bytes, content_type: str, message: str
) -> None:
    server.add(Raw(body, status=502, content_type=content_type))
    with pytest.raises(ServerError) as caught:
        respond(provider_for(server, max_retries=0).chat("m"))
    assert caught.value.message == message
    assert str(caught.value) == f"the server answered 502: {message} (request id req_test)"


@pytest.mark.parametrize("api", APIS)
def test_an_error_status_with_a_stream_of_events_as_its_body(
    server: OpenAIServer, api: Any
) -> None:
    body = (
        b"event: error\n"
        b'data: {"error": {"message": "quota gone", "code": "insufficient_quota"}}\n\n'
    )
    server.add(Raw(body, status=429, content_type="text/event-stream"))
    with pytest.raises(RateLimitError) as caught:
        stream(provider_for(server, api=api).get_model("m"))
    assert (caught.value.message, caught.value.code) == ("quota gone", "insufficient_quota")
    assert len(server.requests) == 1  # the code was read: waiting will not cure it


def test_a_huge_error_body_is_not_read_whole(server: OpenAIServer) -> None:
    server.add(Raw(b"x" * 50_000_000, status=500, content_type="text/plain"))
    start = time.monotonic()
    with pytest.raises(ServerError) as caught:
        respond(provider_for(server, max_retries=0).chat("m"))
    assert time.monotonic() - start < 2.0
    message = caught.value.message
    assert len(message) == 1000 and message.endswith("x…")


@pytest.mark.parametrize("api", APIS)
def test_an_error_string_in_a_200_body_is_a_server_error(server: OpenAIServer, api: Any) -> None:
    server.add(Raw(b'{"error": "model overloaded"}'))
    with pytest.raises(ServerError) as caught:
        respond(provider_for(server, api=api).get_model("m"))
    assert str(caught.value) == "the server reported: model overloaded"


# -- cancellation -----------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_cancelling_closes_the_stream_promptly(server: OpenAIServer, api: Any) -> None:
    server.add(Reply(text="x" * 500, piece=1, gap=0.01))
    model = provider_for(server, api=api).get_model("m")
    seen: list[StreamEvent] = []

    async def consume() -> None:
        async for event in model.stream(request()):
            seen.append(event)

    async def main() -> float:
        task = asyncio.create_task(consume())
        while len(seen) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic()

    cancelled = asyncio.run(main())
    gone = server.first_disconnect()
    assert gone is not None, "the server never saw the client go"
    assert gone - cancelled < 0.5
    assert len(seen) < 100


# -- configuration ----------------------------------------------------------------------------


def test_configuration_from_the_environment(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-1")
    monkeypatch.delenv("OPENAI_PROJECT_ID", raising=False)
    provider = default_provider()
    assert provider is default_provider()  # one provider, one connection pool
    assert provider.base_url == server.url
    server.add(Reply(text="from the environment"))
    result = Runner().run_sync(Agent("a", "", "gpt-test"), "hi")
    assert result.final_output == "from the environment"
    assert server.requests[0].body["model"] == "gpt-test"
    assert server.requests[0].headers["openai-organization"] == "org-1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    assert default_provider() is not provider
    assert default_provider().api_key == "sk-other"


def test_openai_without_a_key_is_a_configuration_error_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="no API key") as caught:
        Runner().run_sync(Agent("a", "", "gpt-4.1-mini"), "hi")
    assert caught.value.state is not None and caught.value.state.status == "running"
    # A local server needs none.
    assert OpenAIProvider(base_url="http://localhost:11434/v1").connection() is not None


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        OpenAIProvider(base_url="localhost:8000")
    with pytest.raises(ConfigurationError):
        OpenAIProvider(base_url="http://x/v1", api="completions")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        OpenAIProvider(base_url="http://x/v1", read_timeout=0)
    with pytest.raises(ConfigurationError):
        OpenAIProvider(base_url="http://x/v1", max_retries=-1)
    with pytest.raises(ConfigurationError):
        OpenAIProvider.azure(None)
    with pytest.raises(ConfigurationError, match="API key has characters that are not ASCII"):
        OpenAIProvider(base_url="http://x/v1", api_key="sk-…")
    bad_port = OpenAIProvider(base_url="http://[::1/v1")
    with pytest.raises(ConfigurationError, match="invalid model server URL"):
        respond(bad_port.chat("m"))


def test_azure_routes_and_key(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_VERSION", raising=False)
    server.api_key = "az-key"
    endpoint = server.url.removesuffix("/v1")
    v1 = OpenAIProvider.azure(endpoint, api_key="az-key", backoff=0.01)
    assert v1.chat("gpt-4o").url == f"{endpoint}/openai/v1/chat/completions"
    dated = OpenAIProvider.azure(endpoint + "/", api_key="az-key", api_version="2024-10-21")
    assert dated.chat("my deployment").url == (
        f"{endpoint}/openai/deployments/my%20deployment/chat/completions?api-version=2024-10-21"
    )
    assert dated.responses("gpt-4o").url == f"{endpoint}/openai/responses?api-version=2024-10-21"
    server.add(TURN, TURN)
    assert respond(v1.chat("gpt-4o")) == EXPECTED
    assert respond(dated.chat("gpt-4o")) == EXPECTED
    assert server.requests[0].headers["api-key"] == "az-key"
    assert "authorization" not in server.requests[0].headers
    assert (
        server.requests[1].path
        == "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    )
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="no API key"):
        OpenAIProvider.azure(endpoint).connection()


# -- the HTTP client --------------------------------------------------------------------------


def test_one_client_per_event_loop_closed_with_the_loop(server: OpenAIServer) -> None:
    server.default = TURN
    provider = provider_for(server)
    model = provider.chat("m")

    async def twice() -> httpx.AsyncClient:
        await model.respond(request())
        client = provider.connection().client()
        await model.respond(request())
        assert provider.connection().client() is client
        return client

    first = asyncio.run(twice())
    assert first.is_closed  # closed when asyncio.run shut its loop down
    second = asyncio.run(twice())
    assert second is not first and second.is_closed
    assert provider.connection()._clients == {}  # nothing kept of the finished loops


def test_a_callers_client_is_used_and_left_open(server: OpenAIServer) -> None:
    server.default = TURN
    sent: list[str] = []

    async def note(request: httpx.Request) -> None:
        sent.append(str(request.url))

    async def main() -> None:
        async with httpx.AsyncClient(event_hooks={"request": [note]}) as client:
            provider = provider_for(server, http_client=client)
            await provider.chat("m").respond(request())
            await provider.aclose()
            assert not client.is_closed

    asyncio.run(main())
    assert sent == [server.url + "/chat/completions"]


def test_closing_a_provider(server: OpenAIServer) -> None:
    server.default = TURN

    async def main() -> httpx.AsyncClient:
        async with provider_for(server) as provider:
            await provider.chat("m").respond(request())
            client = provider.connection().client()
        assert client.is_closed
        return client

    asyncio.run(main())
