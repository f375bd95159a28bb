"""Requests billed at the service tier the provider served them at, through the real stack:
Envoy, the gateway, its embedded Valkey and the mock provider, driven by the official
``openai`` client.

OpenAI bills a flex request at the flex price (about half the standard one), and says in
its answer which tier served it (``service_tier``); the mock answers the tier asked for.
A team that sends its batch work at flex must be billed the flex price: the log line,
``aigw_cost_usd_total`` and ``extproc usage report`` agree, to the picodollar, on what
the requests cost at the tiers that served them. The tier prices here are the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
    write_config,
)

# One key per test, so each reads its own rollup and counter.
KEYS = {
    "tier-flex": "tier-flex-key-5a0e",
    "tier-default": "tier-default-key-93b1",
    "tier-priority": "tier-priority-key-17cf",
}
MINI, SONNET = "gpt-4o-mini", "claude-sonnet-4-0"
MESSAGES: Any = [{"role": "user", "content": "Tag these 40 support tickets by product area"}]
# USD per million tokens: the default config's own prices (input, output), and the
# tiers this test prices apart: gpt-4o-mini's flex at half its price, Sonnet's priority.
MINI_PRICE = (Decimal("0.15"), Decimal("0.60"))
MINI_FLEX = (Decimal("0.075"), Decimal("0.30"))
SONNET_PRIORITY = (Decimal("3.60"), Decimal("18.00"))
TIERS = {
    MINI: {"flex": {"input_per_million": "0.075", "output_per_million": "0.30"}},
    # Sonnet prices prompts above 200K tokens apart, so its tier must price them too.
    SONNET: {
        "priority": {
            "input_per_million": "3.60",
            "output_per_million": "18.00",
            "long_context": {
                "above_input_tokens": 200000,
                "input_per_million": "7.20",
                "output_per_million": "27.00",
            },
        }
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("service-tiers")
    raw = default_config()
    raw["auth"]["api_keys"].extend({"id": name, "key": key} for name, key in KEYS.items())
    for model, tiers in TIERS.items():
        raw["pricing"]["models"][model]["service_tiers"] = tiers
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def client(stack: LocalStack, key: str, path: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}{path}", api_key=KEYS[key], max_retries=0)


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def priced(line: dict[str, Any], prices: tuple[Decimal, Decimal]) -> Decimal:
    """What the line's tokens cost at ``prices`` (input, output; no cached tokens here)."""
    prompt, completion = int(line["prompt_tokens"]), int(line["completion_tokens"])
    return (prompt * prices[0] + completion * prices[1]) / 10**6


def ask_whole_and_streamed(
    chat: openai.OpenAI, model: str, **options: Any
) -> tuple[list[str | None], list[str]]:
    """The same question answered whole and streamed: the tiers the client was told (the
    completion's, and every chunk's), and the two requests' ids."""
    raw = chat.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **options)
    told = [raw.parse().service_tier]
    with chat.chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        **options,
    ) as response:  # fmt: skip
        stream_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert chunks[-1].usage is not None
    told.extend(chunk.service_tier for chunk in chunks)
    return told, [raw.headers["x-request-id"], stream_id]


def lines_of(stack: LocalStack, ids: list[str]) -> list[dict[str, Any]]:
    log = GatewayLog(stack.gateway_log)
    return [log.for_request(request_id)[0] for request_id in ids]


def assert_the_bill_agrees(stack: LocalStack, key: str, lines: list[dict[str, Any]]) -> None:
    """The usage report and the cost counter bill the key exactly what its lines say."""
    billed = sum(cost(line) for line in lines)

    def row() -> dict[str, Any] | None:
        found = usage_rows(stack, "api_key").get(key)
        return found if found is not None and found["requests"] == len(lines) else None

    # The rollups land with the next flush.
    flushed = wait_for(row, 20)
    assert flushed, f"no rollup of {len(lines)} requests for {key}"
    assert Decimal(flushed["cost_usd"]) == billed
    counted = metric(scrape(stack.metrics_url), "aigw_cost_usd_total", api_key_id=key)
    assert counted == float(billed)


def test_a_flex_request_is_billed_at_the_flex_price(stack: LocalStack) -> None:
    told, ids = ask_whole_and_streamed(client(stack, "tier-flex"), MINI, service_tier="flex")
    assert set(told) == {"flex"}
    lines = lines_of(stack, ids)
    for line in lines:
        assert line["service_tier"] == "flex"
        assert cost(line) == priced(line, MINI_FLEX) > 0
        # Half what the same tokens cost at the standard price.
        assert cost(line) * 2 == priced(line, MINI_PRICE)
    assert_the_bill_agrees(stack, "tier-flex", lines)


def test_a_default_request_is_billed_at_the_standard_price(stack: LocalStack) -> None:
    told, ids = ask_whole_and_streamed(client(stack, "tier-default"), MINI)
    assert set(told) == {"default"}
    lines = lines_of(stack, ids)
    for line in lines:
        assert line["service_tier"] == "default"
        assert cost(line) == priced(line, MINI_PRICE) > 0
    assert_the_bill_agrees(stack, "tier-default", lines)


def test_anthropic_priority_is_billed_at_its_price_and_shown_to_openai_clients(
    stack: LocalStack,
) -> None:
    # The organisation has Priority Tier capacity (the mock's header): Anthropic reports
    # usage.service_tier "priority", which an OpenAI client reads as OpenAI says it.
    told, ids = ask_whole_and_streamed(
        client(stack, "tier-priority", "/anthropic"), SONNET,
        extra_headers={"x-mock-service-tier": "priority"},
    )  # fmt: skip
    assert set(told) == {"priority"}
    lines = lines_of(stack, ids)
    for line in lines:
        assert line["service_tier"] == "priority"
        assert cost(line) == priced(line, SONNET_PRIORITY) > 0
    assert_the_bill_agrees(stack, "tier-priority", lines)
