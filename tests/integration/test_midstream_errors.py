"""A provider failing inside a stream whose 200 already left, through the real stack.

The mock's ``error_after`` fault makes each provider send its own mid-stream error
(OpenAI's ``data: {"error": ...}``, Anthropic's ``event: error`` overloaded_error,
Bedrock's ``modelStreamErrorException`` exception message) after two content chunks.
The official SDKs must raise the error (in the shape of the API they speak), and
the request must be charged the same everywhere an operator looks: the log line
(estimated, naming the provider's error), ``tokens_consumed_total``, the usage
rollup and the token quota's counter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.management.client import QuotaClient
from extproc.mock_llm import count_tokens
from tests.integration.conftest import (
    GatewayLog,
    metric,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
)

FAULT = {"x-mock-fault": "error_after=2"}
# One key per client/provider pair, so each test reads its own counters.
KEYS = {
    "mid-openai": "mid-openai-key-51c2",
    "mid-anthropic": "mid-anthropic-key-7a0e",
    "mid-bedrock": "mid-bedrock-key-93d4",
    "mid-messages": "mid-messages-key-1b6f",
    "mid-ended": "mid-ended-key-4c83",
    "mid-foreign": "mid-foreign-key-8e27",
}
PROMPT = "Tell me a long story"
# The mock's count: words and punctuation + 4 per message + 2 per request.
PROMPT_TOKENS = count_tokens(PROMPT) + 4 + 2
QUOTAS = f"""
quotas:
  rules:
    - {{name: mid-tokens, subject: api_key, match: [{", ".join(KEYS)}], tokens_per_day: 100000000}}
"""


def midstream_config(workdir: Path) -> Path:
    text = DEFAULT_CONFIG.read_text()
    keys = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in KEYS.items())
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + QUOTAS)
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("midstream")
    with running_stack(workdir, midstream_config(workdir)) as running:
        yield running


def openai_stream(
    stack: LocalStack, key: str, prefix: str, model: str, fault: dict[str, str] = FAULT
) -> tuple[str, str, Any]:
    """Stream through the gateway until the SDK raises; (request id, text read, error)."""
    client = openai.OpenAI(base_url=f"{stack.base_url}{prefix}", api_key=KEYS[key], max_retries=0)
    text = ""
    with client.chat.completions.with_streaming_response.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers=fault,
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError) as raised:
            for chunk in response.parse():
                text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    return request_id, text, raised.value


def tokens_used(stack: LocalStack, key: str) -> int:
    """The key's token counter in the store, as the management API reads it."""
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", "dev-admin-token") as client:
        state = client.get("api_key", key)
    return sum(limit.used for limit in state.limits if limit.kind == "tokens")


def assert_charged_everywhere(
    stack: LocalStack, key: str, line: dict[str, Any], before: dict[Any, float]
) -> None:
    """The estimate in the log line is what the metric, the rollup and the quota counted."""
    prompt, completion = line["prompt_tokens"], line["completion_tokens"]
    assert completion >= 1 and prompt >= 1
    after = scrape(stack.metrics_url)
    for token_type, count in (("prompt", prompt), ("completion", completion)):
        grown = metric(after, "tokens_consumed_total", api_key_id=key, token_type=token_type)
        grown -= metric(before, "tokens_consumed_total", api_key_id=key, token_type=token_type)
        assert grown == count, token_type
    # An operator's alert on provider errors sees it, though its status was 200.
    failed = metric(after, "aigw_upstream_errors_total", status_code="stream_error")
    assert failed - metric(before, "aigw_upstream_errors_total", status_code="stream_error") == 1
    # So does the error-rate alert: the request counts once, as the failure the user saw
    # (before, as a 200 that aigw:request_errors:ratio_rate5m never selected).
    for status, grown in (("stream_error", 1), ("200", 0)):
        counted = metric(after, "aigw_requests_total", status_code=status)
        assert counted - metric(before, "aigw_requests_total", status_code=status) == grown, status
    row = wait_for(lambda: usage_rows(stack, "api_key").get(key), 20)
    assert row, f"no rollup for {key}"
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        1,
        prompt,
        completion,
    )
    # The reservation (prompt + the default completion allowance) settled at the estimate.
    settled = wait_for(lambda: tokens_used(stack, key) == prompt + completion, 10)
    assert settled, (tokens_used(stack, key), prompt + completion)


def assert_marked(line: dict[str, Any], error_code: str | None) -> None:
    assert line["http_status_code"] == 200
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert line["outcome"] == "upstream_error"
    assert line["error_code"] == error_code
    assert "injected by x-mock-fault" in line["error_message"]


