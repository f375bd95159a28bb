"""A Bedrock stream cut before its ``metadata`` event, priced at the tier it asked for.

An OpenAI client sends ``service_tier: "flex"`` on a Bedrock route to pay the flex price;
the gateway asks ConverseStream for ``serviceTier: {"type": "flex"}``. Bedrock names the
tier that served the stream only in ``metadata``, its last event; but once it accepted the
request it serves flex and priority as asked (a model or region without the tier is
refused before the stream starts). A client that leaves before ``metadata`` must be billed
at the flex price, not at the standard price, which is twice it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from extproc.aws_eventstream import encode_event
from extproc.config import parse_config
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_service_tier_pricing import config_text, cost, priced

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"  # /bedrock/haiku in the default config
AUTH = {"authorization": "Bearer team1-key"}
EVENT_STREAM = {"content-type": "application/vnd.amazon.eventstream"}
# USD per million tokens: the default config's haiku price (0.25 input, 1.25 output), and
# the tiers this test prices apart (the test's own, not AWS's list prices).
FLEX = ("0.125", "0.625")
PRIORITY = ("0.3125", "1.5625")
TIERS = {
    HAIKU: {
        "flex": {"input_per_million": FLEX[0], "output_per_million": FLEX[1]},
        "priority": {"input_per_million": PRIORITY[0], "output_per_million": PRIORITY[1]},
    }
}


@pytest.fixture
async def gateway(services: Services) -> AsyncIterator[Processor]:
    """The default config with the tier prices above, its AWS credentials loaded."""
    runtime = Runtime(parse_config(config_text(TIERS), "gateway.yaml", {}), services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return encode_event(kind, orjson.dumps(payload))


# The answer's start: 40 characters of text, then the client leaves (no messageStop, no
# metadata: Bedrock never named the tier).
CUT_STREAM = event("messageStart", {"role": "assistant"}) + b"".join(
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x" * 10}})
    for _ in range(4)
)


@pytest.mark.parametrize(
    ("asked", "prices"), [("flex", FLEX), ("priority", PRIORITY)], ids=["flex", "priority"]
)
async def test_a_bedrock_stream_cut_before_its_metadata_is_billed_at_the_tier_it_asked_for(
    gateway: Processor, services: Services, asked: str, prices: tuple[str, str]
) -> None:
    body = {"model": "haiku", "stream": True, "service_tier": asked,
            "messages": [{"role": "user", "content": "Summarise these 40 tickets"}]}  # fmt: skip
    await run_stream(
        gateway,
        [
            request_headers("/bedrock/haiku/chat/completions", headers=AUTH),
            request_body(orjson.dumps(body)),
            response_headers(200, EVENT_STREAM),
            response_body(CUT_STREAM, end_of_stream=False),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["outcome"], line["usage_estimated"]) == ("aborted", True)
    assert line["service_tier"] == asked
    assert cost(line) == priced(line, *prices)
    # Not the standard price the stream was billed at before.
    assert cost(line) != priced(line, "0.25", "1.25")
