"""The request that crosses a token budget without ``hard_cap`` holds its whole estimate
until it settles.

A key with a 20-token lifetime budget for embeddings sends three calls of 12 tokens,
one after the other, each answered before the next is sent. Each reserves its estimate
(15 tokens) and settles at the provider's 12, off the response path, in a batch a few
milliseconds later. The second call crossed the budget, and its reservation was capped
at what remained (5 of its 15); when the first call's settlement (-3) then landed on
its own, the counter read 17 of 20 while the second call was still to add its 7: the
third call was admitted, and the budget of 20 ended at 36. Under load (a settlement
batch landing between two calls) it happened one run in six; the test suite's
embeddings budget test saw it as a flake. Here the settlements land when the test says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import Denial, QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, response_body, response_headers
from tests.unit.conftest import MemoryLog

DEFAULT_CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8")
MODEL = "text-embedding-3-small"
BUDGET = """
quotas:
  rules:
    - name: team2-embeddings
      subject: api_key
      match: [team2]
      models: [%s]
      token_quota: {limit: 20, period: lifetime}
"""
# 63 characters: the gateway's estimate is 15 tokens, the provider counts 12.
TEXT = "one two three four five six seven eight nine ten eleven twelve"
ESTIMATE, COUNTED = 15, 12
CALL = orjson.dumps({"model": MODEL, "input": TEXT})
ANSWER = orjson.dumps(
    {
        "object": "list",
        "model": MODEL,
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": COUNTED, "total_tokens": COUNTED},
    }
)


@pytest.fixture
def held(quota_store: QuotaStore, monkeypatch: pytest.MonkeyPatch) -> QuotaStore:
    """The quota store, whose settlements go out only when the test flushes them."""
    monkeypatch.setattr(quota_store, "_flush_later", lambda: None)
    return quota_store


def gateway(store: QuotaStore) -> tuple[Runtime, Processor]:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    runtime = Runtime(parse_config(DEFAULT_CONFIG + BUDGET % MODEL, "t", {}), services)
    return runtime, Processor(lambda: runtime, default_stages())


async def embed(
    processor: Processor, before_answer: Callable[[], Awaitable[None]] | None = None
) -> list[ext.ProcessingResponse]:
    """One embeddings call of key team2 answered with the provider's count;
    ``before_answer`` runs once the call was admitted, before its answer comes."""

    async def stream() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers("/v1/embeddings", headers={"authorization": "Bearer team2-key"})
        yield request_body(CALL)
        if before_answer is not None:
            await before_answer()
        yield response_headers(200)
        yield response_body(ANSWER)

    return [answer async for answer in processor.process(stream())]


def refused(answers: list[ext.ProcessingResponse]) -> bool:
    last = answers[-1]
    if last.WhichOneof("response") != "immediate_response":
        return False
    assert last.immediate_response.status.code == 429
    body = orjson.loads(last.immediate_response.body)
    # Spent, or held by a call still running (a short wait: it may settle below it).
    assert body["error"]["code"] in ("insufficient_quota", "rate_limit_exceeded")
    assert "team2-embeddings" in body["error"]["message"]
    return True


async def used(runtime: Runtime, store: QuotaStore) -> int:
    await store.flush()
    limits = runtime.quota_rules.limits_for_subject("api_key", "team2", store.now())
    found = await store.reserve(limits, 0)
    return found.used if isinstance(found, Denial) else found.used[0]


async def test_an_earlier_settlement_does_not_reopen_a_budget_the_crossing_call_holds(
    held: QuotaStore,
) -> None:
    runtime, processor = gateway(held)
    assert not refused(await embed(processor))  # reserves 15, settles at 12 later
    # The second call finds 15 of 20 used and is admitted; the first call's settlement
    # lands while it waits for its answer.
    assert not refused(await embed(processor, before_answer=held.flush))
    # Its own settlement has not landed yet: what it reserved still holds the budget.
    assert refused(await embed(processor))
    assert await used(runtime, held) == 2 * COUNTED


async def test_a_crossing_call_holds_its_whole_estimate_until_it_settles(
    held: QuotaStore,
) -> None:
    runtime, processor = gateway(held)
    await embed(processor)
    await embed(processor)
    # Neither settled: each holds its estimate, not the first 15 and what was left.
    limits = runtime.quota_rules.limits_for_subject("api_key", "team2", held.now())
    found = await held.reserve(limits, 0)
    assert isinstance(found, Denial) and found.used == 2 * ESTIMATE
