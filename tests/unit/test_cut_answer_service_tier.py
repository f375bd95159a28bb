"""A non-streamed Bedrock answer cut after its 200 is priced at the service tier its
request asked for, as a cut stream is, failover attempts included.

Bedrock serves a request it accepts at the tier the request asked for (``flex``,
``priority``, ``default``: it refuses a tier the model or region lacks before answering)
and names that tier in the answer's body, which a cut answer never delivers. A stream cut
before Bedrock named its tier was already priced at the tier asked; a JSON answer cut
mid-body (the client hung up, the upstream reset) was priced at the model's own price,
and so was a failover attempt cut the same way before the next member answered: a flex
request billed at the standard price, twice what Bedrock bills. Now both are priced at
the tier asked, in the log line, the cost metric and the rollup alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.backends import ENVOY_UPSTREAM_TIME
from extproc.config import GatewayConfig, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import attempt_stages
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_aliases_and_failover import attempt_on
from tests.unit.test_cut_answer import sample
from tests.unit.test_failover_answer_too_large import TOO_LARGE, reply_headers
from tests.unit.test_failover_answer_too_large import attempt as sent_by
from tests.unit.test_failover_cut_attempts import (
    ANSWER,
    NANO,
    AttemptStream,
    _play,
    attempt,
    route_headers,
)
from tests.unit.test_openai_bedrock import event_stream
from tests.unit.test_request_log import only_line

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
# 40 characters in one message: the quota's prompt estimate is 40 / 4 + 4 tokens.
PROMPT = 14
ALLOWANCE = 300
# USD per million input and output tokens of Bedrock's Claude 3 Haiku: its own, its flex tier's.
STANDARD = (Decimal(8), Decimal(40))
FLEX = (Decimal(4), Decimal(20))
PRIORITY = (Decimal(16), Decimal(80))
PRICES = {"default": STANDARD, "flex": FLEX, "priority": PRIORITY, None: STANDARD}


def cost(prices: tuple[Decimal, Decimal]) -> Decimal:
    return (PROMPT * prices[0] + ALLOWANCE * prices[1]) / 10**6


def config() -> GatewayConfig:
    """The default config with Bedrock's Claude 3 Haiku priced per tier and ``primary``
    (provider ``cut``) failing over to it, then to ``gpt-4.1-nano`` (mock)."""
    text = DEFAULT_CONFIG.read_text()
    provider = "  - {name: cut, base_url: 'http://127.0.0.1:1/v1', api_key: cut-key-1234}\n"
    chain = f"  - {{name: primary, provider: cut, fallbacks: ['{HAIKU}', gpt-4.1-nano]}}\n"
    text = text.replace("\nproviders:\n", "\nproviders:\n" + provider, 1)
    text = text.replace("\nmodels:\n", "\nmodels:\n" + chain, 1)
    priced = (
        f"    {HAIKU}:\n"
        f"      {{input_per_million: {STANDARD[0]}, output_per_million: {STANDARD[1]},"
        f" service_tiers: {{flex: {{input_per_million: {FLEX[0]},"
        f" output_per_million: {FLEX[1]}}}, priority: {{input_per_million: {PRIORITY[0]},"
        f" output_per_million: {PRIORITY[1]}}}}}}}\n"
    )
    start = text.index(f"    {HAIKU}:")
    end = text.index("\n", start) + 1
    text = text[:start] + priced + text[end:]
    return parse_config(text, "gateway.yaml", {})


def chat(model: str, tier: str | None) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": ALLOWANCE,
        "messages": [{"role": "user", "content": "x" * 40}],
    }
    if tier is not None:
        body["service_tier"] = tier
    return orjson.dumps(body)


async def gateway(services: Services) -> tuple[GatewayConfig, Processor]:
    gateway_config = config()
    runtime = Runtime(gateway_config, services)
    for signer in runtime.signers.values():
        await signer.start()  # the mock provider's static keys: no I/O
    return gateway_config, Processor(lambda: runtime, default_stages(), attempt_stages())


@pytest.mark.parametrize("tier", ["flex", "priority", "default", None])
async def test_a_cut_bedrock_answer_is_priced_at_the_tier_it_asked_for(
    services: Services, tier: str | None
) -> None:
    """An OpenAI client of Bedrock (``/bedrock``), its answer cut after Bedrock's 200."""
    _, processor = await gateway(services)
    path = "/bedrock/haiku"
    messages = [request_headers(path, headers=AUTH), request_body(chat(HAIKU, tier))]
    await run_stream(processor, [*messages, response_headers(200)])
    line = only_line(services)
    assert (line["usage_estimated"], line["total_tokens"]) == (True, PROMPT + ALLOWANCE)
    assert Decimal(str(line["cost_usd"])) == cost(PRICES[tier])
    assert line["service_tier"] == tier
    assert Decimal(str(sample(services, "aigw_cost_usd_total"))) == cost(PRICES[tier])


async def test_a_cut_converse_answer_is_priced_at_the_tier_it_asked_for(
    services: Services,
) -> None:
    """A Bedrock client's Converse call (boto3), its JSON answer cut after Bedrock's 200."""
    _, processor = await gateway(services)
    converse = {
        "messages": [{"role": "user", "content": [{"text": "x" * 40}]}],
        "inferenceConfig": {"maxTokens": ALLOWANCE},
        "serviceTier": {"type": "flex"},
    }
    path = f"/model/{HAIKU}/converse"
    headers_ = {"authorization": "Bearer team1-key", "content-type": "application/json"}
    messages = [request_headers(path, headers=headers_), request_body(orjson.dumps(converse))]
    await run_stream(processor, [*messages, response_headers(200)])
    line = only_line(services)
    assert (line["usage_estimated"], line["service_tier"]) == (True, "flex")
    assert Decimal(str(line["cost_usd"])) == cost(FLEX)


