"""Fuzzing the upstream answers of every route ``test_fuzz_parsers`` leaves out.

Providers are outside the gateway's control: whatever bytes they answer, cut into
whatever chunks Envoy delivers, each response reader or translator below returns bytes
or None from ``feed``, raises nothing, and reports a usage that is None or non-negative
(Gemini's readers, the Responses API's, legacy completions', OpenAI and Bedrock and
Vertex embeddings, Converse and InvokeModel pass-through, Claude on Bedrock and on
Vertex, Bedrock's token count, the error translators). ``StreamGuard``, which holds the
start of an unfinished event between chunks, holds at most one event's bound and finds
events however SSE ends their lines. Through the processor (three routes, odd statuses
and content types, then the body in chunks), the client gets an answer or a clean
error, the request writes one log line with non-negative counts, and an answer whose
usage was read is billed even when what follows it cannot be translated.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.aws_eventstream import encode_event
from extproc.config import load_config
from extproc.config.guard_model import GuardConfig
from extproc.context import Usage
from extproc.guardrails.matching import MatcherGuard, Matchers
from extproc.guardrails.stream import StreamGuard
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators import (
    anthropic_bedrock,
    anthropic_bedrock_count,
    anthropic_errors,
    anthropic_vertex,
    bedrock_bedrock,
    bedrock_cohere_embeddings,
    bedrock_embeddings,
    bedrock_invoke,
    gemini_gemini,
    openai_completions,
    openai_embeddings,
    openai_responses,
    vertex_embeddings,
    vertex_errors,
)
from extproc.translators.base import ResponseTranslator, stream_failure
from extproc.translators.sse import MAX_EVENT_BYTES
from tests.unit.conftest import MemoryLog
from tests.unit.test_fuzz_parsers import (
    ANTHROPIC_STREAMS,
    BEDROCK_STREAMS,
    OPENAI_STREAMS,
    _feed,
    mutated,
)

# Hypothesis's default number of examples a test; FUZZ_EXAMPLES asks for more, for a
# longer search by hand.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FIXTURES = Path("tests/fixtures")


# --- well-formed samples -------------------------------------------------------------


def _frame(event: dict[str, Any]) -> bytes:
    """One InvokeModelWithResponseStream ``chunk`` frame carrying ``event``, base64'd."""
    encoded = base64.b64encode(orjson.dumps(event)).decode()
    return encode_event("chunk", orjson.dumps({"bytes": encoded}))


