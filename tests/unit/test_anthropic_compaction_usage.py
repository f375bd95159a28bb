"""Anthropic's server-side compaction is billed: its step's tokens, which the top-level
usage leaves out, reach the log line, the cost and the quota.

A request with the ``compact_20260112`` context edit (Claude Code, agents on long
sessions) may make Claude summarise the conversation before it answers. Anthropic lists
that step in ``usage.iterations`` as a ``compaction`` entry and bills it, while the
top-level ``input_tokens`` / ``output_tokens`` count only the answer's own (``message``)
iterations. Each test plays one request through the real processor (the default config,
``claude-3-5-haiku-latest`` on the ``mock-anthropic`` provider) on ``/v1/messages``, and
Claude on Bedrock's InvokeModel, which answers in the same shape.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from tests.unit.test_review_s36_anthropic import (
    JSON,
    MESSAGES,
    SSE,
    START_USAGE,
    body,
    counts,
    logged,
    message_delta,
    message_start,
    message_stop,
    play,
    text_block,
    usd,
)

# The answer's own counts: 10 uncached, 100 written (60 of them for an hour), 1000 read
# (START_USAGE), and 25 generated.
ANSWER = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 1000,
    "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60},
    "output_tokens": 25,
}
# The compaction step: it read 150,000 uncached tokens and 2,000 from the cache, wrote
# 500 (200 for an hour) and generated a 3,000-token summary.
COMPACTION = {
    "type": "compaction",
    "input_tokens": 150_000,
    "cache_creation_input_tokens": 500,
    "cache_read_input_tokens": 2_000,
    "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 200},
    "output_tokens": 3_000,
}
# The answer's own iteration, as the list repeats it (already in the top-level counts).
MESSAGE_ITERATION = {
    "type": "message",
    "input_tokens": 10,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 1000,
    "output_tokens": 25,
}
ITERATIONS = [COMPACTION, MESSAGE_ITERATION]

PROMPT = 1110 + 152_500
COMPLETION = 25 + 3_000
# claude-3-5-haiku-latest: input 0.80, cached 0.08, 5-minute writes 1.00, 1-hour writes
# 1.60, output 4.00 per million tokens.
PICOUSD = (
    (10 + 150_000) * 800_000
    + (1000 + 2_000) * 80_000
    + (40 + 300) * 1_000_000
    + (60 + 200) * 1_600_000
    + COMPLETION * 4_000_000
)
BILLED = {
    "prompt_tokens": PROMPT,
    "completion_tokens": COMPLETION,
    "total_tokens": PROMPT + COMPLETION,
    "cached_tokens": 3_000,
    "cache_write_tokens": 600,
    "cache_write_1h_tokens": 260,
    "server_tool_requests": None,
    "usage_reported": True,
    "usage_estimated": False,
    "cost_usd": usd(PICOUSD),
}


def compacted_stream(iterations: list[dict[str, Any]]) -> list[bytes]:
    """A stream that opened with a compaction block, then answered; its last
    ``message_delta`` lists the steps."""
    compaction_block = [
        b"event: content_block_start\ndata: "
        + orjson.dumps(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "compaction", "content": ""},
            }
        )
        + b"\n\n",
        b"event: content_block_delta\ndata: "
        + orjson.dumps(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "compaction_delta", "content": "Summary: the user..."},
            }
        )
        + b"\n\n",
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    ]
    return [
        message_start(START_USAGE),
        *compaction_block,
        *text_block(1, "Based on our conversation so far"),
        message_delta({**ANSWER, "iterations": iterations}),
        message_stop(),
    ]


async def test_a_compacting_stream_is_billed_its_compaction_step(
    processor: Processor, services: Services
) -> None:
    """The summary step read 152,500 tokens and wrote 3,000: the line and the cost count
    them beside the answer's, each at its price (cache reads, both kinds of writes)."""
    await play(processor, MESSAGES, body(MESSAGES, True), SSE, compacted_stream(ITERATIONS))

    line = logged(services)
    assert counts(line) == BILLED
    assert line["outcome"] == "completed"


async def test_a_compacting_message_is_billed_its_compaction_step(
    processor: Processor, services: Services
) -> None:
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": [
            {"type": "compaction", "content": "Summary: the user..."},
            {"type": "text", "text": "Based on our conversation so far"},
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {**ANSWER, "iterations": ITERATIONS},
    }
    await play(processor, MESSAGES, body(MESSAGES, False), JSON, [orjson.dumps(answer)])

    assert counts(logged(services)) == BILLED


async def test_message_iterations_alone_add_nothing(
    processor: Processor, services: Services
) -> None:
    """Server tools make several ``message`` iterations, which the top-level counts
    already sum: listed, they are not billed twice."""
    loop = [MESSAGE_ITERATION, {**MESSAGE_ITERATION, "type": "message"}]
    await play(processor, MESSAGES, body(MESSAGES, True), SSE, compacted_stream(loop))

    line = logged(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1110, 25)
    assert (line["cached_tokens"], line["cache_write_tokens"]) == (1000, 100)


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "compaction", "input_tokens": -5, "output_tokens": True},
        {"type": "compaction", "input_tokens": "150000"},
        "compaction",
        None,
    ],
)
async def test_a_malformed_compaction_entry_adds_nothing(
    processor: Processor, services: Services, entry: Any
) -> None:
    """A count that is no token count (negative, ``true``, a string) is read as none:
    it cannot lower or inflate the bill."""
    await play(processor, MESSAGES, body(MESSAGES, True), SSE, compacted_stream([entry]))

    line = logged(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1110, 25)
