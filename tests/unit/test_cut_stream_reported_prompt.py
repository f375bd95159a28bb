"""A stream cut after Anthropic's ``message_start`` is billed the prompt Anthropic reported.

``message_start`` gives the prompt side exactly: input tokens, cache reads (a tenth of
the input price) and cache writes (1.25x, 2x for the 1-hour cache). A stream the
client leaves before ``message_delta`` used to be billed the gateway's own estimate of
the prompt instead, at the full input price: a 9,000-token cached prompt estimated at
10 tokens. What Anthropic reported is the bill's prompt side, as for a stream that
Anthropic failed; only the completion is estimated.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from extproc.processor import Processor
from extproc.runtime import Services
from tests.unit.test_cut_stream_server_tools import (
    OVERLOADED,
    SONNET,
    anthropic_stream,
    openai_stream,
    sse,
    text,
)

USAGE = {
    "input_tokens": 12,
    "cache_read_input_tokens": 9_000,
    "cache_creation_input_tokens": 300,
    "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
    "output_tokens": 1,
}
# What the default config's Sonnet prices make of USAGE's prompt side, in USD.
PROMPT_COST = (
    12 * Decimal("3.00") + 9_000 * Decimal("0.30") + 100 * Decimal("3.75") + 200 * Decimal("6.00")
) / 10**6


def message_start() -> bytes:
    message = {"id": "msg_1", "type": "message", "model": SONNET, "content": [], "usage": USAGE}
    return sse({"type": "message_start", "message": message})


CUT = message_start() + text(0, "The answer starts")


def assert_reported_prompt(line: dict[str, Any]) -> None:
    assert line["usage_estimated"] is True
    assert line["prompt_tokens"] == 12 + 9_000 + 300
    assert line["cached_tokens"] == 9_000
    assert line["cache_write_tokens"] == 300
    assert line["cache_write_1h_tokens"] == 200
    completion_cost = line["completion_tokens"] * Decimal(15) / 10**6
    assert Decimal(str(line["cost_usd"])) == PROMPT_COST + completion_cost


async def test_a_stream_the_client_left_is_billed_the_prompt_anthropic_reported(
    processor: Processor, services: Services
) -> None:
    line = await anthropic_stream(processor, services, CUT, ended=False)
    assert line["outcome"] == "aborted"
    assert_reported_prompt(line)


async def test_a_translated_stream_the_client_left_is_billed_the_reported_prompt(
    processor: Processor, services: Services
) -> None:
    line = await openai_stream(processor, services, CUT, ended=False)
    assert line["outcome"] == "aborted"
    assert_reported_prompt(line)


async def test_a_stream_cut_before_message_start_is_still_estimated(
    processor: Processor, services: Services
) -> None:
    # No count from Anthropic yet: the gateway's estimate of the prompt is all there is.
    stream = text(0, "Half an answer without its message_start")
    line = await anthropic_stream(processor, services, stream, ended=False)
    assert line["usage_estimated"] is True
    assert line["cached_tokens"] == 0
    assert 0 < line["prompt_tokens"] < 100


async def test_a_failed_stream_keeps_the_same_prompt_as_before(
    processor: Processor, services: Services
) -> None:
    line = await anthropic_stream(processor, services, CUT + OVERLOADED, ended=True)
    assert line["outcome"] == "upstream_error"
    assert_reported_prompt(line)