CLAUDE_EVENTS: list[dict[str, Any]] = [
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
     "model": "claude-3-haiku", "content": [], "stop_reason": None,
     "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 3}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
    {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": 12, "outputTokenCount": 2}},
]  # fmt: skip
LLAMA_EVENTS: list[dict[str, Any]] = [
    {"generation": "Hel", "prompt_token_count": 7, "generation_token_count": 1},
    {"generation": "lo", "prompt_token_count": None, "generation_token_count": 2},
    {"generation": "", "stop_reason": "stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": 7, "outputTokenCount": 2, "cacheReadInputTokenCount": 0}},
]  # fmt: skip
INVOKE_STREAMS = [b"".join(_frame(event) for event in CLAUDE_EVENTS)]
LLAMA_STREAMS = [b"".join(_frame(event) for event in LLAMA_EVENTS)]
CLAUDE_MESSAGE = orjson.dumps(
    {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-haiku",
     "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
     "usage": {"input_tokens": 12, "output_tokens": 2, "cache_creation_input_tokens": 1}}
)  # fmt: skip
CONVERSE_ANSWERS = [
    p.read_bytes() for p in sorted((FIXTURES / "openai_bedrock/responses").glob("*.converse.json"))
]
RESPONSES_JSON = [p.read_bytes() for p in sorted((FIXTURES / "openai_responses").glob("*.json"))]
RESPONSES_SSE = [p.read_bytes() for p in sorted((FIXTURES / "openai_responses").glob("*.sse"))]
GEMINI_ANSWER = orjson.dumps(
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"},
      {"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP", "index": 0,
      "groundingMetadata": {"webSearchQueries": ["q"]}}],
     "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "thoughtsTokenCount": 1,
      "cachedContentTokenCount": 1, "trafficType": "ON_DEMAND"},
     "modelVersion": "gemini-2.5-flash"}
)  # fmt: skip
GEMINI_STREAM = b"".join(
    b"data: " + orjson.dumps(event) + b"\r\n\r\n"
    for event in [
        {"candidates": [{"content": {"parts": [{"text": "Hel"}]}, "index": 0}],
         "usageMetadata": {"promptTokenCount": 5}, "modelVersion": "gemini-2.5-flash"},
        {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {}}}]}}],
         "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1}},
        {"candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
         "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2,
                           "trafficType": "ON_DEMAND_FLEX"}},
    ]
)  # fmt: skip
GEMINI_FAILED = (
    b'data: {"error": {"code": 429, "message": "k", "status": "RESOURCE_EXHAUSTED"}}\n\n'
)
EMBEDDINGS = [
    orjson.dumps({"object": "list", "data": [{"object": "embedding", "index": 0,
                  "embedding": [0.1, -0.2]}], "model": "m",
                  "usage": {"prompt_tokens": 3, "total_tokens": 3}}),
    orjson.dumps({"usage": {"total_tokens": 4}, "object": "list", "data": []}),
]  # fmt: skip
TITAN = [orjson.dumps({"embedding": [0.5, -1.0, 3e38], "inputTextTokenCount": 3})]
COHERE = [
    orjson.dumps({"embeddings": {"float": [[0.1, 0.2]]}, "response_type": "embeddings_by_type",
                  "meta": {"billed_units": {"input_tokens": 4}}}),
    orjson.dumps({"embeddings": [[0.1, 0.2]], "response_type": "embeddings_floats"}),
]  # fmt: skip
VERTEX = [
    orjson.dumps({"predictions": [{"embeddings": {"values": [0.1, 0.2],
                  "statistics": {"token_count": 6.0, "truncated": False}}}]}),
]  # fmt: skip
COUNTS = [b'{"inputTokens": 12}']
VERTEX_STREAMS = [
    stream.replace(
        b"event: message_stop",
        b'event: vertex_event\ndata: {"type": "vertex_event", "usage": {}}\n\nevent: message_stop',
    )
    for stream in ANTHROPIC_STREAMS
]
GOOD_HEADERS = {
    "x-amzn-bedrock-input-token-count": "7",
    "x-amzn-bedrock-output-token-count": "2",
    "x-amzn-bedrock-service-tier": "flex",
}

