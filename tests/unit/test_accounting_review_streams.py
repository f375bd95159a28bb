"""A review of the accounting of streamed and cut answers, as an operator reconciles it.

Every request's tokens reach four ledgers: the log line, ``tokens_consumed_total``, the
hourly rollup that ``extproc usage report`` reads, and the quota settlement; each test
plays one streamed request through the processor (real ext_proc messages, a real Valkey
for the quota and the rollup) and reads all four. They must agree with each other, and
with what the provider billed: whatever the client API, however the stream ended (whole,
cut by the client or the upstream, failed by the provider), wherever Envoy cut the body
into chunks, behind a failover route as without one, and under a hard cap.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc import headers
from extproc.aws_eventstream import encode_event, encode_exception
from extproc.config.loader import parse_config
from extproc.context import IMAGE_GENERATION_COUNTS, PhaseOutput, RequestContext
from extproc.processor import Processor
from extproc.quota.store import Denial, QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import AttemptStage
from extproc.stages.pipeline import default_stages
from extproc.store.connection import StoreClient, connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.sse_play import only_line
from tests.unit.test_aliases_and_failover import attempt_on

# The default config with a store timeout no busy test machine reaches: these tests are
# of what each ledger records, and a reservation the shared Valkey answered after the
# default 500 ms (the whole suite running beside other work) refused the request. (Below
# envoy.message_timeout_ms, as the config requires.)
DEFAULT_CONFIG = (
    Path("config/gateway.yaml")
    .read_text(encoding="utf-8")
    .replace("store:\n", "store:\n  timeout_ms: 4000\n", 1)
)
# gpt-4o fails over to Claude on Anthropic, gpt-4.1-nano to Claude on Bedrock.
FAILOVER = DEFAULT_CONFIG.replace(
    "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n",
    "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n"
    "    fallbacks: [claude-3-5-haiku-latest]\n",
).replace(
    "  - name: gpt-4.1-nano\n    provider: ${LLM_PROVIDER:-mock}\n",
    "  - name: gpt-4.1-nano\n    provider: ${LLM_PROVIDER:-mock}\n"
    "    fallbacks: [anthropic.claude-3-haiku-20240307-v1:0]\n",
)
BUDGET = """
quotas:
  default_max_tokens: 1000
  rules:
    - {name: team-day, subject: api_key, tokens_per_day: %d%s}
"""
OPENAI_KEY = {"authorization": "Bearer team1-key"}
ANTHROPIC_KEY = {"x-api-key": "team1-key"}
SSE = {"content-type": "text/event-stream", "x-envoy-upstream-service-time": "3"}
FRAMES = {
    "content-type": "application/vnd.amazon.eventstream",
    "x-envoy-upstream-service-time": "3",
}
# 40 characters in one message: the quota's prompt estimate is 40 / 4 + 4 = 14 tokens.
USER = [{"role": "user", "content": "x" * 40}]
PROMPT_ESTIMATE = 14
# The text the provider streams: 29 characters, 8 tokens estimated.
TEXT = ("Hello there friend", " more words")


# --- the four ledgers -----------------------------------------------------------------


# The parts billed at image prices besides the completion's pictures, by their log names.
IMAGE_PARTS = ("prompt_image_tokens", *IMAGE_GENERATION_COUNTS)


@dataclass(frozen=True)
class Ledgers:
    """What one request left in each ledger."""

    line: dict[str, Any]
    metric: tuple[int, int]  # tokens_consumed_total: prompt, completion
    rollup: tuple[int, int, int]  # the hour's prompt and completion tokens, picodollars
    quota: int  # the tokens the key's budget used
    # The completion's image part: aigw_token_parts_total{token_type="completion_image"},
    # and the rollup's completion_image_tokens.
    image: tuple[int, int] = (0, 0)
    # Every other part billed at image prices, by the log line's name: the metric's
    # aigw_token_parts_total (token_type, the name without "_tokens") and the rollup's.
    image_parts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def agree(self) -> None:
        """Each ledger holds the log line's tokens, and the rollup its cost."""
        line = self.line
        tokens = (line["prompt_tokens"], line["completion_tokens"])
        assert self.metric == tokens, self
        assert self.rollup[:2] == tokens, self
        assert line["total_tokens"] == sum(tokens) == self.quota, self
        assert self.rollup[2] == round(line["cost_usd"] * 10**12), self
        assert self.image == (line["completion_image_tokens"],) * 2, self
        for name, counted in self.image_parts.items():
            assert counted == (line[name],) * 2, (name, self)


