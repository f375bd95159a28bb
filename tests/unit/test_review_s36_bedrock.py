"""Review s36: Bedrock answers' accounting, end to end through the real processor.

Each test plays one request (Converse, ConverseStream, InvokeModel, InvokeModel's stream,
or an OpenAI chat client translated to Converse) and answers it as Bedrock would, in
AWS's binary event stream where it streams, cut into chunks anywhere. What the user sees
is checked: the request's log line (its tokens, cache counts, estimate flag, error) and
the bytes the client reads.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.aws_eventstream import encode_event, encode_exception
from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
)
from tests.unit.conftest import MemoryLog

AUTH = {"authorization": "Bearer team1-key"}
FROM_PROVIDER = {"x-envoy-upstream-service-time": "3"}
EVENT_STREAM = {"content-type": "application/vnd.amazon.eventstream", **FROM_PROVIDER}
JSON = {"content-type": "application/json", **FROM_PROVIDER}
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
LLAMA = "meta.llama3-8b-instruct-v1:0"
MODEL = f"/model/{quote(HAIKU, safe='')}"
LLAMA_MODEL = f"/model/{quote(LLAMA, safe='')}"
PROMPT = "x" * 400  # 100 tokens at four characters a token
CONVERSE_BODY = orjson.dumps(
    {
        "messages": [{"role": "user", "content": [{"text": PROMPT}]}],
        "inferenceConfig": {"maxTokens": 50},
    }
)
CLAUDE_BODY = orjson.dumps(
    {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": PROMPT}],
    }
)
LLAMA_BODY = orjson.dumps({"prompt": PROMPT, "max_gen_len": 50})
USAGE = {
    "inputTokens": 11,
    "outputTokens": 7,
    "totalTokens": 1018,
    "cacheReadInputTokens": 600,
    "cacheWriteInputTokens": 400,
}


def chat(stream: bool, **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "model": HAIKU,
            "stream": stream,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": PROMPT}],
            **extra,
        }
    )


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return encode_event(kind, orjson.dumps(payload))


def text(words: str, index: int = 0) -> bytes:
    return event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": words}})


def converse_stream(usage: dict[str, Any] | None = USAGE, words: str = "abcdefgh") -> bytes:
    frames = [
        event("messageStart", {"role": "assistant"}),
        text(words),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
    ]
    if usage is not None:
        frames.append(event("metadata", {"usage": usage, "metrics": {"latencyMs": 5}}))
    return b"".join(frames)


def chunk_frame(payload: dict[str, Any]) -> bytes:
    encoded = base64.b64encode(orjson.dumps(payload)).decode()
    return encode_event("chunk", orjson.dumps({"bytes": encoded}))


def claude_events(*, stop: bool = True) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": HAIKU,
                "content": [],
                "usage": {
                    "input_tokens": 11,
                    "output_tokens": 1,
                    "cache_read_input_tokens": 600,
                    "cache_creation_input_tokens": 400,
                },
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "abcdefgh"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 7}},
    ]  # fmt: skip
    if stop:
        metrics = {
            "inputTokenCount": 11,
            "outputTokenCount": 7,
            "cacheReadInputTokenCount": 600,
            "cacheWriteInputTokenCount": 400,
            "invocationLatency": 40,
            "firstByteLatency": 10,
        }
        events.append({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics})
    return events


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


@pytest.fixture
def services() -> Services:
    return Services(metrics=GatewayMetrics(), access_log=MemoryLog())


@pytest.fixture
async def gateway(services: Services) -> AsyncIterator[Processor]:
    """The default config's processor, its runtime started so AWS credentials load."""
    runtime = Runtime(parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {}), services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


async def play(
    gateway: Processor,
    path: str,
    body: bytes,
    chunks: Sequence[bytes],
    *,
    headers: dict[str, str] = EVENT_STREAM,
    status: int = 200,
    ended: bool = True,
) -> bytes:
    """The request answered with ``chunks``; ``ended``: Envoy's end of stream comes with
    the last one (else the client hung up after it). What the client read."""

    async def messages_in() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(path, headers=AUTH)
        yield request_body(body)
        yield response_headers(status, headers)
        last = len(chunks) - 1
        for index, chunk in enumerate(chunks):
            yield response_body(chunk, end_of_stream=ended and index == last)

    answers = [answer async for answer in gateway.process(messages_in())]
    assert not any(a.HasField("immediate_response") for a in answers)
    return client_body(chunks, answers)


