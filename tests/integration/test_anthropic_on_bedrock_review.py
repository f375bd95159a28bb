"""A review of Anthropic Messages clients reaching Claude on Bedrock, end to end: the
official ``anthropic`` SDK through real Envoy and the gateway to the mock Bedrock, which
refuses what Bedrock's schema refuses."""

from __future__ import annotations

import anthropic
import orjson
from anthropic.types import MessageParam

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
PROMPT: list[MessageParam] = [{"role": "user", "content": "Say hello to the gateway, please."}]


def test_a_message_asking_for_anthropics_service_tier_is_answered(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # service_tier is the SDK's own parameter: Anthropic's choice of capacity, which
    # Bedrock does not take in the body (a ValidationException had the gateway sent it).
    client = anthropic.Anthropic(
        base_url=stack.base_url, api_key="team1-key", max_retries=0, timeout=30.0
    )
    reply = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=PROMPT, service_tier="auto"
    )
    message = reply.parse()

    assert message.content[0].type == "text" and message.content[0].text
    [sent] = [r for r in mock_requests(stack) if "/invoke" in r["path"]][-1:]
    assert "service_tier" not in orjson.loads(sent["body"])
    [line] = gateway_log.for_request(reply.headers["x-request-id"])
    assert line["usage_reported"] is True and line["provider"] == "mock-bedrock"
