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
        reservation = await store.reserve(limits, tokens)
        assert isinstance(reservation, Reservation)
        # Answered at its estimate: used, no longer held by a running request.
        store.settle(reservation, tokens)
    await store.flush()  # each subject's settlement on its own node
    await tracker.flush()
    gauges = QuotaGauges(client, "g:", lambda: RULES, store.now, QuotaGaugesConfig())
    await gauges.refresh()
    registry = CollectorRegistry()
    registry.register(gauges)
    samples = [
        sample
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.labels.get("counter") == "token_quota"
    ]
    used = {s.labels["subject"]: s.value for s in samples if s.name == "aigw_quota_used"}
    assert used == GROUPS
    # Each held amount read from its subject's node: nothing held once all settled.
    reserved = {s.labels["subject"]: s.value for s in samples if s.name == "aigw_quota_reserved"}
    assert reserved == dict.fromkeys(GROUPS, 0)
    await store.close()
    await client.aclose()