@pytest.fixture
async def store(valkey: EmbeddedValkey) -> AsyncIterator[StoreClient]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    yield client
    await client.aclose()


def sample(services: Services, name: str, **labels: str) -> int:
    total = 0.0
    for family in services.metrics.registry.collect():
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                total += found.value
    return int(total)


@dataclass(frozen=True)
class Answer:
    """The provider's 200 as Envoy hands it over: its headers, its body chunks, and
    whether Envoy's end of stream comes (False: the client or the upstream cut it)."""

    chunks: list[bytes]
    headers: dict[str, str]
    ended: bool = True


async def ledgers(
    store: StoreClient,
    path: str,
    key: dict[str, str],
    body: dict[str, Any] | bytes,
    answer: Answer,
    *,
    budget: int = 10_000_000,
    hard_cap: bool = False,
    config: str = DEFAULT_CONFIG,
) -> Ledgers:
    """One request of key team1 answered with ``answer``: what each ledger recorded.
    ``body``: a JSON body, or the bytes of one of the content type ``key`` names (an
    image edit's form)."""
    # Counters of their own: a test may compare two requests.
    prefix = f"streams-review-{uuid.uuid4().hex}:"
    quota, usage = QuotaStore(store, prefix), UsageStore(store, prefix, retention_days=1)
    await quota.start()
    writer = UsageWriter(usage, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota, usage_writer=writer)
    rules = BUDGET % (budget, ", hard_cap: true" if hard_cap else "")
    runtime = Runtime(parse_config(config + rules, "gateway.yaml", {}), services)
    last = len(answer.chunks) - 1
    await runtime.start()  # AWS credentials, for the Bedrock routes
    try:
        await run_stream(
            Processor(lambda: runtime, default_stages()),
            [
                request_headers(path, headers=key),
                request_body(body if isinstance(body, bytes) else orjson.dumps(body)),
                response_headers(200, answer.headers),
                *(
                    response_body(chunk, end_of_stream=answer.ended and index == last)
                    for index, chunk in enumerate(answer.chunks)
                ),
            ],
        )
    finally:
        await runtime.close()
    line = only_line(services)
    await quota.flush()
    limits = runtime.quota_rules.limits_for_subject("api_key", "team1", quota.now())
    found = await quota.reserve(limits, 0)
    used = found.used if isinstance(found, Denial) else found.used[0]
    await quota.close()
    assert await writer.flush() is True
    hour = datetime.fromisoformat(line["timestamp"]).replace(minute=0, second=0, microsecond=0)
    rows = await usage.query(hour, hour + timedelta(hours=1), ("api_key_id",))
    # No row: a request charged nothing (a provider's error) is not in the rollup.
    rolled = (
        (rows[0].prompt_tokens, rows[0].completion_tokens, rows[0].cost_picousd)
        if rows
        else (0, 0, 0)
    )
    metric = tuple(
        sample(services, "tokens_consumed_total", token_type=kind)
        for kind in ("prompt", "completion")
    )
    image = (
        sample(services, "aigw_token_parts_total", token_type="completion_image"),
        rows[0].completion_image_tokens if rows else 0,
    )
    image_parts = {
        name: (
            sample(services, "aigw_token_parts_total", token_type=name.removesuffix("_tokens")),
            getattr(rows[0], name) if rows else 0,
        )
        for name in IMAGE_PARTS
    }
    return Ledgers(line, (metric[0], metric[1]), rolled, used, image, image_parts)


