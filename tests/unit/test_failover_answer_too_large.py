"""An answer Envoy drops after a failover, larger than ``envoy.max_response_body_bytes``,
is charged to the attempt that answered, in every ledger.

The per-attempt filter buffers each attempt's answer. When the answer outgrows the
buffer there, Envoy answers the client a 502 ``response_too_large`` of its own, before
the gateway's answer to the attempt's response headers is in (Envoy does not wait for
it): the downstream stream sees only Envoy's reply. It named the primary, whose
connection was refused, and charged nothing, while the fallback billed its whole
answer. Now each attempt names itself in the request's metadata when it sends its
request (Envoy has that answer before the provider gets the request), Envoy's reply
carries that name (``envoy_failover``), and the gateway charges the answering attempt
the prompt estimate and the completion allowance, as it does any answer cut after its
success status (``cut_answer``).

These tests play Envoy's part with the rendered bootstrap: the attempt's metadata, merged
attempt after attempt, fills the headers the bootstrap's reply adds.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
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
from extproc.envoy_failover import ATTEMPT_METADATA
from extproc.processor import Processor
from extproc.quota.store import Denial, QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import attempt_stages
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, response_body, response_headers
from tests.unit.conftest import MemoryLog
from tests.unit.sse_play import only_line
from tests.unit.test_aliases_and_failover import attempt_on
from tests.unit.test_cut_answer import sample

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
# Envoy's reply for an answer over its buffer (envoy_bootstrap's local reply mapper).
TOO_LARGE = orjson.dumps(
    {
        "error": {
            "message": "the provider's answer is larger than the gateway can buffer",
            "type": "upstream_error",
            "param": None,
            "code": "response_too_large",
        }
    }
)
# Each fallback's provider, and its price per million input and output tokens.
FALLBACKS = {
    "gpt-4.1-nano": ("mock", 0.10, 0.40),
    "claude-3-5-haiku-latest": ("mock-anthropic", 0.80, 4.00),
}
QUOTA = """
quotas:
  rules:
    - {name: team-day, subject: api_key, tokens_per_day: 1000000}
"""


def config_text(fallback: str, tail: str = "") -> str:
    """The default config with ``primary``, on a provider that is down, failing over to
    ``fallback`` (``tail``: appended, a ``quotas:`` section say)."""
    down = "  - {name: down, base_url: 'http://127.0.0.1:1/v1', api_key: down-key-123}\n"
    primary = f"  - {{name: primary, provider: down, fallbacks: [{fallback}]}}\n"
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:\n" + down, 1)
    return text.replace("\nmodels:\n", "\nmodels:\n" + primary, 1) + tail


class AttemptStream:
    """The gRPC stream of the per-attempt filter: what its initial metadata says."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((ATTEMPT_METADATA, "attempt"),)


async def _play(
    messages: list[ext.ProcessingRequest],
) -> AsyncIterator[ext.ProcessingRequest]:
    for message in messages:
        yield message


async def attempt(processor: Processor, provider: str, sent: bytes) -> dict[str, Any]:
    """One attempt at ``provider`` with the body the downstream filter sent: the dynamic
    metadata the gateway's answers give Envoy, merged as Envoy merges it."""
    first = request_headers(CHAT)
    for name, struct in attempt_on(provider).items():
        first.attributes[name].CopyFrom(struct)
    merged: dict[str, Any] = {}
    async for answer in processor.process(_play([first, request_body(sent)]), AttemptStream()):
        for namespace, values in MessageToDict(answer.dynamic_metadata).items():
            merged.setdefault(namespace, {}).update(values)
    return merged


def reply_headers(config: GatewayConfig, metadata: dict[str, Any]) -> dict[str, str]:
    """The headers the bootstrap's reply for an answer over the buffer adds, as Envoy
    fills them from the request's metadata (an empty value adds none)."""
    manager = render_bootstrap(config)["static_resources"]["listeners"][0]["filter_chains"][0]
    mappers = manager["filters"][0]["typed_config"]["local_reply_config"]["mappers"]
    # The reply to an OpenAI client (its twins match other APIs' clients alone).
    [mapper] = [
        m
        for m in mappers
        if "response_payload_too_large" in (text := str(m["filter"]["extension_filter"]))
        and "request." not in text
    ]
    found: dict[str, str] = {}
    for option in mapper.get("headers_to_add", []):
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