def line_of(services: Services) -> dict[str, Any]:
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line


def tokens(line: dict[str, Any]) -> tuple[int, int, int, int, bool]:
    return (
        line["prompt_tokens"],
        line["completion_tokens"],
        line["cached_tokens"],
        line["cache_write_tokens"],
        line["usage_estimated"],
    )


REPORTED = (1011, 7, 600, 400, False)


# --- ConverseStream --------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 7, 64, 100_000])
async def test_converse_stream_split_anywhere_logs_metadatas_usage_with_cache(
    gateway: Processor, services: Services, size: int
) -> None:
    stream = converse_stream()
    shown = await play(gateway, MODEL + "/converse-stream", CONVERSE_BODY, pieces(stream, size))
    assert shown == stream
    assert tokens(line_of(services)) == REPORTED


async def test_converse_stream_cut_before_metadata_is_charged_the_estimate(
    gateway: Processor, services: Services
) -> None:
    # The client hangs up after the text: no metadata, no end of stream.
    stream = converse_stream(usage=None, words="a" * 40)
    await play(gateway, MODEL + "/converse-stream", CONVERSE_BODY, pieces(stream, 5), ended=False)
    line = line_of(services)
    # The prompt estimate (100 tokens of text and 4 of the message's overhead) and 40
    # characters of text.
    assert tokens(line) == (104, 10, 0, 0, True)
    assert line["cost_usd"] > 0


async def test_converse_stream_exception_frame_is_charged_the_estimate_and_named(
    gateway: Processor, services: Services
) -> None:
    stream = converse_stream(usage=None, words="a" * 40)[
        : -len(event("messageStop", {"stopReason": "end_turn"}))
    ]
    stream += encode_exception("throttlingException", b'{"message":"slow down"}')
    await play(gateway, MODEL + "/converse-stream", CONVERSE_BODY, pieces(stream, 9))
    line = line_of(services)
    assert tokens(line) == (104, 10, 0, 0, True)
    assert line["error_code"] == "ThrottlingException"


async def test_converse_answer_logs_its_usage_with_cache(
    gateway: Processor, services: Services
) -> None:
    answer = orjson.dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
            "stopReason": "end_turn",
            "usage": USAGE,
            "metrics": {"latencyMs": 4},
        }
    )
    shown = await play(
        gateway, MODEL + "/converse", CONVERSE_BODY, pieces(answer, 50), headers=JSON
    )
    assert shown == answer
    assert tokens(line_of(services)) == REPORTED


# --- OpenAI chat clients of Bedrock -----------------------------------------------------


def sse_chunks(shown: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in shown.split(b"\n") if line.startswith(b"data: {")]