def test_an_openai_error_event_mid_stream_reaches_the_client_and_is_charged(
    stack: LocalStack,
) -> None:
    before = scrape(stack.metrics_url)
    request_id, text, error = openai_stream(stack, "mid-openai", "/v1", "gpt-4o-mini")
    assert text == "Mock reply"
    assert "The server had an error" in error.message
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert_marked(line, None)
    assert line["error_type"] == "server_error"
    assert_charged_everywhere(stack, "mid-openai", line, before)


def test_an_anthropic_shaped_error_from_an_openai_provider_is_an_openai_error_event(
    stack: LocalStack,
) -> None:
    # An OpenAI-compatible endpoint in front of Claude failing its stream as Anthropic's
    # API does (event: error, overloaded_error). Before, the event passed as it came: the
    # SDK raised it with Anthropic's type and no code, go-openai not at all.
    before = scrape(stack.metrics_url)
    fault = {"x-mock-fault": "error_after=2;anthropic_errors=1"}
    request_id, text, error = openai_stream(stack, "mid-foreign", "/v1", "gpt-4o-mini", fault)
    assert text == "Mock reply"
    assert (error.code, error.type) == ("upstream_overloaded", "service_unavailable")
    assert error.message == "Overloaded (injected by x-mock-fault)"
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert_marked(line, "upstream_overloaded")
    assert line["error_type"] == "service_unavailable"
    assert_charged_everywhere(stack, "mid-foreign", line, before)


def test_an_anthropic_overload_mid_stream_is_an_openai_error_and_keeps_the_input_tokens(
    stack: LocalStack,
) -> None:
    before = scrape(stack.metrics_url)
    request_id, text, error = openai_stream(
        stack, "mid-anthropic", "/anthropic", "claude-3-5-haiku-latest"
    )
    assert text == "Mock reply"
    # The OpenAI SDK got an OpenAI error event (an Anthropic one would not raise at all).
    assert error.body["code"] == "upstream_overloaded"
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert_marked(line, "upstream_overloaded")
    # message_start's input count is the provider's own: kept, not estimated.
    assert line["prompt_tokens"] == PROMPT_TOKENS
    assert_charged_everywhere(stack, "mid-anthropic", line, before)


def test_a_bedrock_exception_mid_stream_is_an_openai_error_and_is_charged(
    stack: LocalStack,
) -> None:
    before = scrape(stack.metrics_url)
    request_id, text, error = openai_stream(stack, "mid-bedrock", "/bedrock/haiku", "ignored")
    assert text == "Mock reply"
    assert error.body["code"] == "ModelStreamErrorException"
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert_marked(line, "ModelStreamErrorException")
    assert_charged_everywhere(stack, "mid-bedrock", line, before)


def test_an_anthropic_client_gets_the_providers_error_event_and_is_charged(
    stack: LocalStack,
) -> None:
    before = scrape(stack.metrics_url)
    client = anthropic.Anthropic(
        base_url=stack.base_url, api_key=KEYS["mid-messages"], max_retries=0
    )
    kinds: list[str] = []
    with client.messages.with_streaming_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=200,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers=FAULT,
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            for event in response.parse():
                kinds.append(event.type)
    assert kinds.count("content_block_delta") == 2
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert_marked(line, "upstream_overloaded")
    assert line["prompt_tokens"] == PROMPT_TOKENS
    assert_charged_everywhere(stack, "mid-messages", line, before)


def test_an_anthropic_stream_its_provider_ends_early_is_raised_by_the_sdk(
    stack: LocalStack,
) -> None:
    # The mock's end_after: the body ends cleanly after two deltas, before message_delta
    # and message_stop, as a proxy ends a cut stream. Through Envoy, the gateway's error
    # event after the provider's last bytes reaches the SDK, which raises it instead of
    # returning two words as the whole answer.
    before = scrape(stack.metrics_url)
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=KEYS["mid-ended"], max_retries=0)
    kinds: list[str] = []
    with client.messages.with_streaming_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=200,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers={"x-mock-fault": "end_after=2"},
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(anthropic.APIStatusError, match="ended before it was complete"):
            for event in response.parse():
                kinds.append(event.type)
    assert kinds.count("content_block_delta") == 2 and "message_stop" not in kinds
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert line["error_code"] == "invalid_upstream_response"
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert line["prompt_tokens"] == PROMPT_TOKENS
    assert_charged_everywhere(stack, "mid-ended", line, before)
