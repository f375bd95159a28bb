"""The quota gauges when a key under the gateway's prefix holds something the gateway never
wrote (a person's SET, another program's list): that counter's gauges are left out and
the key logged once, while every other subject's gauges stay current. Before, the one key
failed every refresh, and all the gauges went stale for as long as it stayed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.quota.rules import RuleSet
from extproc.quota.store import QuotaStore, generation_field
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.quota_gauges import QuotaGauges

PREFIX = "t:"
RULES = RuleSet(
    QuotasConfig(
        rules=(
            LimitRule(name="marketing-rpm", subject="group", match="marketing",
                      requests_per_minute=10),
            LimitRule(name="sales-rpm", subject="group", match="sales", requests_per_minute=20),
        ),
    )
)  # fmt: skip


@pytest.fixture
async def gauges(valkey: EmbeddedValkey) -> AsyncIterator[tuple[QuotaGauges, Any, QuotaStore]]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    store = QuotaStore(client, PREFIX)
    await store.start()
    yield QuotaGauges(client, PREFIX, lambda: RULES, store.now, QuotaGaugesConfig()), client, store
    await store.close()
    await client.aclose()


def limits_by_group(gauges: QuotaGauges) -> dict[str, int]:
    found = {}
    for family in gauges.collect():
        if family.name == "aigw_quota_limit":
            found.update({sample.labels["subject"]: int(sample.value) for sample in family.samples})
    return found


@pytest.mark.parametrize(
    "stray", ["counter", "overrides", "counter that is no integer", "generation that is no integer"]
)
async def test_one_stray_key_leaves_out_its_counter_and_no_other(
    gauges: tuple[QuotaGauges, Any, QuotaStore], caplog: pytest.LogCaptureFixture, stray: str
) -> None:
    collector, client, store = gauges
    [marketing] = RULES.limits_for_subject("group", "marketing", store.now())
    [sales] = RULES.limits_for_subject("group", "sales", store.now())
    await collector.refresh()
    assert limits_by_group(collector) == {"marketing": 10, "sales": 20}

    if stray == "counter":
        await client.rpush(marketing.key(PREFIX), "x")
        key = marketing.key(PREFIX)
    elif stray == "overrides":
        await client.set(marketing.overrides_key(PREFIX), "see the ticket")
        key = marketing.overrides_key(PREFIX)
    elif stray == "counter that is no integer":
        await client.set(marketing.key(PREFIX), "lots")
        key = marketing.key(PREFIX)
    else:
        # A person's HSET over the reset generation: every quota script refuses the
        # subject's requests and settlements on it (before, its gauges looked fine).
        await client.hset(marketing.overrides_key(PREFIX), generation_field(marketing), "1.5")
        key = marketing.overrides_key(PREFIX)
    await client.hset(sales.overrides_key(PREFIX), sales.override_field, 25)
    with caplog.at_level(logging.WARNING, logger="extproc.telemetry.quota_gauges"):
        await collector.refresh()  # before: WRONGTYPE (or ValueError) raised here
        await collector.refresh()

    # Sales' new override is read: its gauges are current, marketing's are left out.
    assert limits_by_group(collector) == {"sales": 25}
    # The collector's own records: a garbage collection during the test may log others
    # (asyncio's "Unclosed client session" of an object another test left).
    [warning] = [
        record.getMessage()
        for record in caplog.records
        if record.name == "extproc.telemetry.quota_gauges"
    ]
    assert key in warning


async def test_the_key_put_right_brings_its_gauges_back(
    gauges: tuple[QuotaGauges, Any, QuotaStore],
) -> None:
    collector, client, store = gauges
    [marketing] = RULES.limits_for_subject("group", "marketing", store.now())
    await client.rpush(marketing.key(PREFIX), "x")
    await collector.refresh()
    assert limits_by_group(collector) == {"sales": 20}

    await client.delete(marketing.key(PREFIX))
    await collector.refresh()

    assert limits_by_group(collector) == {"marketing": 10, "sales": 20}
