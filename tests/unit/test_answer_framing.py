"""An answer is read by its own framing, not by what the client asked for.

A provider, or a proxy in front of one, may stream a request that did not ask (an
OpenAI-compatible server that streams regardless), or answer a stream in one JSON
object. Each test plays one request through the processor (real ext_proc messages):
the provider's 1000 prompt and 2000 completion tokens are what the log line charges,
whichever way the answer came, and the client gets the provider's bytes as they came.
The lean path, whose response headers never reach the gateway, tells the framing from
the answer's first bytes.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from google.protobuf import struct_pb2

from extproc.headers import BODY_HINTS_NAMESPACE
from extproc.processor import ATTRIBUTES_KEY, Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.mock_vertex import mock_vertex
from tests.unit.test_gemini_route import gemini_config

OPENAI_KEY = {"authorization": "Bearer team1-key"}
ANTHROPIC_KEY = {"x-api-key": "team1-key"}
GOOGLE_KEY = {"x-goog-api-key": "team1-key"}
SSE = {"content-type": "text/event-stream", "x-envoy-upstream-service-time": "3"}
JSON = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
BILLED = (1000, 2000)


def events(*data: Any, names: tuple[str, ...] = ()) -> bytes:
    """An event stream of these JSON payloads (each named, when ``names`` are given)."""
    out = b""
    for i, payload in enumerate(data):
        if names:
            out += b"event: " + names[i].encode() + b"\n"
        out += b"data: " + (payload if isinstance(payload, bytes) else orjson.dumps(payload))
        out += b"\n\n"
    return out


OPENAI_USAGE = {"prompt_tokens": 1000, "completion_tokens": 2000, "total_tokens": 3000}
CHAT_USAGE_CHUNK = events(
    {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": OPENAI_USAGE}
)
CHAT_STREAM = (
    events(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": "Hello there"}, "finish_reason": None}],
        }
    )
    + CHAT_USAGE_CHUNK
    + events(b"[DONE]")
)
CHAT_JSON = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}}],
        "usage": OPENAI_USAGE,
    }
)
COMPLETIONS_STREAM = events(
    {
        "id": "t1",
        "object": "text_completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "text": "Hello there", "finish_reason": None}],
    },
    {"id": "t1", "object": "text_completion", "choices": [], "usage": OPENAI_USAGE},
    b"[DONE]",
)
COMPLETIONS_JSON = orjson.dumps(
    {
        "id": "t1",
        "object": "text_completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "text": "Hello there", "finish_reason": "stop"}],
        "usage": OPENAI_USAGE,
    }
)
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "model": "gpt-4o-mini",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello there"}],
        }
    ],
    "usage": {"input_tokens": 1000, "output_tokens": 2000, "total_tokens": 3000},
}
RESPONSES_STREAM = events(
    {"type": "response.created", "response": {**RESPONSE, "status": "in_progress", "usage": None}},
    {"type": "response.output_text.delta", "delta": "Hello there"},
    {"type": "response.completed", "response": RESPONSE},
    names=("response.created", "response.output_text.delta", "response.completed"),
)
RESPONSES_JSON = orjson.dumps(RESPONSE)
MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-latest",
    "content": [{"type": "text", "text": "Hello there"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 1000, "output_tokens": 2000},
}
MESSAGES_STREAM = events(
    {
        "type": "message_start",
        "message": {**MESSAGE, "content": [], "usage": {"input_tokens": 1000, "output_tokens": 1}},
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hello there"},
    },
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 2000},
    },
    {"type": "message_stop"},
    names=(
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ),
)
MESSAGES_JSON = orjson.dumps(MESSAGE)
GEMINI = {
    "candidates": [
        {"content": {"role": "model", "parts": [{"text": "Hello there"}]}, "finishReason": "STOP"}
    ],
    "usageMetadata": {
        "promptTokenCount": 1000,
        "candidatesTokenCount": 2000,
        "totalTokenCount": 3000,
    },
    "modelVersion": "gemini-2.5-flash",
}
GEMINI_STREAM = events(GEMINI)
GEMINI_JSON = orjson.dumps(GEMINI)
USER = [{"role": "user", "content": "Say hello, please."}]


@dataclass(frozen=True)
class Api:
    """One client API passed through: where its request goes, and its answer both ways."""

    name: str
    path: str  # the non-streamed request's (Gemini's streamed one is another operation)
    key: dict[str, str]
    body: dict[str, Any]
    stream: bytes
    whole: bytes
    streamed_path: str | None = None

    def request(self, streamed: bool) -> tuple[str, bytes]:
        body = {**self.body, "stream": True} if streamed and not self.streamed_path else self.body
        path = self.streamed_path if streamed and self.streamed_path else self.path
        return path, orjson.dumps(body)


CHAT = Api(
    "chat",
    "/v1/chat/completions",
    OPENAI_KEY,
    {"model": "gpt-4o-mini", "messages": USER},
    CHAT_STREAM,
    CHAT_JSON,
)
OPENAI_APIS = [
    CHAT,
    Api(
        "completions",
        "/v1/completions",
        OPENAI_KEY,
        {"model": "gpt-4o-mini", "prompt": "Say hello, please."},
        COMPLETIONS_STREAM,
        COMPLETIONS_JSON,
    ),
    Api(
        "responses",
        "/v1/responses",
        OPENAI_KEY,
        {"model": "gpt-4o-mini", "input": "Say hello, please."},
        RESPONSES_STREAM,
        RESPONSES_JSON,
    ),
    Api(
        "messages",
        "/v1/messages",
        ANTHROPIC_KEY,
        {"model": "claude-3-5-haiku-latest", "max_tokens": 100, "messages": USER},
        MESSAGES_STREAM,
        MESSAGES_JSON,
    ),
]
GEMINI_API = Api(
    "gemini",
    "/v1beta/models/gemini-2.5-flash:generateContent",
    GOOGLE_KEY,
    {"contents": [{"role": "user", "parts": [{"text": "Say hello, please."}]}]},
    GEMINI_STREAM,
    GEMINI_JSON,
    streamed_path="/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
)


@dataclass(frozen=True)
class Played:
    line: dict[str, Any]
    client: bytes  # what the client got of the answer
    body_mode: int | None  # the response body mode the response headers' answer set


async def play(
    processor: Processor, services: Services, api: Api, *, asked: bool, answer: bytes, sse: bool
) -> Played:
    """The full path: the provider's answer with its headers, then its body in two chunks."""
    path, body = api.request(asked)
    cut = len(answer) // 2
    chunks = [answer[:cut], answer[cut:]]
    answers = await run_stream(
        processor,
        [
            request_headers(path, headers=api.key),
            request_body(body),
            response_headers(200, SSE if sse else JSON),
            response_body(chunks[0], end_of_stream=False),
            response_body(chunks[1], end_of_stream=True),
        ],
    )
    headers_answer = next(a for a in answers if a.WhichOneof("response") == "response_headers")
    mode = headers_answer.mode_override.response_body_mode if headers_answer.mode_override else None
    line = services.access_log.lines()[-1]  # type: ignore[attr-defined]
    return Played(line, client_body(chunks, answers), mode or None)


