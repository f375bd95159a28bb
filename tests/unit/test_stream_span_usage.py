"""The span of a stream carries the log line's usage, however the stream ends.

Envoy closes a request's span as soon as the client hangs up or the provider
resets, and reads no answer of the gateway's after that; it merges each answer's
``io.aigw`` metadata into what it holds, key by key. So every answer of a running
stream must carry what that stream would be charged were it cut there, and the
answers that settle it must carry the log line's counts.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.headers import METADATA_NAMESPACE
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.stages import telemetry
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
SSE = {"content-type": "text/event-stream"}
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")


def text_event(text: str) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":{"content":"' + text.encode() + b'"}}]}\n\n'


def opening(*chunks: bytes) -> list[Any]:
    """A streamed chat whose provider sent ``chunks``, none of them the end of the stream."""
    return [
        request_headers(CHAT, headers=AUTH),
        request_body(BODY),
        response_headers(200, SSE),
        *(response_body(chunk, end_of_stream=False) for chunk in chunks),
    ]


@pytest.fixture(autouse=True)
def every_chunk_refreshes(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process the chunks come microseconds apart: refresh the running counts at each,
    as a stream whose chunks are RUNNING_USAGE_INTERVAL_S apart does."""
    monkeypatch.setattr(telemetry, "RUNNING_USAGE_INTERVAL_S", 0.0)


def metadata(answer: Any) -> dict[str, Any]:
    """The gateway's metadata in ``answer`` (read with ``in``: indexing a protobuf map
    adds the key, and a continue answer is shared by every request)."""
    namespaces = answer.dynamic_metadata.fields
    if METADATA_NAMESPACE not in namespaces:
        return {}
    fields = namespaces[METADATA_NAMESPACE].struct_value.fields
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in fields.items()}


def as_envoy_holds_it(answers: list[Any]) -> dict[str, Any]:
    """The metadata Envoy has when the span closes: every answer's, merged key by key."""
    held: dict[str, Any] = {}
    for answer in answers:
        held.update(metadata(answer))
    return held


def usage_of(values: dict[str, Any]) -> dict[str, int]:
    return {key: int(values[key]) for key in USAGE_KEYS}


async def test_every_answer_of_a_running_stream_carries_what_a_cut_there_is_charged(
    processor: Processor, services: Services
) -> None:
    answers = await run_stream(
        processor, opening(text_event("abcdefgh"), text_event("abcdefgh"), text_event("abcd"))
    )
    chunk_answers = answers[3:]
    # The first names who asked and for what, so a span cut at once still says so.
    first = metadata(chunk_answers[0])
    assert (first["api_key_id"], first["model"], first["route"]) == (
        "team1",
        "gpt-4o-mini",
        "openai-chat",
    )
    # Each answer: the prompt as the quota estimate counts it, a token per 4 characters.
    completions = [int(metadata(answer)["completion_tokens"]) for answer in chunk_answers]
    assert completions == [2, 4, 5]

    # The client left after the third chunk: the log line charges what the span has.
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["outcome"], line["usage_estimated"]) == ("aborted", True)
    held = as_envoy_holds_it(answers)
    assert usage_of(held) == {key: line[key] for key in USAGE_KEYS}
    assert held["user_id"] == line["user_id"] == "alice"


async def test_a_stream_that_ends_without_a_report_leaves_the_log_lines_counts_on_the_span(
    processor: Processor, services: Services
) -> None:
    """A whole answer without usage is charged its estimate: the span carries it."""
    answers = await run_stream(
        processor,
        [*opening(text_event("abcdefgh"), b"data: [DONE]\n\n"), response_body(b"", True)],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["outcome"], line["usage_reported"], line["usage_estimated"]) == (
        "completed",
        False,
        True,
    )
    assert line["completion_tokens"] == 2
    assert usage_of(as_envoy_holds_it(answers)) == {key: line[key] for key in USAGE_KEYS}
    # Even when the client hangs up at [DONE] and Envoy drops the empty end of stream.
    assert usage_of(as_envoy_holds_it(answers[:-1])) == {key: line[key] for key in USAGE_KEYS}


async def test_a_providers_error_event_carries_the_charge_in_its_own_answer(
    processor: Processor, services: Services
) -> None:
    error = b'data: {"error":{"message":"boom","type":"server_error"}}\n\n'
    answers = await run_stream(processor, opening(text_event("abcdefgh"), error))
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["outcome"], line["usage_estimated"]) == ("upstream_error", True)
    # The client stops reading at the error: the answer to that chunk is the last Envoy reads.
    at_error = as_envoy_holds_it(answers)
    assert usage_of(at_error) == {key: line[key] for key in USAGE_KEYS}
    assert (at_error["error"], at_error["failure_type"]) == ("true", "server_error")


async def test_a_reported_usage_is_what_the_span_carries_from_its_chunk_on(
    processor: Processor, services: Services
) -> None:
    report = (
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,'
        b'"total_tokens":12}}\n\n'
    )
    answers = await run_stream(processor, opening(text_event("abcdefgh"), report))
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["usage_reported"], line["prompt_tokens"], line["completion_tokens"]) == (
        True,
        9,
        3,
    )
    assert usage_of(as_envoy_holds_it(answers)) == {key: line[key] for key in USAGE_KEYS}


async def test_a_fast_streams_running_counts_are_refreshed_at_most_every_interval(
    processor: Processor, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh costs a metadata Struct and a merge in Envoy: a stream whose chunks come
    faster than the interval sends the counts with its first chunk and then once per
    interval, and the answer that settles the usage still carries the log line's."""
    monkeypatch.setattr(telemetry, "RUNNING_USAGE_INTERVAL_S", 3600.0)
    chunks = [text_event("abcdefgh") for _ in range(5)]
    report = (
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":10,'
        b'"total_tokens":19}}\n\ndata: [DONE]\n\n'
    )
    answers = await run_stream(
        processor, [*opening(*chunks, report), response_body(b"", end_of_stream=True)]
    )
    with_counts = [answer for answer in answers[3:-1] if "completion_tokens" in metadata(answer)]
    # The first chunk's (who asked, and the running counts) and the report's.
    assert len(with_counts) == 2
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert usage_of(as_envoy_holds_it(answers)) == {key: line[key] for key in USAGE_KEYS}
    assert line["completion_tokens"] == 10


@pytest.mark.parametrize("apart", [True, False], ids=["report apart from DONE", "together"])
async def test_the_cost_reaches_envoy_when_the_client_leaves_at_done(
    processor: Processor, services: Services, apart: bool
) -> None:
    # The usage report's chunk is answered before the answer ends and is priced; the
    # [DONE] after it is the last answer Envoy applies when the client hangs up there:
    # its access log and span then have the log line's cost.
    report = (
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,'
        b'"total_tokens":12}}\n\n'
    )
    done = b"data: [DONE]\n\n"
    chunks = (report, done) if apart else (report + done,)
    answers = await run_stream(processor, opening(text_event("abcdefgh"), *chunks))
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["cost_usd"] > 0
    assert as_envoy_holds_it(answers)["cost_usd"] == pytest.approx(line["cost_usd"])