# (name, factory, well-formed samples): every reader of an upstream answer in scope.
READERS: list[tuple[str, Callable[[], ResponseTranslator], list[bytes]]] = [
    ("gemini generateContent", gemini_gemini.GenerateContentReader, [GEMINI_ANSWER]),
    ("gemini stream", gemini_gemini.StreamReader, [GEMINI_STREAM, GEMINI_STREAM + GEMINI_FAILED]),
    ("gemini stream, 2 candidates", lambda: gemini_gemini.StreamReader(2), [GEMINI_STREAM]),
    ("responses json", openai_responses.ResponseReader, RESPONSES_JSON),
    ("responses stream", openai_responses.EventStreamReader, RESPONSES_SSE),
    (
        "completions stream",
        lambda: openai_completions.response_reader(streaming=True, hide_usage=True, choices=1),
        OPENAI_STREAMS,
    ),
    (
        "completions json",
        lambda: openai_completions.response_reader(streaming=False, hide_usage=False, choices=1),
        [
            orjson.dumps(
                {
                    "object": "text_completion",
                    "model": "m",
                    "choices": [{"text": "Hi"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                }
            )
        ],
    ),
    ("openai embeddings", openai_embeddings.EmbeddingsReader, EMBEDDINGS),
    ("converse json", bedrock_bedrock.ConverseReader, CONVERSE_ANSWERS),
    (
        "converse stream",
        lambda: bedrock_bedrock.ConverseStreamReader(asked_tier="flex"),
        BEDROCK_STREAMS,
    ),
    ("invoke claude stream", lambda: bedrock_invoke.InvokeStreamReader("priority"), INVOKE_STREAMS),
    ("invoke llama stream", lambda: bedrock_invoke.ModelStreamReader("flex"), LLAMA_STREAMS),
    (
        "invoke llama json",
        lambda: bedrock_invoke.TokenHeaderReader({}),
        [orjson.dumps({"generation": "Hi", "stop_reason": "stop"})],
    ),
    ("invoke claude json", anthropic_bedrock.MessageReader, [CLAUDE_MESSAGE]),
    (
        "claude on bedrock, anthropic client",
        lambda: anthropic_bedrock.StreamTranslator("default"),
        INVOKE_STREAMS,
    ),
    ("claude on vertex stream", anthropic_vertex.EventStreamReader, VERTEX_STREAMS),
    ("bedrock count tokens", anthropic_bedrock_count.CountTranslator, COUNTS),
    (
        "titan embeddings, floats",
        lambda: bedrock_embeddings.EmbeddingTranslator(model="t", base64_vectors=False),
        TITAN,
    ),
    (
        "titan embeddings, base64",
        lambda: bedrock_embeddings.EmbeddingTranslator(model="t", base64_vectors=True),
        TITAN,
    ),
    (
        "cohere embeddings, base64",
        lambda: bedrock_cohere_embeddings.EmbeddingTranslator(
            model="c", base64_vectors=True, texts=1, input_tokens=None
        ),
        COHERE,
    ),
    (
        "vertex embeddings, base64",
        lambda: vertex_embeddings.EmbeddingTranslator(model="v", base64_vectors=True, texts=1),
        VERTEX,
    ),
]
NAMES = [name for name, _, _ in READERS]


def _failure_of(reader: ResponseTranslator) -> tuple[Any, ...] | None:
    """A stream's failure, comparable: its error's words and the counts it keeps."""
    found = stream_failure(reader)
    if found is None:
        return None
    error = None if found.error is None else (found.error.message, found.error.code)
    return (error, found.prompt_tokens, found.completion_tokens, found.cached_tokens)


def _check(reader: ResponseTranslator) -> None:
    usage = reader.usage
    assert usage is None or isinstance(usage, Usage)
    if usage is not None:
        counts = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
        assert min(*counts, usage.cached_tokens, usage.cache_write_tokens) >= 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert reader.response_model is None or isinstance(reader.response_model, str)
    assert reader.status in (None, 502)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data(), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_upstream_answer_is_read_or_ends_cleanly(
    name: str, data: st.DataObject, cuts: list[int]
) -> None:
    _, factory, samples = READERS[NAMES.index(name)]
    answer = data.draw(st.binary(max_size=600) | mutated(samples), label="answer")
    reader = factory()
    _feed(reader, answer, cuts)
    _check(reader)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data(), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_how_a_good_answer_is_cut_into_chunks_changes_nothing(
    name: str, data: st.DataObject, cuts: list[int]
) -> None:
    _, factory, samples = READERS[NAMES.index(name)]
    answer = data.draw(st.sampled_from(samples), label="answer")
    whole, pieces = factory(), factory()
    assert _feed(pieces, answer, cuts) == _feed(whole, answer, [])
    assert pieces.usage == whole.usage
    assert _failure_of(pieces) == _failure_of(whole)
    _check(pieces)


# --- numbers and headers a provider may send ---------------------------------------------

# Characters str.isdigit() accepts that int() does not (superscripts, circled digits).
ODD_DIGITS = st.sampled_from(["\u00b2", "\u00b9\u00b2", "\u2460", "1\u00b3", "\u2082", "٣"])
header_values = st.text(max_size=12) | ODD_DIGITS | st.integers(-5, 10**20).map(str)
json_numbers = (
    st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([3.5e38, 3.41e38, 1e39, -1e300, 1.7e308, 2**64 - 1])
)


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from([*GOOD_HEADERS, bedrock_invoke.CACHE_READ_HEADER, "x-other"]),
        header_values,
    )
)
def test_any_token_headers_read_as_counts_or_none(headers: dict[str, str]) -> None:
    """InvokeModel's token headers (Claude's and other families' JSON answers, Anthropic
    clients on Bedrock): a count, or none; never an exception out of the headers phase."""
    usage = bedrock_invoke.header_usage(headers)
    assert usage is None or min(usage.prompt_tokens, usage.completion_tokens) >= 0
    reader = bedrock_invoke.TokenHeaderReader(headers)
    assert reader.feed(b"{}", True) is None
    count = bedrock_cohere_embeddings.input_token_count(headers)
    assert count is None or count >= 0


