"""Bedrock edges the review s41 probed, end to end through the real processor.

Each scenario's accounting was checked and found right; these tests keep it so. They
cover what the s36 review's tests do not: InvokeModel streams of Titan, Mistral, Cohere
and Nova (their invocation metrics, cache counts, a cut, an exception, a broken frame),
a ConverseStream frame whose CRC fails, and a guarded ConverseStream's usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.aws_eventstream import encode_exception
from extproc.config import GatewayConfig, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, response_body, response_headers
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with
from tests.unit.test_review_s36_bedrock import (
    AUTH,
    CONVERSE_BODY,
    EVENT_STREAM,
    MODEL,
    PROMPT,
    REPORTED,
    USAGE,
    chunk_frame,
    event,
    pieces,
    text,
    tokens,
)

METRICS = {"inputTokenCount": 9, "outputTokenCount": 20, "invocationLatency": 30,
           "firstByteLatency": 10}  # fmt: skip
TITAN = (
    "amazon.titan-text-express-v1",
    {"inputText": PROMPT, "textGenerationConfig": {"maxTokenCount": 50}},
    [
        {"outputText": "a" * 40, "index": 0, "totalOutputTextTokenCount": 10,
         "completionReason": None, "inputTextTokenCount": 9},
        {"outputText": "b" * 40, "index": 0, "totalOutputTextTokenCount": 20,
         "completionReason": "FINISH", "amazon-bedrock-invocationMetrics": METRICS},
    ],
)  # fmt: skip
MISTRAL = (
    "mistral.mistral-7b-instruct-v0:2",
    {"prompt": PROMPT, "max_tokens": 50},
    [
        {"outputs": [{"text": "a" * 40, "stop_reason": None}]},
        {"outputs": [{"text": "b" * 40, "stop_reason": "stop"}],
         "amazon-bedrock-invocationMetrics": METRICS},
    ],
)  # fmt: skip
COHERE = (
    "cohere.command-r-v1:0",
    {"message": PROMPT, "max_tokens": 50},
    [
        {"event_type": "text-generation", "is_finished": False, "text": "a" * 40},
        # The last chunk repeats the whole answer: billed by the metrics, not read as text.
        {"event_type": "stream-end", "is_finished": True, "finish_reason": "COMPLETE",
         "response": {"text": "a" * 40 + "b" * 40},
         "amazon-bedrock-invocationMetrics": METRICS},
    ],
)  # fmt: skip
NOVA_METRICS = {**METRICS, "cacheReadInputTokenCount": 600, "cacheWriteInputTokenCount": 400}
NOVA = (
    "amazon.nova-lite-v1:0",
    {"messages": [{"role": "user", "content": [{"text": PROMPT}]}],
     "inferenceConfig": {"max_new_tokens": 50}},
    [
        {"contentBlockDelta": {"delta": {"text": "a" * 40}, "contentBlockIndex": 0}},
        {"metadata": {"usage": {"inputTokens": 9, "outputTokens": 20}},
         "amazon-bedrock-invocationMetrics": NOVA_METRICS},
    ],
)  # fmt: skip
FAMILIES = [TITAN, MISTRAL, COHERE, NOVA]
IDS = ["titan", "mistral", "cohere", "nova"]


def broken(frame: bytes) -> bytes:
    """``frame`` with its message CRC wrong."""
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


async def play(
    config: GatewayConfig,
    path: str,
    body: bytes,
    chunks: Sequence[bytes],
    *,
    ended: bool = True,
) -> dict[str, Any]:
    """The request answered with ``chunks`` (``ended``: Envoy's end of stream comes with
    the last; else the client hung up); its log line."""
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    runtime = Runtime(config, services)
    await runtime.start()
    gateway = Processor(lambda: runtime, default_stages())

    async def messages_in() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(path, headers=AUTH)
        yield request_body(body)
        yield response_headers(200, EVENT_STREAM)
        for index, chunk in enumerate(chunks):
            yield response_body(chunk, end_of_stream=ended and index == len(chunks) - 1)

    try:
        answers = [answer async for answer in gateway.process(messages_in())]
    finally:
        await runtime.close()
    assert not any(a.HasField("immediate_response") for a in answers)
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line


def default_config() -> GatewayConfig:
    return parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {})


def invoke(model: str) -> str:
    return f"/model/{quote(model, safe='')}/invoke-with-response-stream"


# --- InvokeModel streams of other families ---------------------------------------------


@pytest.mark.parametrize(("model", "body", "events"), FAMILIES, ids=IDS)
async def test_a_family_stream_split_anywhere_is_billed_by_its_metrics(
    model: str, body: dict[str, Any], events: list[dict[str, Any]]
) -> None:
    stream = b"".join(chunk_frame(e) for e in events)
    line = await play(default_config(), invoke(model), orjson.dumps(body), pieces(stream, 3))
    cached = 600 if model == NOVA[0] else 0
    written = 400 if model == NOVA[0] else 0
    assert tokens(line) == (9 + cached + written, 20, cached, written, False)


@pytest.mark.parametrize(("model", "body", "events"), [MISTRAL, COHERE], ids=IDS[1:3])
async def test_a_family_stream_cut_before_its_metrics_is_charged_the_estimate(
    model: str, body: dict[str, Any], events: list[dict[str, Any]]
) -> None:
    # No running counts in these families: the prompt estimate (100 tokens of prompt)
    # and the 40 characters streamed.
    line = await play(
        default_config(), invoke(model), orjson.dumps(body), [chunk_frame(events[0])], ended=False
    )
    assert tokens(line) == (100, 10, 0, 0, True)


async def test_titan_stream_broken_by_an_exception_keeps_the_counts_it_reported() -> None:
    model, body, events = TITAN
    stream = chunk_frame(events[0]) + encode_exception(
        "modelStreamErrorException", b'{"message":"boom"}'
    )
    line = await play(default_config(), invoke(model), orjson.dumps(body), pieces(stream, 5))
    assert tokens(line) == (9, 10, 0, 0, True)
    assert line["error_code"] == "ModelStreamErrorException"


async def test_titan_stream_with_a_broken_frame_keeps_the_counts_it_reported() -> None:
    model, body, events = TITAN
    stream = chunk_frame(events[0]) + broken(chunk_frame(events[1]))
    line = await play(default_config(), invoke(model), orjson.dumps(body), [stream])
    # The broken last chunk's metrics are not trusted: Titan's running counts bill it.
    assert tokens(line) == (9, 10, 0, 0, True)
    assert line["error_type"] == "upstream_error"


# --- ConverseStream ----------------------------------------------------------------------

FRAMES = [
    event("messageStart", {"role": "assistant"}),
    text("a" * 40),
    text("b" * 40),
    event("contentBlockStop", {"contentBlockIndex": 0}),
    event("messageStop", {"stopReason": "end_turn"}),
    event("metadata", {"usage": USAGE}),
]


async def test_a_converse_stream_frame_with_a_bad_crc_is_charged_the_estimate() -> None:
    stream = b"".join([*FRAMES[:2], broken(FRAMES[2]), *FRAMES[3:]])
    line = await play(default_config(), MODEL + "/converse-stream", CONVERSE_BODY, [stream])
    # Nothing after the broken frame is read, its metadata included: the prompt estimate
    # (100 tokens and 4 of the message's overhead) and the 40 characters before it.
    assert tokens(line) == (104, 10, 0, 0, True)
    assert line["error_type"] == "upstream_error"


@pytest.mark.parametrize("size", [1, 7, 100_000])
async def test_a_guarded_converse_stream_keeps_metadatas_usage(size: int) -> None:
    mask = {"name": "pii-out", "builtins": ["CREDIT_CARD"], "action": "mask"}
    guards = {"policies": [{"name": "pii", "response": [mask]}]}
    config = config_with(guards, {"bedrock-converse": {"guardrails": "pii"}})
    frames = [*FRAMES[:2], text(" card 4111 1111 1111 1111 "), *FRAMES[3:]]
    stream = b"".join(frames)
    line = await play(config, MODEL + "/converse-stream", CONVERSE_BODY, pieces(stream, size))
    assert tokens(line) == REPORTED