async def failover_request(
    processor: Processor, gateway_config: GatewayConfig, tier: str | None
) -> None:
    """The client asks ``primary`` for ``tier``: ``cut`` answers 503, Bedrock's 200 is cut
    mid-body, and gpt-4.1-nano answers the client."""
    answers: list[ext.ProcessingResponse] = []

    async def envoy() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(CHAT, headers=AUTH)
        yield request_body(chat("primary", tier))
        sent = answers[-1].request_body.response.body_mutation.body
        cluster = answers[-1].request_body.response.header_mutation.set_headers
        [chain] = [h.header.raw_value.decode() for h in cluster if h.header.key == headers.CLUSTER]
        metadata: dict[str, Any] = {}
        for provider, status in (("cut", 503), ("mock-bedrock", 200), ("mock", 200)):
            answer = ANSWER if provider == "mock" else (b"{}" if status >= 400 else None)
            found, _ = await attempt(processor, provider, sent, status, answer)
            for namespace, values in found.items():
                metadata.setdefault(namespace, {}).update(values)
        added = route_headers(gateway_config, chain, metadata)
        yield response_headers(200, {**NANO, **added})
        yield response_body(ANSWER)

    async for answer in processor.process(envoy()):
        answers.append(answer)


@pytest.mark.parametrize("tier", ["flex", "priority", None])
async def test_a_cut_bedrock_attempt_is_priced_at_the_tier_it_asked_for(
    services: Services, tier: str | None
) -> None:
    gateway_config, processor = await gateway(services)
    await failover_request(processor, gateway_config, tier)
    line = only_line(services)
    [entry] = line["cut_attempts"]
    assert (entry["provider"], entry["model"]) == ("mock-bedrock", HAIKU)
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (PROMPT, ALLOWANCE)
    assert Decimal(str(entry["cost_usd"])) == cost(PRICES[tier])
    # The rollup's and the metric's cost for the attempt's provider is the entry's.
    cut = sample(services, "aigw_cost_usd_total", provider="mock-bedrock")
    assert Decimal(str(cut)) == cost(PRICES[tier])


async def test_a_bedrock_attempt_envoy_dropped_for_its_size_is_priced_at_the_tier_asked(
    services: Services,
) -> None:
    """The last attempt's answer outgrew Envoy's buffer: Envoy's 502 names the Bedrock
    member whose answer it dropped, charged as a cut answer at the tier it asked for, as
    the same answer without failover is."""
    gateway_config, processor = await gateway(services)
    answers: list[ext.ProcessingResponse] = []

    async def envoy() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(CHAT, headers=AUTH)
        yield request_body(chat("primary", "flex"))
        sent = answers[-1].request_body.response.body_mutation.body
        metadata = await sent_by(processor, "mock-bedrock", sent)
        yield response_headers(502, reply_headers(gateway_config, metadata))
        yield response_body(TOO_LARGE)

    async for answer in processor.process(envoy()):
        answers.append(answer)
    line = only_line(services)
    assert (line["provider"], line["upstream_model"]) == ("mock-bedrock", HAIKU)
    assert (line["usage_estimated"], line["service_tier"]) == (True, "flex")
    assert Decimal(str(line["cost_usd"])) == cost(FLEX)


STREAM_EVENTS: list[dict[str, Any]] = [
    {"event": "messageStart", "payload": {"role": "assistant"}},
    {"event": "contentBlockDelta", "payload": {"contentBlockIndex": 0, "delta": {"text": "Do"}}},
]


async def bedrock_stream_attempt(processor: Processor, sent: bytes) -> tuple[dict[str, str], bytes]:
    """Bedrock's attempt answers a ConverseStream that is cut after two events: the
    headers and the bytes the attempt hands Envoy (what the downstream filter gets)."""
    first = request_headers(CHAT)
    for name, struct in attempt_on("mock-bedrock").items():
        first.attributes[name].CopyFrom(struct)
    stream = {"content-type": "application/vnd.amazon.eventstream"}
    messages = [
        first,
        request_body(sent),
        response_headers(200, stream),
        response_body(event_stream(STREAM_EVENTS), end_of_stream=False),
    ]
    answers = [a async for a in processor.process(_play(messages), AttemptStream())]
    [answered] = [a for a in answers if a.WhichOneof("response") == "response_headers"]
    mutation = answered.response_headers.response.header_mutation
    handed = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    [chunk] = [a for a in answers if a.WhichOneof("response") == "response_body"]
    return handed, bytes(chunk.response_body.response.body_mutation.body)


async def test_a_bedrock_fallbacks_stream_cut_short_is_priced_at_the_tier_asked(
    services: Services,
) -> None:
    """The stream went on to the client (no failover after its 200) and was cut before
    Bedrock's ``metadata`` named its tier: priced at the tier asked, as the same stream
    without failover is."""
    _, processor = await gateway(services)
    answers: list[ext.ProcessingResponse] = []
    body = orjson.loads(chat("primary", "flex"))

    async def envoy() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(CHAT, headers=AUTH)
        yield request_body(orjson.dumps({**body, "stream": True}))
        sent = answers[-1].request_body.response.body_mutation.body
        handed, sse = await bedrock_stream_attempt(processor, sent)
        yield response_headers(200, {**handed, ENVOY_UPSTREAM_TIME: "3"})
        yield response_body(sse, end_of_stream=False)

    async for answer in processor.process(envoy()):
        answers.append(answer)
    line = only_line(services)
    assert (line["provider"], line["upstream_model"]) == ("mock-bedrock", HAIKU)
    assert (line["usage_estimated"], line["service_tier"]) == (True, "flex")
