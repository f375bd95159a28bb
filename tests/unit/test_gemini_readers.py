"""The readers of Gemini's native answers: usage, model and finish reasons from a
generateContent answer and a streamGenerateContent SSE stream, every byte passed on."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.context import Usage
from extproc.translators import gemini_gemini
from extproc.translators.base import counts_so_far, stream_failure
from extproc.translators.gemini_gemini import GenerateContentReader, StreamReader

MODEL = "gemini-2.5-flash"

# A generateContent answer as Google sends it: thinking on, a cached prefix, a tool's prompt.
ANSWER = orjson.dumps(
    {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": "Hello! How can I help?"}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 1200,
            "candidatesTokenCount": 8,
            "totalTokenCount": 1250,
            "thoughtsTokenCount": 30,
            "cachedContentTokenCount": 1024,
            "toolUsePromptTokenCount": 12,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}],
        },
        "modelVersion": MODEL,
        "responseId": "mAitaLmkHPPlz7IPvtfUqQ4",
    },
    option=orjson.OPT_INDENT_2,
)
# Input: the prompt (cache hits included) and the tool's prompt; output: answer and thoughts.
ANSWER_USAGE = Usage(1200 + 12, 8 + 30, 1200 + 12 + 8 + 30, cached_tokens=1024)


def event(data: dict[str, Any]) -> bytes:
    """One SSE event as Google writes it: CRLF line ends."""
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


def chunk(
    text: str, usage: dict[str, int], *, finish: str | None = None, index: int = 0
) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": text}]},
        "index": index,
    }
    if finish is not None:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": MODEL,
        "responseId": "r1",
    }


# The first event counts only the prompt; the later ones the output so far, cumulatively.
FIRST = event(chunk("Hello", {"promptTokenCount": 9, "totalTokenCount": 9}))
# Generated text that quotes a usage report must not be taken for one.
QUOTING = event(chunk(' "usageMetadata": {"promptTokenCount": 999}', {"promptTokenCount": 9}))
RUNNING = event(
    chunk(
        " world",
        {"promptTokenCount": 9, "candidatesTokenCount": 2, "thoughtsTokenCount": 19,
         "totalTokenCount": 30},
    )
)  # fmt: skip
LAST = event(
    chunk(
        "!",
        {"promptTokenCount": 9, "candidatesTokenCount": 3, "thoughtsTokenCount": 19,
         "cachedContentTokenCount": 4, "toolUsePromptTokenCount": 2, "totalTokenCount": 33},
        finish="STOP",
    )
)  # fmt: skip
STREAM = FIRST + QUOTING + RUNNING + LAST
STREAM_USAGE = Usage(9 + 2, 3 + 19, 9 + 2 + 3 + 19, cached_tokens=4)
STREAM_TEXT = "Hello" + ' \\"usageMetadata\\": {\\"promptTokenCount\\": 999}' + " world" + "!"
ERROR = event(
    {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
)


def feed_all(reader: GenerateContentReader | StreamReader, body: bytes, cuts: list[int]) -> None:
    """Feed ``body`` cut at the given points; the client must receive every byte as it
    came (a chunk that ends inside an event waits for the rest of it)."""
    points = sorted({0, *[cut % (len(body) + 1) for cut in cuts], len(body)})
    sent = b""
    for start, end in itertools.pairwise(points):
        part = body[start:end]
        out = reader.feed(part, end == len(body))
        sent += part if out is None else out
    assert sent == body


# --- generateContent -----------------------------------------------------------------------


def test_an_answer_reports_its_usage_model_and_finish_reasons() -> None:
    reader = GenerateContentReader()
    feed_all(reader, ANSWER, [])
    assert reader.usage == ANSWER_USAGE
    assert reader.response_model == MODEL
    assert reader.finish_reasons == ["STOP"]
    assert reader.status is None


def test_an_answer_cut_at_any_byte_reads_the_same() -> None:
    for cut in range(len(ANSWER) + 1):
        reader = GenerateContentReader()
        feed_all(reader, ANSWER, [cut])
        assert reader.usage == ANSWER_USAGE, cut


def test_an_answer_without_optional_counts_counts_what_it_has() -> None:
    reader = GenerateContentReader()
    body = {"usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3}}
    reader.feed(orjson.dumps(body), True)
    assert reader.usage == Usage(5, 3, 8)


def test_a_blocked_prompt_bills_its_prompt_only() -> None:
    reader = GenerateContentReader()
    body = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
        "modelVersion": MODEL,
    }
    reader.feed(orjson.dumps(body), True)
    assert reader.usage == Usage(7, 0, 7)
    assert reader.finish_reasons == []


def test_every_candidates_finish_reason_is_read() -> None:
    body = {
        "candidates": [
            {"index": 0, "finishReason": "STOP"},
            {"index": 1, "finishReason": "MAX_TOKENS"},
        ],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3},
    }
    reader = GenerateContentReader()
    reader.feed(orjson.dumps(body), True)
    assert reader.finish_reasons == ["STOP", "MAX_TOKENS"]


def test_a_finish_reason_that_is_no_name_of_googles_is_left_out() -> None:
    odd = [{"finishReason": "<html>" * 100}, {"finishReason": 3}, {"finishReason": "SAFETY"}]
    reader = GenerateContentReader()
    reader.feed(orjson.dumps({"candidates": odd}), True)
    assert reader.finish_reasons == ["SAFETY"]


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}}',
        b'{"candidates": [], "modelVersion": "gemini-2.5-flash"}',
        b'{"usageMetadata": {"candidatesTokenCount": 3}}',
        b'{"usageMetadata": {"promptTokenCount": true, "candidatesTokenCount": 3}}',
        b'{"usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": -3}}',
        b'{"usageMetadata": {"promptTokenCount": 5, "thoughtsTokenCount": "many"}}',
        b'{"usageMetadata": [5, 3]}',
        b"[1, 2]",
        b"",
    ],
    ids=[
        "html", "error-body", "no-usage", "no-prompt-count", "bool-count", "negative-count",
        "string-count", "usage-not-an-object", "not-an-object", "empty",
    ],
)  # fmt: skip
def test_an_answer_without_readable_usage_reports_none(body: bytes) -> None:
    reader = GenerateContentReader()
    assert reader.feed(body, True) is None
    assert reader.usage is None


def test_an_error_object_with_usage_still_reports_none() -> None:
    body = {"error": {"code": 500, "status": "INTERNAL"}, "usageMetadata": {"promptTokenCount": 5}}
    reader = GenerateContentReader()
    reader.feed(orjson.dumps(body), True)
    assert reader.usage is None


# --- streamGenerateContent?alt=sse ---------------------------------------------------------


def test_a_stream_reports_its_last_cumulative_usage() -> None:
    reader = StreamReader()
    feed_all(reader, STREAM, [])
    assert reader.usage == STREAM_USAGE
    assert reader.response_model == MODEL
    assert reader.finish_reasons == ["STOP"]
    assert reader.failure is None
    assert reader.status is None


def test_a_stream_cut_at_any_byte_reads_the_same() -> None:
    for cut in range(len(STREAM) + 1):
        reader = StreamReader()
        feed_all(reader, STREAM, [cut])
        assert reader.usage == STREAM_USAGE, cut
        assert reader.generated_chars == len(STREAM_TEXT), cut


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_a_stream_is_read_wherever_its_chunks_fall(cuts: list[int]) -> None:
    reader = StreamReader()
    feed_all(reader, STREAM, cuts)
    assert reader.usage == STREAM_USAGE


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_a_stream_with_lf_line_ends_is_read_alike(cuts: list[int]) -> None:
    reader = StreamReader()
    feed_all(reader, STREAM.replace(b"\r\n", b"\n"), cuts)
    assert reader.usage == STREAM_USAGE
    assert reader.finish_reasons == ["STOP"]


def test_the_last_event_without_its_blank_line_is_read_at_end_of_stream() -> None:
    reader = StreamReader()
    body = FIRST + LAST.rstrip(b"\r\n")
    # Its data is whole: read, and sent with the blank line that ends it.
    assert reader.feed(body, True) == body + b"\n\n"
    assert reader.usage == STREAM_USAGE


def test_a_stream_cut_mid_way_reports_the_count_so_far() -> None:
    reader = StreamReader()
    reader.feed(FIRST + RUNNING, False)
    # Gemini's running count: what it had counted when the stream was cut.
    assert reader.usage == Usage(9, 2 + 19, 9 + 2 + 19)
    counted = counts_so_far(reader)
    assert counted is not None and counted.error is None
    assert (counted.prompt_tokens, counted.completion_tokens) == (9, 2 + 19)
    assert reader.generated_chars == len("Hello world")


def test_a_stream_cut_before_any_output_count_reports_its_prompt_only() -> None:
    reader = StreamReader()
    reader.feed(FIRST, False)
    assert reader.usage is None
    counted = counts_so_far(reader)
    assert counted is not None
    assert (counted.prompt_tokens, counted.completion_tokens) == (9, None)


def test_a_stream_cut_before_any_report_reports_no_counts() -> None:
    reader = StreamReader()
    reader.feed(b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}\r\n\r\n', False)
    assert reader.usage is None
    counted = counts_so_far(reader)
    assert counted is not None
    assert (counted.prompt_tokens, counted.completion_tokens) == (None, None)
    assert reader.generated_chars == 2


def test_a_stream_that_ends_with_its_prompt_count_only_bills_the_prompt() -> None:
    blocked = event(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
    )
    reader = StreamReader()
    feed_all(reader, blocked, [])
    assert reader.usage == Usage(9, 0, 9)


def test_thinking_before_any_answer_text_is_a_running_output_count() -> None:
    thinking = event(
        {"candidates": [{"content": {"parts": [{"text": "Pondering", "thought": True}]}}],
         "usageMetadata": {"promptTokenCount": 9, "thoughtsTokenCount": 40}}
    )  # fmt: skip
    reader = StreamReader()
    reader.feed(FIRST + thinking, False)
    assert reader.usage == Usage(9, 40, 49)


def test_an_error_event_fails_the_stream_with_the_counts_so_far() -> None:
    reader = StreamReader()
    feed_all(reader, FIRST + RUNNING + ERROR, [17])
    assert reader.usage is None
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert failure.error.message == "The model is overloaded."
    assert failure.error.code == "unavailable"
    assert (failure.prompt_tokens, failure.completion_tokens) == (9, 2 + 19)


def test_nothing_after_an_error_event_makes_usage() -> None:
    reader = StreamReader()
    feed_all(reader, FIRST + ERROR + LAST, [])
    assert reader.usage is None
    failure = stream_failure(reader)
    assert failure is not None
    assert (failure.prompt_tokens, failure.completion_tokens) == (9, None)


def test_a_rate_limit_inside_a_stream_is_named_one() -> None:
    limited = event(
        {"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED"}}
    )
    reader = StreamReader()
    feed_all(reader, limited, [])
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert failure.error.error_type == "rate_limit_error"
    assert failure.error.code == "resource_exhausted"


@pytest.mark.parametrize(
    ("code", "status", "error_type"),
    [
        (503, "UNAVAILABLE", "overloaded_error"),
        (500, "INTERNAL", "api_error"),
        (504, "DEADLINE_EXCEEDED", "timeout_error"),
        (400, "INVALID_ARGUMENT", "invalid_request_error"),
        (503, None, "overloaded_error"),  # no name: its code says
        (409, "ABORTED", "upstream_error"),
    ],
)
def test_an_error_inside_a_stream_is_named_by_the_status_google_answers_it_with(
    code: int, status: str | None, error_type: str
) -> None:
    """As the same error in a 200 is (``answer_errors``): Gemini's "The model is
    overloaded" is its UNAVAILABLE, a 503, an overload."""
    error: dict[str, Any] = {"code": code, "message": "Failed."}
    if status is not None:
        error["status"] = status
    reader = StreamReader()
    feed_all(reader, event({"error": error}), [])
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert failure.error.error_type == error_type
    assert failure.error.code == (status.lower() if status else None)


