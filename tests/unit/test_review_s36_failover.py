"""Review s36: failover accounting, played with real ext_proc messages.

The per-attempt streams and the downstream stream are played as in
``test_failover_cut_attempts`` (whose helpers these tests import): each attempt's
metadata, merged as Envoy merges it, fills the header the failover route adds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.backends import ENVOY_UPSTREAM_TIME
from extproc.config import GatewayConfig, parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import attempt_stages
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, response_body, response_headers
from tests.unit.conftest import MemoryLog
from tests.unit.test_cut_answer import cut_after_headers
from tests.unit.test_failover_answer_too_large import TOO_LARGE, reply_headers
from tests.unit.test_failover_cut_attempts import (
    ANSWER,
    ANSWER_USAGE,
    AUTH,
    CHAT,
    NANO,
    STARTED,
    attempt,
    config_text,
    route_headers,
    used_tokens,
)
from tests.unit.test_request_log import only_line

# primary (provider "cut", OpenAI-compatible) fails over to Claude Sonnet 4 (fixed
# thinking budget) on mock-anthropic, then gpt-4.1-nano on mock.
SONNET_CHAIN = "fallbacks: [claude-sonnet-4-0, gpt-4.1-nano]"
DEFAULT_CHAIN = "fallbacks: [claude-3-5-haiku-latest, second, gpt-4.1-nano]"
MESSAGES = [{"role": "user", "content": "x" * 40}]


def chain_config(chain: str = SONNET_CHAIN, tail: str = "") -> GatewayConfig:
    return parse_config(config_text(tail).replace(DEFAULT_CHAIN, chain), "gateway.yaml", {})


Attempt = tuple[str, int, bytes | None]


async def play(
    processor: Processor,
    config: GatewayConfig,
    body: dict[str, Any],
    attempts: list[Attempt],
    reply: tuple[int, dict[str, str], bytes] | None = (200, NANO, ANSWER),
) -> tuple[list[ext.ProcessingResponse], dict[str, Any]]:
    """The client's ``body`` for ``primary``: Envoy makes the ``attempts`` in order (each
    only if its provider is in the chain the gateway sent), then the downstream stream
    gets ``reply`` with the header the failover route adds (None: Envoy's 502 for an
    answer over its buffer, naming the attempt last sent). The answers, and the body
    every attempt was sent (the chain in it)."""
    answers: list[ext.ProcessingResponse] = []
    seen: dict[str, Any] = {}

    async def envoy() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(CHAT, headers=AUTH)
        yield request_body(orjson.dumps(body))
        if answers[-1].WhichOneof("response") != "request_body":
            return  # refused
        sent = answers[-1].request_body.response.body_mutation.body
        seen.update(orjson.loads(sent))
        mutation = answers[-1].request_body.response.header_mutation.set_headers
        [chain] = [h.header.raw_value.decode() for h in mutation if h.header.key == headers.CLUSTER]
        members = [member[0] for member in seen[headers.FAILOVER_CHAIN_KEY]]
        metadata: dict[str, Any] = {}
        for provider, status, answer in attempts:
            if provider not in members:
                continue  # Envoy's chain has no such cluster
            found, _ = await attempt(processor, provider, sent, status, answer)
            for namespace, values in found.items():
                metadata.setdefault(namespace, {}).update(values)
        status, extra, reply_body = reply or (502, reply_headers(config, metadata), TOO_LARGE)
        yield response_headers(status, {**extra, **route_headers(config, chain, metadata)})
        yield response_body(reply_body)

    async for answer in processor.process(envoy()):
        answers.append(answer)
    return answers, seen


def gateway(config: GatewayConfig, services: Services) -> tuple[Processor, Runtime]:
    runtime = Runtime(config, services)
    return Processor(lambda: runtime, default_stages(), attempt_stages()), runtime


@pytest.fixture
async def quota(valkey: EmbeddedValkey) -> AsyncIterator[QuotaStore]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    store = QuotaStore(client, "review-s36:")
    await store.start()
    yield store
    await store.close()
    await client.aclose()


async def charged_without_failover(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The log line of ``body`` sent for ``model`` itself (no failover), its provider's
    200 then a cut before any body: what such a cut answer is charged."""
    services = Services(GatewayMetrics(), MemoryLog())
    processor, _ = gateway(chain_config(), services)
    await cut_after_headers(processor, orjson.dumps({**body, "model": model}))
    return only_line(services)


THINKING = {"model": "primary", "reasoning_effort": "high", "messages": MESSAGES}
HARD_CAP = """
quotas:
  rules:
    - {name: team-day, subject: api_key, tokens_per_day: 1000000, hard_cap: true}
"""


# --- a chain whose members allow different completions ----------------------------------


async def test_a_claude_attempt_cut_after_its_200_is_charged_the_allowance_claude_got(
    services: Services,
) -> None:
    """gpt-4o-like primary, then Claude Sonnet 4 (fixed thinking budget), then nano. The
    client asks ``reasoning_effort: high`` and names no allowance: Claude's attempt goes
    out with room for the answer plus the 4,096-token budget, as without failover, and
    a cut one is billed that. Charged the primary's allowance (no thinking), it was
    1,024 completion tokens, while the same cut answer asked of Claude directly is
    charged 1,024 + 4,096."""
    config = chain_config()
    processor, _ = gateway(config, services)
    attempts: list[Attempt] = [
        ("cut", 503, b"{}"),
        ("mock-anthropic", 200, None),
        ("mock", 200, ANSWER),
    ]
    await play(processor, config, THINKING, attempts)
    line = only_line(services)
    [cut] = line["cut_attempts"]
    direct = await charged_without_failover(THINKING, "claude-sonnet-4-0")
    assert cut["provider"] == "mock-anthropic"
    assert (cut["prompt_tokens"], cut["completion_tokens"]) == (
        direct["prompt_tokens"],
        direct["completion_tokens"],
    )
    assert cut["cost_usd"] == direct["cost_usd"]
    assert line["completion_tokens"] == ANSWER_USAGE[1] + direct["completion_tokens"]


