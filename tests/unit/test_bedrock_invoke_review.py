"""A review of InvokeModel with Claude's body on the Bedrock Runtime route, as an operator
reads the requests in the log line.

Each test plays one request through the processor (real ext_proc messages, the default
config's ``bedrock-converse`` route and mock Bedrock provider, AWS credentials loaded).
A streamed answer (``invoke-with-response-stream``) reaches the client as Bedrock's binary
frames, each carrying one of Claude's events base64-encoded: the log line must still say
what the client read in them, as it does for the same answer unstreamed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_anthropic_bedrock import EVENTS, chunk
from tests.unit.test_telemetry_review import with_telemetry

AUTH = {"authorization": "Bearer team1-key"}
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Hello"}],
}
# Bedrock's answer to invoke-with-response-stream, as Envoy's router passes it on.
STREAM_HEADERS = {
    "content-type": "application/vnd.amazon.eventstream",
    "x-envoy-upstream-service-time": "4",
}
# Claude's text in EVENTS' deltas, and the reason its message_delta gives.
TEXT = "Hello there"
STOP_REASON = "end_turn"


@asynccontextmanager
async def signing_processor(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    """A processor whose runtime has loaded its AWS credentials, as the server's does."""
    runtime = Runtime(config, services)
    await runtime.start()
    try:
        yield Processor(lambda: runtime, default_stages())
    finally:
        await runtime.close()


async def streamed_invoke(
    config: GatewayConfig, services: Services, events: int = len(EVENTS)
) -> list[Any]:
    """One InvokeModelWithResponseStream call answered with the frames of EVENTS' first
    ``events``; cut there (the client hung up) when that is not all of them."""
    path = f"/model/{quote(HAIKU, safe='')}/invoke-with-response-stream"
    frames = b"".join(chunk(event) for event in EVENTS[:events])
    async with signing_processor(config, services) as processor:
        return await run_stream(
            processor,
            [
                request_headers(path, headers=AUTH),
                request_body(orjson.dumps(BODY)),
                response_headers(200, STREAM_HEADERS),
                response_body(frames, end_of_stream=events == len(EVENTS)),
            ],
        )


def log_line(services: Services) -> dict[str, Any]:
    """The request's one log line (the ``services`` fixture logs in memory)."""
    log = services.access_log
    assert isinstance(log, MemoryLog)
    [line] = log.lines()
    return line


async def test_a_streamed_answer_logs_claudes_finish_reason(
    config: GatewayConfig, services: Services
) -> None:
    answers = await streamed_invoke(config, services)

    # The client gets Bedrock's frames as they came...
    [at_body] = [a for a in answers if a.WhichOneof("response") == "response_body"]
    assert at_body.response_body.response.body_mutation.WhichOneof("mutation") is None
    line = log_line(services)
    assert line["outcome"] == "completed" and line["usage_reported"] is True
    # ...and the log line says why Claude stopped, as for the answer unstreamed (an
    # operator counts answers cut at max_tokens by it).
    assert line["finish_reasons"] == [STOP_REASON]


async def test_a_streamed_answer_is_captured_when_the_log_carries_content(
    config: GatewayConfig, services: Services
) -> None:
    logging_content = with_telemetry(config, log={"include_content": True})

    await streamed_invoke(logging_content, services)

    line = log_line(services)
    assert line["prompt"] == [{"role": "user", "content": "Hello"}]
    # The text the client's SDK read in the frames, as for an unstreamed answer.
    assert line["completion"] == TEXT


@pytest.mark.parametrize("cut", [3, 5])
async def test_a_stream_cut_short_logs_the_text_the_client_got(
    config: GatewayConfig, services: Services, cut: int
) -> None:
    # The client hung up after `cut` events: what it read is what the log line captures.
    logging_content = with_telemetry(config, log={"include_content": True})

    await streamed_invoke(logging_content, services, events=cut)

    line = log_line(services)
    assert line["outcome"] == "aborted" and line["usage_estimated"] is True
    delivered = "".join(
        e["delta"]["text"] for e in EVENTS[:cut] if e["type"] == "content_block_delta"
    )
    assert line["completion"] == delivered