def billed(line: dict[str, Any]) -> tuple[int, int]:
    return line["prompt_tokens"], line["completion_tokens"]


@pytest.mark.parametrize("api", OPENAI_APIS, ids=lambda api: api.name)
async def test_a_stream_answering_a_request_that_did_not_ask_is_read_as_a_stream(
    services: Services, processor: Processor, api: Api
) -> None:
    played = await play(processor, services, api, asked=False, answer=api.stream, sse=True)

    line = played.line
    assert billed(line) == BILLED
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert (line["http_status_code"], line["outcome"]) == (200, "completed")
    # Streamed to the client as it comes, the usage chunk the provider sent unasked and all
    # (the gateway asked for none: the client gets the provider's bytes).
    assert played.body_mode == ProcessingMode.STREAMED
    assert played.client == api.stream
    assert line["stream"] is False  # what the client asked for


@pytest.mark.parametrize("api", OPENAI_APIS, ids=lambda api: api.name)
async def test_json_answering_a_stream_is_still_read_as_json(
    services: Services, processor: Processor, api: Api
) -> None:
    played = await play(processor, services, api, asked=True, answer=api.whole, sse=False)

    assert billed(played.line) == BILLED
    assert played.line["usage_estimated"] is False
    assert played.body_mode is None  # buffered: one JSON object
    assert played.client == api.whole
    assert played.line["stream"] is True


async def test_an_unasked_stream_without_a_usage_chunk_is_charged_a_streams_estimate(
    services: Services, processor: Processor
) -> None:
    without_usage = CHAT_STREAM.replace(CHAT_USAGE_CHUNK, b"")
    played = await play(processor, services, CHAT, asked=False, answer=without_usage, sse=True)

    line = played.line
    assert line["usage_estimated"] is True
    # The prompt's estimate, and the text it streamed (11 characters: 3 tokens), not the
    # prompt alone and nothing generated.
    assert line["prompt_tokens"] > 0
    assert line["completion_tokens"] == 3
    assert played.client == without_usage


