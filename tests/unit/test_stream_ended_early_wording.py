"""A stream its provider ends early reads the same, in each client API's shape, whatever
the translation.

Two translations worded the cut their own way: Claude on Bedrock for Anthropic clients
("the provider's event stream ended before the answer did", and logged with the code
``api_error``, read back from the error event the gateway itself wrote) and OpenAI chat
clients with Bedrock behind it ("... ended before the answer was complete"). Every other
said "the provider's stream ended before it was complete", code
``invalid_upstream_response``. An operator searching the logs for cut streams by code,
or a client matching the message, missed those two. Now every translation says the same,
in its API's error shape, and logs the same type and code.

Each case feeds its translator a stream that began and then ended cleanly before its
last event (a proxy closing a cut stream as if whole), and reads what the client gets.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer

from extproc.aws_eventstream import encode_event
from extproc.translators import (
    anthropic_anthropic,
    anthropic_bedrock,
    bedrock_bedrock,
    bedrock_invoke,
    gemini_gemini,
    openai_anthropic,
    openai_bedrock,
    openai_completions,
    openai_openai,
    openai_responses,
)
from extproc.translators.base import stream_failure

ENDED_EARLY = "the provider's stream ended before it was complete"

CLAUDE_START = {"type": "message_start", "message": {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude", "content": [],
    "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1}}}  # fmt: skip
CLAUDE_TEXT = {"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": "Once upon"}}  # fmt: skip


def sse(payload: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def claude_chunk(event: dict[str, Any]) -> bytes:
    """Claude's event in an InvokeModelWithResponseStream chunk frame."""
    encoded = base64.b64encode(orjson.dumps(event)).decode()
    return encode_event("chunk", orjson.dumps({"bytes": encoded}))


CLAUDE_SSE = sse(CLAUDE_START, "message_start") + sse(CLAUDE_TEXT, "content_block_delta")
CLAUDE_FRAMES = claude_chunk(CLAUDE_START) + claude_chunk(CLAUDE_TEXT)
CONVERSE_FRAMES = encode_event("messageStart", b'{"role":"assistant"}') + encode_event(
    "contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"Once upon"}}'
)
OPENAI_CHUNK = sse({"id": "c1", "object": "chat.completion.chunk", "model": "gpt",
                    "choices": [{"index": 0, "delta": {"content": "Once upon"}}]})  # fmt: skip
COMPLETION_CHUNK = sse(
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "gpt",
        "choices": [{"text": "Once upon", "index": 0, "finish_reason": None}],
    }
)
RESPONSES_BEGUN = sse(
    {"type": "response.created", "sequence_number": 0,
     "response": {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}},
    "response.created",
) + sse({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "m1",
         "output_index": 0, "content_index": 0, "delta": "Once upon"},
        "response.output_text.delta")  # fmt: skip
GEMINI_BEGUN = sse({"candidates": [{"content": {"role": "model", "parts": [{"text": "Once"}]},
                                    "index": 0}],
                    "usageMetadata": {"promptTokenCount": 12}})  # fmt: skip


def last_sse_data(out: bytes) -> Any:
    datas = [line[6:] for line in out.split(b"\n") if line.startswith(b"data: ")]
    return orjson.loads(next(d for d in reversed(datas) if d != b"[DONE]"))


def openai_error(out: bytes) -> tuple[str, str, str]:
    error = last_sse_data(out)["error"]
    return error["message"], error["type"], error["code"]


def anthropic_error(out: bytes) -> tuple[str, str, str]:
    body = last_sse_data(out)
    return body["error"]["message"], body["type"], body["error"]["type"]


def responses_error(out: bytes) -> tuple[str, str, str]:
    body = last_sse_data(out)
    return body["message"], body["type"], body["code"]


def bedrock_error(out: bytes) -> tuple[str, str, str]:
    frames = EventStreamBuffer()
    frames.add_data(out)
    *_, last = list(frames)
    kind, name = last.headers[":message-type"], last.headers[":exception-type"]
    return orjson.loads(last.payload)["message"], kind, name


def google_error(out: bytes) -> tuple[str, str, str]:
    error = last_sse_data(out)["error"]
    return error["message"], str(error["code"]), error["status"]


