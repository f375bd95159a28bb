"""A client that hangs up on a non-streamed request after the gateway let it through to its
provider, before any answer came back, is charged the quota's estimate for it.

The provider received the request and, for a non-streamed answer, generates and bills it
whole whether or not the client waits (a client's timeout on a long answer is the common
case). Before, the gateway saw its stream end with no response message and charged
nothing: logged ``aborted``, 0 tokens, the reservation given back, while the provider's
bill had the whole answer. Now the request is charged as a non-streamed answer cut after
its status is: the prompt as the quota estimate counts it and the completion allowance the
quota reserved (none for embeddings), ``usage_estimated``, in the log line, the token and
cost metrics, the usage rollup and the quota alike. On the lean response path, a
provider's answer without a body reaches the gateway the same way (Envoy sends nothing),
and is charged the same (docs/architecture.md says why).

A client that leaves before the gateway let the request go (its body still arriving, the
gateway still deciding) reached no provider, and is still charged nothing. A streamed
request left the same way: test_stream_left_before_first_chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageStore
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.test_agents import TEAM2, with_agents
from tests.unit.test_cut_answer import (
    ALLOWANCE,
    AUTH,
    BODY,
    CHAT,
    COST,
    PROMPT,
    assert_charged,
    assert_nothing_charged,
    assert_rolled_up,
    gateway,
    sample,
    used_tokens,
)
from tests.unit.test_cut_answer_service_tier import FLEX, HAIKU, chat, cost
from tests.unit.test_cut_answer_service_tier import gateway as bedrock_gateway
from tests.unit.test_request_log import only_line

# The lean response path: a model named in the path, answered in the client's own API.
LEAN_CHAT = "/openai/gpt-4o-mini"


async def left_after_release(
    processor: Processor, body: bytes = BODY, path: str = CHAT, headers: dict[str, str] = AUTH
) -> list[ext.ProcessingResponse]:
    """The gateway lets the request through, and the stream ends before any response
    message: the client hung up while the provider was generating."""
    return await run_stream(processor, [request_headers(path, headers=headers), request_body(body)])


async def left_before_release(
    processor: Processor, body: bytes = BODY, path: str = CHAT, headers: dict[str, str] = AUTH
) -> None:
    """Envoy closes the stream before the gateway's answer to the body was written (the
    client left while the gateway decided): gRPC never asks the stream for the next
    answer, and closes it at its yield."""
    messages = [request_headers(path, headers=headers), request_body(body)]
    stream = processor.process(_iterate(messages))
    headers_answer = await anext(stream)
    body_answer = await anext(stream)  # the body's answer, reserved, never written to Envoy
    assert headers_answer.WhichOneof("response") == "request_headers"
    assert body_answer.WhichOneof("response") == "request_body"
    await stream.aclose()


async def _iterate(
    messages: Iterable[ext.ProcessingRequest],
) -> AsyncIterator[ext.ProcessingRequest]:
    for message in messages:
        yield message


# --- charged: the request reached its provider ----------------------------------------------


async def test_a_client_that_left_before_the_answer_is_charged_its_reservation(
    processor: Processor, services: Services
) -> None:
    """The full path: Envoy sends the answer's headers as they come, and none came."""
    answers = await left_after_release(processor)
    assert answers[-1].WhichOneof("response") == "request_body"
    line = assert_charged(services, PROMPT, ALLOWANCE)
    assert (line["outcome"], line["http_status_code"]) == ("aborted", 0)
    assert line["upstream_status_code"] is None
    assert line["cost_usd"] == pytest.approx(COST)
    assert sample(services, "aigw_cost_usd_total") == pytest.approx(COST)
    assert sample(services, "aigw_requests_total", status_code="aborted") == 1


async def test_a_lean_request_the_client_left_before_its_one_message_is_charged_too(
    processor: Processor, services: Services
) -> None:
    """The lean path reads a non-streamed answer in one buffered message: a client gone
    before it, and a provider's answer without a body, both end the stream with nothing."""
    await left_after_release(processor, path=LEAN_CHAT)
    line = assert_charged(services, PROMPT, ALLOWANCE)
    assert (line["outcome"], line["http_status_code"]) == ("aborted", 0)


