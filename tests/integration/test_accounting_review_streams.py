"""A review of the accounting of streamed answers with the real Envoy, Valkey and providers.

Each test streams with the official ``openai`` client and reads what an operator
reconciles: the log line, ``tokens_consumed_total`` and the quota counters (the
management API), against what the provider billed. Besides the mock provider, a
stand-in OpenAI-compatible provider answers streams written as a test chose: a text delta
written in two pieces a moment apart (so Envoy hands the gateway two body chunks), or a
usage whose total is not its counts' sum.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.management.client import QuotaClient
from tests.integration.conftest import (
    REFUSED_PORT,
    GatewayLog,
    metric,
    running_stack,
    scrape,
    serving,
    wait_for,
)

KEYS = {"streams": "streams-key-5e4d3c2b", "capped": "capped-key-1a2b3c4d"}
# A pause between two writes of one event: Envoy reads, and passes on, each apart.
PAUSE = None
TEXT = "0123456789 " * 40  # 440 characters of generated text: 110 tokens estimated


def chunk(document: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(document) + b"\n\n"


def text_chunk(text: str) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    return chunk({"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]})


FINISH = chunk({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})  # fmt: skip
DONE = b"data: [DONE]\n\n"
SPLIT_AT = len(text_chunk(TEXT)) // 2
# What the stand-in provider writes, by the model asked for. None of the first two
# report usage (a provider that ignores stream_options.include_usage): each is charged
# its text, which is the same, written in one piece or in two.
SCRIPTS: dict[str, list[bytes | None]] = {
    "standin-one-piece": [text_chunk(TEXT), FINISH, DONE],
    "standin-two-pieces": [
        text_chunk(TEXT)[:SPLIT_AT], PAUSE, text_chunk(TEXT)[SPLIT_AT:], FINISH, DONE
    ],
    # A total that is neither prompt + completion nor that plus itemised reasoning.
    "standin-odd-total": [
        text_chunk("Hello"),
        FINISH,
        chunk({"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [],
               "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 140}}),
        DONE,
    ],
}  # fmt: skip


class StandInProvider(BaseHTTPRequestHandler):
    """An OpenAI-compatible provider that streams its model's script, chunked."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for piece in SCRIPTS[body["model"]]:
            if piece is None:  # PAUSE
                time.sleep(0.3)
                continue
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


# The hard-capped key's budget: its prompt (six 45-character words, estimated at 72 tokens)
# leaves the answer 10.
WORD = "pneumonoultramicroscopicsilicovolcanoconiosis"
LONG_WORDS = [{"role": "user", "content": " ".join([WORD] * 6)}]
CAPPED_BUDGET = 82


def streams_config(workdir: Any, standin_port: int) -> Any:
    text = DEFAULT_CONFIG.read_text()
    keys = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in KEYS.items())
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    providers = f"""
  - {{name: dead, base_url: "http://127.0.0.1:{REFUSED_PORT}/v1", api_key: dead-key-123}}
  - {{name: standin, base_url: "http://127.0.0.1:{standin_port}/v1", api_key: standin-key-123}}
"""
    models = "".join(f"  - {{name: {name}, provider: standin}}\n" for name in SCRIPTS)
    models += "  - {name: primary-dead, provider: dead, fallbacks: [claude-3-5-haiku-latest]}\n"
    text = text.replace("\nproviders:\n", "\nproviders:" + providers, 1)
    text = text.replace("\nmodels:\n", "\nmodels:\n" + models, 1)
    quotas = f"""
quotas:
  rules:
    - {{name: streams-day, subject: api_key, match: streams, tokens_per_day: 100000000}}
    - {{name: capped-day, subject: api_key, match: capped, tokens_per_day: {CAPPED_BUDGET},
       hard_cap: true}}
"""
    config = workdir / "gateway.yaml"
    config.write_text(text + quotas)
    return config


@pytest.fixture(scope="module")
def streams_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("accounting-streams")
    with (
        serving(StandInProvider) as port,
        running_stack(workdir, streams_config(workdir, port)) as running,
    ):
        yield running


def client(stack: LocalStack, key: str = "streams", prefix: str = "/v1") -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{prefix}", api_key=KEYS[key], max_retries=0)


def stream_line(
    stack: LocalStack, model: str, key: str = "streams", prefix: str = "/v1", **fields: Any
) -> dict[str, Any]:
    """Stream a chat completion to its end; the request's log line."""
    messages = fields.pop("messages", [{"role": "user", "content": "Count for me."}])
    with client(stack, key, prefix).chat.completions.with_streaming_response.create(
        model=model, messages=messages, stream=True, **fields
    ) as response:
        request_id = response.headers["x-request-id"]
        list(response.parse())
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def tokens_used(stack: LocalStack, key: str) -> int:
    """The key's token counter in the store, as the management API reads it."""
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", "dev-admin-token") as quotas:
        state = quotas.get("api_key", key)
    return sum(limit.used for limit in state.limits if limit.kind == "tokens")


