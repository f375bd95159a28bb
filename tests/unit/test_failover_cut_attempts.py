"""A failover attempt whose provider started its answer (its 200 came back) and was cut
before the client got it is charged beside the answer the client got, in every ledger.

For Envoy's router a non-streamed answer has not started while the per-attempt filter
reads its body: a provider that resets mid-body, or stalls past the attempt's timeout,
is retried on the next model, and billed what it generated. Each attempt that saw its
provider's success status names itself in the request's metadata; the failover route
turns those names into a response header, and the downstream filter charges each one
but the provider that answered as a cut answer: the prompt estimate and the completion
allowance, at that member's price, under its provider.

These tests play Envoy's part with the rendered bootstrap: the attempts' metadata,
merged attempt after attempt, fills the header the failover route adds. The name an
attempt gets at its provider's headers is written by the bootstrap's Lua filter, which
these tests play as its script says; the real Envoy runs it in
``tests/integration/test_failover_cut_attempts.py``.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from google.protobuf.json_format import MessageToDict

from extproc import headers
from extproc.backends import ENVOY_UPSTREAM_TIME
from extproc.config import GatewayConfig, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.envoy_bootstrap import render_bootstrap
from extproc.envoy_failover import (
    ATTEMPT_METADATA,
    STARTED_FILTER,
    UPSTREAM_FILTER,
    failover_cluster_name,
    started_script,
)
from extproc.processor import Processor
from extproc.quota.store import Denial, QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import attempt_stages
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, response_body, response_headers
from tests.unit.conftest import MemoryLog
from tests.unit.test_aliases_and_failover import attempt_on
from tests.unit.test_cut_answer import sample
from tests.unit.test_request_log import only_line

STARTED = "x-aigw-started"
CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
# 40 characters in one message: the quota's prompt estimate is 40 / 4 + 4 tokens.
PROMPT = 14
ALLOWANCE = 300
BODY = orjson.dumps(
    {
        "model": "primary",
        "max_tokens": ALLOWANCE,
        "messages": [{"role": "user", "content": "x" * 40}],
    }
)
# USD per million input and output tokens of the cut providers' models.
CUT_PRICE = (Decimal(50), Decimal(100))
CUT_COST = (PROMPT * CUT_PRICE[0] + ALLOWANCE * CUT_PRICE[1]) / 10**6
# The fallback's answer (gpt-4.1-nano on the mock provider, 0.10 and 0.40 per million).
ANSWER_USAGE = (20, 5)
ANSWER_COST = (ANSWER_USAGE[0] * Decimal("0.10") + ANSWER_USAGE[1] * Decimal("0.40")) / 10**6
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4.1-nano",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi."},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": ANSWER_USAGE[0],
            "completion_tokens": ANSWER_USAGE[1],
            "total_tokens": sum(ANSWER_USAGE),
        },
    }
)
NANO = {
    headers.ANSWERED_BY_PROVIDER: "mock",
    headers.ANSWERED_BY_MODEL: "gpt-4.1-nano",
    headers.ANSWERED_UPSTREAM_MODEL: "gpt-4.1-nano",
    ENVOY_UPSTREAM_TIME: "3",
}
# Envoy's reply when the last attempt was cut too (upstream_reset_before_response_started).
RESET_REPLY = orjson.dumps(
    {"error": {"message": "upstream connect error", "type": "upstream_error", "code": None}}
)
QUOTA = """
quotas:
  rules:
    - {name: team-day, subject: api_key, tokens_per_day: 1000000}