# --- each client API's stream, as its provider sends it ----------------------------------


def data(document: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(document) + b"\n\n"


def typed(kind: str, document: dict[str, Any]) -> bytes:
    """An event named by its type (Anthropic's, the Responses API's)."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **document})


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **fields: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return data({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                 "choices": [choice], **fields})  # fmt: skip


def chat_usage(prompt: int, completion: int, total: int | None = None) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion if total is None else total}  # fmt: skip
    return data({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                 "choices": [], "usage": usage})  # fmt: skip


DONE = b"data: [DONE]\n\n"
OPENAI_ERROR = data({"error": {"message": "The model is overloaded", "type": "server_error"}})
# How a stream ends after its text: ``whole`` (its count, then its end), ``cut`` (nothing
# more: the client hung up), ``error`` (the provider's error event).
ENDINGS = ("whole", "cut", "error")


def ended(text: list[bytes], ending: str, whole: list[bytes], error: list[bytes]) -> list[bytes]:
    return text + {"whole": whole, "cut": [], "error": error}[ending]


def chat_stream(ending: str) -> list[bytes]:
    text = [chat_chunk({"content": piece}) for piece in TEXT]
    return ended(text, ending, [chat_chunk({}, "stop"), chat_usage(20, 8), DONE], [OPENAI_ERROR])


def completions_stream(ending: str) -> list[bytes]:
    text = [
        data({"id": "c1", "object": "text_completion", "model": "gpt-4o-mini",
              "choices": [{"index": 0, "text": piece, "finish_reason": None}]})
        for piece in TEXT
    ]  # fmt: skip
    return ended(text, ending, [chat_usage(20, 8), DONE], [OPENAI_ERROR])


RESPONSE = {"id": "resp_1", "object": "response", "model": "gpt-4o-mini", "output": []}


def responses_stream(ending: str) -> list[bytes]:
    created = typed("response.created", {"response": {**RESPONSE, "status": "in_progress"}})
    deltas = [
        typed("response.output_text.delta",
              {"item_id": "m1", "output_index": 0, "content_index": 0, "delta": piece})
        for piece in TEXT
    ]  # fmt: skip
    text = [created + b"\n\n", *(delta + b"\n\n" for delta in deltas)]
    usage = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 4},
             "output_tokens": 8, "output_tokens_details": {"reasoning_tokens": 3},
             "total_tokens": 28}  # fmt: skip
    done = {**RESPONSE, "status": "completed", "usage": usage}
    error = {"type": "server_error", "code": "server_error", "message": "overloaded"}
    return ended(
        text,
        ending,
        [typed("response.completed", {"response": done}) + b"\n\n"],
        [typed("error", {"error": error}) + b"\n\n"],
    )


def message_start(usage: dict[str, Any]) -> bytes:
    message = {"id": "msg_1", "type": "message", "role": "assistant",
               "model": "claude-3-5-haiku-latest", "content": [], "usage": usage}  # fmt: skip
    return typed("message_start", {"message": message}) + b"\n\n"


CLAUDE_READ = {"input_tokens": 12, "cache_read_input_tokens": 6, "output_tokens": 1}


def messages_stream(
    ending: str, start: dict[str, Any] = CLAUDE_READ, delta: dict[str, Any] | None = None
) -> list[bytes]:
    block = typed("content_block_start",
                  {"index": 0, "content_block": {"type": "text", "text": ""}})  # fmt: skip
    text = [message_start(start), block + b"\n\n"] + [
        typed("content_block_delta",
              {"index": 0, "delta": {"type": "text_delta", "text": piece}}) + b"\n\n"
        for piece in TEXT
    ]  # fmt: skip
    usage = {"output_tokens": 8, **(delta or {})}
    end = typed("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": usage})
    error = {"type": "overloaded_error", "message": "Overloaded"}
    return ended(
        text,
        ending,
        [end + b"\n\n", typed("message_stop", {}) + b"\n\n"],
        [typed("error", {"error": error}) + b"\n\n"],
    )


STREAM_EXCEPTION = encode_exception("modelStreamErrorException", b'{"message":"overloaded"}')
CONVERSE_USAGE = {"inputTokens": 14, "outputTokens": 8, "totalTokens": 28,
                  "cacheReadInputTokens": 6}  # fmt: skip


def converse_stream(ending: str, usage: dict[str, Any] = CONVERSE_USAGE) -> list[bytes]:
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    events += [("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
               for piece in TEXT]  # fmt: skip
    tail = [("contentBlockStop", {"contentBlockIndex": 0}),
            ("messageStop", {"stopReason": "end_turn"}),
            ("metadata", {"usage": usage, "metrics": {"latencyMs": 9}})]  # fmt: skip
    return ended(
        [encode_event(kind, orjson.dumps(payload)) for kind, payload in events],
        ending,
        [encode_event(kind, orjson.dumps(payload)) for kind, payload in tail],
        [STREAM_EXCEPTION],
    )


def invoke_stream(ending: str) -> list[bytes]:
    """Claude on InvokeModel: Anthropic's events, base64-encoded, a frame each."""
    frames = []
    for event in messages_stream("cut" if ending == "error" else ending):
        document = event.split(b"\ndata: ", 1)[1].rstrip(b"\n")
        payload = {"bytes": base64.b64encode(document).decode()}
        frames.append(encode_event("chunk", orjson.dumps(payload)))
    return frames + ([STREAM_EXCEPTION] if ending == "error" else [])


@dataclass(frozen=True)
class StreamedApi:
    path: str
    key: dict[str, str]
    body: dict[str, Any]
    stream: Callable[[str], list[bytes]]
    headers: dict[str, str]


STREAMED_APIS = {
    "chat": StreamedApi(
        "/v1/chat/completions", OPENAI_KEY,
        {"model": "gpt-4o-mini", "stream": True, "messages": USER}, chat_stream, SSE,
    ),
    "completions": StreamedApi(
        "/v1/completions", OPENAI_KEY,
        {"model": "gpt-4o-mini", "stream": True, "prompt": "x" * 40}, completions_stream, SSE,
    ),
    "responses": StreamedApi(
        "/v1/responses", OPENAI_KEY,
        {"model": "gpt-4o-mini", "stream": True, "input": USER}, responses_stream, SSE,
    ),
    "messages": StreamedApi(
        "/v1/messages", ANTHROPIC_KEY,
        {"model": "claude-3-5-haiku-latest", "max_tokens": 300, "stream": True, "messages": USER},
        messages_stream, SSE,
    ),
    "chat to anthropic": StreamedApi(
        "/anthropic/chat/completions", OPENAI_KEY,
        {"model": "claude-3-5-haiku-latest", "stream": True, "messages": USER},
        messages_stream, SSE,
    ),
    "converse": StreamedApi(
        "/model/haiku/converse-stream", OPENAI_KEY,
        {"messages": [{"role": "user", "content": [{"text": "x" * 40}]}]},
        converse_stream, FRAMES,
    ),
    "chat to bedrock": StreamedApi(
        "/bedrock/haiku/chat/completions", OPENAI_KEY,
        {"model": "haiku", "stream": True, "messages": USER}, converse_stream, FRAMES,
    ),
    "invoke": StreamedApi(
        "/model/haiku/invoke-with-response-stream", OPENAI_KEY,
        {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 300, "messages": USER},
        invoke_stream, FRAMES,
    ),
}  # fmt: skip


# --- every ledger agrees, however the stream ended -------------------------------------


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("api", STREAMED_APIS)
async def test_every_ledger_records_the_tokens_of_a_stream_however_it_ended(
    store: StoreClient, api: str, ending: str
) -> None:
    """Whole (the provider's count), cut by the client after the text (the estimate), or
    failed by the provider's error event (what it reported, plus the estimate)."""
    served = STREAMED_APIS[api]
    answer = Answer(served.stream(ending), served.headers, ended=ending != "cut")
    recorded = await ledgers(store, served.path, served.key, served.body, answer)
    recorded.agree()
    line = recorded.line
    assert (line["usage_reported"], line["usage_estimated"]) == (
        ending == "whole",
        ending != "whole",
    )
    assert line["completion_tokens"] > 0 and line["cost_usd"] > 0


# --- a provider's total that is not its counts' sum ----------------------------------------


async def test_a_total_that_is_not_the_counts_sum_settles_the_quota_at_the_lines_tokens(
    store: StoreClient,
) -> None:
    """An OpenAI-compatible provider whose ``total_tokens`` is more than prompt +
    completion and itemises no reasoning (a thinking model's total that counts thoughts it
    does not itemise, as Gemini's OpenAI-compatible endpoints do): the rest is that
    thinking, billed as output, 20 + 120 (docs/providers.md), and every ledger counts the
    same 140. Before, the log line's total_tokens and the quota settlement said 140 while
    tokens_consumed_total and the rollup counted 28."""
    chunks = [
        chat_chunk({"content": TEXT[0]}),
        chat_chunk({}, "stop"),
        chat_usage(20, 8, 140),
        DONE,
    ]
    body = {"model": "gpt-4o-mini", "stream": True, "messages": USER}
    recorded = await ledgers(store, "/v1/chat/completions", OPENAI_KEY, body, Answer(chunks, SSE))
    assert (recorded.line["prompt_tokens"], recorded.line["completion_tokens"]) == (20, 120)
    recorded.agree()


async def test_a_responses_total_that_is_not_the_counts_sum_settles_at_the_lines_tokens(
    store: StoreClient,
) -> None:
    usage = {"input_tokens": 20, "output_tokens": 8, "total_tokens": 140}
    done = {**RESPONSE, "status": "completed", "usage": usage}
    chunks = [typed("response.completed", {"response": done}) + b"\n\n"]
    body = {"model": "gpt-4o-mini", "stream": True, "input": USER}
    recorded = await ledgers(store, "/v1/responses", OPENAI_KEY, body, Answer(chunks, SSE))
    assert (recorded.line["prompt_tokens"], recorded.line["completion_tokens"]) == (20, 8)
    recorded.agree()


# --- the estimate of a cut stream, wherever Envoy cut the body --------------------------


def split_in_text(chunks: list[bytes]) -> list[bytes]:
    """The same bytes, each chunk that carries a piece of the text cut in two inside it,
    as Envoy hands over what the upstream socket gave it."""
    pieces = []
    for chunk in chunks:
        found = [chunk.find(piece.encode()) for piece in TEXT if piece.encode() in chunk]
        cut = found[0] + 5 if found else len(chunk)
        pieces += [chunk[:cut], chunk[cut:]] if cut < len(chunk) else [chunk]
    return pieces


@pytest.mark.parametrize("api", STREAMED_APIS)
async def test_a_cut_streams_estimate_does_not_depend_on_where_envoy_cut_the_body(
    store: StoreClient, api: str
) -> None:
    """Envoy passes a stream on in the pieces its upstream socket gave it, a piece ending
    anywhere, inside a text delta too. A stream cut before its usage report is charged
    its text at one token per four characters, so the same text must cost the same
    however it came: counted one chunk at a time, a value split in two read as no text
    at all, and the client that hung up after 29 characters was charged for none."""
    served = STREAMED_APIS[api]
    text = served.stream("cut")
    whole = await ledgers(
        store, served.path, served.key, served.body, Answer(text, served.headers, ended=False)
    )
    split = await ledgers(
        store,
        served.path,
        served.key,
        served.body,
        Answer(split_in_text(text), served.headers, ended=False),
    )
    assert whole.line["completion_tokens"] == 8
    assert split.line["completion_tokens"] == whole.line["completion_tokens"]
    split.agree()


# --- failover: a fallback's answer is billed as it is without failover ---------------------


CHAIN = {
    "mock-anthropic": [["mock", "gpt-4o", "gpt-4o"],
                       ["mock-anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-latest"]],
    "mock-bedrock": [["mock", "gpt-4.1-nano", "gpt-4.1-nano"],
                     ["mock-bedrock", "anthropic.claude-3-haiku-20240307-v1:0",
                      "anthropic.claude-3-haiku-20240307-v1:0"]],
}  # fmt: skip


async def attempt_answer(
    provider: str, body: dict[str, Any], answer: Answer
) -> tuple[dict[str, str], list[bytes]]:
    """What the failover attempt on ``provider`` sends down to the request's filter: the
    answer's headers (who answered) and its body, translated to OpenAI's API."""
    services = Services(GatewayMetrics(), MemoryLog())
    runtime = Runtime(parse_config(FAILOVER, "gateway.yaml", {}), services)
    await runtime.start()
    try:
        ctx = RequestContext(runtime=runtime)
        ctx.attributes = attempt_on(provider)
        ctx.request_headers = {":path": "/v1/chat/completions", headers.REQUEST_ID: "req-1"}
        stage = AttemptStage()
        stage.request_headers(ctx, PhaseOutput())
        sent = {**body, headers.FAILOVER_CHAIN_KEY: CHAIN[provider]}
        stage.request_body(ctx, PhaseOutput(), orjson.dumps(sent))
        out = PhaseOutput()
        stage.response_headers(ctx, out, {":status": "200", **answer.headers})
        last = len(answer.chunks) - 1
        bodies = []
        for index, chunk in enumerate(answer.chunks):
            translated = PhaseOutput()
            stage.response_body(ctx, translated, chunk, index == last)
            bodies.append(translated.body if translated.body is not None else chunk)
    finally:
        await runtime.close()
    content_type = out.set_headers.get("content-type", answer.headers["content-type"])
    named = {name: value for name, value in out.set_headers.items() if name.startswith("x-aigw-")}
    return {**named, "content-type": content_type, "x-envoy-upstream-service-time": "3"}, bodies


# Claude wrote 30 prompt tokens to its cache (10 of them to its 1-hour cache) and searched
# the web twice, all billed above its input price or per request.
CLAUDE_WROTE = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 30,
    "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 10},
    "output_tokens": 1,
}
CLAUDE_SEARCHED = {"server_tool_use": {"web_search_requests": 2}}


