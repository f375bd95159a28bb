"""The OpenAI-to-Anthropic translator: requests, whole and streamed answers, errors.

Pairs under ``tests/fixtures/openai_anthropic/`` drive the table tests; a new file there is a
new test case. Each pair is ``<case>.<from>.<ext>`` next to ``<case>.<to>.<ext>``:

- ``requests/``: ``X.openai.json`` (what the client sends) -> ``X.anthropic.json``.
- ``responses/``: ``X.anthropic.json`` (what Anthropic answers) -> ``X.openai.json``.
- ``streams/``: ``X.anthropic.txt`` (Anthropic's SSE body) -> ``X.openai.jsonl`` (the data of
  each chunk the client gets before ``[DONE]``), or ``X.openai.include_usage.jsonl`` when the
  client asked for ``stream_options.include_usage``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.context import Usage
from extproc.errors import BadRequestError
from extproc.mock_llm.anthropic_api import parse_messages_request
from extproc.mock_llm.recorder import Body
from extproc.translators.openai_anthropic import (
    DEFAULT_MAX_TOKENS,
    CompletionTranslator,
    StreamTranslator,
    translate_error,
    translate_request,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openai_anthropic"
UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
REQUEST_ID = "7f3b9c2e-1d4a-4e8b-9c1f-0a2b3c4d5e6f"
CREATED = 1760000000
CUTS = st.lists(st.integers(min_value=0, max_value=100_000), max_size=16)


def cases(folder: str, pattern: str) -> list[Any]:
    paths = sorted((FIXTURES / folder).glob(pattern))
    assert paths, f"no fixtures match {folder}/{pattern}"
    return [pytest.param(path, id=path.name.split(".")[0]) for path in paths]


def sibling(path: Path, source: str, target: str) -> Path:
    return path.with_name(path.name.replace(f".{source}.", f".{target}.", 1))


def translate(body: dict[str, Any], **options: Any) -> dict[str, Any]:
    return translate_request(body, UPSTREAM_MODEL, stream=False, **options)


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet", "messages": list(messages), **fields}


USER = {"role": "user", "content": "Hi"}


def feed_in_pieces(
    feed: Callable[[bytes, bool], bytes | None], body: bytes, cuts: Sequence[int]
) -> bytes:
    """Feed ``body`` cut at the given points and return everything given back."""
    if not body:
        return feed(b"", True) or b""
    points = sorted({0, *[c % (len(body) + 1) for c in cuts], len(body)})
    out = b""
    for start, end in itertools.pairwise(points):
        out += feed(body[start:end], end == len(body)) or b""
    return out


def translate_stream(body: bytes, *, include_usage: bool, cuts: Sequence[int] = ()) -> bytes:
    translator = StreamTranslator(
        include_usage=include_usage, request_id=REQUEST_ID, created=CREATED
    )
    return feed_in_pieces(translator.feed, body, cuts)


def chunks(sse: bytes) -> list[Any]:
    """The data of each event; every event is a single ``data:`` line and the last is [DONE]."""
    events = sse.split(b"\n\n")
    assert events[-1] == b"", "the stream must end with a complete event"
    assert events[-2] == b"data: [DONE]"
    assert all(event.startswith(b"data: ") and b"\n" not in event for event in events[:-1])
    return [orjson.loads(event[6:]) for event in events[:-2]]


# --- requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", cases("requests", "*.openai.json"))
def test_recorded_request_is_translated(path: Path) -> None:
    body = orjson.loads(path.read_bytes())
    expected = orjson.loads(sibling(path, "openai", "anthropic").read_bytes())

    sent = translate_request(body, UPSTREAM_MODEL, stream=bool(body.get("stream")))

    assert sent == expected
    roles = [message["role"] for message in sent["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), "turns must alternate"
    # The mock provider checks what the real API checks first; the request must pass it.
    parse_messages_request(Body.parse(orjson.dumps(sent)))


def test_max_tokens_defaults_when_the_client_sets_none() -> None:
    assert translate(chat(USER))["max_tokens"] == DEFAULT_MAX_TOKENS
    assert translate(chat(USER), default_max_tokens=512)["max_tokens"] == 512


@pytest.mark.parametrize(
    ("temperature", "sent"), [(0, 0.0), (0.7, 0.7), (1, 1), (1.3, 1.0), (2, 1.0)]
)
def test_temperature_is_clamped_to_anthropics_range(temperature: float, sent: float) -> None:
    assert translate(chat(USER, temperature=temperature))["temperature"] == sent


TOOL = {"type": "function", "function": {"name": "lookup"}}


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "sent"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "lookup"}},
            None,
            {"type": "tool", "name": "lookup"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice_is_mapped(tool_choice: Any, parallel: Any, sent: Any) -> None:
    body = chat(USER, tools=[TOOL], tool_choice=tool_choice, parallel_tool_calls=parallel)
    assert translate(body).get("tool_choice") == sent


def test_tool_results_come_before_other_blocks_of_their_turn() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
    body = chat(
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "user", "content": "Are you done?"},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
    )
    turns = translate(body)["messages"]
    assert turns[1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {}}
    ]
    assert [block["type"] for block in turns[2]["content"]] == ["tool_result", "text"]


# OpenAI refuses arguments that are not a string; any string is the model's own text.
BAD_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(USER, n=2), "n"),
        (
            chat({"role": "assistant", "tool_calls": [BAD_CALL]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            chat({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}),
            "messages[0].content[0]",
        ),
        (
            chat(
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                }
            ),
            "messages[0].content[0].image_url.url",
        ),
        (chat({"role": "function", "name": "f", "content": "1"}), "messages[0].role"),
        (chat({"role": "tool", "content": "orphan"}), "messages[0].tool_call_id"),
        (chat({"role": "system", "content": [{"type": "image_url"}]}), "messages[0].content[0]"),
        (
            chat(USER, response_format={"type": "json_schema", "json_schema": {}}),
            "response_format.json_schema.schema",
        ),
        (chat(USER, tools=[{"type": "custom", "custom": {"name": "grep"}}]), "tools[0]"),
        (chat(USER, tools=[TOOL], tool_choice="any"), "tool_choice"),
        (chat(USER, max_tokens=0), "max_tokens"),
        (chat(USER, max_completion_tokens=True), "max_completion_tokens"),
        (chat(USER, stop=["a", 1]), "stop"),
        (chat(USER, temperature="hot"), "temperature"),
    ],
    ids=[
        "n-above-1",
        "arguments-not-a-string",
        "audio-part",
        "ftp-image",
        "function-role",
        "tool-without-call-id",
        "image-in-system",
        "json-schema",
        "custom-tool",
        "unknown-tool-choice",
        "zero-max-tokens",
        "bool-max-completion-tokens",
        "non-string-stop",
        "string-temperature",
    ],
)
def test_what_anthropic_cannot_take_is_refused(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as refused:
        translate(body)
    assert refused.value.param == param


# --- whole answers ----------------------------------------------------------------------


@pytest.mark.parametrize("path", cases("responses", "*.anthropic.json"))
def test_recorded_answer_is_translated(path: Path) -> None:
    expected = orjson.loads(sibling(path, "anthropic", "openai").read_bytes())
    translator = CompletionTranslator(request_id=REQUEST_ID, created=CREATED)

    answer = feed_in_pieces(translator.feed, path.read_bytes(), [50, 200])

    assert orjson.loads(answer) == expected
    usage = expected["usage"]
    provider_usage = orjson.loads(path.read_bytes())["usage"]
    assert translator.usage == Usage(
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["total_tokens"],
        usage["prompt_tokens_details"]["cached_tokens"],
        provider_usage.get("cache_creation_input_tokens", 0),
    )
    assert translator.response_model == expected["model"]


def test_answer_is_held_back_until_it_is_complete() -> None:
    translator = CompletionTranslator(request_id=REQUEST_ID, created=CREATED)
    body = (FIXTURES / "responses" / "tool_use.anthropic.json").read_bytes()
    assert translator.feed(body[:100], False) == b""
    assert translator.feed(body[100:], True)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("a_reason_added_later", "stop"),
    ],
)
def test_stop_reason_becomes_finish_reason(stop_reason: str, finish_reason: str) -> None:
    message = {
        "model": UPSTREAM_MODEL,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    translator = CompletionTranslator(request_id=REQUEST_ID, created=CREATED)
    answer = orjson.loads(translator.feed(orjson.dumps(message), True) or b"")
    assert answer["choices"][0]["finish_reason"] == finish_reason


@pytest.mark.parametrize("cache_read", [-1_000_000, True, "2048"])
def test_a_malformed_cache_read_count_is_shown_as_none_read(cache_read: Any) -> None:
    # The bill takes no cache read from such a count; the client was shown it as sent
    # (cached_tokens: -1000000, or true), more cache reads than the bill holds.
    message = {
        "model": UPSTREAM_MODEL,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": cache_read},
    }
    translator = CompletionTranslator(request_id=REQUEST_ID, created=CREATED)
    answer = orjson.loads(translator.feed(orjson.dumps(message), True) or b"")
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert translator.usage is not None and translator.usage.cached_tokens == 0


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"id":"msg_1","type":"message","content":[{"type":"text"',
        b"[]",
        b"",
    ],
    ids=["html", "cut-json", "array", "empty"],
)
def test_unreadable_answer_becomes_an_openai_error_without_usage(body: bytes) -> None:
    translator = CompletionTranslator(request_id=REQUEST_ID, created=CREATED)
    error = orjson.loads(translator.feed(body, True) or b"")["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "invalid_upstream_response")
    assert translator.usage is None
    assert translator.status == 502


def test_an_error_in_a_200_becomes_the_providers_error_in_openais_shape() -> None:
    """Anthropic's error in a 200: its words, its type as the code, as the same error
    with its 500 status is shown (unreadable_answers)."""
    translator = CompletionTranslator(request_id=REQUEST_ID, created=CREATED)
    body = b'{"type":"error","error":{"type":"api_error","message":"Internal server error"}}'
    error = orjson.loads(translator.feed(body, True) or b"")["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "api_error")
    assert error["message"] == "Internal server error"
    assert (translator.status, translator.usage) == (502, None)


# --- streamed answers -------------------------------------------------------------------


@pytest.mark.parametrize("path", cases("streams", "*.openai*.jsonl"))
def test_recorded_stream_is_translated(path: Path) -> None:
    case = path.name.split(".")[0]
    body = (FIXTURES / "streams" / f"{case}.anthropic.txt").read_bytes()
    expected = [orjson.loads(line) for line in path.read_bytes().splitlines()]

    sent = translate_stream(body, include_usage=path.name.endswith(".include_usage.jsonl"))

    assert chunks(sent) == expected


STREAMS = cases("streams", "*.anthropic.txt")


@pytest.mark.parametrize("path", STREAMS)
@pytest.mark.parametrize("include_usage", [False, True])
@given(cuts=CUTS)
def test_stream_translation_does_not_depend_on_where_the_body_is_cut(
    path: Path, include_usage: bool, cuts: list[int]
) -> None:
    body = path.read_bytes()
    whole = translate_stream(body, include_usage=include_usage)
    assert translate_stream(body, include_usage=include_usage, cuts=cuts) == whole
    crlf = body.replace(b"\n", b"\r\n")
    assert translate_stream(crlf, include_usage=include_usage, cuts=cuts) == whole


TEXT_STREAM = (FIXTURES / "streams" / "text.anthropic.txt").read_bytes()
TOOL_STREAM = (FIXTURES / "streams" / "tool_calls.anthropic.txt").read_bytes()


@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_is_read_whether_or_not_the_client_asked_for_it(include_usage: bool) -> None:
    translator = StreamTranslator(
        include_usage=include_usage, request_id=REQUEST_ID, created=CREATED
    )
    sent = translator.feed(TEXT_STREAM, True)
    # 472 uncached input tokens and 2048 read from the cache; 15 output tokens.
    assert translator.usage == Usage(2520, 15, 2535, cached_tokens=2048)
    assert translator.response_model == UPSTREAM_MODEL
    assert (b'"usage":{' in sent) is include_usage


def test_every_chunk_but_the_last_carries_null_usage_when_the_client_asked() -> None:
    sent = chunks(translate_stream(TOOL_STREAM, include_usage=True))
    assert all(chunk["usage"] is None for chunk in sent[:-1])
    assert sent[-1]["choices"] == []
    assert sent[-1]["usage"]["total_tokens"] == 472 + 89


def event(data: dict[str, Any], name: str | None = None) -> bytes:
    return b"event: " + (name or data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_delta(stop_reason: str | None, output_tokens: int) -> bytes:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return event(
        {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}}
    )


START = TEXT_STREAM.split(b"\n\n", 1)[0] + b"\n\n"
STOP = event({"type": "message_stop"})


def test_error_event_ends_the_stream_with_an_openai_error_and_no_usage() -> None:
    translator = StreamTranslator(include_usage=True, request_id=REQUEST_ID, created=CREATED)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    # Even after the usage was known, a failed answer reports none; events after it are dropped.
    sent = translator.feed(START + message_delta("end_turn", 4) + event(error) + STOP, True)
    assert chunks(sent)[-1] == {
        "error": {
            "message": "Overloaded",
            "type": "service_unavailable",
            "param": None,
            "code": "upstream_overloaded",
        }
    }
    assert translator.usage is None


@pytest.mark.parametrize(
    "body",
    [
        START + message_delta("end_turn", 4),
        b"<html>502 Bad Gateway</html>",
        b"",
        START + b"data: {",
    ],
    ids=["no-message-stop", "html", "empty", "broken-json"],
)
def test_stream_that_is_not_a_complete_event_stream_ends_with_an_error(body: bytes) -> None:
    translator = StreamTranslator(include_usage=False, request_id=REQUEST_ID, created=CREATED)
    error = chunks(feed_in_pieces(translator.feed, body, [9]))[-1]["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "invalid_upstream_response")
    assert translator.usage is None


def test_several_message_deltas_give_one_finish_and_the_last_counts() -> None:
    # Server tools make Anthropic send several message_delta events with running totals.
    body = START + message_delta("pause_turn", 5) + message_delta("end_turn", 40) + STOP
    translator = StreamTranslator(include_usage=False, request_id=REQUEST_ID, created=CREATED)
    sent = chunks(translator.feed(body, True))
    assert [chunk["choices"][0]["finish_reason"] for chunk in sent] == [None, "stop"]
    assert translator.usage == Usage(2520, 40, 2560, cached_tokens=2048)


def test_thinking_is_shown_as_reasoning_and_tool_calls_are_numbered_among_themselves() -> None:
    blocks = [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Hmm"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "EqQB"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a":1}'},
        },
        {"type": "content_block_stop", "index": 1},
    ]
    body = START + b"".join(event(block) for block in blocks) + message_delta("tool_use", 9) + STOP
    sent = chunks(translate_stream(body, include_usage=False))
    deltas = [chunk["choices"][0]["delta"] for chunk in sent]
    assert deltas[1:] == [
        {"reasoning_content": "Hmm"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]},
        {},
    ]


# --- errors -----------------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}
    )


@pytest.mark.parametrize(
    ("status", "kind", "client_status", "client_type", "code"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error", None),
        (401, "authentication_error", 502, "upstream_error", "upstream_credentials_refused"),
        (402, "billing_error", 502, "upstream_error", "upstream_credentials_refused"),
        (403, "permission_error", 502, "upstream_error", "upstream_credentials_refused"),
        (404, "not_found_error", 404, "not_found_error", None),
        (413, "request_too_large", 413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", 429, "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", 502, "upstream_error", "api_error"),
        (504, "timeout_error", 502, "upstream_error", "timeout_error"),
        (529, "overloaded_error", 503, "service_unavailable", "upstream_overloaded"),
    ],
)
def test_anthropic_error_becomes_an_openai_error(
    status: int, kind: str, client_status: int, client_type: str, code: str | None
) -> None:
    sent_status, body = translate_error(status, anthropic_error(kind, "what went wrong"))
    error = orjson.loads(body)["error"]
    assert sent_status == client_status
    assert (error["type"], error["code"], error["param"]) == (client_type, code, None)
    assert "what went wrong" in error["message"]


def test_refused_gateway_credential_is_not_blamed_on_the_clients_key() -> None:
    _, body = translate_error(401, anthropic_error("authentication_error", "invalid x-api-key"))
    message = orjson.loads(body)["error"]["message"]
    assert "gateway's own credentials" in message and "not a problem with your API key" in message


@given(status=st.integers(min_value=400, max_value=599))
def test_client_status_is_known_before_the_body_arrives(status: int) -> None:
    # The status is sent with the response headers, before the error body has been read.
    body = anthropic_error("overloaded_error" if status >= 500 else "invalid_request_error", "x")
    assert translate_error(status, b"")[0] == translate_error(status, body)[0]


def test_error_body_that_is_not_json_still_gives_an_openai_error() -> None:
    status, body = translate_error(502, b"<html><body>502 Bad Gateway</body></html>")
    assert status == 502
    assert orjson.loads(body)["error"]["message"] == "the provider answered with HTTP 502"


# --- through the official openai client -------------------------------------------------


def openai_client(status: int, body: bytes, content_type: str) -> openai.OpenAI:
    """An OpenAI client whose every request is answered with the given translated bytes."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    return openai.OpenAI(
        api_key="sk-test", base_url="http://gateway.test/v1", http_client=http, max_retries=0
    )