"""


def config_text(tail: str = "") -> str:
    """The default config with ``primary`` on provider ``cut``, failing over to
    ``claude-3-5-haiku-latest`` (mock-anthropic), ``second`` (provider ``cut-too``) and
    ``gpt-4.1-nano`` (mock); ``primary`` and ``second`` at ``CUT_PRICE``."""
    providers = (
        "  - {name: cut, base_url: 'http://127.0.0.1:1/v1', api_key: cut-key-1234}\n"
        "  - {name: cut-too, base_url: 'http://127.0.0.1:2/v1', api_key: cut-too-key-1234}\n"
    )
    models = (
        "  - {name: primary, provider: cut,"
        " fallbacks: [claude-3-5-haiku-latest, second, gpt-4.1-nano]}\n"
        "  - {name: second, provider: cut-too}\n"
    )
    price_in, price_out = CUT_PRICE
    prices = "".join(
        f"    {model}: {{input_per_million: {price_in}, output_per_million: {price_out}}}\n"
        for model in ("primary", "second")
    )
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:\n" + providers, 1)
    text = text.replace("\nmodels:\n", "\nmodels:\n" + models, 1)
    text = text.replace(
        "  models:\n    gpt-4o-mini:", "  models:\n" + prices + "    gpt-4o-mini:", 1
    )
    return text + tail


@pytest.fixture
def failover_config() -> GatewayConfig:
    return parse_config(config_text(), "gateway.yaml", {})


class AttemptStream:
    """The gRPC stream of the per-attempt filter: what its initial metadata says."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((ATTEMPT_METADATA, "attempt"),)


async def _play(messages: list[ext.ProcessingRequest]) -> AsyncIterator[ext.ProcessingRequest]:
    for message in messages:
        yield message


async def attempt(
    processor: Processor,
    provider: str,
    sent: bytes,
    status: int = 200,
    answer: bytes | None = None,
    provider_headers: dict[str, str] | None = None,
) -> tuple[dict[str, Any], list[ext.ProcessingResponse]]:
    """One attempt at ``provider`` with the body the downstream filter sent: its provider
    answers ``status`` (and ``provider_headers``), then the whole ``answer``, or nothing
    more when None (cut mid-body). The dynamic metadata the gateway's answers give Envoy,
    merged as Envoy merges it, and the answers."""
    first = request_headers(CHAT)
    for name, struct in attempt_on(provider).items():
        first.attributes[name].CopyFrom(struct)
    messages = [first, request_body(sent), response_headers(status, provider_headers)]
    if answer is not None:
        messages.append(response_body(answer))
    merged: dict[str, Any] = {}
    answers = []
    async for found in processor.process(_play(messages), AttemptStream()):
        answers.append(found)
        for namespace, values in MessageToDict(found.dynamic_metadata).items():
            merged.setdefault(namespace, {}).update(values)
        if found.WhichOneof("response") == "request_body" and status < 400:
            lua_marks_the_attempt(merged)
    return merged, answers


def lua_marks_the_attempt(metadata: dict[str, Any]) -> None:
    """What the bootstrap's Lua filter does as a provider's headers with a status below
    400 arrive (``envoy_failover.started_script``): the attempt's provider, as the attempt
    named itself when it sent its request, is named as started."""
    assert "x_aigw_started_by_" in started_script()
    named = metadata.get(headers.METADATA_NAMESPACE, {})
    provider = named.get("x_aigw_provider")
    if provider:
        named[f"x_aigw_started_by_{provider}"] = f"{provider},"