async def failover_request(
    processor: Processor,
    config: GatewayConfig,
    attempts: list[str],
    reply: tuple[int, dict[str, str], bytes] | None = None,
) -> list[ext.ProcessingResponse]:
    """The client's request for ``primary``; Envoy tries the ``attempts`` (providers) in
    order, and the last one's answer outgrows the buffer: the downstream stream gets
    Envoy's 502 (``reply``: another status, headers and body it gets instead)."""
    answers: list[ext.ProcessingResponse] = []

    async def envoy() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(CHAT, headers=AUTH)
        yield request_body(BODY)
        sent = answers[-1].request_body.response.body_mutation.body
        metadata: dict[str, Any] = {}
        for provider in attempts:
            for namespace, values in (await attempt(processor, provider, sent)).items():
                metadata.setdefault(namespace, {}).update(values)
        status, extra, body = reply or (502, reply_headers(config, metadata), TOO_LARGE)
        yield response_headers(status, extra)
        yield response_body(body)

    async for answer in processor.process(envoy()):
        answers.append(answer)
    return answers


@pytest.fixture(params=list(FALLBACKS))
def fallback(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def failover_config(fallback: str) -> GatewayConfig:
    return parse_config(config_text(fallback), "gateway.yaml", {})


# --- the answer Envoy dropped ----------------------------------------------------------------


async def test_the_line_names_the_fallback_that_answered_and_charges_its_estimate(
    failover_config: GatewayConfig, services: Services, fallback: str
) -> None:
    provider, price_in, price_out = FALLBACKS[fallback]
    processor = gateway(failover_config, services)
    answers = await failover_request(processor, failover_config, [provider])
    line = only_line(services)
    assert (line["model"], line["provider"], line["upstream_model"]) == (
        "primary",
        provider,
        fallback,
    )
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT, ALLOWANCE)
    # At the fallback's price: the primary has none.
    assert line["cost_usd"] == pytest.approx((PROMPT * price_in + ALLOWANCE * price_out) / 1e6)
    # What the client got, and why.
    assert (line["http_status_code"], line["outcome"]) == (502, "upstream_error")
    assert (line["error_type"], line["error_code"]) == ("upstream_error", "response_too_large")
    labels = {"model": "primary", "provider": provider}
    assert sample(services, "tokens_consumed_total", token_type="prompt", **labels) == PROMPT
    assert sample(services, "tokens_consumed_total", token_type="completion", **labels) == ALLOWANCE
    assert sample(services, "aigw_cost_usd_total", **labels) == pytest.approx(line["cost_usd"])
    assert sample(services, "aigw_failovers_total", model="primary", to_model=fallback) == 1
    # Not the provider's error: it answered; the gateway could not deliver it.
    assert sample(services, "aigw_upstream_errors_total") == 0
    # The span carries the charge too, with the last answer.
    span = MessageToDict(answers[-1].dynamic_metadata)[headers.METADATA_NAMESPACE]
    assert (span["provider"], span["total_tokens"]) == (provider, PROMPT + ALLOWANCE)


async def test_the_client_never_sees_the_headers_naming_the_attempt(
    failover_config: GatewayConfig, services: Services, fallback: str
) -> None:
    provider = FALLBACKS[fallback][0]
    answers = await failover_request(
        gateway(failover_config, services), failover_config, [provider]
    )
    removed = answers[2].response_headers.response.header_mutation.remove_headers
    assert {
        headers.ANSWERED_BY_PROVIDER,
        headers.ANSWERED_BY_MODEL,
        headers.ANSWERED_UPSTREAM_MODEL,
    } <= set(removed)


