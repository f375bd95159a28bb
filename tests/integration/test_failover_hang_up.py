"""A client that hangs up on a failover request while a fallback's attempt is in flight,
through the real Envoy, Valkey and mock providers, with the official openai client.

The primary's provider throttles every request (429), so Envoy retries on the fallback,
whose provider takes longer than the client waits. The client times out and hangs up;
the fallback's provider, which received the request, generates the answer and bills it.
Before, the gateway charged the request at its primary: the log line, the token and cost
counters and the usage rollup named the primary's provider and priced the estimate at
the primary's (here fifty times dearer) price, although the primary had refused it and
the fallback's provider was the one that billed it. Now each ledger names the fallback's
provider and prices the estimate at the fallback's price: the attempt names itself in
the store when it sends its request, and the request's stream reads that name when the
client hangs up. A client that hangs up while the primary's own attempt is in flight is
charged at the primary, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    default_config,
    metric,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.failover_support import (
    FaultyMock,
    failover_budget,
    log_line,
    mocks_with_faults,
    quota_used,
    rollup_by_provider,
)
from tests.integration.test_client_timeout_accounting import only_request_of

CLIENT_TIMEOUT_S = 1.5
# 40 characters in one message: the quota's prompt estimate is 40 / 4 + 4 tokens.
MESSAGES = [{"role": "user", "content": "x" * 40}]
PROMPT = 14
ALLOWANCE = 300
# USD per million input and output tokens: the primaries dear, the slow fallback cheap.
DEAR = (Decimal(50), Decimal(100))
CHEAP = (Decimal(1), Decimal(2))
KEYS = ("left-at-fallback", "left-streaming-at-fallback", "left-at-primary")


@dataclass
class Stack:
    gateway: LocalStack
    tired: FaultyMock  # 429 on every request
    slow: FaultyMock  # answers later than the client waits


def hang_up_config(tired: FaultyMock, slow: FaultyMock) -> dict[str, Any]:
    raw = default_config()
    mock = next(p for p in raw["providers"] if p["name"] == "mock")
    raw["providers"] += [
        {**mock, "name": "tired", "base_url": f"{tired.url}/v1"},
        {**mock, "name": "slow", "base_url": f"{slow.url}/v1"},
    ]
    raw["models"] += [
        # Refused by its provider, so every request goes on to the slow fallback.
        {"name": "gpt-tired", "provider": "tired", "upstream_model": "gpt-4o-mini",
         "fallbacks": ["gpt-slow"]},
        {"name": "gpt-slow", "provider": "slow", "upstream_model": "gpt-4o-mini"},
        # Slow itself: the client leaves while the primary's attempt is in flight.
        {"name": "gpt-slow-first", "provider": "slow", "upstream_model": "gpt-4o-mini",
         "fallbacks": ["gpt-4o-mini"]},
    ]  # fmt: skip
    for name, (price_in, price_out) in (
        ("gpt-tired", DEAR),
        ("gpt-slow-first", DEAR),
        ("gpt-slow", CHEAP),
    ):
        raw["pricing"]["models"][name] = {
            "input_per_million": str(price_in),
            "output_per_million": str(price_out),
        }
    raw["auth"]["api_keys"] += [{"id": key, "key": f"{key}-secret"} for key in KEYS]
    raw["quotas"] = failover_budget(10**9)
    return raw


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("failover-hang-up")
    with mocks_with_faults("status=429", "delay=6") as (tired, slow):
        config = write_config(workdir, hang_up_config(tired, slow))
        with running_stack(workdir, config) as running:
            yield Stack(running, tired, slow)


def give_up(stack: Stack, key: str, model: str, stream: bool = False) -> dict[str, Any]:
    """The openai client asks ``model`` and times out before any answer: the request's
    log line."""
    client = OpenAI(
        base_url=f"{stack.gateway.base_url}/v1",
        api_key=f"{key}-secret",
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
    )
    with pytest.raises(openai.APITimeoutError):
        answer = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=ALLOWANCE, stream=stream
        )
        if stream:
            list(answer)  # type: ignore[call-overload]
    return log_line(stack.gateway, only_request_of(stack.gateway, key))


def cost(prices: tuple[Decimal, Decimal], completion: int = ALLOWANCE) -> Decimal:
    return (PROMPT * prices[0] + completion * prices[1]) / 10**6


def assert_charged(
    stack: Stack, key: str, line: dict[str, Any], provider: str, expected: Decimal, completion: int
) -> None:
    """Every ledger holds the estimate under ``provider``, at ``expected`` USD, and none
    under another provider."""
    assert (line["outcome"], line["http_status_code"]) == ("aborted", 0)
    assert (line["usage_estimated"], line["prompt_tokens"], line["completion_tokens"]) == (
        True,
        PROMPT,
        completion,
    )
    assert line["provider"] == provider
    assert Decimal(str(line["cost_usd"])) == expected
    samples = scrape(stack.gateway.metrics_url)
    for token_type, count in (("prompt", PROMPT), ("completion", completion)):
        labels = {"api_key_id": key, "token_type": token_type}
        assert metric(samples, "tokens_consumed_total", provider=provider, **labels) == count
        assert metric(samples, "tokens_consumed_total", **labels) == count
    found = metric(samples, "aigw_cost_usd_total", api_key_id=key, provider=provider)
    assert Decimal(str(found)) == expected
    assert metric(samples, "aigw_cost_usd_total", api_key_id=key) == found
    mine = wait_for(lambda: rollup_by_provider(stack.gateway, key), 15.0)
    assert list(mine) == [provider]
    assert (mine[provider]["total_tokens"], Decimal(mine[provider]["cost_usd"])) == (
        PROMPT + completion,
        expected,
    )
    assert wait_for(lambda: quota_used(stack.gateway, key) == PROMPT + completion, 10.0)


def test_a_client_gone_while_the_fallback_answers_is_charged_at_the_fallback(
    stack: Stack,
) -> None:
    line = give_up(stack, "left-at-fallback", "gpt-tired")
    assert line["model"] == "gpt-tired"
    assert_charged(stack, "left-at-fallback", line, "slow", cost(CHEAP), ALLOWANCE)


def test_a_stream_left_before_the_fallback_sent_anything_is_charged_its_prompt_there(
    stack: Stack,
) -> None:
    """A stream's provider read the prompt and stops generating when its reader leaves."""
    line = give_up(stack, "left-streaming-at-fallback", "gpt-tired", stream=True)
    assert_charged(stack, "left-streaming-at-fallback", line, "slow", cost(CHEAP, 0), 0)


def test_a_client_gone_while_the_primary_answers_is_charged_at_the_primary(
    stack: Stack,
) -> None:
    line = give_up(stack, "left-at-primary", "gpt-slow-first")
    assert_charged(stack, "left-at-primary", line, "slow", cost(DEAR), ALLOWANCE)