def route_headers(config: GatewayConfig, cluster: str, metadata: dict[str, Any]) -> dict[str, str]:
    """The response headers the failover route ``cluster`` adds, as Envoy fills them from
    the request's metadata (an absent value renders empty; an empty header is not added)."""
    manager = render_bootstrap(config)["static_resources"]["listeners"][0]["filter_chains"][0]
    routes = manager["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    [route] = [r for r in routes if r["name"] == cluster]
    found: dict[str, str] = {}
    for option in route.get("response_headers_to_add", []):
        header = option["header"]
        value = re.sub(
            r"%DYNAMIC_METADATA\(([^:]+):([^)]+)\)%",
            lambda m: str(metadata.get(m.group(1), {}).get(m.group(2), "")),
            header["value"],
        )
        if value:
            found[header["key"]] = value
    return found


def gateway(config: GatewayConfig, services: Services) -> Processor:
    runtime = Runtime(config, services)
    return Processor(lambda: runtime, default_stages(), attempt_stages())


Attempt = tuple[str, int, bytes | None]


async def failover_request(
    processor: Processor,
    config: GatewayConfig,
    attempts: list[Attempt],
    reply: tuple[int, dict[str, str], bytes] = (200, NANO, ANSWER),
    provider_headers: dict[str, str] | None = None,
) -> list[ext.ProcessingResponse]:
    """The client's request for ``primary``: Envoy makes the ``attempts`` (provider,
    status, whole answer or None when cut) in order, then the downstream stream gets
    ``reply`` (status, headers, body) with the header the failover route adds."""
    answers: list[ext.ProcessingResponse] = []

    async def envoy() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(CHAT, headers=AUTH)
        yield request_body(BODY)
        sent = answers[-1].request_body.response.body_mutation.body
        cluster = answers[-1].request_body.response.header_mutation.set_headers
        [chain] = [h.header.raw_value.decode() for h in cluster if h.header.key == headers.CLUSTER]
        metadata: dict[str, Any] = {}
        for provider, status, body in attempts:
            found, _ = await attempt(processor, provider, sent, status, body, provider_headers)
            for namespace, values in found.items():
                metadata.setdefault(namespace, {}).update(values)
        status, extra, body = reply
        yield response_headers(status, {**extra, **route_headers(config, chain, metadata)})
        yield response_body(body)

    async for answer in processor.process(envoy()):
        answers.append(answer)
    return answers


def cut_entry(provider: str, model: str) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": model,
        "prompt_tokens": PROMPT,
        "completion_tokens": ALLOWANCE,
        "cost_usd": float(CUT_COST),
    }


# --- the header that carries the names -----------------------------------------------------


def test_each_failover_route_names_the_attempts_that_started_and_no_other_route_does(
    failover_config: GatewayConfig,
) -> None:
    manager = render_bootstrap(failover_config)["static_resources"]["listeners"][0]
    config = manager["filter_chains"][0]["filters"][0]["typed_config"]
    routes = config["route_config"]["virtual_hosts"][0]["routes"]
    chain = failover_cluster_name("primary")
    for route in routes:
        added = [o["header"]["key"] for o in route.get("response_headers_to_add", [])]
        assert (STARTED in added) == route["name"].startswith(chain), route["name"]
    started = {"io.aigw": {f"x_aigw_started_by_{p}": f"{p}," for p in ("cut", "mock")}}
    assert route_headers(failover_config, chain, started) == {STARTED: "cut,mock,"}
    # A chain without a fallback leaves it out of the header too.
    without = failover_cluster_name("primary", [1])
    everyone = {"io.aigw": {f"x_aigw_started_by_{p}": f"{p}," for p in ("cut", "cut-too")}}
    assert route_headers(failover_config, without, everyone) == {STARTED: "cut,"}


def test_envoy_names_an_attempt_as_its_headers_arrive_on_failover_routes_only(
    failover_config: GatewayConfig,
) -> None:
    """The Lua filter sits between the attempt's ext_proc filter and the provider, so it
    reads the provider's status before the gateway's answer could be dropped by a reset;
    every route without failover turns it off, and pays nothing for it."""
    manager = render_bootstrap(failover_config)["static_resources"]["listeners"][0]
    config = manager["filter_chains"][0]["filters"][0]["typed_config"]
    router = config["http_filters"][-1]["typed_config"]
    names = [f["name"] for f in router["upstream_http_filters"]]
    assert names == [UPSTREAM_FILTER, STARTED_FILTER, "envoy.filters.http.upstream_codec"]
    for route in config["route_config"]["virtual_hosts"][0]["routes"]:
        per_route = route.get("typed_per_filter_config", {})
        failover = route["name"].startswith(failover_cluster_name("primary"))
        assert (STARTED_FILTER in per_route) is not failover, route["name"]