def test_a_superscript_token_header_is_no_count() -> None:
    """``"²".isdigit()`` is True and ``int("²")`` raises: the header made the response
    headers phase fail (a 500 for a 200 answer)."""
    assert bedrock_invoke.header_usage({bedrock_invoke.INPUT_TOKENS_HEADER: "\u00b2"}) is None


@FUZZ
@given(vector=st.lists(json_numbers, min_size=1, max_size=4), tokens=st.integers(0, 10**6))
def test_any_vector_becomes_an_answer_or_an_error_and_its_count_is_kept(
    vector: list[float], tokens: int
) -> None:
    """Titan's (and Cohere's, Vertex's) vectors, asked as base64 float32: a number past
    float32's range cannot be packed; the answer becomes the 502 of an unreadable one,
    and the count Bedrock billed for it is still read."""
    answer = orjson.dumps({"embedding": vector, "inputTextTokenCount": tokens})
    for as_base64 in (False, True):
        reader = bedrock_embeddings.EmbeddingTranslator(model="t", base64_vectors=as_base64)
        out = reader.feed(answer, True)
        assert isinstance(out, bytes) and isinstance(orjson.loads(out), dict)
        assert reader.usage is not None and reader.usage.prompt_tokens == tokens


def test_a_vector_past_float32_asked_as_base64_is_a_502_and_billed() -> None:
    reader = bedrock_embeddings.EmbeddingTranslator(model="t", base64_vectors=True)
    out = reader.feed(b'{"embedding": [1e39], "inputTextTokenCount": 3}', True)
    assert reader.status == 502 and b"error" in (out or b"")
    assert reader.usage == Usage(3, 0, 3, 0)


@FUZZ
@given(
    status=st.integers(0, 999),
    body=st.binary(max_size=200)
    | st.builds(
        lambda code, status, message: orjson.dumps(
            [{"error": {"code": code, "status": status, "message": message}}]
        ),
        st.integers(-(2**63), 2**63 - 1) | st.booleans() | st.none(),
        st.text(max_size=8) | st.none(),
        st.text(max_size=40) | st.integers(-(2**63), 2**63 - 1),
    ),
    header=st.none() | st.text(max_size=30),
    error=st.none() | st.dictionaries(st.sampled_from(["type", "message"]), header_values),
)
def test_any_error_body_becomes_the_clients_error(
    status: int, body: bytes, header: str | None, error: dict[str, Any] | None
) -> None:
    for shape in ("openai", "anthropic"):
        shown = vertex_errors.in_client_shape(status, body, shape)
        assert shown is None or isinstance(orjson.loads(shown), dict)
    client_status, translated = anthropic_bedrock.translate_error(status, body, header)
    assert 400 <= client_status <= 599 and isinstance(orjson.loads(translated), dict)
    mapped, gateway_error = anthropic_errors.client_error(status, header, "m")
    assert 400 <= mapped <= 599 and gateway_error.message
    assert anthropic_errors.stream_error(error).message