def test_an_error_event_keeps_no_secret_and_no_endless_message() -> None:
    leaking = {"code": 401, "message": "bad token ya29.a0AfB_secret " + "x" * 5000}
    reader = StreamReader()
    feed_all(reader, event({"error": leaking}), [])
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert "ya29.a0AfB_secret" not in failure.error.message
    assert len(failure.error.message) <= 2000


def test_an_odd_error_object_still_fails_the_stream() -> None:
    reader = StreamReader()
    feed_all(reader, FIRST + event({"error": {"code": "x", "message": 5}}), [])
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert failure.error.message
    assert reader.usage is None


def test_every_candidates_finish_reason_is_read_once() -> None:
    usage = {"promptTokenCount": 9, "candidatesTokenCount": 4}
    stream = (
        event(chunk("a", usage, index=0))
        + event(chunk("b", usage, index=1, finish="MAX_TOKENS"))
        + event(chunk("c", usage, index=0, finish="STOP"))
        # An event that repeats a finished candidate's reason does not add it twice.
        + event(chunk("", usage, index=0, finish="STOP"))
    )
    reader = StreamReader()
    feed_all(reader, stream, [])
    assert reader.finish_reasons == ["STOP", "MAX_TOKENS"]


@pytest.mark.parametrize(
    "stream",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b'data: {"usageMetadata": {"promptTokenCount": 9, not json\r\n\r\n',
        b'data: {"usageMetadata": {"promptTokenCount": true}}\r\n\r\n',
        b"data: [1, 2]\r\n\r\n",
        b"\r\n\r\n\r\n",
    ],
    ids=["html", "broken-json", "bool-count", "not-an-object", "blank-lines"],
)
def test_a_garbage_stream_reports_no_usage(stream: bytes) -> None:
    reader = StreamReader()
    feed_all(reader, stream, [7])
    assert reader.usage is None
    assert reader.failure is None


