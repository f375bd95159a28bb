"""Quota gauges on a real three-node Valkey Cluster: subjects in different slots (and on
different nodes) are read in one refresh, each with its own counters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import LimitRule, QuotasConfig, TokenQuota
from extproc.context import Identity
from extproc.quota.rules import RuleSet
from extproc.quota.store import QuotaStore, Reservation
from extproc.store.connection import connect
from extproc.telemetry.quota_gauges import QuotaGauges, SubjectTracker
from tests.integration.valkey_cluster import ValkeyCluster

RULES = RuleSet(
    QuotasConfig(
        rules=(
            LimitRule(name="group-monthly", subject="group", token_quota=TokenQuota(limit=10_000)),
        )
    )
)
GROUPS = {"marketing": 100, "sales": 200, "research": 300, "support": 400}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    valkeys = ValkeyCluster(Path(tmp_path_factory.mktemp("gauges-cluster")))
    valkeys.start()
    yield valkeys
    valkeys.stop()


async def test_gauges_read_every_subject_across_the_cluster(cluster: ValkeyCluster) -> None:
    client = connect(cluster.url, 2.0)
    store = QuotaStore(client, "g:")
    await store.start()
    tracker = SubjectTracker(client, "g:", store.now, 1.0)
    for group, tokens in GROUPS.items():
        limits = RULES.limits_for(Identity("api_key", "k", "u", group), {}, "m", store.now())
        tracker.note(limits)
        assert isinstance(await store.reserve(limits, tokens), Reservation)
    await tracker.flush()
    gauges = QuotaGauges(client, "g:", lambda: RULES, store.now, QuotaGaugesConfig())
    await gauges.refresh()
    registry = CollectorRegistry()
    registry.register(gauges)
    used = {
        sample.labels["subject"]: sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.name == "aigw_quota_used" and sample.labels["counter"] == "token_quota"
    }
    assert used == GROUPS
    await store.close()
    await client.aclose()
