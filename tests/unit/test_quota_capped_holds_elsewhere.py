"""A request a hard cap caps holds no more of its other budgets than the cap lets it use.

Key team1 is user alice of group engineering. Alice has a hard-capped daily budget; the
group a monthly quota without a cap. A Claude Code request (``max_tokens: 32000``) with
1,000 tokens left of Alice's day is capped to fit them: it can use no more. Yet the group's
quota reserved its whole estimate, 32,006 tokens, and held it while the request ran: the
group's other members met "held by running requests" 429s and a remaining-tokens header
32,006 lower, for tokens no running request could use. Now every token limit of the request
reserves at most what its tightest enforced hard-capped budget had left, in the same script.

Against a real Valkey, through the processor.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.stages.quota import usd_micros
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import response_body, response_headers
from tests.unit.conftest import MemoryLog
from tests.unit.test_quota_held import CLAUDE, Call, _answer

GATEWAY = Path("config/gateway.yaml").read_text(encoding="utf-8")
GATEWAY = GATEWAY.replace("\nstore:\n", "\nstore:\n  timeout_ms: 4000\n", 1)
CONFIG = GATEWAY + (
    """
quotas:
  rules:
    - {name: alice-day, subject: user, tokens_per_day: 1000, hard_cap: true}
    - {name: team-month, subject: group, token_quota: {limit: 100000, period: calendar_month}}
    - {name: shadow-month, subject: api_key, mode: shadow, token_quota: {limit: 50000}}
"""
)


def _processor(store: QuotaStore) -> Processor:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    runtime = Runtime(parse_config(CONFIG, "gateway.yaml", {}), services)
    return Processor(lambda: runtime, default_stages())


async def _held(store: QuotaStore) -> tuple[int, int, int]:
    """What running requests hold of alice's day, the group's month and the key's shadow
    month."""
    month = f"cm:{datetime.now(UTC):%Y-%m}@UTC"
    keys = [
        f"test:q:{{user:alice}}:alice-day:t:d:{int(store.now() // 86400)}:held",
        f"test:q:{{group:engineering}}:team-month:t:{month}:held",
        f"test:q:{{api_key:team1}}:shadow-month:t:{month}:held",
    ]
    day, month_held, shadow = [int(await store._client.get(key) or 0) for key in keys]
    return day, month_held, shadow


async def test_a_capped_request_holds_of_every_budget_only_what_the_cap_lets_it_use(
    quota_store: QuotaStore,
) -> None:
    processor = _processor(quota_store)
    call = Call(processor)  # max_tokens 32,000: estimated at 32,006
    assert await call.admitted()
    # Before: (1000, 32006, 32006).
    assert await _held(quota_store) == (1000, 1000, 1000)
    # The request's answer is capped to the 1,000 left less its prompt.
    assert call.answers[1].request_body.response.body_mutation.body
    await call.finish(_answer(700))
    await quota_store.flush()
    assert await _held(quota_store) == (0, 0, 0)
    counter = f"test:q:{{group:engineering}}:team-month:t:cm:{datetime.now(UTC):%Y-%m}@UTC"
    assert int(await quota_store._client.get(counter)) == 700


async def test_without_a_cap_in_reach_each_budget_holds_the_whole_estimate(
    quota_store: QuotaStore,
) -> None:
    """A request the cap leaves room for is not capped: it may use its whole estimate."""
    processor = _processor(quota_store)
    call = Call(processor, 500)
    assert await call.admitted()
    assert await _held(quota_store) == (506, 506, 506)
    await call.finish(_answer(300))


async def test_on_a_cluster_a_capped_request_holds_of_other_subjects_only_what_it_may_use(
    quota_store: QuotaStore,
) -> None:
    """On a Redis Cluster each subject's script runs on its own node and sees only its
    subject's caps: the group's and the key's scripts reserved the whole 32,006 while
    Alice's day capped the request to 1,000, and held them until it ended. The excess
    is given back as soon as every subject answered, and the settlement gives back
    exactly what stays held."""
    quota_store._cluster = True  # one script per subject, as on a cluster's nodes
    processor = _processor(quota_store)
    call = Call(processor)
    assert await call.admitted()
    await quota_store.flush()  # the give-back goes out with the next settlement batch
    # Before: (1000, 32006, 32006) until the request ended.
    assert await _held(quota_store) == (1000, 1000, 1000)
    await call.finish(_answer(700))
    await quota_store.flush()
    assert await _held(quota_store) == (0, 0, 0)
    month = f"cm:{datetime.now(UTC):%Y-%m}@UTC"
    for counter in (
        f"test:q:{{group:engineering}}:team-month:t:{month}",
        f"test:q:{{api_key:team1}}:shadow-month:t:{month}",
    ):
        assert int(await quota_store._client.get(counter)) == 700


# A dollar budget for the group beside Alice's hard-capped day.
BUDGETED = GATEWAY + (
    """