async def test_a_claude_answer_over_the_buffer_is_charged_the_allowance_claude_got(
    services: Services,
) -> None:
    """The same Claude attempt answers whole, over ``envoy.max_response_body_bytes``:
    Envoy's 502 names it, and it is charged as a cut answer of Claude's."""
    config = chain_config()
    processor, _ = gateway(config, services)
    await play(
        processor, config, THINKING, [("cut", 503, b"{}"), ("mock-anthropic", 200, None)], None
    )
    line = only_line(services)
    direct = await charged_without_failover(THINKING, "claude-sonnet-4-0")
    assert (line["provider"], line["upstream_model"]) == ("mock-anthropic", "claude-sonnet-4-0")
    assert line["error_code"] == "response_too_large"
    assert (line["prompt_tokens"], line["completion_tokens"], line["cost_usd"]) == (
        direct["prompt_tokens"],
        direct["completion_tokens"],
        direct["cost_usd"],
    )


async def test_a_hard_cap_with_room_to_spare_keeps_the_claude_fallback(quota: QuotaStore) -> None:
    """A hard-capped budget of a million tokens, nearly untouched: the cap must not take
    Claude out of the chain. It wrote the primary's allowance (1,024, no thinking) as
    ``max_completion_tokens``, which leaves Claude no room above its 1,024-token least
    thinking budget, so the chain check skipped Claude (route ``...-without-1``) and the
    client could never get Claude's answer when the primary failed, as it does without
    a quota."""
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota)
    config = chain_config(tail=HARD_CAP)
    processor, runtime = gateway(config, services)
    claude_answered = {
        headers.ANSWERED_BY_PROVIDER: "mock-anthropic",
        headers.ANSWERED_BY_MODEL: "claude-sonnet-4-0",
        headers.ANSWERED_UPSTREAM_MODEL: "claude-sonnet-4-0",
        ENVOY_UPSTREAM_TIME: "3",
    }
    _, sent = await play(
        processor,
        config,
        THINKING,
        [("cut", 503, b"{}"), ("mock-anthropic", 200, ANSWER)],
        (200, claude_answered, ANSWER),
    )
    chain = [member[1] for member in sent[headers.FAILOVER_CHAIN_KEY]]
    assert chain == ["primary", "claude-sonnet-4-0", "gpt-4.1-nano"]
    line = only_line(services)
    assert line["quota_decision"] == "capped"
    # The bound Claude's attempt got leaves room for its thinking budget (4,096).
    assert sent["max_completion_tokens"] > 4096
    # And the quota settles at the line's total.
    assert await used_tokens(runtime, quota) == line["total_tokens"]


async def test_without_a_quota_the_chain_keeps_claude(services: Services) -> None:
    """The control for the test above: the same request, no quota."""
    config = chain_config()
    processor, _ = gateway(config, services)
    _, sent = await play(processor, config, THINKING, [("mock", 200, ANSWER)])
    chain = [member[1] for member in sent[headers.FAILOVER_CHAIN_KEY]]
    assert chain == ["primary", "claude-sonnet-4-0", "gpt-4.1-nano"]


# --- what was checked and found right ------------------------------------------------------


async def test_a_started_header_with_repeats_unknown_and_empty_names_charges_each_once(
    services: Services,
) -> None:
    """Envoy joins a repeated header with commas; a name twice, one no member has, an
    empty one and the provider that answered: the cut primary is charged once."""
    config = chain_config(DEFAULT_CHAIN)
    processor, _ = gateway(config, services)
    body = {"model": "primary", "max_tokens": 300, "messages": MESSAGES}
    forged = {**NANO, STARTED: "cut,,cut,evil,mock,cut,"}
    await play(processor, config, body, [], (200, forged, ANSWER))
    line = only_line(services)
    assert [(c["provider"], c["model"]) for c in line["cut_attempts"]] == [("cut", "primary")]
    assert line["total_tokens"] == sum(ANSWER_USAGE) + 14 + 300


async def test_cut_attempts_on_the_default_chain_are_charged_each_members_allowance(
    services: Services,
) -> None:
    """Without thinking every member's allowance is the body's: the cut primary, Claude
    and ``second`` each 300 at their own price, beside nano's answer."""
    config = chain_config(DEFAULT_CHAIN)
    processor, _ = gateway(config, services)
    body = {"model": "primary", "max_tokens": 300, "messages": MESSAGES}
    attempts: list[Attempt] = [
        ("cut", 200, None),
        ("mock-anthropic", 200, None),
        ("cut-too", 200, None),
        ("mock", 200, ANSWER),
    ]
    await play(processor, config, body, attempts)
    line = only_line(services)
    cut = [(c["provider"], c["model"], c["completion_tokens"]) for c in line["cut_attempts"]]
    assert cut == [
        ("cut", "primary", 300),
        ("mock-anthropic", "claude-3-5-haiku-latest", 300),
        ("cut-too", "second", 300),
    ]
    haiku = next(c for c in line["cut_attempts"] if c["provider"] == "mock-anthropic")
    assert haiku["cost_usd"] == pytest.approx((14 * 0.80 + 300 * 4.00) / 1e6)
