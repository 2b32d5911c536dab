"""The wire formats, without a network: the request bodies agentfsm sends, checked against the
official ``openai`` package's request types; responses and streams built with its response
types, parsed; the SSE framing; strict schemas; and a fuzz of the parsers."""

from __future__ import annotations

import collections.abc
import contextlib
import itertools
import time
import types
import typing
from typing import Any

import msgspec
import pydantic
import pytest
import typing_extensions
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from openai.types.responses.response_create_params import (
    ResponseCreateParamsNonStreaming,
    ResponseCreateParamsStreaming,
)
from openai_server import Call, Reply, chat_chunks, chat_completion, response_events
from openai_server import _json as response_json
from openai_server import _response as openai_response

from agentfsm import (
    Agent,
    AgentSet,
    AssistantMessage,
    ConfigurationError,
    Feedback,
    HandoffItem,
    ModelError,
    ModelRequest,
    ModelResponse,
    ModelToolCall,
    ToolCallItem,
    ToolResultItem,
    Usage,
    UserMessage,
    tool,
)
from agentfsm.models import (
    BadRequestError,
    ModelOutputError,
    ModelSettings,
    OpenAIChatModel,
    OpenAIProvider,
    OpenAIResponsesModel,
    RateLimitError,
    ResponseDone,
    RetryPolicy,
    ServerError,
    TextDelta,
    ToolCallDelta,
    ToolCallStarted,
    strict_schema,
)
from agentfsm.models._chat import ChatAssembler, parse_completion
from agentfsm.models._common import CallIds
from agentfsm.models._http import _retry_after
from agentfsm.models._responses import ResponsesAssembler
from agentfsm.models._wire import MESSAGE_LIMIT, SSEDecoder, error_info

# -- a conversation with every kind of item ---------------------------------------------------


class Trip(pydantic.BaseModel):
    city: str
    days: int


class Where(pydantic.BaseModel):
    city: str
    country: str


@tool
def lookup(place: Where, detail: bool) -> str:
    """Look a place up."""
    return "found"


@tool
def send(to: str, body: str = "") -> str:
    """Send a message (has a default, so it cannot be strict)."""
    return "sent"


billing = Agent("Billing", "You bill.")
triage = Agent("triage", "You route.", tools=[lookup, send], handoffs=[billing], output_type=Trip)
AGENTS = AgentSet(triage)

ITEMS = (
    AssistantMessage(content="Let me check.", agent="triage"),
    ToolCallItem(
        call_id="c1", tool="lookup", arguments='{"place": {"city": "Oslo"}}', agent="triage"
    ),
    ToolCallItem(call_id="c2", tool="send", arguments='{"to": "ada"', agent="triage"),
    ToolResultItem(call_id="c1", tool="lookup", output="found", agent="triage"),
    ToolResultItem(
        call_id="c2",
        tool="send",
        output="sent",
        agent="triage",
        arguments={"to": "bob", "body": ""},
    ),
    ToolCallItem(call_id="c3", tool="transfer_to_billing", arguments="{}", agent="triage"),
    ToolResultItem(
        call_id="c3", tool="transfer_to_billing", output="Transferred to Billing.", agent="triage"
    ),
    HandoffItem(call_id="c3", source="triage", target="Billing"),
    AssistantMessage(content='{"city": "Oslo"}', agent="triage"),
    Feedback(content="Your final answer does not match the required output schema."),
)


def make_request(
    items: tuple[Any, ...] = ITEMS, turn: int = 3, agent: str = "triage", **changes: Any
) -> ModelRequest:
    fields: dict[str, Any] = {
        "run_id": "r1",
        "agent": agent,
        "instructions": AGENTS.agent(agent).instructions,
        "input": (UserMessage(content="Plan a trip to Oslo"),),
        "items": items,
        "tools": AGENTS.tool_specs(agent),
        "output_schema": AGENTS.output_schema(agent),
        "turn": turn,
    }
    fields.update(changes)
    return ModelRequest(**fields)