def stream_through_openai(anthropic_sse: bytes) -> Iterator[Any]:
    sent = translate_stream(anthropic_sse, include_usage=True)
    with openai_client(200, sent, "text/event-stream") as client:
        yield from client.chat.completions.create(
            model="claude-sonnet", messages=[{"role": "user", "content": "Hi"}], stream=True
        )


def test_openai_client_assembles_the_translated_stream() -> None:
    content = ""
    arguments: dict[int, str] = {}
    names: dict[int, str] = {}
    usage = None
    for chunk in stream_through_openai(TOOL_STREAM):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                function = call.function
                assert function is not None
                if function.name:
                    names[call.index] = function.name
                arguments[call.index] = arguments.get(call.index, "") + (function.arguments or "")
    assert content == "I'll check both cities."
    assert names == {0: "get_weather", 1: "get_time"}
    assert {i: orjson.loads(a) for i, a in arguments.items()} == {0: {"city": "Paris"}, 1: {}}
    assert usage is not None and usage.total_tokens == 561


def test_openai_client_raises_on_a_mid_stream_error() -> None:
    body = (FIXTURES / "streams" / "overloaded_mid_stream.anthropic.txt").read_bytes()
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(stream_through_openai(body))


def test_openai_client_reads_the_translated_answer() -> None:
    translator = CompletionTranslator(request_id=REQUEST_ID, created=CREATED)
    body = translator.feed((FIXTURES / "responses" / "tool_use.anthropic.json").read_bytes(), True)
    with openai_client(200, body or b"", "application/json") as client:
        completion = client.chat.completions.create(
            model="claude-sonnet", messages=[{"role": "user", "content": "Hi"}]
        )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert [call.function.name for call in message.tool_calls or []] == ["get_weather"] * 2
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 512


def test_openai_client_does_not_report_a_bad_key_when_the_gateways_was_refused() -> None:
    status, body = translate_error(
        401, anthropic_error("authentication_error", "invalid x-api-key")
    )
    with (
        openai_client(status, body, "application/json") as client,
        pytest.raises(openai.InternalServerError),
    ):
        client.chat.completions.create(
            model="claude-sonnet", messages=[{"role": "user", "content": "Hi"}]
        )
