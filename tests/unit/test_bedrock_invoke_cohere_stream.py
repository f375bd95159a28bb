"""Cohere's stream on InvokeModelWithResponseStream ends with a chunk that repeats the
whole answer under ``response`` (Cohere's own end of a stream). Played through the
processor (real ext_proc messages, the default config's Bedrock Runtime route): the log
line names its finish reason once, and captures its text once, as for the answer
unstreamed; before, both were read twice, the repeat counted as a second answer."""

from __future__ import annotations

from urllib.parse import quote

import orjson
import pytest

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_bedrock_invoke_families import chunk
from tests.unit.test_bedrock_invoke_review import (
    AUTH,
    STREAM_HEADERS,
    log_line,
    signing_processor,
)
from tests.unit.test_telemetry_review import with_telemetry

COMMAND = "cohere.command-text-v14"
BODY = {"prompt": "Say hello", "max_tokens": 20}
METRICS = {"inputTokenCount": 2, "outputTokenCount": 2, "invocationLatency": 9,
           "firstByteLatency": 3}  # fmt: skip
GENERATION = {"id": "g1", "text": "Hi there", "finish_reason": "COMPLETE"}
ANSWER = {"id": "a1", "prompt": "Say hello", "generations": [GENERATION]}
STREAM = [
    {"text": "Hi", "is_finished": False},
    {"text": " there", "is_finished": False},
    {"is_finished": True, "finish_reason": "COMPLETE", "response": ANSWER,
     "amazon-bedrock-invocationMetrics": METRICS},
]  # fmt: skip


@pytest.mark.parametrize("split", [False, True], ids=["one-body-chunk", "chunk-per-frame"])
async def test_a_cohere_stream_logs_one_finish_reason_and_its_text_once(
    config: GatewayConfig, services: Services, split: bool
) -> None:
    logging_content = with_telemetry(config, log={"include_content": True})
    path = f"/model/{quote(COMMAND, safe='')}/invoke-with-response-stream"
    frames = [chunk(event) for event in STREAM]
    bodies = (
        [response_body(frame, end_of_stream=i == len(frames) - 1) for i, frame in enumerate(frames)]
        if split
        else [response_body(b"".join(frames), end_of_stream=True)]
    )
    async with signing_processor(logging_content, services) as processor:
        await run_stream(
            processor,
            [
                request_headers(path, headers=AUTH),
                request_body(orjson.dumps(BODY)),
                response_headers(200, STREAM_HEADERS),
                *bodies,
            ],
        )

    line = log_line(services)
    assert line["outcome"] == "completed" and line["usage_reported"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (2, 2)
    assert line["finish_reasons"] == ["COMPLETE"]
    assert line["completion"] == "Hi there"


async def test_a_cohere_stream_without_counts_is_estimated_from_its_text_once(
    config: GatewayConfig, services: Services
) -> None:
    # A Bedrock-compatible server that sends no invocation metrics: Cohere Command's
    # chunks carry no counts, so the output is estimated from the text streamed, which
    # the last chunk's repeated answer holds a second time (it was charged twice).
    text = "Hi there, how are you today?" * 10  # 280 characters: 70 tokens
    stream = [
        {"text": text, "is_finished": False},
        {"is_finished": True, "finish_reason": "COMPLETE",
         "response": {**ANSWER, "generations": [{**GENERATION, "text": text}]}},
    ]  # fmt: skip
    path = f"/model/{quote(COMMAND, safe='')}/invoke-with-response-stream"
    frames = b"".join(chunk(event) for event in stream)
    async with signing_processor(config, services) as processor:
        await run_stream(
            processor,
            [
                request_headers(path, headers=AUTH),
                request_body(orjson.dumps({**BODY, "max_tokens": 500})),
                response_headers(200, STREAM_HEADERS),
                response_body(frames, end_of_stream=True),
            ],
        )

    line = log_line(services)
    assert (line["outcome"], line["usage_estimated"]) == ("completed", True)
    assert line["completion_tokens"] == len(text) // 4
    assert line["finish_reasons"] == ["COMPLETE"]
