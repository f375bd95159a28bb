"""OpenAI client to Bedrock Converse: request bodies, answers, event streams and errors.

Recorded pairs live in ``tests/fixtures/openai_bedrock``: ``requests/<case>.openai.json`` must
become ``<case>.converse.json``; ``responses/<case>.converse.json`` must become
``<case>.openai.json``; ``streams/<case>.events.json`` lists ConverseStream events, framed
here as Bedrock sends them, whose SSE must read as ``<case>.openai.jsonl`` (and
``<case>.openai.include_usage.jsonl`` when the client asked for the usage chunk).
"""

from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path
from typing import Any

import botocore.session
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.errors import BadRequestError
from extproc.translators.openai_bedrock import (
    CompletionTranslator,
    StreamTranslator,
    request_path,
    translate_error,
    translate_request,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "openai_bedrock"
MODEL = "claude-haiku"
REQUEST_ID = "req-1"
CREATED = 1767225600


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def cases(folder: str, suffix: str) -> list[str]:
    names = sorted(p.name.removesuffix(suffix) for p in (FIXTURES / folder).glob(f"*{suffix}"))
    assert names, f"no fixtures in {folder}"
    return names


# --- a test-only encoder for AWS's event stream framing --------------------------------------


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event stream message: prelude (lengths + CRC), string headers, payload, CRC."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack("!B", len(raw_name)) + raw_name
        encoded += struct.pack("!BH", 7, len(raw_value)) + raw_value  # 7: string
    prelude = struct.pack("!II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack("!I", zlib.crc32(message))


def event_stream(events: list[dict[str, Any]]) -> bytes:
    out = b""
    for event in events:
        payload = orjson.dumps(event["payload"])
        if "exception" in event:
            headers = {
                ":message-type": "exception",
                ":exception-type": event["exception"],
                ":content-type": "application/json",
            }
        else:
            headers = {
                ":event-type": event["event"],
                ":content-type": "application/json",
                ":message-type": "event",
            }
        out += frame(headers, payload)
    return out


def data_lines(sse: bytes) -> list[Any]:
    """The SSE events' data, JSON-decoded; ``[DONE]`` stays the string it is."""
    lines: list[Any] = []
    for event in sse.split(b"\n\n"):
        if not event:
            continue
        assert event.startswith(b"data: "), event
        data = event.removeprefix(b"data: ")
        lines.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return lines


def stream_translator(include_usage: bool) -> StreamTranslator:
    return StreamTranslator(
        model=MODEL, include_usage=include_usage, request_id=REQUEST_ID, created=CREATED
    )


def feed_in_pieces(translator: StreamTranslator, stream: bytes, cuts: list[int]) -> bytes:
    points = sorted({0, *[cut % (len(stream) + 1) for cut in cuts], len(stream)})
    return b"".join(
        translator.feed(stream[start:end], end == len(stream))
        for start, end in itertools.pairwise(points)
    )


TEXT_STREAM = event_stream(load(FIXTURES / "streams" / "text.events.json")["events"])


# --- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("requests", ".openai.json"))
def test_request_becomes_the_recorded_converse_body(case: str) -> None:
    body = load(FIXTURES / "requests" / f"{case}.openai.json")
    expected = load(FIXTURES / "requests" / f"{case}.converse.json")
    assert translate_request(body, default_max_tokens=1024) == expected


def test_the_model_and_the_stream_flag_stay_out_of_the_body() -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    assert translate_request(body) == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}


def test_an_http_image_is_refused_because_converse_needs_its_bytes() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, image]}]}
    with pytest.raises(BadRequestError) as refused:
        translate_request(body)
    assert refused.value.param == "messages[0].content[1].image_url.url"
    assert "data URL" in refused.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": [1]}, "stop"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        (
            {"tool_choice": {"type": "function"}, "tools": [{"function": {"name": "f"}}]},
            "tool_choice",
        ),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ],
)
def test_what_converse_cannot_do_is_refused(body: dict[str, Any], param: str | None) -> None:
    request: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(BadRequestError) as refused:
        translate_request(request)
    if param is not None:
        assert refused.value.param == param