PROVIDER = OpenAIProvider(base_url="http://127.0.0.1:9/v1", api_key="test")
SETTINGS = ModelSettings(
    temperature=0.2,
    top_p=0.9,
    max_output_tokens=300,
    parallel_tool_calls=True,
    tool_choice="lookup",
    reasoning_effort="low",
)


def chat(settings: ModelSettings | None = SETTINGS, **options: Any) -> OpenAIChatModel:
    return OpenAIChatModel("gpt-4.1-mini", provider=PROVIDER, settings=settings, **options)


def responses(settings: ModelSettings | None = SETTINGS, **options: Any) -> OpenAIResponsesModel:
    return OpenAIResponsesModel("gpt-4.1-mini", provider=PROVIDER, settings=settings, **options)


# -- conformance to the openai package's request types ----------------------------------------


def conforms(value: Any, hint: Any, path: str = "$") -> list[str]:
    """Where ``value`` does not fit the type ``hint`` (TypedDicts checked for unknown keys and
    missing required ones, unions by trying each arm)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is object:
        return []
    if origin in (typing.Annotated, typing_extensions.Required, typing_extensions.NotRequired):
        return conforms(value, args[0], path)
    if origin is typing.Union or origin is types.UnionType:
        failures = [conforms(value, arm, path) for arm in args]
        if any(not f for f in failures):
            return []
        return [f"{path}: {value!r:.80} fits none of {len(args)} types: {min(failures, key=len)}"]
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if typing_extensions.is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{path}: expected an object for {hint.__name__}"]
        hints = typing_extensions.get_type_hints(hint, include_extras=True)
        errors = [f"{path}.{k}: not a field of {hint.__name__}" for k in value if k not in hints]
        for key, field_hint in hints.items():
            # The annotations are strings, so __required_keys__ only knows each class's
            # totality; Required[...] and NotRequired[...] say the rest.
            marker = typing.get_origin(field_hint)
            required = marker is typing_extensions.Required or (
                key in hint.__required_keys__ and marker is not typing_extensions.NotRequired
            )
            if key in value:
                errors += conforms(value[key], field_hint, f"{path}.{key}")
            elif required:
                errors.append(f"{path}.{key}: required by {hint.__name__}")
        return errors
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence):
        if not isinstance(value, list):
            return [f"{path}: expected an array"]
        return [e for i, v in enumerate(value) for e in conforms(v, args[0], f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping):
        return [] if isinstance(value, dict) else [f"{path}: expected an object"]
    if hint is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number"]
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an integer"]
    if hint in (str, bool):
        return [] if isinstance(value, hint) else [f"{path}: expected {hint.__name__}"]
    raise AssertionError(f"the checker does not know {hint!r} at {path}")


def test_the_checker_catches_unknown_keys_missing_keys_and_wrong_types() -> None:
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert conforms(good, CompletionCreateParamsNonStreaming) == []
    assert conforms({**good, "bogus": 1}, CompletionCreateParamsNonStreaming)
    assert conforms({"model": "m"}, CompletionCreateParamsNonStreaming)
    assert conforms({**good, "temperature": "hot"}, CompletionCreateParamsNonStreaming)
    bad_message = {"model": "m", "messages": [{"role": "tool", "content": "x"}]}
    assert conforms(bad_message, CompletionCreateParamsNonStreaming)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_bodies_fit_the_openai_request_types(stream: bool) -> None:
    for settings in (SETTINGS, None, ModelSettings(seed=7, stop=("END",), tool_choice="auto")):
        body = chat(settings).request_body(make_request(), stream=stream)
        kind = CompletionCreateParamsStreaming if stream else CompletionCreateParamsNonStreaming
        assert conforms(body, kind) == []


@pytest.mark.parametrize("stream", [False, True])
def test_responses_bodies_fit_the_openai_request_types(stream: bool) -> None:
    for settings in (SETTINGS, None, ModelSettings(tool_choice="required")):
        body = responses(settings).request_body(make_request(), stream=stream)
        kind = ResponseCreateParamsStreaming if stream else ResponseCreateParamsNonStreaming
        assert conforms(body, kind) == []


# -- what the bodies say ----------------------------------------------------------------------


def test_chat_messages_carry_the_conversation() -> None:
    body = chat(None).request_body(make_request())
    assert body["model"] == "gpt-4.1-mini"
    assert body["messages"] == [
        {"role": "system", "content": "You route."},
        {"role": "user", "content": "Plan a trip to Oslo"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"place": {"city": "Oslo"}}'},
                },
                # Arguments that are not a JSON object go back as {} (servers that parse the
                # history refuse the request otherwise); the result explains the error.
                {"id": "c2", "type": "function", "function": {"name": "send", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
        {
            "role": "tool",
            "tool_call_id": "c2",
            "content": "[A person changed the arguments of this call before approving it; it ran "
            'with {"to":"bob","body":""}.]\nsent',
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c3",
                    "type": "function",
                    "function": {"name": "transfer_to_billing", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c3", "content": "Transferred to Billing."},
        {"role": "assistant", "content": '{"city": "Oslo"}'},
        {
            "role": "user",
            "content": "Your final answer does not match the required output schema.",
        },
    ]
    assert body["stream"] is False  # said, for servers that stream by default


def test_responses_input_carries_the_conversation() -> None:
    body = responses(None).request_body(make_request())
    assert body["instructions"] == "You route."
    assert body["store"] is False
    assert [(i["type"], i.get("role"), i.get("call_id")) for i in body["input"]] == [
        ("message", "user", None),
        ("message", "assistant", None),
        ("function_call", None, "c1"),
        ("function_call", None, "c2"),
        ("function_call_output", None, "c1"),
        ("function_call_output", None, "c2"),
        ("function_call", None, "c3"),
        ("function_call_output", None, "c3"),
        ("message", "assistant", None),
        ("message", "user", None),
    ]
    assert body["input"][3]["arguments"] == "{}"
    assert body["input"][5]["output"].startswith("[A person changed the arguments")


def test_tools_are_strict_where_their_schema_allows() -> None:
    tools = {
        t["function"]["name"]: t["function"] for t in chat().request_body(make_request())["tools"]
    }
    assert list(tools) == ["lookup", "send", "transfer_to_billing"]
    lookup_fn = tools["lookup"]
    assert lookup_fn["strict"] is True
    assert lookup_fn["description"] == "Look a place up."
    # The nested model is closed too, as strict mode requires.
    assert lookup_fn["parameters"]["$defs"]["Where"]["additionalProperties"] is False
    assert lookup_fn["parameters"]["required"] == ["place", "detail"]
    # A default makes an argument optional, which strict mode cannot say: sent as it is.
    assert "strict" not in tools["send"]
    assert tools["send"]["parameters"] == send.parameters
    assert tools["transfer_to_billing"]["strict"] is True
    loose = chat(strict=False).request_body(make_request())["tools"]
    assert all("strict" not in t["function"] for t in loose)
    resp_tools = responses().request_body(make_request())["tools"]
    assert [t["strict"] for t in resp_tools] == [True, False, True]


def test_structured_output_is_a_json_schema_response_format() -> None:
    body = chat().request_body(make_request())
    assert body["response_format"]["type"] == "json_schema"
    schema = body["response_format"]["json_schema"]
    assert schema["name"] == "Trip" and schema["strict"] is True
    assert schema["schema"]["additionalProperties"] is False
    text = responses().request_body(make_request())["text"]
    assert text == {"format": {"type": "json_schema", **schema}}


def test_an_output_type_that_is_not_an_object_goes_into_the_instructions() -> None:
    schema = pydantic.TypeAdapter(list[int]).json_schema()
    request = make_request(output_schema=schema)
    body = chat().request_body(request)
    assert "response_format" not in body
    assert body["messages"][0]["content"] == (
        'You route.\n\nAnswer with JSON only, matching this JSON Schema: {"items":{"type":'
        '"integer"},"type":"array"}'
    )
    body = responses().request_body(request)
    assert "text" not in body and body["instructions"].endswith('"type":"array"}')


def test_settings_map_to_each_api() -> None:
    body = chat().request_body(make_request(), stream=True)
    assert {k: body[k] for k in body if k not in ("messages", "tools", "response_format")} == {
        "model": "gpt-4.1-mini",
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 300,
        "parallel_tool_calls": True,
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body = responses().request_body(make_request(), stream=True)
    assert {k: body[k] for k in body if k not in ("input", "tools", "text", "instructions")} == {
        "model": "gpt-4.1-mini",
        "store": False,
        "temperature": 0.2,
        "top_p": 0.9,
        "max_output_tokens": 300,
        "parallel_tool_calls": True,
        "tool_choice": {"type": "function", "name": "lookup"},
        "reasoning": {"effort": "low"},
        "stream": True,
    }
    extra = ModelSettings(extra_body={"max_tokens": 5, "temperature": 1.0})
    body = chat(extra.over(SETTINGS)).request_body(make_request())
    assert body["max_tokens"] == 5 and body["temperature"] == 1.0
    with pytest.raises(ConfigurationError, match="no seed or stop"):
        responses(ModelSettings(seed=1)).request_body(make_request())


def test_model_settings_layer_over_the_providers() -> None:
    provider = OpenAIProvider(
        base_url="http://127.0.0.1:9/v1",
        settings=ModelSettings(temperature=0.0, seed=3, extra_body={"a": 1}),
    )
    model = provider.chat("m", settings=ModelSettings(temperature=0.7, extra_body={"b": 2}))
    assert model.settings == ModelSettings(temperature=0.7, seed=3, extra_body={"a": 1, "b": 2})
    assert provider.chat("m").settings.temperature == 0.0


def test_strict_schema() -> None:
    closed = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert strict_schema(closed) == {**closed, "additionalProperties": False}
    assert strict_schema({**closed, "required": []}) is None  # optional property
    assert strict_schema({"type": "object"}) is None  # dict[str, Any]
    mapping = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert strict_schema(mapping) is None
    assert strict_schema({"type": "array", "items": {"type": "integer"}}) is None  # not an object
    lengths = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}}
    assert strict_schema({**lengths, "required": ["a"]}) is None  # maxLength is refused
    nullable = {
        "type": "object",
        "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "required": ["a"],
    }
    assert strict_schema(nullable) == {**nullable, "additionalProperties": False}


# -- parsing what servers send ----------------------------------------------------------------

CALLS = (
    Call("lookup", '{"place": {"city": "Oslo", "country": "NO"}, "detail": true}'),
    Call("send", '{"to": "ada"}'),
)
TURN = Reply(text="On it.", calls=CALLS, usage=(100, 20, 64, 8))
USAGE = Usage(requests=1, input_tokens=100, output_tokens=20, cached_tokens=64, reasoning_tokens=8)
EXPECTED = ModelResponse(
    text="On it.",
    tool_calls=(
        ModelToolCall(call_id="call_0", name="lookup", arguments=CALLS[0].arguments),
        ModelToolCall(call_id="call_1", name="send", arguments='{"to": "ada"}'),
    ),
    usage=USAGE,
)


def ids(taken: set[str] | None = None, turn: int = 3) -> CallIds:
    return CallIds(turn, taken or set())


def chat_parse(reply: Reply, taken: set[str] | None = None) -> ModelResponse:
    return parse_completion(chat_completion(reply, "m"), ids(taken))


def responses_parse(reply: Reply, taken: set[str] | None = None) -> ModelResponse:
    return responses()._parse(response_json(openai_response(reply, "m")), ids(taken))


def chat_stream(reply: Reply, taken: set[str] | None = None) -> tuple[list[Any], ModelResponse]:
    assembler = ChatAssembler(ids(taken))
    events = [e for chunk in chat_chunks(reply, "m") for e in assembler.feed(chunk)]
    events += assembler.feed(b"[DONE]")
    return events, assembler.response()


def responses_stream(
    reply: Reply, taken: set[str] | None = None
) -> tuple[list[Any], ModelResponse]:
    assembler = ResponsesAssembler(ids(taken))
    events = [e for _, data in response_events(reply, "m") for e in assembler.feed(data)]
    return events, assembler.response()


def test_responses_built_with_the_openai_types_parse() -> None:
    assert chat_parse(TURN) == EXPECTED
    # The Responses API names each response; the model says which the server keeps.
    assert responses_parse(TURN) == msgspec.structs.replace(EXPECTED, response_id="resp_test")


@pytest.mark.parametrize("stream", [chat_stream, responses_stream])
def test_a_stream_assembles_into_what_respond_gives(stream: Any) -> None:
    events, response = stream(TURN)
    assert response == EXPECTED
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "On it."
    assert [(e.index, e.call_id, e.name) for e in events if isinstance(e, ToolCallStarted)] == [
        (0, "call_0", "lookup"),
        (1, "call_1", "send"),
    ]
    for index, call in enumerate(EXPECTED.tool_calls):
        pieces = [e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == index]
        assert "".join(pieces) == call.arguments
        assert len(pieces) > 1


def chat_streamed(reply: Reply, taken: set[str] | None = None) -> ModelResponse:
    return chat_stream(reply, taken)[1]


def responses_streamed(reply: Reply, taken: set[str] | None = None) -> ModelResponse:
    return responses_stream(reply, taken)[1]


@pytest.mark.parametrize("parse", [chat_parse, responses_parse, chat_streamed, responses_streamed])
def test_missing_or_reused_call_ids_are_assigned_from_turn_and_position(parse: Any) -> None:
    reply = Reply(
        calls=(Call("a", id=None), Call("b", id="seen"), Call("c", id="x"), Call("d", id="x"))
    )
    response = parse(reply, {"seen"})
    assert [c.call_id for c in response.tool_calls] == ["call_3_0", "call_3_1", "x", "call_3_3"]
    assert parse(reply, {"seen"}) == response  # deterministic


def test_chat_odd_but_harmless_shapes() -> None:
    def completion(message: dict[str, Any], **extra: Any) -> bytes:
        data = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], **extra}
        return msgspec.json.encode(data)

    # Arguments as an object (some servers), content as parts, no usage at all.
    body = completion(
        {
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": {"x": 1}}}],
        }
    )
    assert parse_completion(body, ids()) == ModelResponse(
        text="ab",
        tool_calls=(ModelToolCall(call_id="t", name="f", arguments='{"x":1}'),),
        usage=Usage(requests=1),
    )
    # A refusal is the text; an empty message is an empty response (the engine's rules take
    # it from there: an empty final output, or Feedback under an output type).
    refusal = parse_completion(completion({"content": None, "refusal": "I can't."}), ids())
    assert refusal.text == "I can't."
    assert parse_completion(completion({"content": ""}), ids()).text is None
    null_details = completion(
        {"content": "x"},
        usage={
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    )
    usage = parse_completion(null_details, ids()).usage
    assert usage == Usage(requests=1, input_tokens=3, output_tokens=1)


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        (b"{not json", ModelOutputError, "cannot be read"),
        (b'{"choices": []}', ModelOutputError, "without choices"),
        (b'{"object": "chat.completion"}', ModelOutputError, "without choices"),
        (b'{"choices": "no"}', ModelOutputError, "cannot be read"),
        (b'{"choices": [{"message": {"content": 5}}]}', ModelOutputError, "cannot be read"),
        (b'{"error": {"message": "overloaded", "type": "server_error"}}', ServerError, "overload"),
        (
            b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}',
            RateLimitError,
            "slow",
        ),
    ],
)
def test_chat_bodies_we_cannot_use_raise_our_errors(
    body: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        parse_completion(body, ids())


def test_responses_failures_and_odd_shapes() -> None:
    model = responses()
    failed = b'{"status": "failed", "error": {"code": "server_error", "message": "boom"}}'
    with pytest.raises(ServerError, match="boom"):
        model._parse(failed, ids())
    invalid = b'{"status": "failed", "error": {"code": "invalid_prompt", "message": "no"}}'
    with pytest.raises(BadRequestError):
        model._parse(invalid, ids())
    with pytest.raises(ModelOutputError):
        model._parse(b'{"output": {}}', ids())
    # Reasoning and other items are skipped; a cut-short response still gives its text.
    body = msgspec.json.encode(
        {
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "content": [{"type": "output_text", "text": "Half"}]},
            ],
        }
    )
    assert model._parse(body, ids()) == ModelResponse(text="Half", usage=Usage(requests=1))


def test_streams_that_end_early_or_report_errors() -> None:
    from agentfsm.models import ModelConnectionError

    chunks = chat_chunks(TURN, "m")
    assembler = ChatAssembler(ids())
    for chunk in chunks[:3]:
        assembler.feed(chunk)
    with pytest.raises(ModelConnectionError, match="before the chat completion finished"):
        assembler.response()
    with pytest.raises(RateLimitError, match="slow down"):
        ChatAssembler(ids()).feed(
            b'{"error": {"message": "slow down", "type": "rate_limit_error"}}'
        )
    with pytest.raises(ModelOutputError):
        ChatAssembler(ids()).feed(b'{"choices": [{"delta": {"content": 1}}]}')

    events = response_events(TURN, "m")
    assembler_r = ResponsesAssembler(ids())
    for _, data in events[:-1]:
        assembler_r.feed(data)
    with pytest.raises(ModelConnectionError, match=r"response\.completed"):
        assembler_r.response()
    error = b'{"type": "error", "code": "server_error", "message": "oops", "sequence_number": 3}'
    with pytest.raises(ServerError, match="oops"):
        ResponsesAssembler(ids()).feed(error)
    failed = (
        b'{"type": "response.failed", "response": {"status": "failed", "error": {"message": "x"}}}'
    )
    with pytest.raises(ServerError):
        ResponsesAssembler(ids()).feed(failed)


def test_a_final_response_without_output_is_assembled_from_the_stream() -> None:
    events = response_events(TURN, "m")
    assembler = ResponsesAssembler(ids())
    for _, data in events[:-1]:
        assembler.feed(data)
    assembler.feed(
        msgspec.json.encode({"type": "response.completed", "response": {"status": "completed"}})
    )
    assert assembler.response() == msgspec.structs.replace(EXPECTED, usage=Usage(requests=1))
    # Without even the items: from the deltas alone.
    assembler = ResponsesAssembler(ids())
    for kind, data in events[:-1]:
        if kind != "response.output_item.done":
            assembler.feed(data)
    assembler.feed(b'{"type": "response.completed", "response": {"status": "completed"}}')
    assert assembler.response() == msgspec.structs.replace(EXPECTED, usage=Usage(requests=1))


def test_stream_events_are_tagged_values() -> None:
    events, response = chat_stream(TURN)
    encoded = msgspec.json.encode([*events, ResponseDone(response)])
    decoded = msgspec.json.decode(
        encoded, type=list[TextDelta | ToolCallStarted | ToolCallDelta | ResponseDone]
    )
    assert decoded == [*events, ResponseDone(response)]
    assert b'"type":"text_delta"' in encoded


# -- server-sent events -----------------------------------------------------------------------

SSE = (
    b": a comment\r\n"
    b"event: response.output_text.delta\r\n"
    b'data: {"a": 1}\r\n'
    b"\r\n"
    b"data: line one\n"
    b"data:line two\n"
    b"id: 7\n"
    b"\n"
    b"retry: 100\n\n"
    b"data: [DONE]\r\r"
    b"data: last, without a blank line"
)
EVENTS = [b'{"a": 1}', b"line one\nline two", b"[DONE]", b"last, without a blank line"]


def test_sse_decoder_reads_fields_comments_and_line_ends() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(SSE) + decoder.flush() == EVENTS


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_sse_decoder_does_not_care_where_chunks_split(size: int) -> None:
    decoder = SSEDecoder()
    events: list[bytes] = []
    for start in range(0, len(SSE), size):
        events += decoder.feed(SSE[start : start + size])
    assert events + decoder.flush() == EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(SSE)), max_size=8))
def test_sse_decoder_any_split(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(SSE)]
    decoder = SSEDecoder()
    events: list[bytes] = []
    for start, end in itertools.pairwise(points):
        events += decoder.feed(SSE[start:end])
    assert events + decoder.flush() == EVENTS


# -- retries ----------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_stops() -> None:
    policy = RetryPolicy(max_retries=3, backoff=1.0, max_backoff=3.0)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 3.0)):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(d is not None and base / 2 <= d <= base for d in delays)
        assert len(set(delays)) > 100  # jittered
    assert policy.delay(4) is None
    assert policy.delay(1, retry_after=2.5) == 2.5
    assert policy.delay(1, retry_after=61.0) is None  # longer than max_retry_after


def test_retry_after_headers() -> None:
    import email.utils
    import time

    import httpx

    assert _retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert _retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    later = _retry_after(httpx.Headers({"retry-after": date}))
    assert later is not None and 25 < later <= 30
    assert _retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert _retry_after(httpx.Headers({})) is None


# -- fuzz: garbage either parses or raises our own errors --------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "choices",
                    "message",
                    "delta",
                    "content",
                    "tool_calls",
                    "function",
                    "name",
                    "arguments",
                    "id",
                    "index",
                    "usage",
                    "error",
                    "type",
                    "output",
                    "item",
                    "response",
                    "status",
                    "output_index",
                    "text",
                    "prompt_tokens",
                    "message",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(st.one_of(st.binary(max_size=40), json_values.map(msgspec.json.encode)))
def test_parsers_raise_only_our_errors(data: bytes) -> None:
    parsers = [
        lambda: parse_completion(data, ids()),
        lambda: responses()._parse(data, ids()),
        lambda: ChatAssembler(ids()).feed(data),
        lambda: ResponsesAssembler(ids()).feed(data),
    ]
    for parse in parsers:
        with contextlib.suppress(ModelError):
            parse()


@given(
    st.one_of(
        st.binary(max_size=3000),
        st.text(max_size=3000).map(str.encode),
        st.text(max_size=3000).map(lambda t: msgspec.json.encode({"error": t})),
        st.text(max_size=200).map(lambda t: b"data: " + t.encode() + b"\n\n"),
        st.text(max_size=200).map(lambda t: b"<html><title>" + t.encode() + b"</title></html>"),
    )
)
def test_an_error_message_is_one_short_printable_line_whatever_the_body(body: bytes) -> None:
    message = error_info(body).message
    if message is not None:
        assert message and message == message.strip()
        assert len(message) <= MESSAGE_LIMIT
        assert message.isprintable() and "  " not in message


def test_hostile_error_bodies_are_read_in_linear_time() -> None:
    bodies = [
        b"<!---->" * 9000 + b"x",
        b"<html>" + b"<script" * 9000,
        b"<html><title>" + b"<" * 64000,
        b"data:" * 13000,
        b"\n" * 64000 + b"x",
    ]
    start = time.monotonic()
    for body in bodies:
        error_info(body)
    assert time.monotonic() - start < 1.0


def test_chat_stream_deltas_without_index_or_in_one_piece() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return msgspec.json.encode({"choices": [{"delta": delta, "finish_reason": finish}]})

    assembler = ChatAssembler(ids())
    chunks = [
        chunk({"refusal": "I won't"}),
        # Without indexes: a new name starts a call, later pieces go to the last one.
        chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x"'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": ": 1}"}}]}),
        chunk({"tool_calls": [{"function": {"name": "g", "arguments": {"y": 2}}}]}),
        chunk({}, finish="tool_calls"),
    ]
    events = [e for c in chunks for e in assembler.feed(c)]
    assert events[0] == TextDelta("I won't")
    assert assembler.response() == ModelResponse(
        text="I won't",
        tool_calls=(
            ModelToolCall(call_id="a", name="f", arguments='{"x": 1}'),
            ModelToolCall(call_id="call_3_1", name="g", arguments='{"y":2}'),
        ),
        usage=Usage(requests=1),
    )
