"""A stream cut short is charged and recorded with an estimate of what it produced."""

from __future__ import annotations

import orjson

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.stages.partial_usage import generated_chars
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x" * 40}]}
)


def test_text_is_counted_in_every_provider_stream_shape() -> None:
    assert generated_chars(b'data: {"choices":[{"delta":{"content":"Hello"}}]}\n\n') == 5
    assert generated_chars(b'data: {"delta":{"type":"text_delta","text":"Bonjour"}}\n\n') == 7
    assert generated_chars(b'{"delta":{"toolUse":{"input":"{}"}},"p":"abc"}') == 2
    assert generated_chars(b'"arguments":"{\\"a\\":1}"') == 9
    assert generated_chars(b"not json at all") == 0


async def test_a_stream_the_client_left_is_recorded_with_its_estimate(
    processor: Processor, services: Services
) -> None:
    events = b"".join(
        b'data: {"choices":[{"index":0,"delta":{"content":"abcdefgh"}}]}\n\n' for _ in range(3)
    )
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(BODY),
            response_headers(200, {"content-type": "text/event-stream"}),
            # The stream ends here: no end_of_stream, no usage chunk.
            response_body(events, end_of_stream=False),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["outcome"] == "aborted"
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # 24 characters streamed: 6 tokens; the prompt as the quota estimate counts it.
    assert line["completion_tokens"] == 6
    assert line["prompt_tokens"] == 40 // 4 + 4
    assert line["total_tokens"] == line["prompt_tokens"] + 6
    samples = {
        (s.labels["token_type"], s.value)
        for family in services.metrics.registry.collect()
        if family.name == "tokens_consumed"
        for s in family.samples
        if s.name == "tokens_consumed_total"
    }
    assert samples == {("prompt", 14.0), ("completion", 6.0)}


async def test_a_whole_stream_is_never_estimated(processor: Processor, services: Services) -> None:
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(BODY),
            response_headers(200, {"content-type": "text/event-stream"}),
            response_body(b"data: garbage\n\ndata: [DONE]\n\n", end_of_stream=True),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["outcome"] == "completed"
    assert (line["usage_reported"], line["usage_estimated"]) == (False, False)
    assert line["total_tokens"] == 0
