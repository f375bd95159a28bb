"""The mock's ``end_inside`` fault: a stream whose body ends, cleanly, inside an event.

What a proxy makes of an upstream reset mid-line: two content events, the first half of
the next, then the body's end. The gateway's tests of streams cut inside an event rely on
exactly that shape, so it is checked here on the mock's raw bytes.
"""

from __future__ import annotations

import httpx
import pytest

from extproc.mock_llm.faults import FaultSpecError, parse_fault

FAULT = {"x-mock-fault": "end_inside=2"}
PROMPT = [{"role": "user", "content": "Tell me a long story"}]


def assert_ends_inside_an_event(body: bytes, deltas: bytes) -> None:
    whole, _, rest = body.rpartition(b"\n\n")
    assert whole.count(deltas) == 2  # the two whole content events
    assert rest.startswith((b"data: ", b"event: "))  # the start of the next, no end


async def test_an_openai_chat_stream_ends_inside_its_third_content_event(
    http: httpx.AsyncClient,
) -> None:
    answer = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True, "messages": PROMPT},
        headers={"authorization": "Bearer sk-test", **FAULT},
    )
    assert answer.status_code == 200
    assert b"[DONE]" not in answer.content
    assert_ends_inside_an_event(answer.content, b'"delta":{"content":')


async def test_an_anthropic_stream_ends_inside_its_third_delta(http: httpx.AsyncClient) -> None:
    answer = await http.post(
        "/v1/messages",
        json={"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": PROMPT},
        headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01", **FAULT},
    )
    assert answer.status_code == 200
    assert b"message_stop" not in answer.content
    assert_ends_inside_an_event(answer.content, b"event: content_block_delta")


def test_end_inside_needs_a_stream_that_began() -> None:
    assert parse_fault("end_inside=0").end_inside == 0
    with pytest.raises(FaultSpecError, match="excludes end_inside"):
        parse_fault("error_first=429;end_inside=1")