@pytest.mark.parametrize("size", [1, 5, 100_000])
async def test_openai_stream_usage_chunk_agrees_with_the_log_line(
    gateway: Processor, services: Services, size: int
) -> None:
    body = chat(True, stream_options={"include_usage": True})
    shown = await play(gateway, "/v1/chat/completions", body, pieces(converse_stream(), size))
    [usage] = [c["usage"] for c in sse_chunks(shown) if c.get("usage")]
    line = line_of(services)
    assert tokens(line) == REPORTED
    assert usage["prompt_tokens"] == line["prompt_tokens"]
    assert usage["completion_tokens"] == line["completion_tokens"]
    assert usage["total_tokens"] == line["prompt_tokens"] + line["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == line["cached_tokens"]
    assert shown.endswith(b"data: [DONE]\n\n")


async def test_openai_answer_usage_agrees_with_the_log_line(
    gateway: Processor, services: Services
) -> None:
    answer = orjson.dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
            "stopReason": "end_turn",
            "usage": USAGE,
        }
    )
    shown = await play(gateway, "/v1/chat/completions", chat(False), [answer], headers=JSON)
    usage = orjson.loads(shown)["usage"]
    line = line_of(services)
    assert tokens(line) == REPORTED
    assert usage["prompt_tokens"] == line["prompt_tokens"]
    assert usage["completion_tokens"] == line["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == line["cached_tokens"]


async def test_openai_stream_cut_before_metadata_is_charged_the_estimate(
    gateway: Processor, services: Services
) -> None:
    stream = converse_stream(usage=None, words="a" * 40)
    await play(gateway, "/v1/chat/completions", chat(True), pieces(stream, 5), ended=False)
    assert tokens(line_of(services))[1:] == (10, 0, 0, True)


async def test_openai_stream_exception_frame_is_charged_the_estimate_and_named(
    gateway: Processor, services: Services
) -> None:
    stream = b"".join(
        [
            event("messageStart", {"role": "assistant"}),
            text("a" * 40),
            encode_exception("modelStreamErrorException", b'{"message":"boom"}'),
        ]
    )
    shown = await play(gateway, "/v1/chat/completions", chat(True), pieces(stream, 3))
    line = line_of(services)
    assert tokens(line)[1:] == (10, 0, 0, True)
    assert line["error_code"] == "ModelStreamErrorException"
    assert b"boom" in shown


# --- InvokeModel -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 7, 100_000])
async def test_claude_invoke_stream_split_anywhere_logs_its_usage_with_cache(
    gateway: Processor, services: Services, size: int
) -> None:
    stream = b"".join(chunk_frame(e) for e in claude_events())
    path = MODEL + "/invoke-with-response-stream"
    shown = await play(gateway, path, CLAUDE_BODY, pieces(stream, size))
    assert shown == stream
    assert tokens(line_of(services)) == REPORTED


async def test_claude_invoke_stream_exception_keeps_the_reported_prompt(
    gateway: Processor, services: Services
) -> None:
    events = claude_events(stop=False)[:3]
    stream = b"".join(chunk_frame(e) for e in events)
    stream += encode_exception("modelStreamErrorException", b'{"message":"boom"}')
    await play(gateway, MODEL + "/invoke-with-response-stream", CLAUDE_BODY, pieces(stream, 11))
    line = line_of(services)
    assert tokens(line) == (1011, 2, 600, 400, True)
    assert line["error_code"] == "ModelStreamErrorException"


LLAMA_EVENTS = [
    {"generation": "a" * 20, "prompt_token_count": 9, "generation_token_count": 3,
     "stop_reason": None},
    {"generation": "b" * 20, "prompt_token_count": None, "generation_token_count": 6,
     "stop_reason": "stop", "amazon-bedrock-invocationMetrics": {
         "inputTokenCount": 9, "outputTokenCount": 6, "cacheReadInputTokenCount": 600,
         "cacheWriteInputTokenCount": 400, "invocationLatency": 30, "firstByteLatency": 10}},
]  # fmt: skip


@pytest.mark.parametrize("size", [1, 13, 100_000])
async def test_llama_invoke_stream_is_billed_by_its_metrics_with_cache(
    gateway: Processor, services: Services, size: int
) -> None:
    stream = b"".join(chunk_frame(e) for e in LLAMA_EVENTS)
    path = LLAMA_MODEL + "/invoke-with-response-stream"
    shown = await play(gateway, path, LLAMA_BODY, pieces(stream, size))
    assert shown == stream
    assert tokens(line_of(services)) == (1009, 6, 600, 400, False)


async def test_llama_invoke_stream_cut_keeps_the_prompt_it_reported(
    gateway: Processor, services: Services
) -> None:
    stream = chunk_frame(LLAMA_EVENTS[0])
    path = LLAMA_MODEL + "/invoke-with-response-stream"
    await play(gateway, path, LLAMA_BODY, pieces(stream, 10), ended=False)
    assert tokens(line_of(services)) == (9, 5, 0, 0, True)


async def test_llama_invoke_stream_exception_keeps_the_prompt_it_reported(
    gateway: Processor, services: Services
) -> None:
    stream = chunk_frame(LLAMA_EVENTS[0]) + encode_exception(
        "throttlingException", b'{"message":"slow"}'
    )
    path = LLAMA_MODEL + "/invoke-with-response-stream"
    await play(gateway, path, LLAMA_BODY, pieces(stream, 10))
    line = line_of(services)
    assert tokens(line) == (9, 5, 0, 0, True)
    assert line["error_code"] == "ThrottlingException"


async def test_llama_invoke_answer_is_billed_by_its_headers_with_cache(
    gateway: Processor, services: Services
) -> None:
    answer = orjson.dumps({"generation": "hi", "stop_reason": "stop"})
    headers = {
        **JSON,
        "x-amzn-bedrock-input-token-count": "9",
        "x-amzn-bedrock-output-token-count": "6",
        "x-amzn-bedrock-cache-read-input-token-count": "600",
        "x-amzn-bedrock-cache-write-input-token-count": "400",
    }
    await play(gateway, LLAMA_MODEL + "/invoke", LLAMA_BODY, [answer], headers=headers)
    assert tokens(line_of(services)) == (1009, 6, 600, 400, False)


# --- prices, 1-hour writes, cut JSON answers ----------------------------------------------

# Haiku on Bedrock (config/gateway.yaml), USD per million: 11 uncached at 0.25, 600 read
# at 0.03, 400 written at 0.30 (the 5-minute price), 7 out at 1.25.
REPORTED_COST = (11 * 0.25 + 600 * 0.03 + 400 * 0.30 + 7 * 1.25) / 1e6
ONE_HOUR = {
    **USAGE,
    "cacheDetails": [{"ttl": "1h", "inputTokens": 300}, {"ttl": "5m", "inputTokens": 100}],
}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (MODEL + "/converse-stream", CONVERSE_BODY),
        ("/v1/chat/completions", chat(True)),
    ],
    ids=["converse", "openai"],
)
async def test_a_streams_cache_prices_and_one_hour_writes_reach_the_log_line(
    gateway: Processor, services: Services, path: str, body: bytes
) -> None:
    await play(gateway, path, body, pieces(converse_stream(usage=USAGE), 4))
    assert line_of(services)["cost_usd"] == pytest.approx(REPORTED_COST)
    services.access_log.buffer.seek(0)  # type: ignore[attr-defined]
    services.access_log.buffer.truncate()  # type: ignore[attr-defined]
    await play(gateway, path, body, pieces(converse_stream(usage=ONE_HOUR), 4))
    line = line_of(services)
    assert tokens(line) == REPORTED
    assert line["cache_write_1h_tokens"] == 300
    one_hour_cost = REPORTED_COST + 300 * (0.50 - 0.30) / 1e6
    assert line["cost_usd"] == pytest.approx(one_hour_cost)


