"""Bedrock answers served latency-optimized are priced at their own tier, and Claude's
InvokeModel answer cut before its body is billed by Bedrock's token headers."""

from __future__ import annotations

import orjson
import pytest

from extproc.aws_eventstream import encode_event
from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.anthropic_bedrock import LATENCY_OPTIMIZED, served_tier
from extproc.translators.bedrock_bedrock import ConverseReader, ConverseStreamReader
from tests.unit.test_bedrock_invoke_review import AUTH, BODY, log_line, signing_processor
from tests.unit.test_bedrock_operations_review import HAIKU, TOKEN_HEADERS, path

OPTIMIZED = {"x-amzn-bedrock-performanceconfig-latency": "optimized"}
USAGE = {"inputTokens": 10, "outputTokens": 4, "totalTokens": 14}


@pytest.mark.parametrize(
    ("headers", "tier"),
    [
        ({**OPTIMIZED, "x-amzn-bedrock-service-tier": "default"}, LATENCY_OPTIMIZED),
        ({"x-amzn-bedrock-performanceconfig-latency": "standard"}, None),
        ({"x-amzn-bedrock-service-tier": "flex"}, "flex"),
    ],
)
def test_invoke_models_tier_is_latency_optimized_when_its_header_says(
    headers: dict[str, str], tier: str | None
) -> None:
    assert served_tier(headers) == tier


def test_a_converse_answer_served_latency_optimized_is_priced_at_that_tier() -> None:
    reader = ConverseReader()
    answer = {"usage": USAGE, "performanceConfig": {"latency": "optimized"}}
    reader.feed(orjson.dumps(answer), True)
    assert reader.service_tier == LATENCY_OPTIMIZED
    standard = ConverseReader()
    standard.feed(
        orjson.dumps({"usage": USAGE, "performanceConfig": {"latency": "standard"}}), True
    )
    assert standard.service_tier is None


def test_a_converse_streams_metadata_names_the_latency_tier() -> None:
    reader = ConverseStreamReader()
    metadata = {
        "usage": USAGE,
        "metrics": {"latencyMs": 5},
        "performanceConfig": {"latency": "optimized"},
    }
    reader.feed(encode_event("metadata", orjson.dumps(metadata)), True)
    assert reader.service_tier == LATENCY_OPTIMIZED
    assert reader.usage is not None and reader.usage.completion_tokens == 4


async def test_a_latency_optimized_invoke_answer_logs_its_tier(
    config: GatewayConfig, services: Services
) -> None:
    message = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "Hi"}],
               "usage": {"input_tokens": 12, "output_tokens": 5}}  # fmt: skip
    async with signing_processor(config, services) as processor:
        await run_stream(
            processor,
            [
                request_headers(path(HAIKU, "invoke"), headers=AUTH),
                request_body(orjson.dumps(BODY)),
                response_headers(200, {**TOKEN_HEADERS, **OPTIMIZED}),
                response_body(orjson.dumps(message), end_of_stream=True),
            ],
        )
    line = log_line(services)
    assert line["service_tier"] == LATENCY_OPTIMIZED
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 5)


async def test_claudes_answer_cut_before_its_body_is_billed_by_bedrocks_headers(
    config: GatewayConfig, services: Services
) -> None:
    # The client hung up while Envoy buffered Claude's Message: Bedrock bills the counts
    # its headers gave, so the gateway does, not its estimate plus the whole max_tokens.
    async with signing_processor(config, services) as processor:
        await run_stream(
            processor,
            [
                request_headers(path(HAIKU, "invoke"), headers=AUTH),
                request_body(orjson.dumps(BODY)),
                response_headers(200, TOKEN_HEADERS),
            ],
        )
    line = log_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 5)
    assert line["usage_reported"] is True and line["usage_estimated"] is False