async def test_the_client_never_gets_the_header(
    failover_config: GatewayConfig, services: Services
) -> None:
    processor = gateway(failover_config, services)
    answers = await failover_request(processor, failover_config, [("cut", 200, None)])
    removed = answers[2].response_headers.response.header_mutation.remove_headers
    assert STARTED in removed


async def test_a_provider_cannot_send_the_header_itself(
    failover_config: GatewayConfig, services: Services
) -> None:
    """The attempt removes a provider's own ``x-aigw-started`` (a forged name would be
    charged to whoever it names), whatever its status."""
    processor = gateway(failover_config, services)
    sent = await request_sent(processor)
    for status in (200, 503):
        _, answers = await attempt(
            processor, "mock", sent, status, ANSWER, provider_headers={STARTED: "cut,cut-too,"}
        )
        removed = answers[2].response_headers.response.header_mutation.remove_headers
        assert STARTED in removed, status


async def test_a_name_no_attempt_wrote_is_charged_nothing(
    failover_config: GatewayConfig, services: Services
) -> None:
    """Had a forged value reached the downstream filter, it names no member of the chain
    (or the one that answered): nothing is charged for it."""
    processor = gateway(failover_config, services)
    forged = {**NANO, STARTED: "evil,mock,"}
    await failover_request(processor, failover_config, [], reply=(200, forged, ANSWER))
    line = only_line(services)
    assert (line["total_tokens"], line["cut_attempts"]) == (sum(ANSWER_USAGE), None)
    assert line["usage_estimated"] is False


async def request_sent(processor: Processor) -> bytes:
    """The body the downstream filter sends the attempts of a request for ``primary``."""
    answers: list[ext.ProcessingResponse] = []

    async def envoy() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(CHAT, headers=AUTH)
        yield request_body(BODY)

    async for answer in processor.process(envoy()):
        answers.append(answer)
    return bytes(answers[-1].request_body.response.body_mutation.body)


# --- what is charged ---------------------------------------------------------------------


async def test_an_attempt_cut_after_its_200_is_charged_beside_the_answer(
    failover_config: GatewayConfig, services: Services
) -> None:
    processor = gateway(failover_config, services)
    await failover_request(processor, failover_config, [("cut", 200, None), ("mock", 200, ANSWER)])
    line = only_line(services)
    # The answer the client got, as before.
    assert (line["provider"], line["upstream_model"]) == ("mock", "gpt-4.1-nano")
    # Plus the cut attempt, at its model's price, under its provider.
    assert line["cut_attempts"] == [cut_entry("cut", "primary")]
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (
        ANSWER_USAGE[0] + PROMPT,
        ANSWER_USAGE[1] + ALLOWANCE,
        sum(ANSWER_USAGE) + PROMPT + ALLOWANCE,
    )
    assert Decimal(str(line["cost_usd"])) == ANSWER_COST + CUT_COST
    assert (line["usage_reported"], line["usage_estimated"]) == (True, True)
    assert line["outcome"] == "completed"


async def test_the_provider_that_answered_is_not_charged_twice(
    failover_config: GatewayConfig, services: Services
) -> None:
    """The answering attempt started too (its 200): the header names it, and only its
    answer is charged for it."""
    processor = gateway(failover_config, services)
    await failover_request(processor, failover_config, [("mock", 200, ANSWER)])
    line = only_line(services)
    assert line["cut_attempts"] is None
    assert line["total_tokens"] == sum(ANSWER_USAGE)
    assert Decimal(str(line["cost_usd"])) == ANSWER_COST
    assert line["usage_estimated"] is False


async def test_attempts_that_failed_before_any_answer_are_charged_nothing(
    failover_config: GatewayConfig, services: Services
) -> None:
    processor = gateway(failover_config, services)
    attempts: list[Attempt] = [("cut", 503, b"{}"), ("mock-anthropic", 429, b"{}")]
    await failover_request(processor, failover_config, [*attempts, ("mock", 200, ANSWER)])
    line = only_line(services)
    assert (line["cut_attempts"], line["total_tokens"]) == (None, sum(ANSWER_USAGE))


