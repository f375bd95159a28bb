"""A streamed request whose client leaves after the gateway let it through to its provider,
before the first chunk of the answer came, is charged its prompt.

The provider had the prompt and read it (a long prompt's prefill, a slow first token, a
reasoning model thinking): it bills those input tokens whether or not the client stays.
Before, such a stream was charged nothing (``aborted``, 0 tokens, its reservation given
back), while the same stream cut one chunk later was charged the prompt estimate and the
text streamed. Now it is charged the prompt as the quota estimate counts it and no
completion (nothing was streamed): ``usage_estimated``, ``outcome`` ``aborted``, status 0,
in the log line, the token and cost metrics, the usage rollup and the quota alike, on the
full response path (no response headers came) and the lean one (no chunk came) alike.
A stream whose status came (the full path's response headers) and no chunk after it was
charged so already, with that status. A client gone before the gateway let the request go
reached no provider and is still charged nothing.

The non-streamed form of the same hang-up: test_client_left_before_answer.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.store.usage import UsageStore
from extproc.testing import request_body, request_headers, response_headers, run_stream
from tests.unit.sse_play import SSE
from tests.unit.test_client_left_before_answer import (
    LEAN_CHAT,
    left_after_release,
    left_before_release,
    stores,
)
from tests.unit.test_cut_answer import (
    AUTH,
    BODY,
    CHAT,
    PROMPT,
    assert_charged,
    assert_nothing_charged,
    assert_rolled_up,
    gateway,
    sample,
    used_tokens,
)
from tests.unit.test_cut_answer_service_tier import FLEX, HAIKU, chat
from tests.unit.test_cut_answer_service_tier import gateway as bedrock_gateway
from tests.unit.test_request_log import only_line

__all__ = ["stores"]

# gpt-4o-mini in the default config: $0.15 per million input tokens.
PROMPT_COST = PROMPT * 0.15 / 1_000_000
ANTHROPIC_KEY = {"x-api-key": "team1-key", "anthropic-version": "2023-06-01"}
CLAUDE = "claude-3-5-haiku-latest"


def streamed(body: bytes) -> bytes:
    return orjson.dumps(orjson.loads(body) | {"stream": True})


STREAM = streamed(BODY)


def assert_charged_the_prompt(services: Services, prompt: int = PROMPT) -> dict[str, Any]:
    """The line, the token metrics: the prompt, no completion, an estimate, status 0."""
    line = assert_charged(services, prompt, 0)
    assert (line["outcome"], line["http_status_code"]) == ("aborted", 0)
    assert line["upstream_status_code"] is None
    assert sample(services, "aigw_requests_total", status_code="aborted") == 1
    return line


# --- charged the prompt: the provider had it -------------------------------------------------


async def test_a_stream_left_before_its_first_chunk_is_charged_its_prompt(
    processor: Processor, services: Services
) -> None:
    """The full path: Envoy sends the answer's headers as they come, and none came (the
    provider sends its status with its first token, or the client left before it)."""
    answers = await left_after_release(processor, STREAM)
    assert answers[-1].WhichOneof("response") == "request_body"
    line = assert_charged_the_prompt(services)
    assert line["cost_usd"] == pytest.approx(PROMPT_COST)
    assert sample(services, "aigw_cost_usd_total") == pytest.approx(PROMPT_COST)
    assert line["time_to_first_token_ms"] is None


async def test_a_lean_stream_left_before_its_first_chunk_is_charged_its_prompt(
    processor: Processor, services: Services
) -> None:
    """The lean path skips the answer's headers: its status comes with the first chunk, so
    a client gone after the headers and one gone before them look alike."""
    await left_after_release(processor, STREAM, LEAN_CHAT)
    assert_charged_the_prompt(services)


async def test_a_translated_stream_left_before_its_first_chunk_is_charged_its_prompt(
    processor: Processor, services: Services
) -> None:
    """An OpenAI client of Claude: charged the same prompt estimate, at Claude's price."""
    body = orjson.dumps(orjson.loads(STREAM) | {"model": CLAUDE})
    await left_after_release(processor, body, "/anthropic/v1/chat/completions")
    line = assert_charged_the_prompt(services)
    assert (line["provider"], line["cost_usd"] > 0) == ("mock-anthropic", True)


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        (
            "/v1/messages",
            ANTHROPIC_KEY,
            {"model": CLAUDE, "max_tokens": 300, "stream": True,
             "messages": [{"role": "user", "content": "x" * 40}]},
        ),
        ("/v1/responses", AUTH, {"model": "gpt-4o-mini", "stream": True, "input": "x" * 40}),
        (
            "/v1/completions",
            AUTH,
            {"model": "gpt-4o-mini", "stream": True, "max_tokens": 300, "prompt": "x" * 40},
        ),
        (
            f"/model/{HAIKU}/converse-stream",
            AUTH,
            {"messages": [{"role": "user", "content": [{"text": "x" * 40}]}]},
        ),
    ],
    ids=["anthropic messages", "responses", "completions", "bedrock converse-stream"],
)  # fmt: skip
async def test_a_stream_of_any_api_left_before_its_first_chunk_is_charged_its_prompt(
    services: Services, path: str, headers: dict[str, str], body: Any
) -> None:
    _, processor = await bedrock_gateway(services)  # its AWS signer started
    await left_after_release(processor, orjson.dumps(body), path, headers)
    line = only_line(services)
    assert (line["outcome"], line["http_status_code"]) == ("aborted", 0)
    assert (line["usage_estimated"], line["completion_tokens"]) == (True, 0)
    assert line["prompt_tokens"] == line["total_tokens"] > 0
    assert sample(services, "tokens_consumed_total", token_type="prompt") > 0


