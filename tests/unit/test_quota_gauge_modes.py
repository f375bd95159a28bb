"""The quota gauges tell enforced rules from shadow ones (``mode`` label).

A shadow rule counts and never refuses: an alert that pages "its requests are
refused" must be able to leave it out, so every quota gauge carries the rule's
mode from the config, an operator's override included, one series per counter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import (
    LimitRule,
    QuotaMode,
    QuotaPeriod,
    QuotasConfig,
    TokenQuota,
)
from extproc.context import Identity
from extproc.quota.rules import RuleSet
from extproc.quota.store import QuotaStore, Reservation
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.quota_gauges import QuotaGauges

GAUGES = (
    "aigw_quota_limit",
    "aigw_quota_used",
    "aigw_quota_remaining",
    "aigw_quota_reset_timestamp_seconds",
)
RULES = RuleSet(
    QuotasConfig(
        rules=(
            LimitRule(
                name="pilot-monthly", subject="group", match="marketing", mode=QuotaMode.SHADOW,
                token_quota=TokenQuota(limit=1000, period=QuotaPeriod.CALENDAR_MONTH),
            ),
            LimitRule(name="marketing-rpm", subject="group", match="marketing",
                      requests_per_minute=10),
        ),
    )
)  # fmt: skip
Series = dict[str, str]


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[Any]:
    found = connect(valkey.url, 2.0)
    await found.flushdb()
    yield found
    await found.aclose()


def quota_series(gauges: QuotaGauges) -> list[tuple[str, Series, float]]:
    registry = CollectorRegistry()
    registry.register(gauges)
    text = generate_latest(registry).decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in GAUGES
    ]


async def gauges_after_usage(client: Any, tokens: int) -> QuotaGauges:
    store = QuotaStore(client, "t:")
    await store.start()
    identity = Identity(method="api_key", api_key_id="k", user_id="u", group_id="marketing")
    reservation = await store.reserve(RULES.limits_for(identity, {}, "m", store.now()), tokens)
    assert isinstance(reservation, Reservation)
    # Answered and settled at its estimate: used, no longer held by a running request.
    store.settle(reservation, tokens)
    await store.flush()
    gauges = QuotaGauges(client, "t:", lambda: RULES, store.now, QuotaGaugesConfig())
    await gauges.refresh()
    await store.close()
    return gauges


async def test_a_shadow_rules_gauges_carry_mode_shadow_and_an_enforced_rules_mode_enforce(
    client: Any,
) -> None:
    gauges = await gauges_after_usage(client, 1000)
    found = quota_series(gauges)
    modes = {(name, labels["rule"]): labels.get("mode") for name, labels, _ in found}
    assert modes == {
        **{(name, "pilot-monthly"): "shadow" for name in GAUGES},
        **{(name, "marketing-rpm"): "enforce" for name in GAUGES},
    }
    # The shadow rule at 100%: what an alert reads, and why it must not page for it.
    [used] = [value for name, labels, value in found
              if name == "aigw_quota_used" and labels["rule"] == "pilot-monthly"]  # fmt: skip
    assert used == 1000


async def test_an_operators_override_keeps_the_rules_mode_and_the_series_count(
    client: Any,
) -> None:
    gauges = await gauges_after_usage(client, 10)
    before = quota_series(gauges)
    await client.hset("t:qo:{group:marketing}", "pilot-monthly:token_quota", 5000)
    await gauges.refresh()
    after = quota_series(gauges)
    assert len(after) == len(before) == 2 * len(GAUGES)
    [limit] = [(labels, value) for name, labels, value in after
               if name == "aigw_quota_limit" and labels["rule"] == "pilot-monthly"]  # fmt: skip
    assert limit == (
        {"rule": "pilot-monthly", "subject_kind": "group", "subject": "marketing",
         "counter": "token_quota", "mode": "shadow"},
        5000,
    )  # fmt: skip