# --- the guarded stream's hold ----------------------------------------------------------

PII = GuardConfig(name="pii", builtins=["CREDIT_CARD", "EMAIL"], action="mask")


def _guard() -> StreamGuard:
    return StreamGuard(Matchers((MatcherGuard(PII, 256),)), anthropic=False)


def _guarded(guard: StreamGuard, chunks: list[bytes]) -> list[bytes]:
    out = []
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        out.append(guard.render(guard.split(chunk, last), last, lambda _: b'{"error":{}}'))
    return out


def _held_bytes(found: object, seen: set[int] | None = None) -> int:
    """The bytes a guard holds between chunks, in any of its attributes."""
    seen = set() if seen is None else seen
    if id(found) in seen:
        return 0
    seen.add(id(found))
    if isinstance(found, bytes | bytearray):
        return len(found)
    if isinstance(found, list | tuple):
        return sum(_held_bytes(item, seen) for item in found)
    module = type(found).__module__
    if not module.startswith(("extproc.guardrails.stream", "extproc.translators.sse")):
        return 0
    names = list(getattr(found, "__dict__", {}))
    for klass in type(found).__mro__:
        names += list(getattr(klass, "__slots__", ()))
    return sum(_held_bytes(getattr(found, name, None), seen) for name in names)


def _sse(*texts: str, line_end: bytes = b"\n") -> bytes:
    chunks = [
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0,
         "delta": {"content": text}, "finish_reason": None}]} for text in texts
    ]  # fmt: skip
    events = [b"data: " + orjson.dumps(chunk) for chunk in chunks] + [b"data: [DONE]"]
    return b"".join(event + line_end + line_end for event in events)


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_the_guard_masks_however_sse_ends_its_lines(line_end: bytes) -> None:
    """SSE ends a line with LF, CRLF or a lone CR (``sse``), and the clients' SDKs read all
    three. A guard that knew only LF and CRLF held a lone-CR stream whole until its end,
    then sent it unread: the address left unmasked."""
    stream = _sse("mail jane.doe@", "example.com now", line_end=line_end)
    out = b"".join(_guarded(_guard(), [stream[:60], stream[60:130], stream[130:]]))
    assert b"jane.doe" not in out and b"<EMAIL>" in out


def test_the_guard_releases_a_lone_cr_stream_event_by_event() -> None:
    stream = _sse("hello ", "there", line_end=b"\r")
    first, second = stream.split(b"\r\r", 1)
    out = _guarded(_guard(), [first + b"\r\r", second])
    assert b"hello" in out[0]