async def test_claude_invoke_answer_cut_before_its_body_is_billed_by_its_headers(
    gateway: Processor, services: Services
) -> None:
    headers = {
        **JSON,
        "x-amzn-bedrock-input-token-count": "11",
        "x-amzn-bedrock-output-token-count": "7",
        "x-amzn-bedrock-cache-read-input-token-count": "600",
        "x-amzn-bedrock-cache-write-input-token-count": "400",
    }
    answer = orjson.dumps({"type": "message", "content": [{"type": "text", "text": "hi"}]})
    await play(gateway, MODEL + "/invoke", CLAUDE_BODY, [answer[:10]], headers=headers, ended=False)
    assert tokens(line_of(services)) == REPORTED


@pytest.mark.parametrize(
    ("path", "body"),
    [(MODEL + "/converse", CONVERSE_BODY), ("/v1/chat/completions", chat(False))],
    ids=["converse", "openai"],
)
async def test_a_json_answer_cut_mid_body_is_charged_prompt_and_allowance(
    gateway: Processor, services: Services, path: str, body: bytes
) -> None:
    answer = orjson.dumps({"output": {"message": {"role": "assistant", "content": []}}})
    await play(gateway, path, body, [answer[:10]], headers=JSON, ended=False)
    line = line_of(services)
    assert line["completion_tokens"] == 50
    assert line["usage_estimated"] is True


@pytest.mark.parametrize(
    ("path", "body"),
    [(MODEL + "/converse-stream", CONVERSE_BODY), ("/v1/chat/completions", chat(True))],
    ids=["converse", "openai"],
)
async def test_metadata_without_readable_usage_is_charged_the_estimate(
    gateway: Processor, services: Services, path: str, body: bytes
) -> None:
    # A metadata event whose usage is not Bedrock's shape: the stream ends whole, and is
    # charged what it carried rather than nothing.
    stream = converse_stream(usage={"inputTokens": "11", "outputTokens": 7}, words="a" * 40)
    await play(gateway, path, body, pieces(stream, 6))
    assert tokens(line_of(services)) == (104, 10, 0, 0, True)


async def test_openai_stream_cut_between_message_stop_and_metadata_is_estimated(
    gateway: Processor, services: Services
) -> None:
    stream = converse_stream(usage=None, words="a" * 40)
    body = chat(True, stream_options={"include_usage": True})
    shown = await play(gateway, "/v1/chat/completions", body, [stream], ended=False)
    # No usage chunk reached the client: the log line's estimate is the only count.
    assert not [c for c in sse_chunks(shown) if c.get("usage")]
    assert tokens(line_of(services)) == (104, 10, 0, 0, True)