@pytest.mark.parametrize(
    "url",
    [
        "data:image/bmp;base64,Qk0=",
        "data:image/png,rawbytes",
        "data:image/png;base64,",
        "ftp://example.com/cat.png",
    ],
)
def test_unusable_images_are_refused(url: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(BadRequestError):
        translate_request({"messages": [{"role": "user", "content": content}]})


def test_tool_call_arguments_must_be_a_string() -> None:
    # OpenAI refuses arguments that are not a string; any string is the model's own text.
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    with pytest.raises(BadRequestError) as refused:
        translate_request({"messages": messages})
    assert refused.value.param == "messages[1].tool_calls[0].function"


def test_tool_choice_none_without_tool_history_sends_no_tools() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": "none"}
    assert "toolConfig" not in translate_request(body)


def test_max_completion_tokens_wins_and_the_default_fills_in() -> None:
    messages = [{"role": "user", "content": "hi"}]
    both = {"messages": messages, "max_tokens": 5, "max_completion_tokens": 9}
    assert translate_request(both)["inferenceConfig"] == {"maxTokens": 9}
    assert translate_request({"messages": messages}, default_max_tokens=77)["inferenceConfig"] == {
        "maxTokens": 77
    }


@pytest.mark.parametrize(
    ("model_id", "path"),
    [
        (
            "anthropic.claude-3-haiku-20240307-v1:0",
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-v1:0",
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile"
            "%2Fus.meta.llama3-v1%3A0/converse",
        ),
    ],
)
def test_the_model_id_is_encoded_in_the_path_as_botocore_does(model_id: str, path: str) -> None:
    assert request_path(model_id, stream=False) == path
    assert request_path(model_id, stream=True) == path.removesuffix("converse") + "converse-stream"
    assert _botocore_path(model_id) == path


def _botocore_path(model_id: str) -> str:
    """The path botocore's own Bedrock client builds; the request is stopped before sending."""
    client = botocore.session.get_session().create_client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="not-a-secret",
    )
    seen: list[str] = []

    class StoppedError(Exception):
        pass

    def stop(request: Any, **_: Any) -> None:
        seen.append(request.url)
        raise StoppedError

    client.meta.events.register("before-send", stop)
    with pytest.raises(StoppedError):
        client.converse(modelId=model_id, messages=[{"role": "user", "content": [{"text": "x"}]}])
    client.close()
    return seen[0].removeprefix("https://bedrock-runtime.us-east-1.amazonaws.com")


# --- buffered answers ----------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("responses", ".converse.json"))
def test_converse_answer_becomes_the_recorded_chat_completion(case: str) -> None:
    body = (FIXTURES / "responses" / f"{case}.converse.json").read_bytes()
    expected = load(FIXTURES / "responses" / f"{case}.openai.json")
    translator = CompletionTranslator(model=MODEL, request_id=REQUEST_ID, created=CREATED)
    assert translator.feed(body[:7], False) == b""
    answer = translator.feed(body[7:], True)
    assert answer is not None
    assert orjson.loads(answer) == expected
    assert translator.usage is not None
    counted = {key: expected["usage"][key] for key in translator.usage.as_dict()}
    assert translator.usage.as_dict() == counted
    # Bedrock does not name the model that answered.
    assert translator.response_model is None


@pytest.mark.parametrize("body", [b"<html>gateway timeout</html>", b"[]", b'{"output": {}}'])
def test_an_unreadable_answer_becomes_an_upstream_error(body: bytes) -> None:
    translator = CompletionTranslator(model=MODEL, request_id=REQUEST_ID, created=CREATED)
    answer = translator.feed(body, True)
    assert answer is not None
    assert orjson.loads(answer)["error"]["type"] == "upstream_error"
    assert translator.usage is None
    assert translator.status == 502  # the client gets the error's status, not the 200


# --- streams -------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True], ids=["no_usage_chunk", "usage_chunk"])
@pytest.mark.parametrize("case", cases("streams", ".events.json"))
def test_event_stream_becomes_the_recorded_sse(case: str, include_usage: bool) -> None:
    recorded = load(FIXTURES / "streams" / f"{case}.events.json")
    suffix = ".openai.include_usage.jsonl" if include_usage else ".openai.jsonl"
    expected = [
        orjson.loads(line)
        for line in (FIXTURES / "streams" / f"{case}{suffix}").read_bytes().splitlines()
    ]
    translator = stream_translator(include_usage)
    assert data_lines(translator.feed(event_stream(recorded["events"]), True)) == expected
    # Usage is read whether or not the client sees the usage chunk; never after an error.
    usage = recorded["usage"]
    assert (translator.usage.as_dict() if translator.usage else None) == usage
    assert translator.response_model is None


def test_a_tool_without_parameters_is_called_with_an_empty_object() -> None:
    # Its input opens with an empty delta and gets no more: "" is not JSON to OpenAI clients.
    block = {"contentBlockIndex": 0}
    stream = event_stream(
        [
            {"event": "messageStart", "payload": {"role": "assistant"}},
            {
                "event": "contentBlockStart",
                "payload": {**block, "start": {"toolUse": {"name": "now", "toolUseId": "t1"}}},
            },
            {
                "event": "contentBlockDelta",
                "payload": {**block, "delta": {"toolUse": {"input": ""}}},
            },
            {"event": "contentBlockStop", "payload": block},
            {"event": "messageStop", "payload": {"stopReason": "tool_use"}},
        ]
    )
    arguments = "".join(
        call["function"]["arguments"]
        for line in data_lines(stream_translator(False).feed(stream, True))
        if line != "[DONE]"
        for choice in line["choices"]
        for call in choice["delta"].get("tool_calls", [])
    )
    assert orjson.loads(arguments) == {}


