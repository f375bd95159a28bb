"""The shipped alerts fire when an operator needs them, on series shaped like the gateway's.

Each scenario is a timeline of what Prometheus would have scraped, minute by minute, from
one or more gateway replicas (and Envoy); ``promtool test rules`` then evaluates
deploy/prometheus/rules over it. Pages come from the gateway's own code where its code
decides their shape (the histogram buckets of ``GatewayMetrics``, what ``QuotaGauges``
shows while the store is down); other series are checked against the names and labels
the code exports.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import LimitRule, QuotasConfig, TokenQuota
from extproc.quota.rules import RuleSet
from extproc.store.connection import connect
from extproc.telemetry.metrics import GatewayMetrics
from extproc.telemetry.quota_gauges import QuotaGauges
from tests.exported_metrics import DASHBOARD, PROMETHEUS_DIR, PROMETHEUS_SERIES, code_series
from tests.unit.test_metrics_review import doc_queries

RULE_FILES = sorted(str(path.resolve()) for path in (PROMETHEUS_DIR / "rules").glob("*.yml"))
MINUTES = 30
# One scrape a minute; a value missing from a scrape is promtool's "_".
Timeline = dict[str, list[float | None]]
STALE = (
    "{instance} has not read the quota gauges from the store for 5 minutes (or not since it "
    "started): what it publishes of the quotas is out of date"
)
MARKETING = {
    "rule": "marketing-monthly",
    "subject_kind": "group",
    "subject": "marketing",
    "counter": "token_quota",
    "mode": "enforce",
}


def target(instance: str, job: str = "aigw-gateway") -> dict[str, str]:
    return {"instance": instance, "job": job}


@cache
def exported_series() -> dict[str, frozenset[str]]:
    """The gateway's series and Prometheus's own (``up``), with their label names."""
    return {**code_series(), **{found: frozenset() for found in PROMETHEUS_SERIES}}


def series(name: str, **labels: str) -> str:
    """A series as Prometheus stores it; its name and labels must be the gateway's."""
    exported = exported_series()
    assert name in exported, f"{name} is not a metric the gateway exports"
    assert set(labels) - {"instance", "job"} == exported[name], (name, sorted(labels))
    pairs = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{pairs}}}"


