"""Anthropic Messages clients to Claude on Bedrock: the official ``anthropic`` SDK on
``/v1/messages`` through real Envoy and the gateway to the mock Bedrock, which checks
the gateway's SigV4 signature and answers InvokeModel as Bedrock does."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import anthropic
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, metric, mock_requests, scrape

CLIENT_KEY = "team1-key"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
PROMPT = [{"role": "user", "content": "Say hello to the gateway, please."}]
# The haiku's prices in the default config, USD per million tokens.
INPUT_PRICE, OUTPUT_PRICE = 0.25, 1.25


def claude(stack: LocalStack, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.base_url,
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=30.0,
        default_headers=headers or None,
    )


def invocations(stack: LocalStack) -> list[dict[str, Any]]:
    return [r for r in mock_requests(stack) if "/invoke" in r["path"]]


def test_a_message_reaches_claude_on_bedrock_and_is_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    raw = claude(stack, **{"anthropic-beta": "token-efficient-tools-2025-02-19"})
    reply = raw.messages.with_raw_response.create(model=MODEL, max_tokens=200, messages=PROMPT)
    message = reply.parse()

    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0

    sent = invocations(stack)[-1]
    assert unquote(sent["path"]) == f"/model/{MODEL}/invoke"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    body = orjson.loads(sent["body"])
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in body and "stream" not in body
    assert body["anthropic_beta"] == ["token-efficient-tools-2025-02-19"]
    assert CLIENT_KEY not in orjson.dumps(sent).decode()

    [line] = gateway_log.for_request(reply.headers["x-request-id"])
    assert (line["route"], line["provider"], line["model"]) == (
        "anthropic-messages",
        "mock-bedrock",
        MODEL,
    )
    usage = message.usage
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.input_tokens,
        usage.output_tokens,
    )
    cost = usage.input_tokens * INPUT_PRICE + usage.output_tokens * OUTPUT_PRICE
    assert line["cost_usd"] == pytest.approx(cost / 1e6)
    after = scrape(stack.metrics_url)
    grown = metric(after, "tokens_consumed_total", model=MODEL, token_type="completion")
    assert grown - metric(
        before, "tokens_consumed_total", model=MODEL, token_type="completion"
    ) == (usage.output_tokens)


def test_a_stream_comes_back_as_anthropics_events_with_its_usage(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    with claude(stack).messages.stream(model="haiku", max_tokens=200, messages=PROMPT) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]

    assert text and final.usage.output_tokens > 0
    assert invocations(stack)[-1]["path"].endswith("/invoke-with-response-stream")
    [line] = gateway_log.for_request(request_id)
    assert line["stream"] is True and line["usage_reported"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


def test_a_stream_bedrock_breaks_off_ends_with_anthropics_error_and_is_charged(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = claude(stack, **{"x-mock-fault": "error_after=2"})
    with pytest.raises(anthropic.APIStatusError):  # noqa: SIM117
        with client.messages.stream(model=MODEL, max_tokens=200, messages=PROMPT) as stream:
            request_id = stream.response.headers["x-request-id"]
            for _ in stream.text_stream:
                pass

    [line] = gateway_log.for_request(request_id)
    assert line["usage_estimated"] is True
    # The prompt as Claude's message_start reported it, the output from the text sent.
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
    assert line["error_code"]


def test_bedrock_models_that_are_not_claude_are_refused_in_anthropics_shape(
    stack: LocalStack,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude(stack).messages.create(model="titan", max_tokens=50, messages=PROMPT)
    assert "only Claude models" in refused.value.message
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
