"""Claude's 1-hour prompt-cache writes billed at their own price, through the real stack.

The mock reports cache writes split by lifetime when asked (``x-mock-cache-write``):
Anthropic's ``usage.cache_creation``, Bedrock's ``usage.cacheDetails``. The official
clients read the split the provider sent; the gateway must bill the 1-hour writes at
2x the input price and the 5-minute ones at 1.25x (the default config's Claude
prices), and say so in the log line and in ``extproc usage report``.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import (
    GatewayLog,
    config_with_keys,
    metric,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
)

# One key per client, so each test reads its own rollup.
KEYS = {"ttl-messages": "ttl-messages-key-4c1d", "ttl-bedrock": "ttl-bedrock-key-8e2a"}
PROMPT = (
    "Summarise the staff handbook, chapter by chapter, for a new colleague who starts on "
    "Monday and has never worked in an office like ours before."
)
# The mock's count: words and punctuation + 4 per message + 2 per request.
PROMPT_TOKENS = count_tokens(PROMPT) + 4 + 2
# Of those, written to Claude's caches: 10 for 5 minutes, 12 for an hour.
WRITES = {"x-mock-cache-write": "5m=10;1h=12"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("cache-ttl")
    with running_stack(workdir, config_with_keys(workdir, KEYS)) as running:
        yield running


def reported_cost(stack: LocalStack, key: str, requests: int) -> Decimal:
    """The key's cost in `extproc usage report`, once its rollup counts ``requests``."""

    def row() -> dict[str, Any] | None:
        found = usage_rows(stack, "api_key").get(key)
        return found if found is not None and found["requests"] == requests else None

    # The rollups land with the next flush.
    flushed = wait_for(row, 20)
    assert flushed, f"no rollup of {requests} requests for {key}"
    return Decimal(flushed["cost_usd"])


def test_an_anthropic_client_is_billed_for_one_hour_writes_at_the_one_hour_price(
    stack: LocalStack,
) -> None:
    key = "ttl-messages"
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=KEYS[key], max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-0",
        max_tokens=100,
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers=WRITES,
    )
    answer = raw.parse()
    with client.messages.stream(
        model="claude-sonnet-4-0",
        max_tokens=100,
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers=WRITES,
    ) as stream:
        streamed = stream.get_final_message()
        stream_id = stream.response.headers["x-request-id"]

    log = GatewayLog(stack.gateway_log)
    lines = [log.for_request(raw.headers["x-request-id"])[0], log.for_request(stream_id)[0]]
    for message, line in zip((answer, streamed), lines, strict=True):
        # What the client was told is what the gateway counted.
        split = message.usage.cache_creation
        assert split is not None
        assert (split.ephemeral_5m_input_tokens, split.ephemeral_1h_input_tokens) == (10, 12)
        assert message.usage.cache_creation_input_tokens == 22
        assert line["prompt_tokens"] == PROMPT_TOKENS
        assert (line["cache_write_tokens"], line["cache_write_1h_tokens"]) == (22, 12)
        # The default config's Sonnet prices, USD per million: 3.00 input, 3.75 for a
        # 5-minute write, 6.00 for a 1-hour write, 15.00 output.
        assert Decimal(str(line["cost_usd"])) == (
            (PROMPT_TOKENS - 22) * Decimal("3.00") + 10 * Decimal("3.75") + 12 * Decimal("6.00")
            + line["completion_tokens"] * Decimal("15.00")
        ) / 10**6  # fmt: skip

    # The month-end report bills the key exactly what its log lines say.
    assert reported_cost(stack, key, 2) == sum(Decimal(str(line["cost_usd"])) for line in lines)
    # And the metrics count the writes as the lines do (aigw_token_parts_total; before,
    # only the prompt and completion were metrics).
    samples = scrape(stack.metrics_url)
    for token_type, field in (("cache_write", "cache_write_tokens"),
                              ("cache_write_1h", "cache_write_1h_tokens")):  # fmt: skip
        counted = metric(samples, "aigw_token_parts_total", api_key_id=key, token_type=token_type)
        assert counted == sum(line[field] for line in lines) > 0


def test_an_openai_client_on_bedrock_is_billed_for_one_hour_writes(stack: LocalStack) -> None:
    key = "ttl-bedrock"
    client = openai.OpenAI(
        base_url=f"{stack.base_url}/bedrock/haiku", api_key=KEYS[key], max_retries=0
    )
    with client.chat.completions.with_streaming_response.create(
        model="ignored-by-path",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=WRITES,
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())

    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == PROMPT_TOKENS
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert (line["cache_write_tokens"], line["cache_write_1h_tokens"]) == (22, 12)
    # Claude 3 Haiku on Bedrock, USD per million: 0.25 input, 0.30 for a 5-minute write,
    # 0.50 for a 1-hour write, 1.25 output.
    cost = Decimal(str(line["cost_usd"]))
    assert cost == (
        (PROMPT_TOKENS - 22) * Decimal("0.25") + 10 * Decimal("0.30") + 12 * Decimal("0.50")
        + line["completion_tokens"] * Decimal("1.25")
    ) / 10**6  # fmt: skip
    assert reported_cost(stack, key, 1) == cost