def test_an_event_that_never_ends_is_not_held_past_the_bound() -> None:
    """An upstream that never ends its event (no blank line): the guard held all of it,
    joining each chunk to everything held before (a copy of it all per chunk, quadratic)
    and searching all of it again for an end. It holds one event's bound at most."""
    guard = _guard()
    piece = b"data: " + b"x" * (1024 * 1024 - 6)
    held = 0
    for _ in range(MAX_EVENT_BYTES // len(piece) + 3):
        guard.render(guard.split(piece, False), False, lambda _: b"")
        held = max(held, _held_bytes(guard))
    assert held <= MAX_EVENT_BYTES + len(piece)


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=10), end=st.sampled_from(["\n", "\r\n"]))
def test_how_a_guarded_stream_is_cut_changes_nothing(cuts: list[int], end: str) -> None:
    stream = _sse("card 4111 11", "11 1111 1111 ok", "a@b.co", line_end=end.encode())
    points = sorted({0, *(cut % (len(stream) + 1) for cut in cuts), len(stream)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(points)] or [b""]
    assert b"".join(_guarded(_guard(), pieces)) == b"".join(_guarded(_guard(), [stream]))


# --- through the processor ---------------------------------------------------------------

AUTH = {"authorization": "Bearer team1-key"}
TITAN_MODEL = "amazon.titan-embed-text-v2:0"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
LLAMA = "meta.llama3-8b-instruct-v1:0"
ROUTES: dict[str, tuple[str, dict[str, Any], list[bytes]]] = {
    "responses stream": (
        "/v1/responses",
        {"model": "gpt-4o-mini", "input": "hi", "stream": True},
        RESPONSES_SSE,
    ),
    "titan embeddings": (
        "/v1/embeddings",
        {"model": TITAN_MODEL, "input": "hi", "encoding_format": "base64"},
        TITAN,
    ),
    "converse stream": (
        f"/model/{quote(HAIKU, safe='')}/converse-stream",
        {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
        BEDROCK_STREAMS,
    ),
    "llama invoke": (f"/model/{quote(LLAMA, safe='')}/invoke", {"prompt": "hi"}, []),
}
CONTENT_TYPES = [
    "application/json",
    "text/event-stream",
    "application/vnd.amazon.eventstream",
    "text/html",
    "",
]


async def _play(
    route: str, status: int, headers: dict[str, str], chunks: list[bytes]
) -> tuple[list[Any], list[dict[str, Any]]]:
    path, body, _ = ROUTES[route]
    log = MemoryLog()
    runtime = Runtime(
        load_config("config/gateway.yaml", environ={}), Services(GatewayMetrics(), log)
    )
    await runtime.start()
    try:
        processor = Processor(lambda: runtime, default_stages())
        messages = [
            request_headers(path, headers=AUTH),
            request_body(orjson.dumps(body)),
            response_headers(status, headers),
            *(response_body(c, end_of_stream=i == len(chunks) - 1) for i, c in enumerate(chunks)),
        ]
        answers = await run_stream(processor, messages)
    finally:
        await runtime.close()
    return answers, log.lines()


def _internal_errors(answers: list[Any]) -> list[Any]:
    return [
        answer
        for answer in answers
        if answer.HasField("immediate_response")
        and b"gateway_error" in answer.immediate_response.body
    ]


def _check_line(lines: list[dict[str, Any]]) -> dict[str, Any]:
    [line] = lines
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
        assert line.get(name) is None or line[name] >= 0
    return line


@pytest.mark.parametrize("route", ["responses stream", "titan embeddings", "converse stream"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    status=st.sampled_from([200, 200, 200, 201, 204, 299, 400, 429, 500, 529, 999]),
    content_type=st.sampled_from(CONTENT_TYPES),
    cuts=st.lists(st.integers(min_value=0), max_size=6),
)
def test_any_answer_through_the_processor_is_answered_and_logged_once(
    route: str, data: st.DataObject, status: int, content_type: str, cuts: list[int]
) -> None:
    samples = ROUTES[route][2]
    answer = data.draw(st.binary(max_size=300) | mutated(samples), label="answer")
    points = sorted({0, *(cut % (len(answer) + 1) for cut in cuts), len(answer)})
    chunks = [answer[a:b] for a, b in itertools.pairwise(points)] or [b""]
    headers = {"content-type": content_type} if content_type else {}
    answers, lines = asyncio.run(_play(route, status, headers, chunks))
    assert not _internal_errors(answers)
    _check_line(lines)


@pytest.mark.parametrize("value", ["\u00b2", "\u2460"])
def test_an_odd_token_header_does_not_fail_the_answer(value: str) -> None:
    headers = {"content-type": "application/json", bedrock_invoke.INPUT_TOKENS_HEADER: value}
    answers, lines = asyncio.run(_play("llama invoke", 200, headers, [b'{"generation": "x"}']))
    assert not _internal_errors(answers)
    _check_line(lines)


def test_an_embedding_whose_count_was_read_is_billed_when_its_vector_cannot_be_sent() -> None:
    headers = {"content-type": "application/json"}
    answer = b'{"embedding": [1e39], "inputTextTokenCount": 3}'
    answers, lines = asyncio.run(_play("titan embeddings", 200, headers, [answer]))
    assert not _internal_errors(answers)
    assert _check_line(lines)["prompt_tokens"] == 3