async def test_a_translated_model_streaming_unasked_is_translated_as_a_stream(
    services: Services, processor: Processor
) -> None:
    # OpenAI's chat to Claude: the provider's stream, in OpenAI's chunks, charged its count
    # (read as one JSON message it was a 502 charged nothing).
    claude = Api(
        "chat-to-claude",
        "/v1/chat/completions",
        OPENAI_KEY,
        {"model": "claude-3-5-haiku-latest", "messages": USER},
        MESSAGES_STREAM,
        MESSAGES_JSON,
    )
    played = await play(processor, services, claude, asked=False, answer=MESSAGES_STREAM, sse=True)

    assert billed(played.line) == BILLED
    assert (played.line["http_status_code"], played.line["usage_estimated"]) == (200, False)
    assert played.body_mode == ProcessingMode.STREAMED
    chunks = [
        orjson.loads(line[6:]) for line in played.client.splitlines() if line.startswith(b"data: {")
    ]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello there"
    assert played.client.endswith(b"data: [DONE]\n\n")


# --- the lean path ----------------------------------------------------------------------


def hinted_headers(path: str, key: dict[str, str], hints: dict[str, Any]) -> Any:
    """Request headers with the body hints Envoy's json_to_metadata filter forwards."""
    message = request_headers(path, headers=key)
    message.metadata_context.filter_metadata[BODY_HINTS_NAMESPACE].update(hints)
    return message


def whole_answer(chunk: bytes) -> Any:
    """The one BUFFERED message of the lean path, with the status Envoy sends with it."""
    message = response_body(chunk, end_of_stream=True)
    attributes = struct_pb2.Struct()
    attributes.update({"response.code": 200, "response.code_details": "via_upstream"})
    message.attributes[ATTRIBUTES_KEY].CopyFrom(attributes)
    return message


@pytest.mark.parametrize("api", [OPENAI_APIS[0], OPENAI_APIS[3]], ids=lambda api: api.name)
async def test_on_the_lean_path_an_unasked_stream_is_told_by_its_first_bytes(
    services: Services, processor: Processor, api: Api
) -> None:
    path, body = api.request(streamed=False)
    answers = await run_stream(
        processor,
        [
            hinted_headers(path, api.key, {"model": api.body["model"], "stream": False}),
            request_body(body),
            whole_answer(api.stream),
        ],
    )

    mode = answers[0].mode_override
    assert mode.response_header_mode == ProcessingMode.SKIP
    assert mode.response_body_mode == ProcessingMode.BUFFERED  # Envoy's reading: no stream
    line = services.access_log.lines()[-1]  # type: ignore[attr-defined]
    assert billed(line) == BILLED
    assert (line["usage_estimated"], line["outcome"]) == (False, "completed")
    assert client_body([api.stream], answers) == api.stream


# --- Gemini's API, on Vertex ------------------------------------------------------------


@pytest.fixture
async def gemini(tmp_path: Path) -> AsyncIterator[tuple[Processor, Services]]:
    key_file = tmp_path / "key.json"
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    async with mock_vertex(key_file) as mock:
        runtime = Runtime(gemini_config(key_file, mock, {}), services)
        await runtime.start()
        yield Processor(lambda: runtime, default_stages()), services
        await runtime.close()


async def test_gemini_is_read_by_its_answers_framing_both_ways(
    gemini: tuple[Processor, Services],
) -> None:
    processor, services = gemini
    unasked = await play(
        processor, services, GEMINI_API, asked=False, answer=GEMINI_STREAM, sse=True
    )
    assert billed(unasked.line) == BILLED
    assert unasked.line["usage_estimated"] is False
    assert unasked.client == GEMINI_STREAM

    whole = await play(processor, services, GEMINI_API, asked=True, answer=GEMINI_JSON, sse=False)
    assert billed(whole.line) == BILLED
    assert whole.client == GEMINI_JSON


async def test_on_the_lean_path_a_compressed_unasked_stream_is_told_by_its_decoded_bytes(
    services: Services, processor: Processor
) -> None:
    # A provider (or a proxy) that compresses although asked for no encoding, and streams.
    answer = gzip.compress(CHAT_STREAM)
    path, body = CHAT.request(streamed=False)
    answers = await run_stream(
        processor,
        [
            hinted_headers(path, CHAT.key, {"model": "gpt-4o-mini", "stream": False}),
            request_body(body),
            whole_answer(answer),
        ],
    )

    line = services.access_log.lines()[-1]  # type: ignore[attr-defined]
    assert billed(line) == BILLED
    assert line["usage_estimated"] is False
    # The headers left naming gzip: the client gets the stream in it, as it came.
    assert gzip.decompress(client_body([answer], answers)) == CHAT_STREAM