@given(st.lists(st.integers(min_value=0, max_value=100_000), max_size=16))
def test_a_stream_cut_anywhere_reads_the_same(cuts: list[int]) -> None:
    whole = stream_translator(True).feed(TEXT_STREAM, True)
    translator = stream_translator(True)
    assert feed_in_pieces(translator, TEXT_STREAM, cuts) == whole
    assert translator.usage is not None and translator.usage.total_tokens == 36


def test_each_complete_frame_is_sent_as_soon_as_it_arrives() -> None:
    translator = stream_translator(False)
    first_frame_end = struct.unpack("!I", TEXT_STREAM[:4])[0]
    assert translator.feed(TEXT_STREAM[: first_frame_end - 1], False) == b""
    opened = data_lines(translator.feed(TEXT_STREAM[first_frame_end - 1 : first_frame_end], False))
    assert opened[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_a_corrupted_frame_ends_the_stream_with_an_error() -> None:
    corrupted = bytearray(TEXT_STREAM)
    corrupted[len(corrupted) // 2] ^= 0xFF
    translator = stream_translator(True)
    lines = data_lines(translator.feed(bytes(corrupted), False))
    assert lines[-2]["error"]["type"] == "upstream_error"
    assert lines[-1] == "[DONE]"
    assert translator.usage is None
    # Whatever follows is dropped.
    assert translator.feed(b"more", True) == b""


def test_a_stream_that_stops_before_message_stop_ends_with_an_error() -> None:
    events = load(FIXTURES / "streams" / "text.events.json")["events"][:3]
    translator = stream_translator(False)
    lines = data_lines(translator.feed(event_stream(events), True))
    assert lines[-2]["error"]["message"].startswith("the provider's stream ended")
    assert lines[-1] == "[DONE]"
    assert translator.usage is None


def test_an_error_frame_without_exception_type_is_reported() -> None:
    error = frame(
        {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"},
        b"",
    )
    lines = data_lines(stream_translator(False).feed(error, False))
    assert lines[0]["error"] == {
        "message": "boom",
        "type": "upstream_error",
        "param": None,
        "code": "InternalFailure",
    }
    assert lines[1] == "[DONE]"


# --- errors --------------------------------------------------------------------------------

CORAL = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
ERRORS: list[tuple[int, str | None, int, str]] = [
    (429, "ThrottlingException" + CORAL, 429, "rate_limit_error"),
    (400, "ServiceQuotaExceededException", 429, "rate_limit_error"),
    (400, "ValidationException" + CORAL, 400, "invalid_request_error"),
    (404, "ResourceNotFoundException", 404, "not_found_error"),
    (503, "ServiceUnavailableException", 503, "service_unavailable"),
    (429, "ModelNotReadyException", 503, "service_unavailable"),
    (408, "ModelTimeoutException", 504, "timeout"),
    (424, "ModelErrorException", 502, "upstream_error"),
    (500, "InternalServerException", 502, "upstream_error"),
    (502, None, 502, "upstream_error"),
    (429, None, 429, "rate_limit_error"),
    (400, None, 400, "invalid_request_error"),
]  # fmt: skip


@pytest.mark.parametrize(("status", "header", "client_status", "error_type"), ERRORS)
def test_aws_errors_map_to_openai_errors(
    status: int, header: str | None, client_status: int, error_type: str
) -> None:
    body = b'{"message": "what AWS said"}'
    mapped_status, mapped = translate_error(status, body, header)
    error = orjson.loads(mapped)["error"]
    assert (mapped_status, error["type"]) == (client_status, error_type)
    assert error["message"] == "what AWS said"
    assert error["code"] == (header.split(":")[0] if header else None)
    # The status is known from the status line and header alone, before the body arrives.
    assert translate_error(status, b"", header)[0] == client_status


@pytest.mark.parametrize(
    "header",
    [
        "AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        None,
    ],
)
def test_refused_gateway_credentials_are_a_502_that_echoes_nothing(header: str | None) -> None:
    # AWS's signature errors quote the canonical request, session token included.
    body = (
        b'{"message": "The request signature we calculated does not match. '
        b'The Canonical String for this request should have been x-amz-security-token:FQoG..."}'
    )
    status, mapped = translate_error(403, body, header)
    error = orjson.loads(mapped)["error"]
    assert status == 502
    assert error["type"] == "upstream_error"
    assert "gateway's AWS credentials" in error["message"]
    assert b"FQoG" not in mapped and b"Canonical" not in mapped


def test_an_error_body_that_is_not_json_gets_a_message_of_its_own() -> None:
    status, mapped = translate_error(500, b"<html>oops</html>", None)
    assert status == 502
    assert orjson.loads(mapped)["error"]["message"] == "the provider answered HTTP 500"
