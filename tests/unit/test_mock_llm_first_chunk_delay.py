"""The mock's ``first_chunk_delay`` fault: a stream whose status and headers come at once,
and whose first event waits.

What a provider does while it reads a long prompt or a model thinks before its first
token: the client has its ``200`` and waits for the first chunk. The gateway's tests of a
client that leaves before that chunk rely on the status having left first (``delay``
holds the status too), so it is checked here on the mock's raw answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from extproc.mock_llm.faults import FaultSpecError, parse_fault

PROMPT = [{"role": "user", "content": "Tell me a long story"}]
OPENAI = {"authorization": "Bearer sk-test"}
ANTHROPIC = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
STREAMS = [
    ("/v1/chat/completions", OPENAI, {"model": "gpt-4o-mini", "stream": True, "messages": PROMPT}),
    ("/v1/messages", ANTHROPIC,
     {"model": "claude-3-5-haiku-latest", "max_tokens": 50, "stream": True, "messages": PROMPT}),
    ("/v1/responses", OPENAI, {"model": "gpt-4o-mini", "stream": True, "input": "a story"}),
    ("/v1/completions", OPENAI, {"model": "gpt-4o-mini", "stream": True, "prompt": "a story"}),
]  # fmt: skip
IDS = ["openai chat", "anthropic messages", "responses", "completions"]


@pytest.mark.parametrize(("path", "headers", "body"), STREAMS, ids=IDS)
async def test_the_status_comes_before_the_first_event_waits(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], body: dict[str, Any]
) -> None:
    """A minute's wait before the first event: the status and headers are there long
    before it (the mock's shutdown ends the wait once the test is done)."""
    fault = {"x-mock-fault": "first_chunk_delay=60"}
    request = http.build_request("POST", path, json=body, headers={**headers, **fault})
    answer = await asyncio.wait_for(http.send(request, stream=True), 30)
    try:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
    finally:
        await answer.aclose()


@pytest.mark.parametrize(("path", "headers", "body"), STREAMS, ids=IDS)
async def test_the_stream_after_the_wait_is_whole(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], body: dict[str, Any]
) -> None:
    plain = await http.post(path, json=body, headers=headers)
    fault = {"x-mock-fault": "first_chunk_delay=0.05"}
    waited = await http.post(path, json=body, headers={**headers, **fault})
    assert waited.status_code == plain.status_code == 200
    # The same events (ids and timestamps aside): as many, of the same kinds.
    assert waited.text.count("\n\n") == plain.text.count("\n\n")


def test_the_wait_is_before_the_first_event_only() -> None:
    fault = parse_fault("first_chunk_delay=2.5")
    assert fault.pause_before_event(0, 0.1) == 2.5
    assert fault.pause_before_event(1, 0.1) == 0.1
    assert parse_fault("interval=0.1").pause_before_event(0, 0.1) == 0


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_wait_that_is_no_number_of_seconds_is_refused(value: str) -> None:
    with pytest.raises(FaultSpecError, match="first_chunk_delay"):
        parse_fault(f"first_chunk_delay={value}")
