"""A non-streamed answer cut after the provider's success status is charged its estimate in
every ledger: the log line, the token and cost metrics, the usage rollup and the quota.

The provider bills a whole answer once it has started sending it, whether or not the
client read it to the end (the client hung up, the upstream reset mid-body, Envoy dropped
an answer over ``envoy.max_response_body_bytes``). The quota kept the whole reservation
(the prompt estimate and the completion allowance) while the log line, the metrics and
the rollup said 0 tokens: a bill that said nothing happened. Now each records the prompt
estimate and the allowance the quota reserved, marked ``usage_estimated``, as a cut
stream is; a request that produced nothing (refused, an error status) is still charged
nothing. One the client left before any answer came: test_client_left_before_answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from google.protobuf.json_format import MessageToDict

from extproc.config import GatewayConfig
from extproc.config.loader import parse_config
from extproc.headers import METADATA_NAMESPACE
from extproc.processor import Processor
from extproc.quota.store import Denial, QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
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
    sample,
)
from tests.unit.conftest import MemoryLog
from tests.unit.sse_play import only_line
from tests.unit.test_response_path import first_chunk

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
# 40 characters in one message: the quota's prompt estimate is 40 / 4 + 4 tokens.
PROMPT = 14
ALLOWANCE = 300
BODY = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "max_tokens": ALLOWANCE,
        "messages": [{"role": "user", "content": "x" * 40}],
    }
)
# gpt-4o-mini in the default config: $0.15 and $0.60 per million input and output tokens.
COST = (PROMPT * 0.15 + ALLOWANCE * 0.60) / 1_000_000
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Half of it"}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }
)
DEFAULT_CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8")
QUOTA = """
quotas:
  default_max_tokens: 1000
  rules:
    - {name: team-day, subject: api_key, tokens_per_day: %d%s}
"""


async def cut_after_headers(
    processor: Processor,
    body: bytes,
    path: str = CHAT,
    headers: dict[str, str] = AUTH,
    status: int = 200,
) -> None:
    """The client sends ``body``; the provider's ``status`` and headers come back, and
    the stream ends before any body message (the client hung up, the upstream reset,
    Envoy dropped an answer over its buffer limit)."""
    await run_stream(
        processor,
        [request_headers(path, headers=headers), request_body(body), response_headers(status)],
    )


def assert_charged(services: Services, prompt: int, completion: int) -> dict[str, Any]:
    """The log line and the token metrics record the estimate, marked as one."""
    line = only_line(services)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (
        prompt,
        completion,
        prompt + completion,
    )
    assert sample(services, "tokens_consumed_total", token_type="prompt") == prompt
    assert sample(services, "tokens_consumed_total", token_type="completion") == completion
    return line


def assert_nothing_charged(services: Services) -> dict[str, Any]:
    line = only_line(services)
    assert (line["usage_estimated"], line["total_tokens"], line["cost_usd"]) == (False, 0, 0)
    assert sample(services, "tokens_consumed_total") == 0
    return line


# --- the log line and the metrics --------------------------------------------------------


async def test_an_answer_the_client_left_after_its_headers_is_charged_its_reservation(
    processor: Processor, services: Services
) -> None:
    """The full path: Envoy buffers a JSON answer whole, so a cut mid-body leaves the
    gateway with the provider's 200 headers and no body message."""
    await cut_after_headers(processor, BODY)
    line = assert_charged(services, PROMPT, ALLOWANCE)
    assert (line["outcome"], line["http_status_code"]) == ("aborted", 200)
    assert line["cost_usd"] == pytest.approx(COST)
    assert sample(services, "aigw_cost_usd_total") == pytest.approx(COST)


async def test_a_lean_answer_cut_after_its_first_chunk_is_charged_its_reservation(
    processor: Processor, services: Services
) -> None:
    """The lean path, when Envoy could not say the answer is not a stream: the JSON answer
    comes STREAMED, its status with its first chunk, and the client left after that."""
    await run_stream(
        processor,
        [
            request_headers("/openai/gpt-4o-mini", headers=AUTH),
            request_body(BODY),
            first_chunk(ANSWER[:40], 200),
        ],
    )
    line = assert_charged(services, PROMPT, ALLOWANCE)
    assert line["outcome"] == "aborted"


