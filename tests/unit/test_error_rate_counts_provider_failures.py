"""A provider's failure inside a success status counts as a failed request in
``aigw_requests_total``, the counter the error-rate alert reads.

``AigwHighErrorRate`` selects ``status_code=~"5..|aborted|..."``. A stream the provider
cut with an error event after its 200 had left (OpenAI's ``{"error": ...}``, Anthropic's
``event: error``), or ended before its last event, was counted as ``200``: the user saw
the answer break off, ``aigw_upstream_errors_total`` counted ``stream_error``, and the
alert saw a success. Now the request counts once, as ``stream_error`` (and a pass-through
``200`` whose body was the provider's error as ``error_body``), never also as ``200``.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_accounting_review_streams import sample

AUTH = {"authorization": "Bearer team1-key"}
SSE = {"content-type": "text/event-stream"}
JSON = {"content-type": "application/json"}
CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"abcdefgh"}}]}\n\n'
OPENAI_ERROR = b'data: {"error":{"message":"The server had an error.","type":"server_error"}}\n\n'
DONE = b"data: [DONE]\n\n"
# Anthropic's own stream: message_start, "Once upon", then overloaded_error.
ANTHROPIC_CUT = Path(
    "tests/fixtures/openai_anthropic/streams/overloaded_mid_stream.anthropic.txt"
).read_bytes()


def chat(model: str, *, stream: bool = True) -> bytes:
    return orjson.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )


async def answered(
    processor: Processor,
    path: str,
    model: str,
    chunks: list[bytes],
    *,
    headers: dict[str, str] = SSE,
    ends: bool = True,
) -> None:
    """One streamed request of team1's, answered 200 with ``chunks``; ``ends=False``: the
    stream closes without Envoy's end of stream (the client or the upstream cut it)."""
    messages = [
        request_headers(path, headers=AUTH),
        request_body(chat(model, stream=headers is SSE)),
        response_headers(200, headers),
    ]
    messages += [
        response_body(chunk, end_of_stream=ends and i == len(chunks) - 1)
        for i, chunk in enumerate(chunks)
    ]
    await run_stream(processor, messages)


def statuses(services: Services, name: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for family in services.metrics.registry.collect():
        for s in family.samples:
            if s.name == name and "status_code" in s.labels:
                found[s.labels["status_code"]] = found.get(s.labels["status_code"], 0) + int(
                    s.value
                )
    return found


@pytest.mark.parametrize(
    ("path", "model", "chunks"),
    [
        ("/v1/chat/completions", "gpt-4o-mini", [CHUNK * 3, OPENAI_ERROR]),
        ("/anthropic/chat/completions", "claude-3-5-haiku-latest", [ANTHROPIC_CUT]),
        # Ended cleanly before its last event (no [DONE]): a proxy closing a cut stream.
        ("/v1/chat/completions", "gpt-4o-mini", [CHUNK * 3]),
    ],
    ids=["openai-error-event", "anthropic-error-translated", "ended-early"],
)
async def test_a_stream_the_provider_cut_counts_once_as_stream_error(
    processor: Processor, services: Services, path: str, model: str, chunks: list[bytes]
) -> None:
    await answered(processor, path, model, chunks)
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    # The client got the 200 and then the provider's failure.
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert statuses(services, "aigw_requests_total") == {"stream_error": 1}
    assert statuses(services, "aigw_upstream_errors_total") == {"stream_error": 1}


async def test_a_whole_stream_still_counts_as_200(processor: Processor, services: Services) -> None:
    await answered(processor, "/v1/chat/completions", "gpt-4o-mini", [CHUNK * 3, DONE])
    assert statuses(services, "aigw_requests_total") == {"200": 1}
    assert statuses(services, "aigw_upstream_errors_total") == {}


async def test_a_stream_cut_without_an_end_stays_aborted(
    processor: Processor, services: Services
) -> None:
    """The client left (or the upstream reset): the alert already counts ``aborted``."""
    await answered(processor, "/v1/chat/completions", "gpt-4o-mini", [CHUNK], ends=False)
    assert statuses(services, "aigw_requests_total") == {"aborted": 1}


async def test_a_200_whose_body_is_the_providers_error_counts_as_error_body(
    processor: Processor, services: Services
) -> None:
    """Passed through as it came (the client reads the provider's 200), counted once."""
    error = orjson.dumps({"error": {"message": "The server had an error.", "type": "server_error"}})
    await answered(processor, "/v1/chat/completions", "gpt-4o-mini", [error], headers=JSON)
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert statuses(services, "aigw_requests_total") == {"error_body": 1}
    assert statuses(services, "aigw_upstream_errors_total") == {"error_body": 1}
    assert sample(services, "aigw_requests_total") == 1