def page(registry: CollectorRegistry, instance: str) -> dict[str, float]:
    """One scrape of ``registry``, as Prometheus stores it for the target ``instance``."""
    text = generate_latest(registry).decode()
    return {
        series(sample.name, **sample.labels, **target(instance)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        # prometheus_client's creation times (a single process's page): no alert reads them.
        if not sample.name.endswith("_created")
    }


def add_scrape(timeline: Timeline, minute: int, scraped: dict[str, float]) -> None:
    for name, value in scraped.items():
        timeline.setdefault(name, [None] * MINUTES)[minute] = value


async def scraped_around(
    registry: CollectorRegistry, at_minute_10: Callable[[], Awaitable[object]]
) -> Timeline:
    """``registry`` scraped once a minute as ``gateway-a:9464`` for ``MINUTES`` minutes,
    with ``at_minute_10`` run just before the tenth minute's scrape: the timeline of one
    event on one gateway, for an alert that should fire on it."""
    timeline: Timeline = {}
    for minute in range(MINUTES):
        if minute == 10:
            await at_minute_10()
        add_scrape(timeline, minute, page(registry, "gateway-a:9464"))
    return timeline


def promtool_test(
    tmp_path: Path,
    timeline: Timeline,
    alerts: list[dict[str, Any]],
    exprs: list[dict[str, Any]] | None = None,
) -> str:
    """Run the alert (and expression) checks over ``timeline``; a failed run's output, else ''."""
    test = {
        "rule_files": RULE_FILES,
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": name,
                        "values": " ".join(
                            "_" if found is None else repr(found) for found in values
                        ),
                    }
                    for name, values in timeline.items()
                ],
                "alert_rule_test": alerts,
                "promql_expr_test": exprs or [],
            }
        ],
    }
    path = tmp_path / "alerts-test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False, width=1000))
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install prometheus (see .ci/run)"
    result = subprocess.run(
        [binary, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    return "" if result.returncode == 0 else result.stdout + result.stderr


def firing(alertname: str, at: int, *alerts: dict[str, Any]) -> dict[str, Any]:
    """At minute ``at``, ``alertname`` fires exactly ``alerts`` (none: it is quiet)."""
    return {"eval_time": f"{at}m", "alertname": alertname, "exp_alerts": list(alerts)}


def alert(summary: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": labels, "exp_annotations": {"summary": summary}}


def labels_text(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}"


def streams_waiting(first_token_s: float) -> Timeline:
    """60 streams a minute on one replica, each waiting ``first_token_s`` for its first token."""
    metrics = GatewayMetrics()
    timeline: Timeline = {}
    for minute in range(MINUTES):
        for _ in range(60):
            metrics.observe_request(
                route="openai-chat", provider="openai", model="gpt-4o", status="200",
                duration_s=first_token_s + 5, ttft_s=first_token_s,
            )  # fmt: skip
        add_scrape(timeline, minute, page(metrics.registry, "gateway-a:9464"))
    return timeline


def test_streams_waiting_15s_for_their_first_token_raise_the_slow_first_token_alert(
    tmp_path: Path,
) -> None:
    # The TTFT buckets end at 10 s: a p95 past them reads as 10 s exactly, never more.
    failed = promtool_test(
        tmp_path,
        streams_waiting(15.0),
        [
            firing(
                "AigwSlowFirstToken",
                20,
                alert(
                    "p95 time to first token of gpt-4o on route openai-chat is 10s or more "
                    "(the histogram's last bucket ends at 10 s)",
                    severity="warning",
                    route="openai-chat",
                    model="gpt-4o",
                ),
            )
        ],
    )
    assert not failed, failed


def test_streams_answering_within_seconds_raise_no_slow_first_token_alert(
    tmp_path: Path,
) -> None:
    failed = promtool_test(tmp_path, streams_waiting(2.0), [firing("AigwSlowFirstToken", 20)])
    assert not failed, failed


async def never_refreshed_page(instance: str) -> dict[str, float]:
    """What a gateway started while the store is unreachable serves for its quota gauges."""
    client = connect("redis://127.0.0.1:1/0", 0.5)  # a port nothing listens on
    rules = RuleSet(
        QuotasConfig(
            rules=(
                LimitRule(name="marketing-monthly", subject="group", match="marketing",
                          token_quota=TokenQuota(limit=1000)),
            )
        )
    )  # fmt: skip
    gauges = QuotaGauges(client, "t:", lambda: rules, lambda: 0.0, QuotaGaugesConfig())
    with pytest.raises(Exception):  # noqa: B017 (whatever the client raises)
        await gauges.refresh()
    await client.aclose()
    registry = CollectorRegistry()
    registry.register(gauges)
    return page(registry, instance)


async def test_a_gateway_that_never_read_its_quota_gauges_raises_the_stale_alert(
    tmp_path: Path,
) -> None:
    # Restarted during a store outage: no gauge, no timestamp; only the refresh counter
    # says the gauges are on. Every quota alert is blind there.
    scraped = await never_refreshed_page("gateway-a:9464")
    assert series("aigw_quota_gauges_refresh_errors_total", **target("gateway-a:9464")) in scraped
    assert not [name for name in scraped if name.startswith("aigw_quota_gauges_updated")]
    timeline: Timeline = {}
    for minute in range(MINUTES):
        add_scrape(timeline, minute, {**scraped, series("up", **target("gateway-a:9464")): 1})
    failed = promtool_test(
        tmp_path,
        timeline,
        [
            firing("AigwQuotaGaugesStale", 3),
            firing(
                "AigwQuotaGaugesStale",
                10,
                alert(
                    STALE.format(instance="gateway-a:9464"),
                    severity="warning",
                    **target("gateway-a:9464"),
                ),
            ),
        ],
    )
    assert not failed, failed


def quota_replicas(stale_b_from: int) -> Timeline:
    """Two replicas; marketing's monthly quota (1000 tokens) was used up (1100) and the
    month ends at minute 5, after which running requests hold 30 tokens. gateway-b stops
    reading the store at ``stale_b_from`` and keeps publishing what it last read, as the
    gateway does after a failed refresh."""
    timeline: Timeline = {}
    for minute in range(MINUTES):
        for instance in ("gateway-a:9464", "gateway-b:9464"):
            read_at = minute if instance == "gateway-a:9464" else min(minute, stale_b_from)
            used = 1100.0 if read_at < 5 else 20.0
            reserved = 0.0 if read_at < 5 else 30.0
            scraped = {
                series("aigw_quota_limit", **MARKETING, **target(instance)): 1000.0,
                series("aigw_quota_used", **MARKETING, **target(instance)): used,
                series("aigw_quota_reserved", **MARKETING, **target(instance)): reserved,
                series("aigw_quota_remaining", **MARKETING, **target(instance)): max(
                    0.0, 1000.0 - used - reserved
                ),
                series("aigw_quota_gauges_updated_timestamp_seconds", **target(instance)): (
                    read_at * 60.0
                ),
                series("aigw_quota_gauges_refresh_errors_total", **target(instance)): float(
                    minute - read_at
                ),
            }
            add_scrape(timeline, minute, scraped)
    return timeline


def test_one_replica_that_stopped_reading_the_store_is_told_not_hidden_by_the_others(
    tmp_path: Path,
) -> None:
    # gateway-b alone: gateway-a reads the store.
    failed = promtool_test(
        tmp_path,
        quota_replicas(stale_b_from=3),
        [
            firing(
                "AigwQuotaGaugesStale",
                20,
                alert(
                    STALE.format(instance="gateway-b:9464"),
                    severity="warning",
                    **target("gateway-b:9464"),
                ),
            ),
        ],
    )
    assert not failed, failed


def test_a_replica_with_last_months_usage_does_not_page_a_quota_the_month_reset(
    tmp_path: Path,
) -> None:
    # gateway-a reads 20 of 1000 used since the reset; gateway-b still shows last
    # month's 1100. The group's requests are served: no "used all of its quota" page.
    failed = promtool_test(
        tmp_path,
        quota_replicas(stale_b_from=3),
        [firing("AigwQuotaExhausted", at) for at in (10, 15, 25)]
        + [firing("AigwQuotaNearlyUsed", at) for at in (10, 15, 25)],
    )
    assert not failed, failed


def test_the_dashboards_quota_table_shows_the_usage_since_the_reset(tmp_path: Path) -> None:
    # What the alerts read (test above): 20 used since the reset, not gateway-b's 1100, and
    # the 30 tokens running requests hold beside it.
    panels = orjson.loads(DASHBOARD.read_bytes())["panels"]
    (table,) = [panel for panel in panels if panel["title"] == "Quota state per subject"]
    wanted = {
        "aigw_quota_used": 20,
        "aigw_quota_reserved": 30,
        "aigw_quota_remaining": 950,
        "aigw_quota_limit": 1000,
    }
    exprs = [
        {
            "expr": target["expr"],
            "eval_time": "15m",
            "exp_samples": [{"labels": labels_text(MARKETING), "value": value}],
        }
        for target in table["targets"]
        for name, value in wanted.items()
        if f"({name})" in target["expr"]
    ]
    assert len(exprs) == len(wanted)
    failed = promtool_test(tmp_path, quota_replicas(stale_b_from=3), [], exprs)
    assert not failed, failed


def test_the_dashboards_quota_table_has_a_named_column_for_every_quota_gauge() -> None:
    """Every per-subject quota gauge the gateway exports, under a name an operator reads:
    the table had no column for aigw_quota_reserved, so a budget that running requests
    filled read as limit 100000, used 0, remaining 0, with nothing saying why."""
    panels = orjson.loads(DASHBOARD.read_bytes())["panels"]
    (table,) = [panel for panel in panels if panel["title"] == "Quota state per subject"]
    gauges = {
        name
        for name, labels in code_series().items()
        if name.startswith("aigw_quota_") and "subject" in labels
    }
    shown = {
        name: target["refId"]
        for target in table["targets"]
        for name in gauges
        if f"({name} and" in target["expr"]
    }
    assert set(shown) == gauges
    [organize] = [each for each in table["transformations"] if each["id"] == "organize"]
    renamed = organize["options"]["renameByName"]
    columns = {name: renamed.get(f"Value #{ref}") for name, ref in shown.items()}
    assert columns == {
        "aigw_quota_limit": "Limit",
        "aigw_quota_used": "Used",
        "aigw_quota_reserved": "Reserved",
        "aigw_quota_remaining": "Remaining",
        "aigw_quota_reset_timestamp_seconds": "Resets",
    }


def test_replicas_that_all_lag_still_page_a_used_up_quota(tmp_path: Path) -> None:
    # The store answers slowly everywhere: both replicas' gauges are old, and the
    # quota alerts keep what they last read rather than going quiet.
    timeline: Timeline = {}
    for minute in range(MINUTES):
        for instance in ("gateway-a:9464", "gateway-b:9464"):
            add_scrape(
                timeline,
                minute,
                {
                    series("aigw_quota_limit", **MARKETING, **target(instance)): 1000.0,
                    series("aigw_quota_used", **MARKETING, **target(instance)): 1100.0,
                    series("aigw_quota_gauges_updated_timestamp_seconds", **target(instance)): 0.0,
                },
            )
    exhausted = alert(
        "group marketing has used all of its token quota (rule marketing-monthly); its "
        "requests are refused until the period resets",
        severity="critical",
        **MARKETING,
    )
    failed = promtool_test(tmp_path, timeline, [firing("AigwQuotaExhausted", 15, exhausted)])
    assert not failed, failed


def test_envoy_down_while_the_gateway_is_up_raises_an_alert(tmp_path: Path) -> None:
    # Envoy serves every request: down, nothing reaches the gateway, whose page shows no
    # errors and no traffic, so no other alert tells.
    timeline: Timeline = {}
    for minute in range(MINUTES):
        add_scrape(
            timeline,
            minute,
            {
                series("up", **target("gateway-a:9464")): 1,
                series("up", **target("envoy-a:9901", "envoy")): 1 if minute < 5 else 0,
            },
        )
    failed = promtool_test(
        tmp_path,
        timeline,
        [
            firing("AigwEnvoyDown", 4),
            firing(
                "AigwEnvoyDown",
                10,
                alert(
                    "Prometheus cannot scrape Envoy at envoy-a:9901: if Envoy is down, no AI "
                    "request is served",
                    severity="critical",
                    **target("envoy-a:9901", "envoy"),
                ),
            ),
            firing("AigwGatewayDown", 10),
        ],
    )
    assert not failed, failed


def test_the_docs_tokens_left_query_reads_the_groups_monthly_quota(tmp_path: Path) -> None:
    """docs/metrics.md's "tokens left in the marketing group's monthly quota", on a group
    that a shadow pilot rule covers too: 150 tokens are left of the monthly quota; the
    pilot's larger limit must not stand in for it."""
    [query] = [expr for comment, expr in doc_queries() if "Tokens left" in comment][:1]
    pilot = {**MARKETING, "rule": "marketing-pilot", "mode": "shadow"}
    timeline: Timeline = {}
    for minute in range(MINUTES):
        for instance in ("gateway-a:9464", "gateway-b:9464"):
            scraped = {
                series("aigw_quota_remaining", **MARKETING, **target(instance)): 150.0,
                series("aigw_quota_remaining", **pilot, **target(instance)): 5000.0,
            }
            add_scrape(timeline, minute, scraped)
    exprs = [{"expr": query, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": 150}]}]
    failed = promtool_test(tmp_path, timeline, [], exprs)
    assert not failed, failed


def test_a_failed_config_reload_raises_an_alert_until_a_reload_succeeds(tmp_path: Path) -> None:
    """A refused file is seen from the first failure of a gateway's life, and the alert
    ends with the next good reload, not 15 minutes after the failure."""
    metrics = GatewayMetrics()
    timeline: Timeline = {}
    for minute in range(MINUTES):
        if minute == 10:
            metrics.config_reload(False)
        if minute == 14:
            metrics.config_reload(True)
        add_scrape(timeline, minute, page(metrics.registry, "gateway-a:9464"))
    failed_reload = alert(
        "gateway-a:9464 refused its config file at the last reload: it keeps serving its "
        "previous config (the log says which field is wrong)",
        severity="warning",
        **target("gateway-a:9464"),
    )
    failed = promtool_test(
        tmp_path,
        timeline,
        [
            firing("AigwConfigReloadFailed", 8),
            firing("AigwConfigReloadFailed", 12, failed_reload),
            firing("AigwConfigReloadFailed", 16),
        ],
    )
    assert not failed, failed