def test_a_later_report_without_an_output_count_keeps_the_output_counted_before() -> None:
    # Google's last event (its finish reason): a stream that ended before it, text after
    # its last output count, is charged as one cut there (test_stream_usage_edges).
    prompt_only = event(chunk(".", {"promptTokenCount": 9, "totalTokenCount": 9}, finish="STOP"))
    reader = StreamReader()
    feed_all(reader, FIRST + RUNNING + prompt_only, [])
    # Counts only grow: a report that leaves the output out has not taken it back.
    assert reader.usage == Usage(9, 2 + 19, 9 + 2 + 19)


def test_a_malformed_report_keeps_the_one_before() -> None:
    broken = event({"usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": "x"}})
    reader = StreamReader()
    feed_all(reader, FIRST + RUNNING + broken, [])
    assert reader.usage == Usage(9, 2 + 19, 9 + 2 + 19)


def test_only_events_that_carry_a_report_an_error_or_a_finish_are_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[bytes] = []

    def loads(data: bytes) -> Any:
        parsed.append(data)
        return orjson.loads(data)

    fake = SimpleNamespace(loads=loads, JSONDecodeError=orjson.JSONDecodeError)
    monkeypatch.setattr(gemini_gemini, "orjson", fake)
    text_only = event({"candidates": [{"content": {"parts": [{"text": "more"}]}}]})
    reader = StreamReader()
    feed_all(reader, FIRST + text_only * 500 + LAST, [])
    assert reader.usage == STREAM_USAGE
    assert len(parsed) == 2
    assert reader.generated_chars == len("Hello") + 500 * len("more") + len("!")
