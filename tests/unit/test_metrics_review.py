"""Review of the metrics: label values the exposition cannot hold, the cost series merged
from worker files exactly, quota gauges for the most recently seen subjects under the
cap, and the PromQL docs/metrics.md gives operators, run by promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.parser import text_string_to_metric_families

from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import LimitRule, QuotaPeriod, QuotasConfig, TokenQuota
from extproc.context import Identity
from extproc.quota.rules import RuleSet
from extproc.quota.store import QuotaStore
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.metrics import GatewayMetrics, MergedWorkerMetrics, worker_cost_sum
from extproc.telemetry.quota_gauges import QuotaGauges, SubjectTracker

IDENTITY = ("team1", "alice", "engineering")
DOCS = Path("docs/metrics.md")


def page_of(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_lone_surrogate_in_a_label_value_does_not_break_the_page() -> None:
    """JSON (a JWT's claims) can spell a lone surrogate; UTF-8 cannot hold one, and
    a single such label value made every scrape of /metrics fail."""
    metrics = GatewayMetrics()
    metrics.count_tokens(identity=("k", "u\udcffser", "g"), model="m", provider="p",
                         prompt=3, completion=4)  # fmt: skip
    metrics.count_tokens(identity=IDENTITY, model="m", provider="p", prompt=1, completion=1)
    found = page_of(metrics.registry)
    users = {dict(labels)["user_id"] for name, labels in found if name == "tokens_consumed_total"}
    assert users == {"u\ufffdser", "alice"}


# --- several workers ---------------------------------------------------------------


@pytest.fixture
def worker_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[int], GatewayMetrics]]:
    """Metrics of simulated worker processes, each writing the multiprocess files of
    its pid, as ``extproc serve --workers N`` does."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    original = values.ValueClass

    def worker(pid: int) -> GatewayMetrics:
        values.ValueClass = values.MultiProcessValue(lambda: pid)  # type: ignore[no-untyped-call]
        return GatewayMetrics()

    try:
        yield worker
    finally:
        values.ValueClass = original


def merged(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    registry.register(MergedWorkerMetrics(str(path)))
    return page_of(registry)


COST_LABELS = frozenset(
    {("api_key_id", "team1"), ("user_id", "alice"), ("group_id", "engineering"),
     ("model", "m"), ("provider", "p")}
)  # fmt: skip


def add_cost(metrics: GatewayMetrics, picousd: int) -> None:
    metrics.count_cost(identity=IDENTITY, model="m", provider="p", picousd=picousd)


def test_a_cost_series_of_two_workers_is_the_exact_sum_on_the_merged_page(
    tmp_path: Path, worker_files: Callable[[int], GatewayMetrics]
) -> None:
    add_cost(worker_files(101), 10**11)  # 0.1 USD
    add_cost(worker_files(102), 2 * 10**11)  # 0.2 USD
    found = merged(tmp_path)
    assert found[("aigw_cost_usd_total", COST_LABELS)] == 0.3
    # Everything else merges as prometheus_client does.
    tokens = worker_files(103)
    tokens.count_tokens(identity=IDENTITY, model="m", provider="p", prompt=5, completion=0)
    assert (
        merged(tmp_path)[("tokens_consumed_total", COST_LABELS | {("token_type", "prompt")})] == 5
    )


def test_a_worker_that_reuses_a_dead_workers_pid_adds_to_its_cost(
    tmp_path: Path, worker_files: Callable[[int], GatewayMetrics]
) -> None:
    """prometheus_client reopens the file of the pid with its values: the new process
    must add to them, not set the counter back to its own sum (a reset to Prometheus)."""
    add_cost(worker_files(201), 7 * 10**11)
    add_cost(worker_files(201), 10**11)  # restarted, same pid
    assert merged(tmp_path)[("aigw_cost_usd_total", COST_LABELS)] == 0.8


def test_worker_cost_sums_round_once() -> None:
    assert worker_cost_sum([0.1, 0.2]) == 0.3
    assert worker_cost_sum([0.1] * 10) == 1.0
    # Past 8192 USD a float cannot hold picodollars: it adds as it is.
    assert worker_cost_sum([10_000.1, 0.2]) == 10_000.300000000001
    assert worker_cost_sum([]) == 0.0


# --- quota gauges ------------------------------------------------------------------

RULES = RuleSet(
    QuotasConfig(
        rules=(
            LimitRule(name="group-monthly", subject="group",
                      token_quota=TokenQuota(limit=1000, period=QuotaPeriod.CALENDAR_MONTH)),
            LimitRule(name="marketing-monthly", subject="group", match="marketing",
                      token_quota=TokenQuota(limit=5000, period=QuotaPeriod.CALENDAR_MONTH)),
        ),
    )
)  # fmt: skip


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[Any]:
    found = connect(valkey.url, 2.0)
    await found.flushdb()
    yield found
    await found.aclose()


def gauge_subjects(gauges: QuotaGauges) -> set[str]:
    registry = CollectorRegistry()
    registry.register(gauges)
    return {dict(labels)["subject"] for name, labels in page_of(registry)
            if name == "aigw_quota_used"}  # fmt: skip


async def test_past_the_cap_the_gauges_keep_the_most_recently_seen_subjects(client: Any) -> None:
    """docs/metrics.md: at most max_subjects subjects, the most recently seen. A rule
    naming a subject (marketing) must not push the newest ones out instead of the oldest."""
    store = QuotaStore(client, "t:")
    await store.start()
    now = store.now()
    await client.zadd("t:qa", {"group\x1fold": now - 30, "group\x1fnewer": now - 20,
                               "group\x1fnewest": now - 10})  # fmt: skip
    settings = QuotaGaugesConfig(max_subjects=3)
    gauges = QuotaGauges(client, "t:", lambda: RULES, store.now, settings)
    await gauges.refresh()
    assert gauge_subjects(gauges) == {"marketing", "newer", "newest"}
    await store.close()


async def test_ten_thousand_subjects_give_gauges_for_the_cap_only(client: Any) -> None:
    """A client sending 10k made-up subjects (header values, JWT groups) cannot blow up
    the page: the shared set is trimmed and the page holds max_subjects subjects."""
    store = QuotaStore(client, "t:")
    await store.start()
    tracker = SubjectTracker(client, "t:", store.now, 1.0)
    now = store.now()
    for index in range(10_000):
        identity = Identity("api_key", "k", "u", f"group-{index:05}")
        tracker.note(RULES.limits_for(identity, {}, "m", now))
    await tracker.flush()
    assert await client.zcard("t:qa") == 10_000
    settings = QuotaGaugesConfig(max_subjects=1000)
    gauges = QuotaGauges(client, "t:", lambda: RULES, store.now, settings)
    await gauges.refresh()
    subjects = gauge_subjects(gauges)
    assert len(subjects) == 1000
    assert "marketing" in subjects
    assert await client.zcard("t:qa") == 1000
    await store.close()


# --- the PromQL of docs/metrics.md -------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus"
    return found


def doc_queries() -> list[tuple[str, str]]:
    """(comment above it, expression) of every query under "Useful queries". A query
    starts at the margin; its indented lines continue it."""
    block = DOCS.read_text().split("## Useful queries", 1)[1]
    text = re.search(r"```promql\n(.*?)```", block, re.DOTALL)
    assert text is not None
    queries: list[tuple[str, list[str]]] = []
    comment, in_comment = "", False
    for line in text.group(1).splitlines():
        if line.startswith("#"):
            comment = comment + line if in_comment else line
            in_comment = True
            continue
        in_comment = False
        if line.startswith(" ") and queries:
            queries[-1][1].append(line)
        elif line.strip():
            queries.append((comment, [line]))
    return [(found, "\n".join(lines)) for found, lines in queries]


def eighty_percent_query() -> str:
    [found] = [expr for comment, expr in doc_queries() if "80% alert" in comment]
    return found


def test_every_query_the_doc_gives_is_valid_promql(tmp_path: Path) -> None:
    queries = doc_queries()
    assert len(queries) >= 8
    rules = {"groups": [{"name": "doc", "rules": [
        {"record": f"doc:query_{index}", "expr": expr} for index, (_, expr) in enumerate(queries)
    ]}]}  # fmt: skip
    path = tmp_path / "doc-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool(), "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_docs_80_percent_alert_fires_for_80_to_100_percent_only(tmp_path: Path) -> None:
    """ "Marketing has used 80% of its monthly quota", as the doc writes it, on series
    shaped like the gateway's (two replicas publishing the same values): marketing at
    85% fires; sales at 50% does not, nor does support, whose quota is used up (120%:
    that is the exhausted alert's business, as the doc's comment says), nor does legal,
    at 85% of a shadow rule's quota, which never refuses."""
    rules = {"groups": [{"name": "doc", "rules": [
        {"alert": "DocQuotaNearlyUsed", "expr": eighty_percent_query()},
    ]}]}  # fmt: skip
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    series = []
    subjects = (("marketing", 850, "enforce"), ("sales", 500, "enforce"),
                ("support", 1200, "enforce"), ("legal", 850, "shadow"))  # fmt: skip
    for subject, used, mode in subjects:
        for instance in ("gw-a:9464", "gw-b:9464"):
            labels = (
                f'rule="group-monthly",subject_kind="group",subject="{subject}",'
                f'counter="token_quota",mode="{mode}",instance="{instance}",job="aigw-gateway"'
            )
            series.append({"series": f"aigw_quota_used{{{labels}}}", "values": f"{used}x10"})
            series.append({"series": f"aigw_quota_limit{{{labels}}}", "values": "1000x10"})
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{
                "eval_time": "5m",
                "alertname": "DocQuotaNearlyUsed",
                "exp_alerts": [{"exp_labels": {
                    "rule": "group-monthly", "subject_kind": "group", "subject": "marketing",
                    "counter": "token_quota"}}],
            }],
        }],
    }  # fmt: skip
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run([promtool(), "test", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_merged_page_shows_a_refused_config_while_any_worker_serves_an_older_one(
    tmp_path: Path, worker_files: Callable[[int], GatewayMetrics]
) -> None:
    # Each worker reloads the file itself: one that refused it serves the old config.
    first, second = worker_files(201), worker_files(202)
    first.config_reload(True)
    second.config_reload(False)
    reloaded = ("aigw_config_last_reload_successful", frozenset())
    assert merged(tmp_path)[reloaded] == 0
    second.config_reload(True)
    assert merged(tmp_path)[reloaded] == 1