quotas:
  rules:
    - {name: alice-day, subject: user, tokens_per_day: 1000, hard_cap: true}
    - name: team-budget
      subject: group
      cost_quota: {limit_usd: 5, period: calendar_month}
"""
)
# claude-3-5-haiku-latest in the default price table, picodollars per token.
INPUT, OUTPUT = 800_000, 4_000_000


def _budgeted(store: QuotaStore, config: str = BUDGETED) -> Processor:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    runtime = Runtime(parse_config(config, "gateway.yaml", {}), services)
    return Processor(lambda: runtime, default_stages())


async def _budget_held(store: QuotaStore) -> int:
    """What running requests hold of the group's dollar budget, in millionths."""
    key = f"test:q:{{group:engineering}}:team-budget:c:cm:{datetime.now(UTC):%Y-%m}@UTC:held"
    return int(await store._client.get(key) or 0)


async def _capped_request_holds_its_capped_cost(store: QuotaStore) -> None:
    call = Call(_budgeted(store))  # 6 prompt tokens (estimated) and max_tokens 32,000
    assert await call.admitted()
    await store.flush()  # on a cluster the excess goes back with the next batch
    # The answer is capped to the 994 tokens Alice's day leaves after the prompt: it can
    # cost no more than those and the prompt. Before: the whole allowance's cost,
    # usd_micros(6 * INPUT + 32_000 * OUTPUT) = 128,005, about $0.13 where it may use
    # $0.004, held while the request ran.
    assert await _budget_held(store) == usd_micros(6 * INPUT + 994 * OUTPUT) == 3_981
    await call.finish(_answer(700))
    await store.flush()
    assert await _budget_held(store) == 0
    counter = f"test:q:{{group:engineering}}:team-budget:c:cm:{datetime.now(UTC):%Y-%m}@UTC"
    assert int(await store._client.get(counter)) == usd_micros(6 * INPUT + 694 * OUTPUT)


async def test_a_capped_request_holds_of_a_dollar_budget_only_what_its_capped_answer_may_cost(
    quota_store: QuotaStore,
) -> None:
    await _capped_request_holds_its_capped_cost(quota_store)


async def test_on_a_cluster_a_capped_request_holds_of_a_dollar_budget_what_it_may_cost(
    quota_store: QuotaStore,
) -> None:
    """The group's budget lives on another node than Alice's day: its script reserves the
    whole estimate, and the excess goes back as soon as both answered."""
    quota_store._cluster = True  # one script per subject, as on a cluster's nodes
    await _capped_request_holds_its_capped_cost(quota_store)


async def test_an_uncapped_request_holds_its_whole_estimated_cost(quota_store: QuotaStore) -> None:
    call = Call(_budgeted(quota_store), 500)  # 506 tokens: the day's cap leaves room
    assert await call.admitted()
    assert await _budget_held(quota_store) == usd_micros(6 * INPUT + 500 * OUTPUT)
    await call.finish(_answer(300))


def _long_prompt_answer(prompt_tokens: int, answer_tokens: int) -> list[ext.ProcessingRequest]:
    """Claude's answer to a prompt far longer than its estimate."""
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [{"type": "text", "text": "done"}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": prompt_tokens, "output_tokens": answer_tokens},
    }
    return [response_headers(200), response_body(orjson.dumps(message))]


@pytest.mark.parametrize("cluster", [False, True], ids=["one server", "cluster"])
async def test_a_capped_request_costing_more_than_it_holds_counts_its_whole_cost(
    quota_store: QuotaStore, cluster: bool
) -> None:
    """The hold bounds the capped answer, not a prompt the estimate read short: the
    budget still counts what the request cost, and nothing stays held."""
    quota_store._cluster = cluster
    call = Call(_budgeted(quota_store))
    assert await call.admitted()
    await quota_store.flush()
    assert await _budget_held(quota_store) == 3_981
    await call.finish(_long_prompt_answer(50_000, 994))
    await quota_store.flush()
    assert await _budget_held(quota_store) == 0
    counter = f"test:q:{{group:engineering}}:team-budget:c:cm:{datetime.now(UTC):%Y-%m}@UTC"
    assert int(await quota_store._client.get(counter)) == usd_micros(50_000 * INPUT + 994 * OUTPUT)


async def test_a_shadow_hard_cap_lowers_no_dollar_hold(quota_store: QuotaStore) -> None:
    """A shadow cap lowers no answer, so the request may cost its whole allowance."""
    shadow = BUDGETED.replace("hard_cap: true}", "hard_cap: true, mode: shadow}")
    assert shadow != BUDGETED
    call = Call(_budgeted(quota_store, shadow))
    assert await call.admitted()
    assert await _budget_held(quota_store) == usd_micros(6 * INPUT + 32_000 * OUTPUT)
    await call.finish(_answer(700))
