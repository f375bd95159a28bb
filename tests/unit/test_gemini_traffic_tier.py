"""Vertex's traffic type prices a Gemini request: Priority PayGo, Flex PayGo and
Provisioned Throughput are billed at the tier the price table gives them.

Each request is played through the real processor with real ext_proc messages, its
answer shaped as Vertex writes it; each test reads the request's log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.testing import request_body, request_headers, response_body, response_headers
from extproc.translators.gemini_gemini import traffic_tier
from tests.unit.test_gemini_review import (
    BODY,
    KEY,
    PREFIX,
    log_line,
    memory_services,
    play,
    streamed,
)

# The mock Vertex fixture, re-exported so pytest finds it here.
from tests.unit.test_gemini_review import vertex as vertex

# $1 / $10 per million tokens on demand; priority at 1.8x, flex at half, and the
# provisioned capacity at the per-token price a reservation works out to.
PRICING = {
    "models": {
        "gemini-2.5-flash": {
            "input_per_million": 1,
            "output_per_million": 10,
            "service_tiers": {
                "priority": {"input_per_million": 1.8, "output_per_million": 18},
                "flex": {"input_per_million": 0.5, "output_per_million": 5},
                "provisioned_throughput": {"input_per_million": 0, "output_per_million": 0},
            },
        }
    }
}
# 1,000 prompt tokens and 100 output tokens (60 of them thinking).
USAGE = {
    "promptTokenCount": 1000,
    "candidatesTokenCount": 40,
    "thoughtsTokenCount": 60,
    "totalTokenCount": 1100,
}


def answer(traffic_type: str | None, *, finished: bool = True) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": "Hello!"}]}}
    if finished:
        candidate["finishReason"] = "STOP"
    usage = dict(USAGE)
    if traffic_type is not None:
        usage["trafficType"] = traffic_type
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash"}


async def generate(vertex: tuple[str, Path], document: dict[str, Any]) -> dict[str, Any]:
    services = memory_services()
    await play(
        vertex,
        [
            request_headers(f"{PREFIX}:generateContent", headers=KEY),
            request_body(orjson.dumps(BODY)),
            response_headers(200),
            response_body(orjson.dumps(document)),
        ],
        services,
        pricing=PRICING,
    )
    return log_line(services)


@pytest.mark.parametrize(
    ("traffic_type", "tier", "cost"),
    [
        # 1,000 x $1.8/M + 100 x $18/M
        ("ON_DEMAND_PRIORITY", "priority", 0.0036),
        ("ON_DEMAND_FLEX", "flex", 0.001),
        ("PROVISIONED_THROUGHPUT", "provisioned_throughput", 0.0),
        # Pay as you go: the model's own price, $0.001 + $0.001.
        ("ON_DEMAND", "on_demand", 0.002),
        # Gemini's own API names no traffic type.
        (None, None, 0.002),
    ],
)
async def test_an_answer_is_billed_at_the_tier_of_its_traffic_type(
    vertex: tuple[str, Path], traffic_type: str | None, tier: str | None, cost: float
) -> None:
    line = await generate(vertex, answer(traffic_type))
    assert (line["service_tier"], line["cost_usd"], line["cost_priced"]) == (tier, cost, True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1000, 100)


async def test_a_stream_is_billed_at_the_tier_its_reports_name(vertex: tuple[str, Path]) -> None:
    services = memory_services()
    first = answer("ON_DEMAND_PRIORITY", finished=False)
    first["usageMetadata"] = {"promptTokenCount": 1000, "trafficType": "ON_DEMAND_PRIORITY"}
    await streamed(
        vertex,
        services,
        [first, answer("ON_DEMAND_PRIORITY")],
        ended=True,
        pricing=PRICING,
    )
    line = log_line(services)
    assert (line["outcome"], line["service_tier"], line["cost_usd"]) == (
        "completed",
        "priority",
        0.0036,
    )


async def test_a_stream_cut_after_a_report_is_billed_at_that_reports_tier(
    vertex: tuple[str, Path],
) -> None:
    services = memory_services()
    first = answer("ON_DEMAND_FLEX", finished=False)
    await streamed(vertex, services, [first], ended=False, pricing=PRICING)
    line = log_line(services)
    # The running count (1,000 + 100) at flex prices.
    assert (line["service_tier"], line["cost_usd"]) == ("flex", 0.001)


def test_a_traffic_type_google_adds_later_is_priced_by_its_name_in_lowercase() -> None:
    assert traffic_tier({"trafficType": "ON_DEMAND_BATCH"}) == "on_demand_batch"
    assert traffic_tier({"trafficType": "TRAFFIC_TYPE_UNSPECIFIED"}) is None
    assert traffic_tier({"trafficType": "on demand; drop"}) is None
    assert traffic_tier({"trafficType": 2}) is None
    assert traffic_tier(None) is None
