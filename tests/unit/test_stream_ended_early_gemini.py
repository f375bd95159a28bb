"""A Gemini stream its provider ends early, cleanly, reaches google-genai as an error.

Google ends every streamGenerateContent answer with an event that carries each
candidate's finish reason (or says the prompt was blocked). A stream whose body ended
after text that no count of Google's covers and before any finish reason (a proxy, or an
upstream whose body ends with its connection, closing a cut stream as if whole) was passed
on as it came: google-genai yielded the chunks so far as the whole answer and the request
was logged completed, though it was already charged as one cut there. Now such a stream
ends with Google's error event, which the SDK raises as it raises Google's own failure
mid-stream. Each test plays the stream through the processor and hands what the client
receives to the real SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from extproc.testing import client_body
from tests.unit.test_gemini_review import (
    event,
    log_line,
    memory_services,
    streamed,
    vertex,
)

__all__ = ["vertex"]

ENDED_EARLY = "the provider's stream ended before it was complete"
PROMPT_ONLY = {"promptTokenCount": 9}  # what Vertex counts until its last event


def text(words: str, counts: dict[str, int] | None = None, finish: str | None = None) -> Any:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": words}]}}
    if finish is not None:
        candidate["finishReason"] = finish
    document: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}
    if counts is not None:
        document["usageMetadata"] = counts
    return document


async def received(vertex: tuple[str, Path], events: list[Any]) -> tuple[bytes, dict[str, Any]]:
    """What the client of a streamed call receives when Vertex sends ``events`` and ends
    the stream, and the request's log line."""
    services = memory_services()
    answers = await streamed(vertex, services, events, ended=True)
    sent = b"".join(event(e) for e in events)
    return client_body([sent], answers[3:]), log_line(services)


def genai_streams(body: bytes) -> list[str | None]:
    """The text of each chunk google-genai's stream yields for ``body``."""

    def reply(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    http = httpx.Client(transport=httpx.MockTransport(reply))
    options = types.HttpOptions(base_url="http://gateway", api_version="v1beta", httpx_client=http)
    client = genai.Client(api_key="team1-key", http_options=options)
    chunks = client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
    return [chunk.text for chunk in chunks]


async def test_a_stream_ended_before_its_last_event_is_raised_by_the_sdk(
    vertex: tuple[str, Path],
) -> None:
    body, line = await received(vertex, [text("Once upon a time", PROMPT_ONLY)])

    with pytest.raises(errors.ServerError) as raised:
        genai_streams(body)
    assert (raised.value.code, raised.value.status) == (502, "UNAVAILABLE")
    assert raised.value.message == ENDED_EARLY
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")
    # Charged as before: Vertex's prompt count, the text streamed estimated.
    assert (line["prompt_tokens"], line["usage_estimated"]) == (9, True)


async def test_a_whole_stream_is_still_the_answer(vertex: tuple[str, Path]) -> None:
    events = [
        text("Once upon", PROMPT_ONLY),
        text(" a time", {"promptTokenCount": 9, "candidatesTokenCount": 4}, finish="STOP"),
    ]
    body, line = await received(vertex, events)

    assert body == b"".join(event(e) for e in events)
    assert genai_streams(body) == ["Once upon", " a time"]
    assert (line["outcome"], line["completion_tokens"]) == ("completed", 4)


async def test_a_blocked_prompt_is_still_googles_answer(vertex: tuple[str, Path]) -> None:
    # No candidate and no finish reason: Google's whole answer to a prompt it blocked.
    blocked = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
               "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}}  # fmt: skip
    body, line = await received(vertex, [blocked])

    assert body == event(blocked)
    assert genai_streams(body) == [None]
    assert line["outcome"] == "completed"
