"""A compacting request is judged for the long-context price step by step, not on the sum
of its steps' prompts.

Anthropic's server-side compaction summarises the conversation in a sampling step of its
own before the answer, and lists each step in ``usage.iterations``. Each step is a model
call with its own prompt: the compaction step reads the whole conversation, the answer
only the summary. The gateway adds both to the request's counts (both are billed), and
compared that sum with the long-context threshold: a 180K-token compaction and a
23K-token answer, neither above 200K, were billed wholly at Sonnet's long-context price
(2x input, 1.5x output). Each test plays one request through the real processor with
the default config (``claude-sonnet-4-0``: 3.00 / 15.00 per million, 6.00 / 22.50 above
200K tokens; cache reads 0.30 / 0.60).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from extproc.config import load_config
from extproc.runtime import Services
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.sse_play import only_line, play_sse

SONNET = "claude-sonnet-4-0"
AUTH = {"x-api-key": "team1-key"}


def step(kind: str, uncached: int, read: int, output: int) -> dict[str, Any]:
    return {"type": kind, "input_tokens": uncached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": read, "output_tokens": output}  # fmt: skip


def answer_usage(compaction: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The top-level counts are the answer's own; the list repeats them after the step."""
    top = {k: v for k, v in answer.items() if k != "type"}
    return {**top, "iterations": [compaction, answer]}


def message(usage: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": SONNET,
            "content": [
                {"type": "compaction", "content": "Summary: ..."},
                {"type": "text", "text": "Based on our conversation"},
            ],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    )


def request(stream: bool = False) -> bytes:
    return orjson.dumps({"model": SONNET, "max_tokens": 4000, "stream": stream,
                         "messages": [{"role": "user", "content": "Continue"}]})  # fmt: skip


def usd(picousd: int) -> Decimal:
    return Decimal(picousd) / 10**12


async def billed(services: Services, usage: dict[str, Any]) -> dict[str, Any]:
    gateway = processor_for(load_config("config/gateway.yaml"), services)
    await run_stream(gateway, [
        request_headers("/v1/messages", headers=AUTH), request_body(request()),
        response_headers(200, {"content-type": "application/json"}),
        response_body(message(usage)),
    ])  # fmt: skip
    return only_line(services)


# A 180,000-token compaction step (150,000 uncached, 30,000 read from the cache) writing a
# 3,500-token summary, then a 23,000-token answer of 1,000 tokens.
COMPACTION = step("compaction", 150_000, 30_000, 3_500)
ANSWER = step("message", 23_000, 0, 1_000)


async def test_two_short_steps_are_billed_at_the_short_price(services: Services) -> None:
    line = await billed(services, answer_usage(COMPACTION, ANSWER))
    # Both billed: 203,000 prompt tokens, more than 200K in all.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (203_000, 4_500)
    short = (150_000 + 23_000) * 3_000_000 + 30_000 * 300_000 + 4_500 * 15_000_000
    assert Decimal(str(line["cost_usd"])) == usd(short)
    assert line["long_context"] is False


async def test_a_long_compaction_step_is_billed_long_and_its_short_answer_short(
    services: Services,
) -> None:
    compaction = step("compaction", 220_000, 30_000, 3_500)
    line = await billed(services, answer_usage(compaction, ANSWER))
    long = 220_000 * 6_000_000 + 30_000 * 600_000 + 3_500 * 22_500_000
    short = 23_000 * 3_000_000 + 1_000 * 15_000_000
    assert Decimal(str(line["cost_usd"])) == usd(long + short)
    assert line["long_context"] is True


async def test_a_long_request_without_compaction_is_still_billed_long(services: Services) -> None:
    line = await billed(services, {"input_tokens": 203_000, "output_tokens": 1_000})
    assert Decimal(str(line["cost_usd"])) == usd(203_000 * 6_000_000 + 1_000 * 22_500_000)
    assert line["long_context"] is True


async def test_a_compacting_stream_is_judged_step_by_step(services: Services) -> None:
    def event(kind: str, data: dict[str, Any]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": SONNET,
             "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": 23_000, "output_tokens": 1}}  # fmt: skip
    events = [
        event("message_start", {"type": "message_start", "message": start}),
        event("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}),
        event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "Based on"}}),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": answer_usage(COMPACTION, ANSWER)}),
        event("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    gateway = processor_for(load_config("config/gateway.yaml"), services)
    await play_sse(gateway, "/v1/messages", AUTH, request(stream=True), events)
    line = only_line(services)
    short = (150_000 + 23_000) * 3_000_000 + 30_000 * 300_000 + 4_500 * 15_000_000
    assert (line["prompt_tokens"], Decimal(str(line["cost_usd"]))) == (203_000, usd(short))
