"""A client that hangs up on a failover request before any answer is charged as the chain
member whose attempt was in flight, in every ledger.

The provider that received the attempt in flight generates the answer (a stream: reads
the prompt) and bills it. Before, the request was charged at its primary whatever Envoy
was trying: the log line, ``tokens_consumed_total``, ``aigw_cost_usd_total`` and the
rollup named the primary's provider and priced the estimate at the primary's price (and
with the chain's largest allowance), though the primary had refused the request and a
fallback's provider billed it. Now each attempt on a fallback names itself in the store
before its request leaves (the primary's, the first, writes nothing), and the request's
stream reads that name once the client is gone, before it charges: the member named is
charged as it would be had it answered. When the store cannot say, the request is
charged at its primary as before, and its log line says ``attempt_unknown``.

These tests play Envoy: the downstream stream's request phases, then each attempt's own
stream (through the processor, in attempt mode), then the downstream stream's end with
no answer (the client hung up), on a real Valkey.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.config import parse_config
from extproc.envoy_failover import pinned_cluster_name
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import attempt_stages
from extproc.stages.pipeline import default_stages
from extproc.store.attempts_in_flight import AttemptsInFlight
from extproc.store.connection import StoreClient, connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.response_owners import ResponseOwner
from extproc.store.usage import UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers
from tests.unit.conftest import MemoryLog
from tests.unit.test_aliases_and_failover import attempt_on
from tests.unit.test_cut_answer import sample
from tests.unit.test_failover_cut_attempts import (
    ALLOWANCE,
    AUTH,
    CHAT,
    CUT_PRICE,
    PROMPT,
    QUOTA,
    AttemptStream,
    attempt,
    config_text,
    used_tokens,
)
from tests.unit.test_openai_failover import (
    ALICE,
    EU_PRICE,
    STORED,
    Owners,
    admitted,
    with_owners,
)
from tests.unit.test_openai_failover import config as openai_config
from tests.unit.test_request_log import only_line

PREFIX = "failover-hang-up:"
# gpt-4.1-nano on the mock provider: 0.10 and 0.40 USD per million input and output tokens.
NANO_PRICE = (Decimal("0.10"), Decimal("0.40"))
THROTTLED = orjson.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}})


def cost(price: tuple[Decimal, Decimal], completion: int = ALLOWANCE) -> Decimal:
    return (PROMPT * price[0] + completion * price[1]) / 10**6


def body(stream: bool = False) -> bytes:
    return orjson.dumps(
        {
            "model": "primary",
            "max_tokens": ALLOWANCE,
            "stream": stream,
            "messages": [{"role": "user", "content": "x" * 40}],
        }
    )


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[StoreClient]:
    found = connect(valkey.url, 2.0)
    await found.flushdb()
    yield found
    await found.aclose()


class Gateway:
    """The gateway's processor on a real store, and what it wrote there."""

    def __init__(self, client: StoreClient, records: StoreClient | None = None) -> None:
        self.quota = QuotaStore(client, PREFIX)
        self.usage = UsageStore(client, PREFIX + "usage:", retention_days=3)
        self.writer = UsageWriter(self.usage, on_error=lambda: None)
        self.services = Services(
            GatewayMetrics(),
            MemoryLog(),
            quota_store=self.quota,
            usage_writer=self.writer,
            attempts_in_flight=AttemptsInFlight(records or client, PREFIX),
        )
        # primary (provider cut) fails over to second (cut-too), then gpt-4.1-nano (mock).
        text = config_text(QUOTA).replace(
            "fallbacks: [claude-3-5-haiku-latest, second, gpt-4.1-nano]",
            "fallbacks: [second, gpt-4.1-nano]",
        )
        self.runtime = Runtime(parse_config(text, "gateway.yaml", {}), self.services)
        self.processor = Processor(lambda: self.runtime, default_stages(), attempt_stages())

    async def rollup(self, line: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
        """The rollup's (prompt, completion, picodollars) by provider, for the line's hour."""
        assert await self.writer.flush() is True
        hour = datetime.fromisoformat(line["timestamp"]).replace(minute=0, second=0, microsecond=0)
        rows = await self.usage.query(hour, hour + timedelta(hours=1), ("provider",))
        return {
            row.dimensions["provider"]: (row.prompt_tokens, row.completion_tokens, row.cost_picousd)
            for row in rows
        }


async def sent_only(processor: Processor, provider: str, sent: bytes) -> None:
    """An attempt at ``provider`` whose request left, and whose stream then ends with no
    answer: the client hung up, and Envoy reset the attempt."""
    first = request_headers(CHAT)
    for name, struct in attempt_on(provider).items():
        first.attributes[name].CopyFrom(struct)

    async def messages() -> AsyncIterator[ext.ProcessingRequest]:
        yield first
        yield request_body(sent)

    answers = [answer async for answer in processor.process(messages(), AttemptStream())]
    # Let through with its body translated for its provider, whatever the store said.
    assert answers[-1].WhichOneof("response") == "request_body"
    assert answers[-1].request_body.response.body_mutation.body


async def hung_up(
    gateway: Gateway, failed: list[str], in_flight: str | None, stream: bool = False
) -> dict[str, Any]:
    """The client asks for ``primary``; Envoy's attempts at the ``failed`` providers are
    throttled (429), the one at ``in_flight`` is sent, and the client hangs up before any
    answer. The request's log line."""
    processor = gateway.processor
    answers: list[ext.ProcessingResponse] = []

    async def envoy() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(CHAT, headers=AUTH)
        yield request_body(body(stream))
        sent = answers[-1].request_body.response.body_mutation.body
        for provider in failed:
            await attempt(processor, provider, sent, 429, THROTTLED)
        if in_flight is not None:
            await sent_only(processor, in_flight, sent)

    async for answer in processor.process(envoy()):
        answers.append(answer)
    await processor.closed()
    return only_line(gateway.services)


def assert_charged_to(
    gateway: Gateway, line: dict[str, Any], provider: str, expected: Decimal, completion: int
) -> None:
    assert (line["outcome"], line["http_status_code"], line["model"]) == ("aborted", 0, "primary")
    assert (line["usage_estimated"], line["prompt_tokens"], line["completion_tokens"]) == (
        True,
        PROMPT,
        completion,
    )
    assert line["provider"] == provider
    assert Decimal(str(line["cost_usd"])) == expected
    services = gateway.services
    for token_type, count in (("prompt", PROMPT), ("completion", completion)):
        assert sample(services, "tokens_consumed_total", token_type=token_type) == count
        found = sample(services, "tokens_consumed_total", token_type=token_type, provider=provider)
        assert found == count
    assert Decimal(str(sample(services, "aigw_cost_usd_total", provider=provider))) == expected


@pytest.mark.parametrize(
    ("failed", "in_flight", "provider", "upstream_model", "price"),
    [
        (["cut"], "cut-too", "cut-too", "second", CUT_PRICE),
        (["cut", "cut-too"], "mock", "mock", "gpt-4.1-nano", NANO_PRICE),
    ],
    ids=["first fallback", "second fallback"],
)
async def test_a_client_gone_while_a_fallback_answers_is_charged_at_that_fallback(
    client: StoreClient,
    failed: list[str],
    in_flight: str,
    provider: str,
    upstream_model: str,
    price: tuple[Decimal, Decimal],
) -> None:
    gateway = Gateway(client)
    line = await hung_up(gateway, failed, in_flight)
    assert_charged_to(gateway, line, provider, cost(price), ALLOWANCE)
    assert (line["upstream_model"], line["attempt_unknown"]) == (upstream_model, False)
    # The quota settles at the line's total, and the rollup holds it under that provider.
    assert await used_tokens(gateway.runtime, gateway.quota) == PROMPT + ALLOWANCE
    rolled = await gateway.rollup(line)
    assert rolled == {provider: (PROMPT, ALLOWANCE, round(cost(price) * 10**12))}


async def test_a_stream_left_before_the_fallback_sent_anything_is_charged_its_prompt_there(
    client: StoreClient,
) -> None:
    gateway = Gateway(client)
    line = await hung_up(gateway, ["cut", "cut-too"], "mock", stream=True)
    assert_charged_to(gateway, line, "mock", cost(NANO_PRICE, 0), 0)
    assert line["stream"] is True


async def test_a_client_gone_while_the_primary_answers_is_charged_at_the_primary(
    client: StoreClient,
) -> None:
    """The primary's attempt, the first, writes nothing (no store round trip for a
    request its primary serves): no record names the primary."""
    gateway = Gateway(client)
    line = await hung_up(gateway, [], "cut")
    assert_charged_to(gateway, line, "cut", cost(CUT_PRICE), ALLOWANCE)
    assert (line["upstream_model"], line["attempt_unknown"]) == ("primary", False)
    assert await client.keys(PREFIX + "attempt:*") == []


async def test_a_fallback_names_itself_until_no_attempt_can_be_in_flight(
    client: StoreClient,
) -> None:
    """Its record expires after the longest wait of the chain's attempts, plus room."""
    gateway = Gateway(client)
    await hung_up(gateway, ["cut"], "cut-too")
    [key] = await client.keys(PREFIX + "attempt:*")
    assert await client.get(key) == b"cut-too"
    ttl_s = await client.pttl(key) / 1000
    assert 0 < ttl_s <= gateway.runtime.attempt_record_ttl_s
    assert ttl_s > gateway.runtime.attempt_record_ttl_s - 60


async def test_a_store_that_cannot_say_leaves_the_request_at_its_primary_and_says_so(
    client: StoreClient,
) -> None:
    """Neither the fallback's record nor its read reaches the store: the attempt is not
    failed for it (let through, its body translated), and the request is charged at its
    primary, its log line saying the attempt in flight is unknown; both failures are
    counted."""
    down = connect("redis://127.0.0.1:1", 0.5)
    gateway = Gateway(client, records=down)
    try:
        line = await hung_up(gateway, ["cut"], "mock")
    finally:
        await down.aclose()
    assert_charged_to(gateway, line, "cut", cost(CUT_PRICE), ALLOWANCE)
    assert line["attempt_unknown"] is True
    metrics = gateway.services
    assert sample(metrics, "aigw_store_errors_total", operation="attempt_record") == 1
    assert sample(metrics, "aigw_store_errors_total", operation="attempt_lookup") == 1


async def test_a_client_that_sets_the_gateway_notes_names_no_record(
    client: StoreClient,
) -> None:
    """The notes to the attempts are the gateway's: a client's own under their keys is
    replaced, so a client cannot point its attempts at another request's record."""
    gateway = Gateway(client)
    forged = orjson.loads(body())
    forged[headers.FAILOVER_REQUEST_KEY] = {"api": "openai_chat", "headers": {}, "record": "x"}
    answers = [
        answer
        async for answer in gateway.processor.process(
            _messages(request_headers(CHAT, headers=AUTH), request_body(orjson.dumps(forged)))
        )
    ]
    sent = orjson.loads(answers[-1].request_body.response.body_mutation.body)
    record = sent[headers.FAILOVER_REQUEST_KEY]["record"]
    assert record != "x" and len(record) == 32


async def _messages(*messages: ext.ProcessingRequest) -> AsyncIterator[ext.ProcessingRequest]:
    for message in messages:
        yield message


async def test_a_request_pinned_to_a_fallback_is_charged_there_without_asking_the_store() -> None:
    """A Responses API request continuing a response a fallback's provider stores goes to
    that fallback alone: a hang-up is charged at its price, under its provider. Before,
    its line named the fallback's provider but priced it as the primary (gpt-main, which
    has no price here: the line said it cost nothing)."""
    owners = Owners({STORED: ResponseOwner(ALICE, "mock-eu", 10)})
    services = with_owners(owners)
    body = {"model": "gpt-main", "input": "x" * 40, "max_output_tokens": ALLOWANCE}
    cluster, _ = await admitted(
        openai_config(), services, "/v1/responses", {**body, "previous_response_id": STORED}
    )
    assert cluster == pinned_cluster_name("gpt-main", 1)
    line = only_line(services)
    assert (line["outcome"], line["provider"], line["upstream_model"]) == (
        "aborted",
        "mock-eu",
        "gpt-4o-mini",
    )
    prompt, completion = line["prompt_tokens"], line["completion_tokens"]
    assert completion == ALLOWANCE
    eu_in, eu_out = (Decimal(str(EU_PRICE[k])) for k in ("input_per_million", "output_per_million"))
    assert Decimal(str(line["cost_usd"])) == (prompt * eu_in + completion * eu_out) / 10**6