async def test_an_answer_the_attempt_turned_into_an_error_is_not_charged(
    failover_config: GatewayConfig, services: Services
) -> None:
    """Anthropic's 200 with a body that is no message: the attempt answers Envoy a 502
    (retried on the next model), an error, not an answer, as without failover."""
    processor = gateway(failover_config, services)
    attempts: list[Attempt] = [("mock-anthropic", 200, b"not json"), ("mock", 200, ANSWER)]
    await failover_request(processor, failover_config, attempts)
    line = only_line(services)
    assert (line["cut_attempts"], line["total_tokens"]) == (None, sum(ANSWER_USAGE))


async def test_an_attempt_whose_compressed_answer_is_too_large_is_charged_as_cut(
    failover_config: GatewayConfig, services: Services
) -> None:
    """A gzip answer larger, decoded, than the gateway buffers: the attempt answers Envoy
    a 502 (retried), but its provider generated the whole answer and billed it, as it
    bills an answer over Envoy's buffer."""
    processor = gateway(failover_config, services)
    bomb = gzip.compress(b" " * (failover_config.envoy.max_response_body_bytes + 1))
    attempts: list[Attempt] = [("cut", 200, bomb), ("mock", 200, gzip.compress(ANSWER))]
    await failover_request(
        processor, failover_config, attempts, provider_headers={"content-encoding": "gzip"}
    )
    line = only_line(services)
    assert line["cut_attempts"] == [cut_entry("cut", "primary")]
    assert line["total_tokens"] == sum(ANSWER_USAGE) + PROMPT + ALLOWANCE


async def test_when_every_attempt_is_cut_each_is_charged(
    services: Services,
) -> None:
    """The client gets Envoy's 502, which names no attempt that answered."""
    config = parse_config(
        config_text().replace(
            "fallbacks: [claude-3-5-haiku-latest, second, gpt-4.1-nano]", "fallbacks: [second]"
        ),
        "gateway.yaml",
        {},
    )
    processor = gateway(config, services)
    await failover_request(
        processor,
        config,
        [("cut", 200, None), ("cut-too", 200, None)],
        reply=(502, {}, RESET_REPLY),
    )
    line = only_line(services)
    assert line["cut_attempts"] == [cut_entry("cut", "primary"), cut_entry("cut-too", "second")]
    assert line["total_tokens"] == 2 * (PROMPT + ALLOWANCE)
    assert Decimal(str(line["cost_usd"])) == 2 * CUT_COST
    assert (line["http_status_code"], line["outcome"]) == (502, "upstream_error")
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)


async def test_requests_without_failover_ignore_the_header(services: Services) -> None:
    """Only a failover route adds it: elsewhere it is a provider's, and means nothing."""
    config = parse_config(config_text(), "gateway.yaml", {})
    processor = gateway(config, services)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    answers: list[ext.ProcessingResponse] = []
    async for answer in processor.process(
        _play(
            [
                request_headers(CHAT, headers=AUTH),
                request_body(body),
                response_headers(200, {STARTED: "mock,cut,"}),
                response_body(ANSWER),
            ]
        )
    ):
        answers.append(answer)
    line = only_line(services)
    assert (line["total_tokens"], line["cut_attempts"]) == (sum(ANSWER_USAGE), None)


# --- every ledger agrees -----------------------------------------------------------------


async def test_the_metrics_count_the_cut_attempt_under_its_provider(
    failover_config: GatewayConfig, services: Services
) -> None:
    processor = gateway(failover_config, services)
    await failover_request(processor, failover_config, [("cut", 200, None), ("mock", 200, ANSWER)])
    line = only_line(services)
    # Under the model the client asked for, as the answer is.
    cut = {"model": "primary", "provider": "cut"}
    answered = {"model": "primary", "provider": "mock"}
    assert sample(services, "tokens_consumed_total", token_type="prompt", **cut) == PROMPT
    assert sample(services, "tokens_consumed_total", token_type="completion", **cut) == ALLOWANCE
    assert sample(services, "tokens_consumed_total", **answered) == sum(ANSWER_USAGE)
    assert sample(services, "tokens_consumed_total") == line["total_tokens"]
    assert Decimal(str(sample(services, "aigw_cost_usd_total", **cut))) == CUT_COST
    assert sample(services, "aigw_cost_usd_total") == pytest.approx(line["cost_usd"])
    # gen_ai_client_token_usage stays one observation per request: the answer's.
    assert sample(services, "gen_ai_client_token_usage_count") == 2
    assert sample(services, "gen_ai_client_token_usage_sum") == sum(ANSWER_USAGE)