async def test_the_attempt_that_answered_is_named_not_the_one_retried_before_it(
    services: Services,
) -> None:
    """The primary's provider took the request and answered a 429 (Envoy retried it);
    the fallback answered too much: the fallback is charged, at its price."""
    config = parse_config(
        config_text("gpt-4.1-nano").replace("provider: down,", "provider: mock-anthropic,"),
        "gateway.yaml",
        {},
    )
    await failover_request(gateway(config, services), config, ["mock-anthropic", "mock"])
    line = only_line(services)
    assert (line["provider"], line["upstream_model"]) == ("mock", "gpt-4.1-nano")
    assert line["cost_usd"] == pytest.approx((PROMPT * 0.10 + ALLOWANCE * 0.40) / 1e6)


async def test_an_attempt_the_gateway_refuses_leaves_the_requests_metadata_alone(
    failover_config: GatewayConfig, services: Services
) -> None:
    """The attempt filter now writes into the request's metadata (to name the attempt),
    which Envoy's access log and span read: an attempt's refusal (here, a provider its
    chain has no member on) must not put its own view there (route ``failover-attempt``,
    no caller, an error the request may yet recover from on the next attempt)."""
    processor = gateway(failover_config, services)
    answers = await failover_request(processor, failover_config, [], (503, {}, b"{}"))
    sent = answers[1].request_body.response.body_mutation.body
    assert await attempt(processor, "mock-bedrock", sent) == {}


# --- what produced nothing stays free ---------------------------------------------------------


async def test_a_fallbacks_own_error_is_charged_nothing(services: Services) -> None:
    """The last attempt's provider answered a 502 of its own, which the attempt passed on
    with its name: an error, not an answer."""
    config = parse_config(config_text("gpt-4.1-nano"), "gateway.yaml", {})
    named = {
        headers.ANSWERED_BY_PROVIDER: "mock",
        headers.ANSWERED_BY_MODEL: "gpt-4.1-nano",
        headers.ANSWERED_UPSTREAM_MODEL: "gpt-4.1-nano",
        ENVOY_UPSTREAM_TIME: "3",
    }
    error = orjson.dumps({"error": {"message": "bad gateway", "type": "server_error"}})
    await failover_request(gateway(config, services), config, ["mock"], (502, named, error))
    line = only_line(services)
    assert (line["provider"], line["http_status_code"]) == ("mock", 502)
    assert (line["usage_estimated"], line["total_tokens"], line["cost_usd"]) == (False, 0, 0)


async def test_envoys_reply_when_no_provider_answered_is_charged_nothing(
    services: Services,
) -> None:
    """Every attempt failed before any answer (connections refused): Envoy's 503 names
    no attempt, and nothing was produced."""
    config = parse_config(config_text("gpt-4.1-nano"), "gateway.yaml", {})
    unavailable = orjson.dumps({"error": {"message": "unreachable", "type": "server_error"}})
    await failover_request(gateway(config, services), config, [], (503, {}, unavailable))
    line = only_line(services)
    assert (line["provider"], line["http_status_code"]) == ("down", 503)
    assert (line["usage_estimated"], line["total_tokens"], line["cost_usd"]) == (False, 0, 0)


# --- the quota settles at the line's charge --------------------------------------------------


async def test_the_quota_settles_at_the_charge_of_the_line(
    valkey: EmbeddedValkey, fallback: str
) -> None:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota = QuotaStore(client, "failover-too-large:")
    await quota.start()
    try:
        config = parse_config(config_text(fallback, QUOTA), "gateway.yaml", {})
        services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota)
        runtime = Runtime(config, services)
        processor = Processor(lambda: runtime, default_stages(), attempt_stages())
        await failover_request(processor, config, [FALLBACKS[fallback][0]])
        line = only_line(services)
        await quota.flush()
        limits = runtime.quota_rules.limits_for_subject("api_key", "team1", quota.now())
        found = await quota.reserve(limits, 0)
        assert not isinstance(found, Denial)
        assert found.used == [line["total_tokens"]] == [PROMPT + ALLOWANCE]
    finally:
        await quota.close()
        await client.aclose()