async def test_an_embeddings_request_left_unanswered_is_charged_its_input_only(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps({"model": "text-embedding-3-small", "input": "word " * 80})
    await left_after_release(processor, body, "/v1/embeddings")
    assert_charged(services, 100, 0)


async def test_a_failover_request_left_unanswered_is_charged_under_its_primary(
    services: Services,
) -> None:
    """Without a store to learn which attempt was in flight from (each attempt on a
    fallback names itself there: test_failover_hang_up), the request is charged its
    primary's estimate and price, once."""
    _, processor = await bedrock_gateway(services)
    await left_after_release(processor, chat("primary", None))
    line = assert_charged(services, PROMPT, ALLOWANCE)
    assert (line["provider"], line["model"], line["cut_attempts"]) == ("cut", "primary", None)


async def test_a_bedrock_request_left_unanswered_is_priced_at_the_tier_it_asked_for(
    services: Services,
) -> None:
    """As its answer cut after Bedrock's 200 is: Bedrock serves the tier asked for."""
    _, processor = await bedrock_gateway(services)
    await left_after_release(processor, chat(HAIKU, "flex"), "/bedrock/haiku")
    line = only_line(services)
    assert (line["usage_estimated"], line["total_tokens"]) == (True, PROMPT + ALLOWANCE)
    assert line["service_tier"] == "flex"
    assert Decimal(str(line["cost_usd"])) == cost(FLEX)


# --- charged nothing: the request never left the gateway ------------------------------------


async def test_a_client_that_left_while_sending_its_body_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    await run_stream(processor, [request_headers(CHAT, headers=AUTH)])
    line = assert_nothing_charged(services)
    assert line["outcome"] == "aborted"


async def test_a_client_that_left_while_the_gateway_decided_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    await left_before_release(processor)
    line = assert_nothing_charged(services)
    assert line["outcome"] == "aborted"


async def test_a_refused_request_the_client_then_left_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": "not a list"})
    answers = await left_after_release(processor, body)
    assert answers[-1].WhichOneof("response") == "immediate_response"
    line = assert_nothing_charged(services)
    assert line["http_status_code"] == 400


# --- the quota and the rollup agree with the line ------------------------------------------


@pytest.fixture
async def stores(valkey: EmbeddedValkey) -> AsyncIterator[tuple[QuotaStore, UsageStore]]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota = QuotaStore(client, "left-unanswered:")
    await quota.start()
    yield quota, UsageStore(client, "left-unanswered-usage:", retention_days=3)
    await quota.close()
    await client.aclose()


async def test_the_quota_and_the_rollup_settle_at_the_estimate_the_line_records(
    stores: tuple[QuotaStore, UsageStore],
) -> None:
    quota, usage = stores
    runtime, processor, services, writer = gateway(quota, usage, 1_000_000)
    await left_after_release(processor, path=LEAN_CHAT)
    line = assert_charged(services, PROMPT, ALLOWANCE)
    assert await used_tokens(runtime, quota) == line["total_tokens"] == PROMPT + ALLOWANCE

    await assert_rolled_up(writer, usage, line, (PROMPT, ALLOWANCE), COST)


async def test_a_client_gone_before_the_release_gives_its_reservation_back(
    stores: tuple[QuotaStore, UsageStore],
) -> None:
    quota, usage = stores
    runtime, processor, services, _ = gateway(quota, usage, 1_000_000)
    await left_before_release(processor)
    assert_nothing_charged(services)
    assert await used_tokens(runtime, quota) == 0


# --- routes that reach no model: never charged, whatever the client does -------------------

_MESSAGES = {"model": "claude-3-5-haiku-20241022", "max_tokens": 100,
             "messages": [{"role": "user", "content": "word " * 80}]}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/v1/messages/count_tokens", _MESSAGES, AUTH),
        ("/v1/responses/input_tokens", {"model": "gpt-4o-mini", "input": "word " * 80}, AUTH),
        ("/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                  "params": {"name": "echo", "arguments": {"text": "word " * 80}}}, TEAM2),
        ("/a2a/helper/", {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {
            "message": {"role": "user", "parts": [{"text": "word " * 80}]}}}, TEAM2),
    ],
    ids=["count-tokens", "responses-input-tokens", "mcp-tool-call", "a2a-message"],
)  # fmt: skip
async def test_a_request_that_reaches_no_model_is_charged_nothing_when_its_client_leaves(
    config: GatewayConfig, services: Services, path: str, body: Any, headers: dict[str, str]
) -> None:
    """A token count, an MCP tool call and an A2A message bill no tokens: a client that
    leaves before their answer costs nothing either."""
    processor = processor_for(with_agents(config), services)
    answers = await left_after_release(processor, orjson.dumps(body), path, headers)
    assert answers[-1].WhichOneof("response") == "request_body"
    line = assert_nothing_charged(services)
    assert line["outcome"] == "aborted"
