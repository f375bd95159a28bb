"""Envoy's own replies (provider unreachable, timeout) reach an Anthropic client in
Anthropic's error shape, as every other error on its routes does.

The bootstrap's local reply mappers shape them for a request carrying
``anthropic-version``; a request translated for Claude on Bedrock no longer carries it
when Envoy replies, and its OpenAI-shaped reply passed through the gateway as it came.
"""

from __future__ import annotations

import orjson

from extproc.config.loader import parse_config
from extproc.errors import error_body
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages import default_stages
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
from tests.unit.quota_helpers import DEFAULT_CONFIG

CLIENT = {"x-api-key": "team1-key", "anthropic-version": "2023-06-01"}
# Envoy's reply after a refused connection, as the bootstrap renders it without a
# client header to go by.
UNAVAILABLE = error_body(
    "the upstream provider is unavailable", "service_unavailable", code="upstream_unavailable"
)


async def test_envoys_503_to_claude_on_bedrock_reaches_the_anthropic_client_in_its_shape() -> None:
    services = Services(GatewayMetrics(), MemoryLog())
    runtime = Runtime(parse_config(DEFAULT_CONFIG, "t", {}), services)
    await runtime.start()  # the Bedrock provider's AWS credentials
    try:
        body = {"model": "haiku", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        answers = await run_stream(
            Processor(lambda: runtime, default_stages()),
            [
                request_headers("/v1/messages", headers=CLIENT),
                request_body(orjson.dumps(body)),
                # No x-envoy-upstream-service-time: Envoy's own reply, not Bedrock's.
                response_headers(503),
                response_body(UNAVAILABLE),
            ],
        )
    finally:
        await runtime.close()
    assert orjson.loads(client_body([UNAVAILABLE], answers)) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "the upstream provider is unavailable"},
    }
    mutation = answers[2].response_headers.response.header_mutation
    assert ":status" not in {each.header.key for each in mutation.set_headers}  # still a 503
