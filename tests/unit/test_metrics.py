"""Metrics: bounded labels on every metric, the OpenTelemetry histogram, quota gauges read
from the shared store (two replicas, one truth), and the merge across worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import LimitRule, QuotasConfig, TokenQuota
from extproc.context import Identity
from extproc.quota.rules import RuleSet
from extproc.quota.store import QuotaStore, Reservation
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.metrics import TOKEN_USAGE_BUCKETS, GatewayMetrics
from extproc.telemetry.quota_gauges import QuotaGauges, SubjectTracker
from extproc.workers import _BoundedCollector

RULES = RuleSet(
    QuotasConfig(
        time_zone="Europe/Berlin",
        rules=(
            LimitRule(
                name="group-monthly", subject="group",
                token_quota=TokenQuota(limit=1000, period="calendar_month"),
            ),
            LimitRule(name="marketing-rpm", subject="group", match="marketing",
                      requests_per_minute=10),
        ),
    )
)  # fmt: skip


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def label_values(registry: CollectorRegistry, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for found, labels in samples(registry) if found == name}


def test_every_free_form_label_folds_into_other_past_the_cap() -> None:
    metrics = GatewayMetrics(max_label_values=3)
    for index in range(10):
        model = f"made-up-{index}"
        metrics.observe_request(route="r", provider="p", model=model, status="200",
                                duration_s=0.1, ttft_s=0.05)  # fmt: skip
        metrics.failover(model, "fallback")
        metrics.upstream_error(provider="p", model=model, status="503")
        metrics.rate_limit(f"rule-{index}", "api_key")
        metrics.count_tokens(identity=(f"key-{index}", "u", "g"), model=model, provider="p",
                             prompt=1, completion=1)  # fmt: skip
    registry = metrics.registry
    for name in ("aigw_requests_total", "aigw_failovers_total", "aigw_upstream_errors_total",
                 "aigw_time_to_first_token_seconds_count", "tokens_consumed_total"):  # fmt: skip
        assert label_values(registry, name, "model") == {
            "made-up-0", "made-up-1", "made-up-2", "other"
        }, name  # fmt: skip
    assert len(label_values(registry, "aigw_rate_limited_total", "rule")) == 4
    assert len(label_values(registry, "tokens_consumed_total", "api_key_id")) == 4
    # Nothing is lost: the folded series hold the rest.
    total = sum(
        value for (name, _), value in samples(registry).items() if name == "aigw_requests_total"
    )
    assert total == 10
    # The label-child cache holds bounded values only.
    assert len(metrics._children) < 40


def test_token_usage_histogram_follows_the_opentelemetry_conventions() -> None:
    metrics = GatewayMetrics()
    metrics.observe_token_usage(operation="chat", provider_type="bedrock",
                                request_model="titan", response_model="titan-v1",
                                prompt=300, completion=20)  # fmt: skip
    found = samples(metrics.registry)
    base = {
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "aws.bedrock"),
        ("gen_ai_request_model", "titan"),
        ("gen_ai_response_model", "titan-v1"),
    }
    inputs = frozenset(base | {("gen_ai_token_type", "input")})
    outputs = frozenset(base | {("gen_ai_token_type", "output")})
    assert found[("gen_ai_client_token_usage_sum", inputs)] == 300
    assert found[("gen_ai_client_token_usage_sum", outputs)] == 20
    assert found[("gen_ai_client_token_usage_bucket", inputs | {("le", "256.0")})] == 0
    assert found[("gen_ai_client_token_usage_bucket", inputs | {("le", "1024.0")})] == 1
    assert TOKEN_USAGE_BUCKETS[0] == 1 and TOKEN_USAGE_BUCKETS[-1] == 67108864


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[Any]:
    found = connect(valkey.url, 2.0)
    await found.flushdb()
    yield found
    await found.aclose()


async def reserve(store: QuotaStore, group: str, tokens: int) -> None:
    identity = Identity(method="api_key", api_key_id="k", user_id="u", group_id=group)
    limits = RULES.limits_for(identity, {}, "gpt-4o", store.now())
    reservation = await store.reserve(limits, tokens)
    assert isinstance(reservation, Reservation)
    # Answered and settled at its estimate: used, no longer held by a running request.
    store.settle(reservation, tokens)
    await store.flush()


async def test_quota_gauges_show_what_every_replica_counted(client: Any) -> None:
    """Two replicas each serve one group; the gauges of either show both, from the store."""
    settings = QuotaGaugesConfig(refresh_interval_s=0.1)
    stores = [QuotaStore(client, "t:"), QuotaStore(client, "t:")]
    trackers = [SubjectTracker(client, "t:", store.now, 0.1) for store in stores]
    for store in stores:
        await store.start()
    now = stores[0].now()
    replica_a = RULES.limits_for(Identity("api_key", "k", "u", "marketing"), {}, "m", now)
    replica_b = RULES.limits_for(Identity("api_key", "k", "u", "sales"), {}, "m", now)
    trackers[0].note(replica_a)
    trackers[1].note(replica_b)
    await reserve(stores[0], "marketing", 850)
    await reserve(stores[1], "sales", 100)
    await reserve(stores[1], "sales", 20)
    for tracker in trackers:
        await tracker.flush()
    gauges = QuotaGauges(client, "t:", lambda: RULES, stores[1].now, settings)
    await gauges.refresh()
    registry = CollectorRegistry()
    registry.register(gauges)
    found = samples(registry)

    def value(name: str, subject: str, counter: str = "token_quota") -> float:
        rule = "group-monthly" if counter == "token_quota" else "marketing-rpm"
        key = frozenset({("rule", rule), ("subject_kind", "group"), ("subject", subject),
                         ("counter", counter), ("mode", "enforce")})  # fmt: skip
        return found[(name, key)]

    assert value("aigw_quota_used", "marketing") == 850
    assert value("aigw_quota_limit", "marketing") == 1000
    assert value("aigw_quota_remaining", "marketing") == 150
    assert value("aigw_quota_used", "sales") == 120
    assert value("aigw_quota_used", "marketing", "requests_per_minute") == 1
    berlin = datetime.fromtimestamp(now, ZoneInfo("Europe/Berlin"))
    next_month = (berlin.replace(day=28) + timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    assert value("aigw_quota_reset_timestamp_seconds", "marketing") == next_month.timestamp()
    # An operator's override is what the gauges show as the limit in force.
    await client.hset("t:qo:{group:marketing}", "group-monthly:token_quota", 2000)
    await gauges.refresh()
    found = samples(registry)
    assert value("aigw_quota_limit", "marketing") == 2000
    assert value("aigw_quota_remaining", "marketing") == 1150
    for store in stores:
        await store.close()


async def test_quota_gauges_list_named_subjects_and_drop_old_ones(client: Any) -> None:
    store = QuotaStore(client, "t:")
    await store.start()
    tracker = SubjectTracker(client, "t:", store.now, 1.0)
    settings = QuotaGaugesConfig(retention_s=60, max_subjects=2)
    old = RULES.limits_for(Identity("api_key", "k", "u", "old-group"), {}, "m", store.now())
    tracker.note(old)
    await tracker.flush()
    # Seen two minutes ago (by the store's clock): past the retention.
    await client.zadd("t:qa", {"group\x1fold-group": store.now() - 120})
    gauges = QuotaGauges(client, "t:", lambda: RULES, store.now, settings)
    await gauges.refresh()
    registry = CollectorRegistry()
    registry.register(gauges)
    subjects = label_values(registry, "aigw_quota_used", "subject")
    # "marketing" is named by a rule: listed without any traffic.
    assert subjects == {"marketing"}
    await store.close()


async def test_a_refresh_that_fails_keeps_the_last_values_and_is_counted(client: Any) -> None:
    class Broken:
        def pipeline(self, transaction: bool = False) -> object:
            raise ConnectionError("store down")

    store = QuotaStore(client, "t:")
    await store.start()
    gauges = QuotaGauges(Broken(), "t:", lambda: RULES, store.now,
                         QuotaGaugesConfig(refresh_interval_s=0.05))  # fmt: skip
    gauges.start()
    await asyncio.sleep(0.3)
    await gauges.close()
    registry = CollectorRegistry()
    registry.register(gauges)
    errors = samples(registry)[("aigw_quota_gauges_refresh_errors_total", frozenset())]
    assert errors >= 2
    await store.close()


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:  # type: ignore[override]
        return self.families


def test_merged_worker_metrics_keep_the_label_cap_and_exact_sums() -> None:
    """Two workers each admitted two models under a cap of two: the merged page folds again."""
    tokens = CounterMetricFamily("tokens_consumed", "", labels=["model"])
    for model, value in (("a", 1), ("b", 2), ("c", 4), ("d", 8)):
        tokens.add_metric([model], value)
    latency = HistogramMetricFamily("aigw_request_duration_seconds", "", labels=["model"])
    latency.add_metric(["a"], [("1.0", 1), ("+Inf", 1)], 0.5)
    latency.add_metric(["c"], [("1.0", 0), ("+Inf", 2)], 4.0)
    latency.add_metric(["d"], [("1.0", 1), ("+Inf", 1)], 0.5)
    registry = CollectorRegistry()
    registry.register(_BoundedCollector(_Families([tokens, latency]), max_values=2))
    found = samples(registry)
    assert found[("tokens_consumed_total", frozenset({("model", "a")}))] == 1
    assert found[("tokens_consumed_total", frozenset({("model", "b")}))] == 2
    assert found[("tokens_consumed_total", frozenset({("model", "other")}))] == 12
    other = frozenset({("model", "other")})
    assert found[("aigw_request_duration_seconds_bucket", other | {("le", "1.0")})] == 1
    assert found[("aigw_request_duration_seconds_bucket", other | {("le", "+Inf")})] == 3
    assert found[("aigw_request_duration_seconds_sum", other)] == 4.5
