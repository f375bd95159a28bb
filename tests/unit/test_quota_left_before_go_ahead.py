"""A client that leaves after its reservation landed, before Envoy took the gateway's go-ahead.

A client gone while its reservation was on its way to the store has all of it given back,
its request and its tokens (``CoalescingCaller``'s give-back). One gone a moment later,
while the gateway's answer to its body was being written to Envoy (gRPC then closes the
stream at that answer and never asks for the next), had its tokens given back, but its
request stayed counted in every ``requests_per_*`` limit, though no provider saw it: a key
allowed 2 requests a minute whose client timed out twice so was refused its next request
for the rest of the minute. Now such a request is given back whole, as one the gateway
refused after reserving is.

Against a real Valkey, through the processor.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.test_client_left_before_answer import left_after_release, left_before_release

CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8") + (
    """
quotas:
  rules:
    - {name: key-minute, subject: api_key, requests_per_minute: 2, tokens_per_minute: 100000}
"""
)
AUTH = {"authorization": "Bearer team1-key"}
BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
)


def _gateway(store: QuotaStore) -> tuple[Runtime, Processor, Services]:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    runtime = Runtime(parse_config(CONFIG, "gateway.yaml", {}), services)
    return runtime, Processor(lambda: runtime, default_stages()), services


async def _counted(runtime: Runtime, store: QuotaStore) -> list[int]:
    """Key team1's requests and tokens counted this minute."""
    await store.flush()
    limits = runtime.quota_rules.limits_for_subject("api_key", "team1", store.now())
    return [int(await store._client.get(limit.key("test:")) or 0) for limit in limits]


async def test_a_request_whose_client_left_before_the_go_ahead_counts_in_no_limit(
    quota_store: QuotaStore,
) -> None:
    runtime, processor, services = _gateway(quota_store)
    for _ in range(2):
        await left_before_release(processor, BODY, "/v1/chat/completions", AUTH)
    # Before: [2, 0], the minute's requests used up by two that never reached a provider.
    assert await _counted(runtime, quota_store) == [0, 0]
    assert await quota_store._client.keys("test:q:*:held") == []

    answers = await run_stream(
        processor,
        [request_headers("/v1/chat/completions", headers=AUTH), request_body(BODY)],
    )
    assert not answers[-1].HasField("immediate_response")  # admitted
    lines = services.access_log.lines()
    assert [line["outcome"] for line in lines] == ["aborted", "aborted", "aborted"]
    assert [line["total_tokens"] for line in lines[:2]] == [0, 0]


async def test_a_request_that_went_to_its_provider_stays_counted_when_its_client_leaves(
    quota_store: QuotaStore,
) -> None:
    """Envoy took the go-ahead: the provider got the request, and bills it."""
    runtime, processor, _ = _gateway(quota_store)
    await left_after_release(processor, BODY, "/v1/chat/completions", AUTH)
    # One request; the prompt's estimate (4 tokens of overhead) and the allowance of 50.
    assert await _counted(runtime, quota_store) == [1, 54]
