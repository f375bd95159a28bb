"""An Anthropic client counts a prompt's tokens through the gateway (messages.count_tokens)."""

from __future__ import annotations

import anthropic
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, metric, mock_requests, scrape

ORG_KEY = "team1-key"
PROVIDER_KEY = "mock-provider-key"
MODEL = "claude-3-5-haiku-latest"
PROMPT = [{"role": "user", "content": "How many tokens is this?"}]


@pytest.fixture
def client(stack: LocalStack) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.base_url, api_key=None, default_headers={"x-api-key": ORG_KEY}, max_retries=0
    )


def test_count_tokens_reaches_anthropic_with_the_provider_key(
    stack: LocalStack, client: anthropic.Anthropic, gateway_log: GatewayLog
) -> None:
    raw = client.messages.with_raw_response.count_tokens(
        model=MODEL, messages=PROMPT, extra_headers={"anthropic-beta": "token-counting-2024-11-01"}
    )
    counted = raw.parse()

    # The same count a Messages call with this prompt reports as its input tokens.
    message = client.messages.create(model=MODEL, max_tokens=10, messages=PROMPT)
    assert counted.input_tokens == message.usage.input_tokens > 0
    upstream = [r for r in mock_requests(stack) if r["path"].endswith("/count_tokens")][-1]
    assert upstream["path"] == "/v1/messages/count_tokens"
    assert upstream["headers"]["x-api-key"] == PROVIDER_KEY
    assert upstream["headers"]["anthropic-version"]
    assert upstream["headers"]["anthropic-beta"] == "token-counting-2024-11-01"
    assert ORG_KEY not in orjson.dumps(upstream).decode()
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["route"] == "anthropic-count-tokens"
    assert line["provider"] == "mock-anthropic"
    assert line["api_key_id"] == "team1"
    assert line["http_status_code"] == 200
    assert line["outcome"] == "completed"
    assert line["prompt_tokens"] == line["completion_tokens"] == line["total_tokens"] == 0
    assert line["usage_reported"] is False


def test_a_count_is_neither_billed_nor_counted_as_consumed_tokens(
    stack: LocalStack, client: anthropic.Anthropic, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    raw = client.messages.with_raw_response.count_tokens(model=MODEL, messages=PROMPT)
    assert raw.parse().input_tokens > 0
    after = scrape(stack.metrics_url)
    for token_type in ("prompt", "completion"):
        assert metric(after, "tokens_consumed_total", model=MODEL, token_type=token_type) == (
            metric(before, "tokens_consumed_total", model=MODEL, token_type=token_type)
        )
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert not line.get("cost_usd")


def test_count_errors_come_in_anthropic_shape(
    client: anthropic.Anthropic, stack: LocalStack
) -> None:
    stranger = anthropic.Anthropic(
        base_url=stack.base_url, api_key=None, default_headers={"x-api-key": "wrong-key-1"},
        max_retries=0,
    )  # fmt: skip
    with pytest.raises(anthropic.AuthenticationError) as refused:
        stranger.messages.count_tokens(model=MODEL, messages=PROMPT)
    assert refused.value.body["type"] == "error"  # type: ignore[index]
    # An OpenAI model cannot be counted by Anthropic: a clear 400, Anthropic-shaped.
    with pytest.raises(anthropic.BadRequestError) as wrong_model:
        client.messages.count_tokens(model="gpt-4o-mini", messages=PROMPT)
    assert wrong_model.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    # The provider's own refusal (a generation field) passes through as Anthropic's 400.
    with pytest.raises(anthropic.BadRequestError) as extra:
        client.messages.count_tokens(model=MODEL, messages=PROMPT, extra_body={"max_tokens": 5})
    assert "max_tokens" in extra.value.body["error"]["message"]  # type: ignore[index]
