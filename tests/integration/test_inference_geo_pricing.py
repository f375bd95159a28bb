"""Requests run in the US only are billed at the US multiplier, through the real stack:
Envoy, the gateway, its embedded Valkey and the mock provider, driven by the official
``anthropic`` and ``openai`` clients.

Anthropic bills a request it ran on US infrastructure only (``inference_geo: "us"``, or a
workspace whose default geography is the US) at 1.1x every token price, and says where it
ran in ``usage.inference_geo``; the mock reports the geography asked for, or the
workspace default its ``x-mock-inference-geo`` header plays. The log line, the cost
counter and ``extproc usage report`` agree, to the picodollar, on 1.1x the tokens' cost.
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
    default_config,
    metric,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
    write_config,
)

KEYS = {
    "geo-us": "geo-us-key-4c1e",
    "geo-openai": "geo-openai-key-8b2d",
    "geo-openai-asks": "geo-openai-asks-key-2f9a",
}
SONNET = "claude-sonnet-4-0"
# The default config's price of Sonnet (input, output, USD per million), and the
# multiplier of its US-only inference this test gives the table.
SONNET_PRICE = (Decimal("3.00"), Decimal("15.00"))
US = Decimal("1.1")
QUESTION = "Summarise the contract for the US legal team"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("inference-geo")
    raw = default_config()
    raw["auth"]["api_keys"].extend({"id": name, "key": key} for name, key in KEYS.items())
    raw["pricing"]["inference_geos"] = {"us": "1.1"}
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def at_us_price(line: dict[str, Any]) -> Decimal:
    prompt, completion = int(line["prompt_tokens"]), int(line["completion_tokens"])
    return (prompt * SONNET_PRICE[0] + completion * SONNET_PRICE[1]) * US / 10**6


def lines_of(stack: LocalStack, ids: list[str]) -> list[dict[str, Any]]:
    log = GatewayLog(stack.gateway_log)
    return [log.for_request(request_id)[0] for request_id in ids]


def assert_the_bill_agrees(stack: LocalStack, key: str, lines: list[dict[str, Any]]) -> None:
    billed = sum(cost(line) for line in lines)

    def row() -> dict[str, Any] | None:
        found = usage_rows(stack, "api_key").get(key)
        return found if found is not None and found["requests"] == len(lines) else None

    flushed = wait_for(row, 20)
    assert flushed, f"no rollup of {len(lines)} requests for {key}"
    assert Decimal(flushed["cost_usd"]) == billed
    assert metric(scrape(stack.metrics_url), "aigw_cost_usd_total", api_key_id=key) == float(billed)


def test_a_us_only_request_is_billed_at_the_us_multiplier(stack: LocalStack) -> None:
    claude = anthropic.Anthropic(base_url=stack.base_url, api_key=KEYS["geo-us"], max_retries=0)
    messages: Any = [{"role": "user", "content": QUESTION}]
    raw = claude.messages.with_raw_response.create(
        model=SONNET, max_tokens=100, messages=messages, inference_geo="us"
    )
    assert raw.parse().usage.inference_geo == "us"
    with claude.messages.with_streaming_response.create(
        model=SONNET, max_tokens=100, messages=messages, inference_geo="us", stream=True
    ) as response:
        stream_id = response.headers["x-request-id"]
        events = list(response.parse())
    assert events[-1].type == "message_stop"
    lines = lines_of(stack, [raw.headers["x-request-id"], stream_id])
    for line in lines:
        assert line["inference_geo"] == "us"
        assert cost(line) == at_us_price(line) > 0
    assert_the_bill_agrees(stack, "geo-us", lines)


def billed_at_us_price_json_and_streamed(stack: LocalStack, key_id: str, **extra: Any) -> None:
    """An OpenAI client's JSON and streamed chat for Claude, sent with ``extra``
    (headers, body fields), each logged as run in the US and billed at its multiplier,
    the log lines, the cost counter and the report agreeing."""
    chat = openai.OpenAI(
        base_url=f"{stack.base_url}/anthropic", api_key=KEYS[key_id], max_retries=0
    )
    messages: Any = [{"role": "user", "content": QUESTION}]
    raw = chat.chat.completions.with_raw_response.create(model=SONNET, messages=messages, **extra)
    with chat.chat.completions.with_streaming_response.create(
        model=SONNET, messages=messages, stream=True, stream_options={"include_usage": True},
        **extra,
    ) as response:  # fmt: skip
        stream_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert chunks[-1].usage is not None
    lines = lines_of(stack, [raw.headers["x-request-id"], stream_id])
    for line in lines:
        assert line["inference_geo"] == "us"
        assert cost(line) == at_us_price(line) > 0
    assert_the_bill_agrees(stack, key_id, lines)


def test_an_openai_client_in_a_us_workspace_is_billed_at_the_us_multiplier(
    stack: LocalStack,
) -> None:
    # The workspace runs every request in the US by default: the client names nothing.
    billed_at_us_price_json_and_streamed(
        stack, "geo-openai", extra_headers={"x-mock-inference-geo": "us"}
    )


def test_an_openai_client_asking_for_us_only_inference_is_billed_at_the_us_multiplier(
    stack: LocalStack,
) -> None:
    # The gateway's inference_geo extension of the chat body, passed on to Anthropic: no
    # workspace default, the client itself asks.
    billed_at_us_price_json_and_streamed(
        stack, "geo-openai-asks", extra_body={"inference_geo": "us"}
    )
    chat = openai.OpenAI(
        base_url=f"{stack.base_url}/anthropic", api_key=KEYS["geo-openai-asks"], max_retries=0
    )
    messages: Any = [{"role": "user", "content": QUESTION}]
    # A value that names no geography is the client's 400, naming the field.
    with pytest.raises(openai.BadRequestError) as refused:
        chat.chat.completions.create(
            model=SONNET, messages=messages, extra_body={"inference_geo": "US only"}
        )
    assert refused.value.body["param"] == "inference_geo"  # type: ignore[index]