def billed(line: dict[str, Any]) -> tuple[Any, ...]:
    return (
        line["prompt_tokens"],
        line["completion_tokens"],
        line["cache_write_tokens"],
        line["cache_write_1h_tokens"],
        line["server_tool_requests"],
        line["cost_usd"],
    )


@pytest.mark.parametrize("stream", [True, False])
async def test_a_failover_to_claude_bills_its_cache_writes_and_searches(
    store: StoreClient, stream: bool
) -> None:
    """gpt-4o fails over to Claude: the attempt translates Claude's answer to OpenAI's
    API, and the request's filter bills what it reads there. OpenAI's usage object has
    no place for Claude's cache writes, their 1-hour part or its web searches, so they
    were dropped: the writes billed at the input price, the searches ($10 per 1,000) not
    at all, while the same answer on /anthropic (no failover) bills them."""
    stream_body = messages_stream("whole", CLAUDE_WROTE, CLAUDE_SEARCHED)
    message = {"id": "msg_1", "type": "message", "role": "assistant",
               "model": "claude-3-5-haiku-latest", "stop_reason": "end_turn",
               "content": [{"type": "text", "text": "".join(TEXT)}],
               "usage": {**CLAUDE_WROTE, "output_tokens": 8, **CLAUDE_SEARCHED}}  # fmt: skip
    claude = (
        Answer(stream_body, SSE)
        if stream
        else Answer([orjson.dumps(message)], {"content-type": "application/json"})
    )
    body = {"model": "claude-3-5-haiku-latest", "stream": stream, "messages": USER}
    direct = await ledgers(
        store, "/anthropic/chat/completions", OPENAI_KEY, body, claude, config=FAILOVER
    )
    assert billed(direct.line)[2:5] == (30, 10, {"web_search": 2})

    asked = {**body, "model": "gpt-4o"}
    answered, translated = await attempt_answer("mock-anthropic", asked, claude)
    failed_over = await ledgers(
        store,
        "/v1/chat/completions",
        OPENAI_KEY,
        asked,
        Answer(translated, answered),
        config=FAILOVER,
    )
    assert failed_over.line["provider"] == "mock-anthropic"
    assert billed(failed_over.line) == billed(direct.line)
    failed_over.agree()


