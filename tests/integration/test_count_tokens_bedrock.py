"""An Anthropic client counts a prompt's tokens for Claude on Bedrock: the official
``anthropic`` SDK's ``messages.count_tokens`` through real Envoy and the gateway to the
mock Bedrock's CountTokens, which checks the gateway's SigV4 signature."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote

import anthropic
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, metric, mock_requests, scrape

CLIENT_KEY = "team1-key"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
PROMPT: Any = [{"role": "user", "content": "How many tokens is this, on Bedrock?"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def claude(stack: LocalStack, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.base_url,
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=30.0,
        default_headers=headers or None,
    )


def last_count_sent(stack: LocalStack) -> dict[str, Any]:
    """The last CountTokens call the mock Bedrock received."""
    counts = [r for r in mock_requests(stack) if r["path"].endswith("/count-tokens")]
    assert counts, "no CountTokens call reached Bedrock"
    return counts[-1]


def invoke_body_of(sent: dict[str, Any]) -> dict[str, Any]:
    """The InvokeModel body a recorded CountTokens call carried (base64, in ``invokeModel``)."""
    assert list(sent["json"]) == ["input"] and list(sent["json"]["input"]) == ["invokeModel"]
    body: dict[str, Any] = orjson.loads(
        base64.b64decode(sent["json"]["input"]["invokeModel"]["body"])
    )
    return body


def test_a_count_is_bedrocks_count_of_the_invoke_model_body(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = claude(stack, **{"anthropic-beta": "token-efficient-tools-2025-02-19"})
    raw = client.messages.with_raw_response.count_tokens(model=MODEL, messages=PROMPT)
    counted = raw.parse()

    # The same count a Messages call with this prompt reports as its input tokens.
    message = client.messages.create(model=MODEL, max_tokens=10, messages=PROMPT)
    assert counted.input_tokens == message.usage.input_tokens > 0

    sent = last_count_sent(stack)
    assert unquote(sent["path"]) == f"/model/{MODEL}/count-tokens"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    body = invoke_body_of(sent)
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in body and "stream" not in body
    assert body["max_tokens"] >= 1
    assert body["messages"] == PROMPT
    assert body["anthropic_beta"] == ["token-efficient-tools-2025-02-19"]
    assert CLIENT_KEY not in orjson.dumps(sent).decode()

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["route"], line["provider"], line["model"]) == (
        "anthropic-count-tokens",
        "mock-bedrock",
        MODEL,
    )
    assert line["http_status_code"] == 200
    assert line["outcome"] == "completed"
    assert line["prompt_tokens"] == line["completion_tokens"] == line["total_tokens"] == 0
    assert line["usage_reported"] is False


def test_tools_are_counted(stack: LocalStack) -> None:
    client = claude(stack)
    plain = client.messages.count_tokens(model=MODEL, messages=PROMPT)
    with_tools = client.messages.count_tokens(model=MODEL, messages=PROMPT, tools=[WEATHER])

    assert with_tools.input_tokens > plain.input_tokens
    body = invoke_body_of(last_count_sent(stack))
    assert body["tools"] == [WEATHER]


def test_a_count_is_neither_billed_nor_counted_as_consumed_tokens(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    raw = claude(stack).messages.with_raw_response.count_tokens(model="haiku", messages=PROMPT)
    assert raw.parse().input_tokens > 0
    after = scrape(stack.metrics_url)
    for token_type in ("prompt", "completion"):
        assert metric(after, "tokens_consumed_total", model=MODEL, token_type=token_type) == (
            metric(before, "tokens_consumed_total", model=MODEL, token_type=token_type)
        )
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert not line.get("cost_usd")


def test_bedrock_models_that_are_not_claude_are_refused_in_anthropics_shape(
    stack: LocalStack,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude(stack).messages.count_tokens(model="titan", messages=PROMPT)
    assert "only Claude models" in refused.value.message
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("fault", "raised", "error_type"),
    [
        ("status=429", anthropic.RateLimitError, "rate_limit_error"),
        ("status=400", anthropic.BadRequestError, "invalid_request_error"),
        ("garbage=1", anthropic.InternalServerError, "api_error"),
    ],
    ids=["throttled", "refused", "unreadable"],
)
def test_bedrocks_errors_reach_the_client_as_anthropics(
    stack: LocalStack, fault: str, raised: type[anthropic.APIStatusError], error_type: str
) -> None:
    client = claude(stack, **{"x-mock-fault": fault})
    with pytest.raises(raised) as failed:
        client.messages.count_tokens(model=MODEL, messages=PROMPT)
    assert failed.value.body["type"] == "error"  # type: ignore[index]
    assert failed.value.body["error"]["type"] == error_type  # type: ignore[index]
