"""A request the gateway refuses takes none of its subject's requests_per_* limits.

A hard-capped token budget too small for a request's prompt refused it only after the
store had admitted it: the reserve script counted the request, and the gateway gave the
count back with the next settlement batch, milliseconds later. A client's next request
that reached the store before that batch (a script sending one request after another,
a moderation right after a refused chat) was refused by requests_per_minute for a
request nobody served. Now the reserve script weighs the prompt against every enforced
hard-capped budget before it counts anything: the refusal writes nothing.

Against a real Valkey, through the processor (Anthropic's Messages API, key team1).
Settlement batches are held back for the test (as a loaded gateway's wait behind the
batch on its way), so that a give-back cannot land in time by luck.
"""

from __future__ import annotations

import pytest

from extproc.config.loader import parse_config
from extproc.management.quotas import QuotaAdmin
from extproc.processor import Processor
from extproc.quota import store as store_module
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.conftest import MemoryLog
from tests.unit.test_moderations_api import answered
from tests.unit.test_moderations_api import body as moderation
from tests.unit.test_quota_capped_beside_other_limits import GATEWAY, _answer, _processor, _refused
from tests.unit.test_quota_held import Call

MINUTE = "test:q:{api_key:team1}:key-minute:r"


@pytest.fixture(autouse=True)
def _slow_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SETTLE_BATCH_S", 3600.0)


async def _requests_counted(store: QuotaStore) -> int:
    """What the key's requests_per_minute counter holds (its window's key ends the name)."""
    counted = 0
    async for key in store._client.scan_iter(match=MINUTE + "*"):
        counted += int(await store._client.get(key))
    return counted


async def _two_served(processor: Processor) -> None:
    """The minute's two requests, each admitted and answered."""
    for _ in range(2):
        call = Call(processor, 10, "hi")
        assert await call.admitted()
        await call.finish(_answer(14))


async def _moderations_served(processor: Processor, count: int) -> None:
    """Moderations of the key: counted by requests_per_minute alone (no token budget
    refuses one, and none waits for a settlement to land)."""
    for _ in range(count):
        answers = await answered(processor, moderation(), auth={"x-api-key": "team1-key"})
        assert not answers[1].HasField("immediate_response")


async def test_a_prompt_too_large_for_the_capped_budget_leaves_the_minutes_requests(
    quota_store: QuotaStore,
) -> None:
    processor = _processor(quota_store, budget=100, requests=2)

    # 150 + 4 prompt tokens: more than the whole budget of 100.
    message, _ = await _refused(processor, 600)
    assert message.startswith("Prompt too large for the token budget of api_key 'team1'")
    assert await _requests_counted(quota_store) == 0
    # Before, the second was refused: "Rate limit reached ... (rule 'key-minute')".
    await _two_served(processor)
    assert await _requests_counted(quota_store) == 2


async def test_a_prompt_the_capped_budget_has_too_little_left_for_leaves_them_too(
    quota_store: QuotaStore,
) -> None:
    processor = _processor(quota_store, budget=60, requests=3)
    await _two_served(processor)  # 28 tokens used: 32 left

    # 40 + 4 prompt tokens: fits the budget, not what is left of it.
    message, _ = await _refused(processor, 160)
    assert message.startswith("Token budget nearly used for api_key 'team1' (rule 'key-cap')")
    assert await _requests_counted(quota_store) == 2
    await _moderations_served(processor, 1)


async def test_on_a_cluster_another_subjects_count_goes_back_before_the_next_request(
    quota_store: QuotaStore,
) -> None:
    """On a Redis Cluster each subject's script runs on its own node: the key's counted
    the request while the group's hard cap refused it. The key's count is given back at
    once, as the 429 goes out, not with the next settlement batch."""
    config = GATEWAY + (
        """
quotas:
  rules:
    - {name: key-minute, subject: api_key, requests_per_minute: 2}
    - {name: team-cap, subject: group, hard_cap: true, token_quota: {limit: 100, period: lifetime}}
"""
    )
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(config, "gateway.yaml", {}), services)
    processor = Processor(lambda: runtime, default_stages())
    quota_store._cluster = True  # one script per subject, as on a cluster's nodes

    message, _ = await _refused(processor, 600)
    assert message.startswith("Prompt too large for the token budget of group 'engineering'")
    await _moderations_served(processor, 2)


def _runtime(store: QuotaStore, rules: str) -> Runtime:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    return Runtime(parse_config(GATEWAY + rules, "gateway.yaml", {}), services)


async def test_a_shadow_budget_too_small_for_the_prompt_refuses_nothing_and_counts_it(
    quota_store: QuotaStore,
) -> None:
    """The script weighs the prompt against enforced hard-capped budgets only: a shadow
    rule (an operator's pilot) never refuses, and counts the request as an enforced one
    would have."""
    runtime = _runtime(
        quota_store,
        """
quotas:
  rules:
    - {name: key-minute, subject: api_key, requests_per_minute: 2}
    - name: key-pilot
      subject: api_key
      mode: shadow
      hard_cap: true
      token_quota: {limit: 100, period: lifetime}
""",
    )
    processor = Processor(lambda: runtime, default_stages())

    # 150 + 4 prompt tokens: more than the pilot's whole budget of 100.
    call = Call(processor, 10, "x" * 600)
    assert await call.admitted()
    await call.finish(_answer(14))
    await quota_store.flush()
    assert await _requests_counted(quota_store) == 1
    rules = runtime.quota_rules
    assert rules is not None
    [pilot] = [
        limit
        for limit in rules.limits_for_subject("api_key", "team1", quota_store.now())
        if limit.rule == "key-pilot"
    ]
    # The provider's count, settled as under an enforced rule.
    assert int(await quota_store._client.get(pilot.key("test:"))) == 14


async def test_the_store_weighs_the_prompt_against_an_operators_override_of_the_budget(
    quota_store: QuotaStore,
) -> None:
    """The room a hard-capped budget must leave the prompt is weighed against the limit
    in force: an operator's override (``extproc quota set``), raised or lowered."""
    runtime = _runtime(
        quota_store,
        """
quotas:
  rules:
    - {name: key-minute, subject: api_key, requests_per_minute: 3}
    - name: key-cap
      subject: api_key
      hard_cap: true
      token_quota: {limit: 100, period: lifetime}
""",
    )
    processor = Processor(lambda: runtime, default_stages())
    admin = QuotaAdmin(quota_store._client, "test:", quota_store)
    rules = runtime.quota_rules
    assert rules is not None
    budget = admin.select_one(admin.limits(rules, "api_key", "team1"), "key-cap", "token_quota")

    # 150 + 4 prompt tokens: more than the config's 100, within the override's 1,000.
    await admin.set_limit(budget, 1000)
    call = Call(processor, 10, "x" * 600)
    assert await call.admitted()
    await call.finish(_answer(14))

    # 40 + 4 prompt tokens: within the config's 100, more than the override's 50 leaves.
    await admin.set_limit(budget, 50)
    message, headers = await _refused(processor, 160)
    assert message.startswith("Token budget nearly used for api_key 'team1' (rule 'key-cap')")
    assert headers["x-ratelimit-limit-tokens"] == "50"
    assert headers["x-ratelimit-remaining-tokens"] == "36"
    assert await _requests_counted(quota_store) == 1  # the served request alone