async def test_a_failover_to_claude_on_bedrock_bills_its_cache_writes(
    store: StoreClient,
) -> None:
    """The same for a Bedrock fallback: Converse's cacheWriteInputTokens (with its 1-hour
    part in cacheDetails) reached the request's filter as plain prompt tokens."""
    written = [{"ttl": "1h", "inputTokens": 10}, {"ttl": "5m", "inputTokens": 20}]
    usage = {"inputTokens": 12, "outputTokens": 8, "totalTokens": 50,
             "cacheWriteInputTokens": 30, "cacheDetails": written}  # fmt: skip
    converse = Answer(converse_stream("whole", usage), FRAMES)
    body = {"model": "haiku", "stream": True, "messages": USER}
    direct = await ledgers(
        store, "/bedrock/haiku/chat/completions", OPENAI_KEY, body, converse, config=FAILOVER
    )
    assert billed(direct.line)[2:4] == (30, 10)

    asked = {**body, "model": "gpt-4.1-nano"}
    answered, translated = await attempt_answer("mock-bedrock", asked, converse)
    failed_over = await ledgers(
        store,
        "/v1/chat/completions",
        OPENAI_KEY,
        asked,
        Answer(translated, answered),
        config=FAILOVER,
    )
    assert failed_over.line["provider"] == "mock-bedrock"
    assert billed(failed_over.line) == billed(direct.line)