async def test_the_allowance_is_the_default_when_the_body_names_none(
    config: GatewayConfig, processor: Processor, services: Services
) -> None:
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 40}]}
    )
    await cut_after_headers(processor, body)
    assert_charged(services, PROMPT, config.quotas.default_max_tokens)


async def test_a_messages_answer_is_charged_its_max_tokens(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps(
        {"model": "claude-3-5-haiku-latest", "max_tokens": 77,
         "messages": [{"role": "user", "content": "x" * 40}]}
    )  # fmt: skip
    await cut_after_headers(processor, body, "/v1/messages", {"x-api-key": "team1-key"})
    assert_charged(services, PROMPT, 77)


async def test_a_responses_answer_is_charged_its_max_output_tokens(
    processor: Processor, services: Services
) -> None:
    # "x" * 40 as input: 10 tokens and one message's overhead.
    body = orjson.dumps({"model": "gpt-4o-mini", "input": "x" * 40, "max_output_tokens": 64})
    await cut_after_headers(processor, body, "/v1/responses")
    assert_charged(services, PROMPT, 64)


async def test_a_responses_answer_with_the_image_tool_is_charged_its_picture_too(
    processor: Processor, services: Services
) -> None:
    """The quota reserved one picture beside the allowance (272 tokens: low quality,
    1024x1024); the body that would have counted it never came. Before, the picture was
    released: charged 64 tokens, the line's image_generation_output_tokens 0."""
    tool = {"type": "image_generation", "model": "gpt-image-1", "quality": "low",
            "size": "1024x1024"}  # fmt: skip
    body = orjson.dumps({"model": "gpt-4o-mini", "input": "x" * 40, "max_output_tokens": 64,
                         "tools": [tool]})  # fmt: skip
    await cut_after_headers(processor, body, "/v1/responses")
    # The prompt estimate counts the tool's entry too.
    line = assert_charged(services, only_line(services)["prompt_tokens"], 64 + 272)
    assert line["image_generation_model"] == "gpt-image-1"
    assert line["image_generation_output_tokens"] == line["image_generation_output_image_tokens"]
    assert line["image_generation_output_tokens"] == 272


async def test_an_embeddings_answer_cut_is_charged_its_input_only(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps({"model": "text-embedding-3-small", "input": "word " * 80})
    await cut_after_headers(processor, body, "/v1/embeddings")
    assert_charged(services, 100, 0)


async def test_a_token_count_cut_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps(
        {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "x" * 40}]}
    )
    await cut_after_headers(
        processor, body, "/v1/messages/count_tokens", {"x-api-key": "team1-key"}
    )
    assert_nothing_charged(services)


async def whole_answer(
    processor: Processor, model: str, reply: bytes
) -> list[ext.ProcessingResponse]:
    """The provider's 200 and ``reply``, whole, to the chat request of ``model``."""
    body = orjson.loads(BODY) | {"model": model}
    return await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(orjson.dumps(body)),
            response_headers(200),
            response_body(reply),
        ],
    )


# An answer without usage whose one message says 37 characters: 10 tokens at four each.
UNCOUNTED = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "y" * 37}}],
    }
)


@pytest.mark.parametrize(
    ("reply", "completion"),
    [(UNCOUNTED, 10), (orjson.dumps({"id": "c1", "choices": []}), 0), (b"<html>oops", 0)],
    ids=["text", "no text", "not json"],
)
async def test_a_whole_answer_without_usage_is_charged_its_text_span_included(
    processor: Processor, services: Services, reply: bytes, completion: int
) -> None:
    """A 200 whose JSON has no usage (or is no JSON): the quota kept its reservation
    while the log line said 0 tokens; now every ledger says the same estimate, the
    prompt and the text the answer carries (not the allowance: a provider that never
    reports usage would be billed max_tokens on every request), and the span too (the
    answer to the body carries it)."""
    answers = await whole_answer(processor, "gpt-4o-mini", reply)
    line = assert_charged(services, PROMPT, completion)
    assert line["outcome"] == "completed"
    assert line["cost_usd"] == pytest.approx((PROMPT * 0.15 + completion * 0.60) / 1e6)
    span = span_fields(answers[-1])
    assert (span["prompt_tokens"], span["completion_tokens"]) == (PROMPT, completion)


