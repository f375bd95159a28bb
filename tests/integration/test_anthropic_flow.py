"""A client speaks Anthropic's Messages API to the gateway; the mock stands in for Anthropic."""

from __future__ import annotations

import anthropic
import orjson
import pytest

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import GatewayLog, metric, mock_requests, scrape

ORG_KEY = "team1-key"
PROVIDER_KEY = "mock-provider-key"
MODEL = "claude-3-5-haiku-latest"


@pytest.fixture
def client(stack: LocalStack) -> anthropic.Anthropic:
    # The org key goes in x-api-key, as Anthropic's own clients send it.
    return anthropic.Anthropic(
        base_url=stack.base_url, api_key=None, default_headers={"x-api-key": ORG_KEY}, max_retries=0
    )


def test_messages_pass_through_with_the_provider_key_and_usage_counted(
    stack: LocalStack, client: anthropic.Anthropic, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Hello Claude"}]
    )
    message = raw.parse()
    assert message.content[0].text == "Mock reply to: Hello Claude"  # type: ignore[union-attr]

    upstream = mock_requests(stack)[-1]
    assert upstream["path"] == "/v1/messages"
    assert upstream["headers"]["x-api-key"] == PROVIDER_KEY
    assert "authorization" not in upstream["headers"]
    assert ORG_KEY not in orjson.dumps(upstream).decode()

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["route"] == "anthropic-messages"
    assert line["provider"] == "mock-anthropic"
    assert line["api_key_id"] == "team1"
    assert line["prompt_tokens"] == message.usage.input_tokens
    assert (
        line["completion_tokens"]
        == message.usage.output_tokens
        == count_tokens("Mock reply to: Hello Claude")
    )
    after = scrape(stack.metrics_url)
    grown = metric(after, "tokens_consumed_total", model=MODEL, token_type="completion") - metric(
        before, "tokens_consumed_total", model=MODEL, token_type="completion"
    )
    assert grown == message.usage.output_tokens


def test_message_streams_are_counted(
    stack: LocalStack, client: anthropic.Anthropic, gateway_log: GatewayLog
) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Stream to me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert text == "Mock reply to: Stream to me"
    [line] = gateway_log.for_request(request_id)
    assert line["stream"] is True
    assert line["outcome"] == "completed"
    assert line["prompt_tokens"] == final.usage.input_tokens
    assert line["completion_tokens"] == final.usage.output_tokens


def test_anthropic_clients_get_anthropic_shaped_errors(stack: LocalStack) -> None:
    stranger = anthropic.Anthropic(
        base_url=stack.base_url, api_key=None, default_headers={"x-api-key": "wrong-key-1"},
        max_retries=0,
    )  # fmt: skip
    with pytest.raises(anthropic.AuthenticationError) as caught:
        stranger.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"] == {"type": "authentication_error", "message": "invalid API key"}


def test_an_openai_model_on_the_messages_route_is_a_clear_400(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert "cannot translate" in str(caught.value)