async def test_the_span_carries_the_lines_totals(
    failover_config: GatewayConfig, services: Services
) -> None:
    processor = gateway(failover_config, services)
    answers = await failover_request(
        processor, failover_config, [("cut", 200, None), ("mock", 200, ANSWER)]
    )
    line = only_line(services)
    span = MessageToDict(answers[-1].dynamic_metadata)[headers.METADATA_NAMESPACE]
    assert (span["prompt_tokens"], span["completion_tokens"], span["total_tokens"]) == (
        line["prompt_tokens"],
        line["completion_tokens"],
        line["total_tokens"],
    )
    assert span["cost_usd"] == line["cost_usd"]


@pytest.fixture
async def stores(valkey: EmbeddedValkey) -> AsyncIterator[tuple[QuotaStore, UsageStore]]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota = QuotaStore(client, "failover-cut:")
    await quota.start()
    yield quota, UsageStore(client, "failover-cut-usage:", retention_days=3)
    await quota.close()
    await client.aclose()


async def used_tokens(runtime: Runtime, quota: QuotaStore) -> int:
    await quota.flush()
    limits = runtime.quota_rules.limits_for_subject("api_key", "team1", quota.now())
    found = await quota.reserve(limits, 0)
    assert not isinstance(found, Denial)
    [used] = found.used
    return used


@pytest.mark.parametrize(
    ("chain", "attempts", "reply"),
    [
        (
            "[claude-3-5-haiku-latest, second, gpt-4.1-nano]",
            [("cut", 200, None), ("mock", 200, ANSWER)],
            (200, NANO, ANSWER),
        ),
        ("[second]", [("cut", 200, None), ("cut-too", 200, None)], (502, {}, RESET_REPLY)),
    ],
    ids=["answered", "every-attempt-cut"],
)
async def test_the_quota_and_the_rollup_agree_with_the_line(
    stores: tuple[QuotaStore, UsageStore],
    chain: str,
    attempts: list[Attempt],
    reply: tuple[int, dict[str, str], bytes],
) -> None:
    quota, usage = stores
    writer = UsageWriter(usage, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota, usage_writer=writer)
    text = config_text(QUOTA).replace(
        "fallbacks: [claude-3-5-haiku-latest, second, gpt-4.1-nano]", f"fallbacks: {chain}"
    )
    config = parse_config(text, "gateway.yaml", {})
    runtime = Runtime(config, services)
    processor = Processor(lambda: runtime, default_stages(), attempt_stages())
    await failover_request(processor, config, attempts, reply)
    line = only_line(services)
    # Settled at the line's total (the 502 too: settled, not released).
    assert await used_tokens(runtime, quota) == line["total_tokens"]
    assert await writer.flush() is True
    hour = datetime.fromisoformat(line["timestamp"]).replace(minute=0, second=0, microsecond=0)
    rows = await usage.query(hour, hour + timedelta(hours=1), ("model", "provider"))
    by_provider = {row.dimensions["provider"]: row for row in rows}
    assert by_provider["cut"].dimensions["model"] == "primary"
    assert (by_provider["cut"].prompt_tokens, by_provider["cut"].completion_tokens) == (
        PROMPT,
        ALLOWANCE,
    )
    assert sum(row.total_tokens for row in rows) == line["total_tokens"]
    assert sum(row.cost_picousd for row in rows) == round(Decimal(str(line["cost_usd"])) * 10**12)