def span_fields(answer: ext.ProcessingResponse) -> dict[str, Any]:
    found: dict[str, Any] = MessageToDict(
        answer.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value
    )
    return found


# --- what produced nothing stays free ------------------------------------------------------


async def test_an_answer_the_gateway_replaced_with_an_error_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    # Anthropic's 200 that is no Messages answer: the OpenAI client gets a 502.
    await whole_answer(processor, "claude-3-5-haiku-latest", b"<html>oops")
    line = assert_nothing_charged(services)
    assert line["http_status_code"] == 502


async def test_an_error_status_cut_mid_body_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    await cut_after_headers(processor, BODY, status=500)
    assert_nothing_charged(services)


# --- the quota and the rollup agree with the line ------------------------------------------


@pytest.fixture
async def stores(valkey: EmbeddedValkey) -> AsyncIterator[tuple[QuotaStore, UsageStore]]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota = QuotaStore(client, "cut-answer:")
    await quota.start()
    yield quota, UsageStore(client, "cut-answer-usage:", retention_days=3)
    await quota.close()
    await client.aclose()


def gateway(
    quota: QuotaStore, usage: UsageStore, budget: int, extra: str = ""
) -> tuple[Runtime, Processor, Services, UsageWriter]:
    writer = UsageWriter(usage, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota, usage_writer=writer)
    runtime = Runtime(parse_config(DEFAULT_CONFIG + QUOTA % (budget, extra), "t", {}), services)
    return runtime, Processor(lambda: runtime, default_stages()), services, writer


async def used_tokens(runtime: Runtime, quota: QuotaStore) -> int:
    await quota.flush()
    limits = runtime.quota_rules.limits_for_subject("api_key", "team1", quota.now())
    found = await quota.reserve(limits, 0)
    if isinstance(found, Denial):
        return found.used  # a budget used to the token refuses even 0 more
    [used] = found.used
    return used


async def assert_rolled_up(
    writer: UsageWriter,
    usage: UsageStore,
    line: dict[str, Any],
    tokens: tuple[int, int],
    cost_usd: float,
) -> None:
    """The hour's rollup records the (prompt, completion) tokens and the cost the log
    line charged."""
    assert await writer.flush() is True
    hour = datetime.fromisoformat(line["timestamp"]).replace(minute=0, second=0, microsecond=0)
    [row] = await usage.query(hour, hour + timedelta(hours=1), ("api_key_id",))
    assert (row.prompt_tokens, row.completion_tokens) == tokens
    assert row.cost_picousd == round(cost_usd * 10**12)


async def test_the_quota_settles_at_what_the_log_line_and_the_rollup_record(
    stores: tuple[QuotaStore, UsageStore],
) -> None:
    quota, usage = stores
    runtime, processor, services, writer = gateway(quota, usage, 1_000_000)
    await cut_after_headers(processor, BODY)
    line = assert_charged(services, PROMPT, ALLOWANCE)
    assert await used_tokens(runtime, quota) == line["total_tokens"] == PROMPT + ALLOWANCE

    await assert_rolled_up(writer, usage, line, (PROMPT, ALLOWANCE), COST)


async def test_a_hard_capped_answer_is_charged_the_allowance_the_provider_was_given(
    stores: tuple[QuotaStore, UsageStore],
) -> None:
    """The cap lowered max_tokens to what the budget had left: the provider could not
    answer more, so the cut answer is charged up to the cap, never past the budget."""
    quota, usage = stores
    budget = PROMPT + 100
    runtime, processor, services, _ = gateway(quota, usage, budget, ", hard_cap: true")
    await cut_after_headers(processor, BODY)
    assert_charged(services, PROMPT, 100)
    assert await used_tokens(runtime, quota) == budget