async def test_a_bedrock_stream_left_before_its_first_chunk_is_priced_at_the_tier_asked(
    services: Services,
) -> None:
    """As a Bedrock stream cut before it named its tier is (docs/chargeback.md)."""
    _, processor = await bedrock_gateway(services)
    await left_after_release(processor, streamed(chat(HAIKU, "flex")), "/bedrock/haiku")
    line = assert_charged_the_prompt(services)
    assert line["service_tier"] == "flex"
    assert Decimal(str(line["cost_usd"])) == PROMPT * FLEX[0] / 10**6


async def test_a_failover_stream_left_before_its_first_chunk_is_charged_under_its_primary(
    services: Services,
) -> None:
    """Which attempt was in flight is Envoy's to know: charged once, as its primary."""
    _, processor = await bedrock_gateway(services)
    await left_after_release(processor, streamed(chat("primary", None)))
    line = assert_charged_the_prompt(services)
    assert (line["provider"], line["model"], line["cut_attempts"]) == ("cut", "primary", None)


async def test_a_stream_cut_after_its_status_before_its_first_chunk_is_charged_its_prompt(
    processor: Processor, services: Services
) -> None:
    """The full path saw the provider's 200 and then nothing: the same prompt estimate,
    logged with that status (charged so before this change too)."""
    messages = [request_headers(CHAT, headers=AUTH), request_body(STREAM)]
    await run_stream(processor, [*messages, response_headers(200, SSE)])
    line = assert_charged(services, PROMPT, 0)
    assert (line["outcome"], line["http_status_code"]) == ("aborted", 200)


async def test_a_stream_cut_after_an_error_status_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    messages = [request_headers(CHAT, headers=AUTH), request_body(STREAM)]
    await run_stream(processor, [*messages, response_headers(429)])
    assert_nothing_charged(services)


# --- charged nothing: the request never left the gateway ------------------------------------


async def test_a_stream_left_while_the_gateway_decided_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    await left_before_release(processor, STREAM)
    line = assert_nothing_charged(services)
    assert line["outcome"] == "aborted"


async def test_a_refused_stream_the_client_then_left_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": True, "messages": "not a list"})
    await left_after_release(processor, body)
    line = assert_nothing_charged(services)
    assert line["http_status_code"] == 400


# --- the quota and the rollup agree with the line ------------------------------------------


async def test_the_quota_and_the_rollup_settle_at_the_prompt_the_line_records(
    stores: tuple[QuotaStore, UsageStore],
) -> None:
    quota, usage = stores
    runtime, processor, services, writer = gateway(quota, usage, 1_000_000)
    await left_after_release(processor, STREAM, LEAN_CHAT)
    line = assert_charged_the_prompt(services)
    assert await used_tokens(runtime, quota) == line["total_tokens"] == PROMPT

    await assert_rolled_up(writer, usage, line, (PROMPT, 0), PROMPT_COST)


async def test_a_stream_gone_before_the_release_gives_its_reservation_back(
    stores: tuple[QuotaStore, UsageStore],
) -> None:
    quota, usage = stores
    runtime, processor, services, _ = gateway(quota, usage, 1_000_000)
    await left_before_release(processor, STREAM)
    assert_nothing_charged(services)
    assert await used_tokens(runtime, quota) == 0
