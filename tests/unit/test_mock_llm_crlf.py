"""The mock's ``crlf`` and ``end_before_blank`` faults: an OpenAI chat stream with CRLF line
ends (as servers built on sse-starlette write), and one whose body ends after an event's
line, before the blank line that ends the event."""

from __future__ import annotations

import re

import httpx
import pytest

from extproc.mock_llm.faults import FaultSpecError, parse_fault

PROMPT = [{"role": "user", "content": "Tell me a long story"}]
CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": PROMPT}


async def stream(http: httpx.AsyncClient, fault: str) -> bytes:
    answer = await http.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={"authorization": "Bearer sk-test", "x-mock-fault": fault},
    )
    assert answer.status_code == 200
    return answer.content


async def test_every_line_of_a_crlf_stream_ends_with_crlf(http: httpx.AsyncClient) -> None:
    body = await stream(http, "crlf=1")
    assert body.endswith(b"data: [DONE]\r\n\r\n")
    assert re.search(rb"[^\r]\n", body) is None


async def test_a_stream_ends_after_its_third_content_events_line(http: httpx.AsyncClient) -> None:
    for fault, end in (("end_before_blank=2", b"\n"), ("end_before_blank=2;crlf=1", b"\r\n")):
        body = await stream(http, fault)
        whole, _, last = body.rpartition(end * 2)
        assert whole.count(b'"delta":{"content":') == 2  # the two whole content events
        assert last.startswith(b"data: {") and last.endswith(b"}" + end)
        assert b"[DONE]" not in body


def test_end_before_blank_needs_a_stream_that_began() -> None:
    assert parse_fault("end_before_blank=0").end_before_blank == 0
    with pytest.raises(FaultSpecError, match="excludes"):
        parse_fault("error_first=429;end_before_blank=1")