# --- a hard cap ------------------------------------------------------------------------------


async def test_a_hard_capped_stream_cut_short_is_charged_no_more_than_its_cap(
    store: StoreClient,
) -> None:
    """A key with 100 tokens a day, hard-capped: its 14-token prompt leaves the answer 86,
    the max_completion_tokens the gateway gave the provider. The client hangs up before
    the usage chunk, and the estimate of the text (one token per four characters; these
    words run long) came to 160 completion tokens: more than the provider could answer,
    and the hard-capped budget ended at 174 of 100."""
    chunks = [chat_chunk({"content": " extraordinarily" * 40})]
    body = {"model": "gpt-4o-mini", "stream": True, "messages": USER}
    recorded = await ledgers(
        store,
        "/v1/chat/completions",
        OPENAI_KEY,
        body,
        Answer(chunks, SSE, ended=False),
        budget=100,
        hard_cap=True,
    )
    assert recorded.line["quota_decision"] == "capped"
    assert recorded.line["completion_tokens"] <= 100 - PROMPT_ESTIMATE
    assert recorded.quota <= 100
    recorded.agree()


# --- a translated stream that ended before Anthropic's message_stop -----------------------


async def test_a_translated_stream_cut_after_its_count_is_charged_anthropics_count(
    store: StoreClient,
) -> None:
    """Anthropic's stream ended (cleanly, for Envoy) after message_delta's output count but
    before message_stop: the client got an error chunk, the request is charged what
    Anthropic had counted, not an estimate, and it is logged as the failure it was."""
    served = STREAMED_APIS["chat to anthropic"]
    whole = served.stream("whole")
    assert whole[-1].startswith(b"event: message_stop")
    recorded = await ledgers(store, served.path, served.key, served.body, Answer(whole[:-1], SSE))
    recorded.agree()
    line = recorded.line
    assert (line["prompt_tokens"], line["completion_tokens"]) == (18, 8)  # 12 + 6 read
    assert line["outcome"] != "completed"
    assert line["error_code"] is not None
