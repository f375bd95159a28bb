"""Anthropic's server tools (web search) billed per request on top of tokens, through the
real stack: Envoy, the gateway, its embedded Valkey and the mock provider, driven by the
official ``anthropic`` and ``openai`` clients.

Anthropic reports the requests its server tools made in ``usage.server_tool_use``
(``web_search_requests``, ``web_fetch_requests``) and bills web searches at $10 per
1,000, web fetches at no charge beyond their tokens. The mock reports them when asked
(``x-mock-server-tool-use``). A team whose requests search the web must be billed the
searches: the log line, ``aigw_cost_usd_total`` and ``extproc usage report`` agree to the
picodollar.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    config_with_keys,
    metric,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
)

# One key per test, so each reads its own rollup and counter.
KEYS = {
    "search-messages": "search-messages-key-71b0",
    "search-openai": "search-openai-key-2d94",
    "search-unknown": "search-unknown-key-c3e8",
    "search-responses-no-usage": "search-responses-no-usage-key-5e61",
}
MODEL = "claude-sonnet-4-0"
MESSAGES: Any = [{"role": "user", "content": "What changed in the EU AI Act this week?"}]
SEARCHES = {"x-mock-server-tool-use": "web_search=3;web_fetch=2"}
# The default config's prices: Sonnet USD per million tokens, web search per 1,000.
INPUT, OUTPUT = Decimal("3.00"), Decimal("15.00")
PER_SEARCH = Decimal("10.00") / 1000
# gpt-4o-mini's, and a file search's, in the default config.
MINI_INPUT, MINI_OUTPUT = Decimal("0.15"), Decimal("0.60")
PER_FILE_SEARCH = Decimal("2.50") / 1000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("server-tools")
    with running_stack(workdir, config_with_keys(workdir, KEYS)) as running:
        yield running


def token_cost(line: dict[str, Any]) -> Decimal:
    return (line["prompt_tokens"] * INPUT + line["completion_tokens"] * OUTPUT) / 10**6


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def assert_the_bill_agrees(stack: LocalStack, key: str, lines: list[dict[str, Any]]) -> None:
    """The report and the counter bill the key exactly what its log lines say."""
    billed = sum(cost(line) for line in lines)

    def row() -> dict[str, Any] | None:
        found = usage_rows(stack, "api_key").get(key)
        return found if found is not None and found["requests"] == len(lines) else None

    # The rollups land with the next flush.
    flushed = wait_for(row, 20)
    assert flushed, f"no rollup of {len(lines)} requests for {key}"
    assert Decimal(flushed["cost_usd"]) == billed
    counted = metric(scrape(stack.metrics_url), "aigw_cost_usd_total", api_key_id=key)
    # The float nearest the exact sum, to the last digit (docs/chargeback.md).
    assert counted == float(billed)


def test_an_anthropic_client_is_billed_for_its_web_searches(stack: LocalStack) -> None:
    key = "search-messages"
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=KEYS[key], max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=MESSAGES, extra_headers=SEARCHES
    )
    answer = raw.parse()
    with client.messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES, extra_headers=SEARCHES
    ) as stream:
        streamed = stream.get_final_message()
        stream_id = stream.response.headers["x-request-id"]

    log = GatewayLog(stack.gateway_log)
    lines = [log.for_request(raw.headers["x-request-id"])[0], log.for_request(stream_id)[0]]
    for message, line in zip((answer, streamed), lines, strict=True):
        # What the client was told is what the gateway counted and billed.
        used = message.usage.server_tool_use
        assert used is not None and (used.web_search_requests, used.web_fetch_requests) == (3, 2)
        # Three searches at a cent each; fetches cost only their tokens.
        assert cost(line) == token_cost(line) + 3 * PER_SEARCH
        assert line["server_tool_requests"] == {"web_search": 3, "web_fetch": 2}
        assert line["cost_priced"] is True
    assert_the_bill_agrees(stack, key, lines)


def test_an_openai_client_on_anthropic_is_billed_for_its_web_searches(stack: LocalStack) -> None:
    key = "search-openai"
    client = openai.OpenAI(base_url=f"{stack.base_url}/anthropic", api_key=KEYS[key], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, extra_headers=SEARCHES
    )
    raw.parse()
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=SEARCHES,
    ) as response:
        stream_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert chunks[-1].usage is not None

    log = GatewayLog(stack.gateway_log)
    lines = [log.for_request(raw.headers["x-request-id"])[0], log.for_request(stream_id)[0]]
    for line in lines:
        assert cost(line) == token_cost(line) + 3 * PER_SEARCH
        assert line["server_tool_requests"] == {"web_search": 3, "web_fetch": 2}
    assert_the_bill_agrees(stack, key, lines)


def test_a_server_tool_without_a_price_is_flagged_unpriced_and_warned_once(
    stack: LocalStack,
) -> None:
    key = "search-unknown"
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=KEYS[key], max_retries=0)
    asked = {"x-mock-server-tool-use": "web_search=1;moon_probe=2"}
    ids = []
    for _ in range(2):
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=100, messages=MESSAGES, extra_headers=asked
        )
        raw.parse()
        ids.append(raw.headers["x-request-id"])

    log = GatewayLog(stack.gateway_log)
    lines = [log.for_request(request_id)[0] for request_id in ids]
    for line in lines:
        # The answer is served and billed for what has a price; the bill says it is short.
        assert line["server_tool_requests"] == {"web_search": 1, "moon_probe": 2}
        assert cost(line) == token_cost(line) + PER_SEARCH
        assert line["cost_priced"] is False
    assert_the_bill_agrees(stack, key, lines)
    assert usage_rows(stack, "api_key")[key]["unpriced_requests"] == 2
    # The operator is told once which tool needs a price, not once per request.
    warnings = (stack.workdir / "gateway.err").read_text()
    assert warnings.count("moon_probe") == 1


def test_a_responses_answer_without_usage_is_billed_its_tool_calls_whole_or_streamed(
    stack: LocalStack,
) -> None:
    # A provider (or a proxy) that leaves usage out: both answers are charged the
    # estimate of their tokens, and the web and file searches their output shows, on top.
    key = "search-responses-no-usage"
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEYS[key], max_retries=0)
    asked = {"x-mock-server-tool-use": "web_search=2;file_search=1", "x-mock-fault": "no_usage=1"}
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="What changed this week?", extra_headers=asked
    )
    answer = raw.parse()
    assert answer.usage is None
    assert [item.type for item in answer.output][:3] == ["web_search_call"] * 2 + [
        "file_search_call"
    ]
    with client.responses.with_streaming_response.create(
        model="gpt-4o-mini", input="What changed this week?", stream=True, extra_headers=asked
    ) as response:
        stream_id = response.headers["x-request-id"]
        events = list(response.parse())
    assert events[-1].type == "response.completed"

    log = GatewayLog(stack.gateway_log)
    lines = [log.for_request(raw.headers["x-request-id"])[0], log.for_request(stream_id)[0]]
    for line in lines:
        assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
        assert line["server_tool_requests"] == {"web_search": 2, "file_search": 1}
        tokens = line["prompt_tokens"] * MINI_INPUT + line["completion_tokens"] * MINI_OUTPUT
        assert cost(line) == tokens / 10**6 + 2 * PER_SEARCH + PER_FILE_SEARCH
    assert_the_bill_agrees(stack, key, lines)
