"""Review s42: Google's models behind the gateway, billed as Google bills them.

A team calls Gemini through the gateway with the ``openai`` SDK (Vertex's OpenAI-compatible
endpoint) and with Google's own SDK (Gemini's API). Each request is played through the
real processor with real ext_proc messages, its answer shaped as Vertex writes it; each
test reads what the team's operator reads: the request's log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_vertex_review import (
    GEMINI,
    JSON,
    OPENAI_KEY,
    PROMPT,
    SSE,
    vertex_gateway,
)

# $1 / $10 per million tokens on demand; Priority PayGo at 1.8x, Flex PayGo at half, and
# Provisioned Throughput, paid for ahead, at nothing per token.
TIERED = {
    "input_per_million": 1,
    "output_per_million": 10,
    "service_tiers": {
        "priority": {"input_per_million": 1.8, "output_per_million": 18},
        "flex": {"input_per_million": 0.5, "output_per_million": 5},
        "provisioned_throughput": {"input_per_million": 0, "output_per_million": 0},
    },
}


def tiered_gemini(raw: dict[str, Any]) -> None:
    raw["pricing"]["models"]["gemini-flash"] = TIERED


def openai_usage(traffic_type: str | None, completion: int = 100) -> dict[str, Any]:
    """A usage object as Vertex's OpenAI-compatible endpoint writes it: Gemini's thinking
    named beside the completion, and the traffic type that served the request under
    ``extra_properties.google`` (Google's own field; a chat completion has no top-level
    ``service_tier`` there)."""
    usage: dict[str, Any] = {
        "prompt_tokens": 1000,
        "completion_tokens": completion - 60,
        "completion_tokens_details": {"reasoning_tokens": 60},
        "total_tokens": 1000 + completion,
    }
    if traffic_type is not None:
        usage["extra_properties"] = {"google": {"traffic_type": traffic_type}}
    return usage


def completion(traffic_type: str | None) -> dict[str, Any]:
    return {
        "id": "fb2gafiLBIK9odAP1tGMmQc",
        "object": "chat.completion",
        "created": 1772141949,
        "model": GEMINI,
        "system_fingerprint": "",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": "Hello!"},
            }
        ],
        "usage": openai_usage(traffic_type),
    }


def chunk(text: str, usage: dict[str, Any], finish: str | None = None) -> bytes:
    """A chunk of Vertex's stream, whose usage is a running count on every chunk."""
    choice = {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": finish}
    document = {
        "id": "fb2gafiLBIK9odAP1tGMmQc",
        "object": "chat.completion.chunk",
        "created": 1772141949,
        "model": GEMINI,
        "choices": [choice],
        "usage": usage,
    }
    return b"data: " + orjson.dumps(document) + b"\n\n"


async def openai_call(
    tmp_path: Path, body: dict[str, Any], headers: dict[str, str], chunks: list[bytes]
) -> dict[str, Any]:
    """One OpenAI chat call to Gemini on Vertex answered with ``chunks``; its log line."""
    log = MemoryLog()
    async with vertex_gateway(tmp_path, log, tiered_gemini) as processor:
        await run_stream(
            processor,
            [
                request_headers("/v1/chat/completions", headers=OPENAI_KEY),
                request_body(orjson.dumps({"model": "gemini-flash", "messages": PROMPT, **body})),
                response_headers(200, headers),
                *(response_body(part, end_of_stream=False) for part in chunks),
                response_body(b"", end_of_stream=True),
            ],
        )
    [line] = log.lines()
    return line


# --- OpenAI clients on Gemini: Vertex's traffic type prices the request ------------------


@pytest.mark.parametrize(
    ("traffic_type", "tier", "cost"),
    [
        # 1,000 x $1.8/M + 100 x $18/M
        ("ON_DEMAND_PRIORITY", "priority", 0.0036),
        ("ON_DEMAND_FLEX", "flex", 0.001),
        ("PROVISIONED_THROUGHPUT", "provisioned_throughput", 0.0),
        # Pay as you go: the model's own price, $0.001 + $0.001.
        ("ON_DEMAND", "on_demand", 0.002),
        (None, None, 0.002),
    ],
)
async def test_an_openai_answer_is_billed_at_the_tier_vertex_served_it_at(
    tmp_path: Path, traffic_type: str | None, tier: str | None, cost: float
) -> None:
    # Priority PayGo costs 1.8x, Flex PayGo half, and Provisioned Throughput was paid for
    # ahead. Vertex says which served the request in usage.extra_properties.google; the
    # same request through Gemini's own API is billed at that tier already.
    line = await openai_call(tmp_path, {}, JSON, [orjson.dumps(completion(traffic_type))])
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1000, 100)
    assert (line["service_tier"], line["cost_usd"], line["cost_priced"]) == (tier, cost, True)


@pytest.mark.parametrize("asked_for_usage", [True, False], ids=["with-usage", "without-usage"])
async def test_an_openai_stream_is_billed_at_the_tier_its_running_counts_name(
    tmp_path: Path, asked_for_usage: bool
) -> None:
    body: dict[str, Any] = {"stream": True}
    if asked_for_usage:
        body["stream_options"] = {"include_usage": True}
    chunks = [
        chunk("Hello", openai_usage("ON_DEMAND_PRIORITY", completion=61)),
        chunk("!", openai_usage("ON_DEMAND_PRIORITY"), finish="stop"),
        b"data: [DONE]\n\n",
    ]
    line = await openai_call(tmp_path, body, SSE, chunks)
    assert (line["outcome"], line["prompt_tokens"], line["completion_tokens"]) == (
        "completed",
        1000,
        100,
    )
    assert (line["service_tier"], line["cost_usd"]) == ("priority", 0.0036)