# Per client API shape: the translator, the stream it gets, how its client reads the error,
# and what that error's type fields say (the message is the same for all).
CASES: list[Any] = [
    pytest.param(lambda: openai_openai.ChunkStreamReader(hide_usage_chunk=True), OPENAI_CHUNK,
                 openai_error, ("upstream_error", "invalid_upstream_response"),
                 id="openai-client-openai"),
    pytest.param(lambda: openai_anthropic.StreamTranslator(include_usage=False, request_id="r",
                                                           created=0), CLAUDE_SSE,
                 openai_error, ("upstream_error", "invalid_upstream_response"),
                 id="openai-client-anthropic"),
    pytest.param(lambda: openai_bedrock.StreamTranslator(model="m", include_usage=False,
                                                         request_id="r", created=0),
                 CONVERSE_FRAMES, openai_error, ("upstream_error", "invalid_upstream_response"),
                 id="openai-client-bedrock"),
    pytest.param(lambda: openai_completions.response_reader(streaming=True, hide_usage=True,
                                                            choices=1),
                 COMPLETION_CHUNK, openai_error, ("upstream_error", "invalid_upstream_response"),
                 id="openai-completions-client"),
    pytest.param(openai_responses.EventStreamReader, RESPONSES_BEGUN, responses_error,
                 ("error", "invalid_upstream_response"), id="responses-client"),
    pytest.param(anthropic_anthropic.EventStreamReader, CLAUDE_SSE, anthropic_error,
                 ("error", "api_error"), id="anthropic-client-anthropic"),
    pytest.param(anthropic_bedrock.StreamTranslator, CLAUDE_FRAMES, anthropic_error,
                 ("error", "api_error"), id="anthropic-client-bedrock"),
    pytest.param(bedrock_bedrock.ConverseStreamReader, CONVERSE_FRAMES, bedrock_error,
                 ("exception", "internalServerException"), id="bedrock-client-converse"),
    pytest.param(bedrock_invoke.InvokeStreamReader, CLAUDE_FRAMES, bedrock_error,
                 ("exception", "internalServerException"), id="bedrock-client-invoke-claude"),
    pytest.param(gemini_gemini.StreamReader, GEMINI_BEGUN, google_error, ("502", "UNAVAILABLE"),
                 id="gemini-client"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "stream", "read", "kind"), CASES)
def test_every_translation_words_a_stream_ended_early_the_same(
    make: Callable[[], Any],
    stream: bytes,
    read: Callable[[bytes], tuple[str, str, str]],
    kind: tuple[str, str],
) -> None:
    translator = make()
    out = translator.feed(stream, False)
    sent = out if out is not None else stream
    end = translator.feed(b"", True)
    received = sent + (end or b"")
    message, *shown = read(received)
    assert (message, tuple(shown)) == (ENDED_EARLY, kind), received[-300:]
    # The log line names the cut alike whichever API the client spoke.
    failure = stream_failure(translator)
    assert failure is not None
    error = failure.error
    assert (error.message, error.error_type, error.code) == (
        ENDED_EARLY,
        "upstream_error",
        "invalid_upstream_response",
    )


UNDECODABLE = "the provider's event stream could not be decoded"


def broken(frame: bytes) -> bytes:
    """The frame with its message checksum wrong: what a body cut and spliced looks like."""
    damaged = bytearray(frame)
    damaged[-1] ^= 0xFF
    return bytes(damaged)


@pytest.mark.parametrize(
    ("make", "stream"),
    [
        pytest.param(lambda: openai_bedrock.StreamTranslator(model="m", include_usage=False,
                                                             request_id="r", created=0),
                     CONVERSE_FRAMES + broken(CONVERSE_FRAMES), id="openai-client-bedrock"),
        pytest.param(anthropic_bedrock.StreamTranslator, CLAUDE_FRAMES + broken(CLAUDE_FRAMES),
                     id="anthropic-client-bedrock"),
        pytest.param(bedrock_bedrock.ConverseStreamReader,
                     CONVERSE_FRAMES + broken(CONVERSE_FRAMES), id="bedrock-client-converse"),
        pytest.param(bedrock_invoke.InvokeStreamReader, CLAUDE_FRAMES + broken(CLAUDE_FRAMES),
                     id="bedrock-client-invoke-claude"),
    ],
)  # fmt: skip
def test_every_translation_logs_a_frame_it_cannot_decode_alike(
    make: Callable[[], Any], stream: bytes
) -> None:
    # Before: api_error for Anthropic and Bedrock clients of Claude, no code for Converse.
    translator = make()
    translator.feed(stream, False)
    translator.feed(b"", True)
    failure = stream_failure(translator)
    assert failure is not None
    error = failure.error
    assert (error.message, error.error_type, error.code) == (
        UNDECODABLE,
        "upstream_error",
        "invalid_upstream_response",
    )