def logged_tokens(stack: LocalStack, key: str) -> int:
    return sum(
        line["total_tokens"]
        for line in GatewayLog(stack.gateway_log).lines()
        if line.get("api_key_id") == key
    )


def test_a_stream_is_charged_its_text_however_envoy_cut_it(streams_stack: LocalStack) -> None:
    """A provider that ignores include_usage streams 440 characters of text: 110 tokens
    estimated. Written in one piece, that is what the log line says; written in two, a
    moment apart, Envoy hands the gateway two chunks, the text value cut between them,
    and the same answer was charged 0 completion tokens."""
    whole = stream_line(streams_stack, "standin-one-piece")
    assert (whole["usage_estimated"], whole["completion_tokens"]) == (True, len(TEXT) // 4)
    cut = stream_line(streams_stack, "standin-two-pieces")
    assert (cut["usage_estimated"], cut["completion_tokens"]) == (True, len(TEXT) // 4)


def test_every_ledger_holds_a_stream_whose_total_is_not_its_counts_sum(
    streams_stack: LocalStack,
) -> None:
    """The provider reports 20 prompt and 8 completion tokens, total 140 (a total that
    counts thinking it does not itemise, as Gemini's OpenAI-compatible endpoints do). The
    gateway bills the rest as output, 20 + 120: so must the metrics, the log line's
    total and the quota."""
    before = scrape(streams_stack.metrics_url)
    used_before = tokens_used(streams_stack, "streams")
    line = stream_line(streams_stack, "standin-odd-total")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (20, 120)
    after = scrape(streams_stack.metrics_url)
    grown = {
        kind: metric(after, "tokens_consumed_total", api_key_id="streams", token_type=kind)
        - metric(before, "tokens_consumed_total", api_key_id="streams", token_type=kind)
        for kind in ("prompt", "completion")
    }
    assert grown == {"prompt": 20, "completion": 120}
    settled = wait_for(lambda: tokens_used(streams_stack, "streams") - used_before == 140, 10)
    assert settled, tokens_used(streams_stack, "streams") - used_before
    assert line["total_tokens"] == 140


# Claude writes 5 prompt tokens to its cache (2 to its 1-hour cache) and searches the web
# twice: billed above the input price, and per search.
CLAUDE_EXTRAS = {"x-mock-cache-write": "5m=3;1h=2", "x-mock-server-tool-use": "web_search=2"}


def billed(line: dict[str, Any]) -> tuple[Any, ...]:
    return (
        line["prompt_tokens"],
        line["completion_tokens"],
        line["cache_write_tokens"],
        line["cache_write_1h_tokens"],
        line["server_tool_requests"],
        line["cost_usd"],
    )


def test_a_failover_to_claude_bills_its_cache_writes_and_searches(
    streams_stack: LocalStack,
) -> None:
    """primary-dead's provider refuses the connection, and Claude answers the stream: the
    per-attempt filter translates its events to OpenAI's, whose usage has no place for the
    cache writes or the searches. The request's log line then billed the writes at the
    input price and the searches not at all, where the same stream asked of Claude on
    /anthropic bills both."""
    direct = stream_line(
        streams_stack,
        "claude-3-5-haiku-latest",
        prefix="/anthropic",
        extra_headers=CLAUDE_EXTRAS,
    )
    assert billed(direct)[2:5] == (5, 2, {"web_search": 2})
    failed_over = stream_line(streams_stack, "primary-dead", extra_headers=CLAUDE_EXTRAS)
    assert failed_over["provider"] == "mock-anthropic"
    assert billed(failed_over) == billed(direct)


def test_a_hard_capped_stream_without_usage_stays_within_its_budget(
    streams_stack: LocalStack,
) -> None:
    """The key's 82 tokens a day leave its 72-token prompt 10 for the answer: the gateway
    sets max_completion_tokens to 10, and the mock answers 10 words. The provider sends no
    usage, so the gateway estimates the answer from its characters; these words are
    long, and the estimate (54 tokens) was charged whole, past the cap the gateway itself
    set: the hard-capped budget stood at 126 of 82."""
    line = stream_line(
        streams_stack,
        "gpt-4o-mini",
        key="capped",
        messages=LONG_WORDS,
        extra_headers={"x-mock-fault": "no_usage=1"},
    )
    assert (line["quota_decision"], line["usage_estimated"]) == ("capped", True)
    assert line["completion_tokens"] <= CAPPED_BUDGET - line["prompt_tokens"]
    settled = wait_for(lambda: tokens_used(streams_stack, "capped") == line["total_tokens"], 10)
    assert settled, tokens_used(streams_stack, "capped")
    assert tokens_used(streams_stack, "capped") <= CAPPED_BUDGET
