"""What each stream translator records when its provider fails mid-stream (base.StreamFailure).

The processor-level behaviour (log line, metrics) is in ``test_midstream_errors``; these
check the counts each translator keeps and that a merely cut stream is no provider failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import orjson

from extproc.aws_eventstream import encode_event, encode_exception
from extproc.translators import anthropic_anthropic, openai_anthropic, openai_bedrock, openai_openai
from extproc.translators.base import MAX_PROVIDER_MESSAGE, stream_failure

# Anthropic's own stream: message_start (25 input tokens), "Once upon", overloaded_error.
ANTHROPIC_STREAM = Path(
    "tests/fixtures/openai_anthropic/streams/overloaded_mid_stream.anthropic.txt"
).read_bytes()


def sse(payload: Mapping[str, object], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def test_the_anthropic_translator_keeps_message_start_counts() -> None:
    translator = openai_anthropic.StreamTranslator(include_usage=False, request_id="r", created=0)
    translator.feed(ANTHROPIC_STREAM, True)
    failure = stream_failure(translator)
    assert failure is not None
    assert (failure.error.code, failure.error.message) == ("upstream_overloaded", "Overloaded")
    # message_start's output count (1) is a placeholder, not a report.
    assert (failure.prompt_tokens, failure.completion_tokens) == (25, None)
    assert translator.usage is None


def test_cache_reads_and_a_message_delta_before_the_error_are_kept() -> None:
    start = {
        "type": "message_start",
        "message": {
            "model": "claude",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1},
        },
    }
    delta = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 7}}
    error = {"type": "error", "error": {"type": "api_error", "message": "Internal"}}
    stream = sse(start, "message_start") + sse(delta, "message_delta") + sse(error, "error")
    for translator in (
        openai_anthropic.StreamTranslator(include_usage=True, request_id="r", created=0),
        anthropic_anthropic.EventStreamReader(),
    ):
        translator.feed(stream, True)
        failure = stream_failure(translator)
        assert failure is not None
        assert (failure.prompt_tokens, failure.cached_tokens, failure.completion_tokens) == (
            100,
            90,
            7,
        )
        assert failure.error.error_type == "upstream_error"
        assert translator.usage is None


def test_the_passthrough_reader_names_an_overload_as_the_openai_translator_does() -> None:
    reader = anthropic_anthropic.EventStreamReader()
    data = ANTHROPIC_STREAM
    # Cut anywhere: the error event is read (and sent) once it is whole.
    first = reader.feed(data[:-30], False)
    assert first is not None and data.startswith(first) and b"event: error" not in first
    assert stream_failure(reader) is None
    assert first + (reader.feed(data[-30:], True) or data[-30:]) == data
    failure = stream_failure(reader)
    assert failure is not None and failure.error.code == "upstream_overloaded"
    assert failure.prompt_tokens == 25


def test_text_that_mentions_an_error_is_no_failure() -> None:
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": '{"type":"error","error":{"message":"x"}}'},
    }
    reader = anthropic_anthropic.EventStreamReader()
    reader.feed(sse(delta, "content_block_delta"), False)
    assert stream_failure(reader) is None
    chunk = {"choices": [{"index": 0, "delta": {"content": '{"error": {"message": "x"}}'}}]}
    openai = openai_openai.ChunkStreamReader(hide_usage_chunk=True)
    openai.feed(sse(chunk), False)
    assert stream_failure(openai) is None


def test_an_openai_error_event_is_recorded_and_still_reaches_the_client() -> None:
    reader = openai_openai.ChunkStreamReader(hide_usage_chunk=True)
    error = {"error": {"message": "m" * 5000, "type": "server_error", "param": None, "code": 500}}
    sent = reader.feed(sse(error), True)
    assert sent in (None, sse(error))  # kept, whether or not the reader rewrote the chunk
    failure = stream_failure(reader)
    assert failure is not None
    assert (failure.error.error_type, failure.error.code) == ("server_error", "500")
    assert len(failure.error.message) == MAX_PROVIDER_MESSAGE
    assert failure.prompt_tokens is None and failure.completion_tokens is None


def test_a_bedrock_exception_is_recorded_with_its_aws_name() -> None:
    translator = openai_bedrock.StreamTranslator(
        model="m", include_usage=False, request_id="r", created=0
    )
    exception = encode_exception("throttlingException", b'{"message":"Too many tokens"}')
    translator.feed(encode_event("messageStart", b'{"role":"assistant"}') + exception, True)
    failure = stream_failure(translator)
    assert failure is not None
    assert (failure.error.error_type, failure.error.code) == (
        "rate_limit_error",
        "ThrottlingException",
    )
    assert failure.error.message == "Too many tokens"


def test_a_stream_that_ends_before_its_end_event_is_a_failed_stream() -> None:
    # The provider closed the stream before its last event: the client was shown an error
    # chunk, so the request is logged as the failure it got, not as completed.
    translator = openai_bedrock.StreamTranslator(
        model="m", include_usage=False, request_id="r", created=0
    )
    shown = translator.feed(encode_event("messageStart", b'{"role":"assistant"}'), True)
    failure = stream_failure(translator)
    assert failure is not None and failure.error is not None
    assert failure.error.code == "invalid_upstream_response"
    assert b"the provider's stream ended before it was complete" in shown
    anthropic = openai_anthropic.StreamTranslator(include_usage=False, request_id="r", created=0)
    anthropic.feed(ANTHROPIC_STREAM.split(b"event: error")[0], True)
    failure = stream_failure(anthropic)
    assert failure is not None and failure.error is not None
    assert failure.error.code == "invalid_upstream_response"
