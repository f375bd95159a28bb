"""A stream without a usage report (cut short, or from a provider that sends none) is
charged and recorded with an estimate of what it produced."""

from __future__ import annotations

import orjson

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.translators.generated_text import generated_chars
from tests.unit.sse_play import only_line, play_sse

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
    # The stream ends here: no end_of_stream, no usage chunk.
    await play_sse(processor, CHAT, AUTH, BODY, [events], ended=False)
    line = only_line(services)
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


async def test_a_whole_stream_without_a_usage_report_is_charged_its_estimate(
    processor: Processor, services: Services
) -> None:
    """A provider that ignores include_usage: the bill, the metrics and the quota charge the
    estimate of what it streamed, not 0 tokens in the log and the reservation in the quota."""
    events = b"".join(
        b'data: {"choices":[{"index":0,"delta":{"content":"abcdefgh"}}]}\n\n' for _ in range(3)
    )
    await play_sse(processor, CHAT, AUTH, BODY, [events + b"data: [DONE]\n\n"])
    line = only_line(services)
    assert line["outcome"] == "completed"
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # 24 characters streamed: 6 tokens; the prompt as the quota estimate counts it.
    assert line["completion_tokens"] == 6
    assert line["prompt_tokens"] > 0
    assert line["total_tokens"] == line["prompt_tokens"] + 6


async def test_a_stream_of_garbage_is_charged_only_its_prompt(
    processor: Processor, services: Services
) -> None:
    await play_sse(processor, CHAT, AUTH, BODY, [b"data: garbage\n\ndata: [DONE]\n\n"])
    line = only_line(services)
    assert line["outcome"] == "completed"
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert line["completion_tokens"] == 0
    assert line["total_tokens"] == line["prompt_tokens"] > 0


CONTENT = b'data: {"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":"stop"}]}\n\n'
USAGE = (
    b'data: {"choices":[],"usage":{"prompt_tokens":900,"completion_tokens":700,'
    b'"total_tokens":1600}}\n\n'
)


async def test_a_stream_cut_after_its_usage_report_keeps_the_report(
    processor: Processor, services: Services
) -> None:
    # The client, which did not ask for usage, hung up before [DONE]: its answer had ended
    # (every choice finished, then the usage-only chunk), so it is completed, not aborted.
    await play_sse(processor, CHAT, AUTH, BODY, [CONTENT, USAGE], ended=False)
    line = only_line(services)
    assert line["outcome"] == "completed"
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (900, 700)


async def test_an_anthropic_stream_cut_before_message_stop_keeps_its_report(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "stream": True,
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "x" * 40}],
        }
    )
    events = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-3-5",'
        b'"usage":{"input_tokens":500,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hello"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":300}}\n\n'
    )
    await play_sse(
        processor, "/v1/messages", {"x-api-key": "team1-key"}, body, [events], ended=False
    )
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (500, 300)
    assert line["usage_reported"] is True


async def test_an_end_marker_split_over_two_chunks_still_ends_the_stream(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    events = CONTENT + USAGE + b"data: [DONE]\n\n"
    cut = events.index(b"[DONE]") + 3
    # The client read [DONE] and hung up: Envoy drops the empty end of stream.
    await play_sse(processor, CHAT, AUTH, body, [events[:cut], events[cut:]], ended=False)
    line = only_line(services)
    assert line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (900, 700)
