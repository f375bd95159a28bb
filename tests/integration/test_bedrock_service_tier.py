"""A flex request on a Bedrock route, through the real stack: Envoy, the gateway, its embedded
Valkey and the mock Bedrock (SigV4 checked), driven by the official ``openai`` client.

A team sends its batch work with ``service_tier="flex"`` to pay Bedrock's flex price. The
gateway must ask Converse for that tier, tell the client the tier that served it, and bill
the request at the flex price. The flex price here is the test's own (half of Nova Micro's
standard list price): the default config prices no Bedrock model that offers flex.
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
    mock_requests,
    running_stack,
    write_config,
)

KEY_ID, KEY = "batch-team", "batch-team-key-0f3c"
MODEL = "amazon.nova-micro-v1:0"
# USD per million tokens (input, output): the standard price and the flex one.
STANDARD = (Decimal("0.035"), Decimal("0.14"))
FLEX = (Decimal("0.0175"), Decimal("0.07"))
MESSAGES: Any = [{"role": "user", "content": "Tag these 40 support tickets by product area"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("bedrock-service-tier")
    raw = default_config()
    raw["auth"]["api_keys"].append({"id": KEY_ID, "key": KEY})
    raw["pricing"]["models"][MODEL] = {
        "input_per_million": str(STANDARD[0]),
        "output_per_million": str(STANDARD[1]),
        "service_tiers": {
            "flex": {"input_per_million": str(FLEX[0]), "output_per_million": str(FLEX[1])}
        },
    }
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def priced(line: dict[str, Any], prices: tuple[Decimal, Decimal]) -> Decimal:
    prompt, completion = int(line["prompt_tokens"]), int(line["completion_tokens"])
    return (prompt * prices[0] + completion * prices[1]) / 10**6


def test_a_flex_request_on_bedrock_is_served_shown_and_billed_at_flex(stack: LocalStack) -> None:
    chat = openai.OpenAI(base_url=f"{stack.base_url}/bedrock/{MODEL}", api_key=KEY, max_retries=0)
    whole = chat.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, service_tier="flex"
    )
    # Streamed without the usage chunk: the finish chunk is where the client sees the tier.
    with chat.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, service_tier="flex", stream=True
    ) as streamed:
        stream_id = streamed.headers["x-request-id"]
        chunks = list(streamed.parse())

    # Bedrock was asked for flex, whole and streamed.
    sent = [entry["json"] for entry in mock_requests(stack)[-2:]]
    assert [body.get("serviceTier") for body in sent] == [{"type": "flex"}] * 2
    # The client is told the tier that served it: on the completion, and on the chunk
    # that ends the stream (Bedrock names the tier last).
    assert whole.parse().service_tier == "flex"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].service_tier == "flex"
    # Each log line names the tier and costs the flex price: half the standard one.
    log = GatewayLog(stack.gateway_log)
    for request_id in (whole.headers["x-request-id"], stream_id):
        line = log.for_request(request_id)[0]
        assert line["service_tier"] == "flex"
        assert line["api_key_id"] == KEY_ID
        cost = Decimal(str(line["cost_usd"]))
        assert cost == priced(line, FLEX) > 0
        assert cost * 2 == priced(line, STANDARD)
