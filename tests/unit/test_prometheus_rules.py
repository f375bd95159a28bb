"""deploy/prometheus and deploy/grafana: valid, tested, and using only what the gateway exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import orjson
import yaml

from tests.exported_metrics import (
    DASHBOARD,
    PROMETHEUS_DIR,
    PROMETHEUS_SERIES,
    as_grafana_sends,
    code_series,
    dashboard_expressions,
    promql_metric_names,
    recording_rules,
    rule_expressions,
)

# Added by Prometheus to every scraped series, not by the gateway.
TARGET_LABELS = {"instance", "job"}
_SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})?$")
_LABEL = re.compile(r'(\w+)="(?:[^"\\]|\\.)*"')


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Installed by .ci/run (Debian's prometheus package); never skipped.
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install prometheus (see .ci/run)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_the_scrape_config_and_its_rule_files_are_valid() -> None:
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_the_alert_unit_tests_pass_including_the_80_percent_quota_alert() -> None:
    tests = sorted(str(path) for path in (PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert tests
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    text = "\n".join(Path(path).read_text() for path in tests)
    assert "alertname: AigwQuotaNearlyUsed" in text and "has used 85% of its token quota" in text


def test_the_alert_tests_feed_series_shaped_like_the_gateways_metrics() -> None:
    # `up` comes from Prometheus itself and carries only the target's labels.
    exported = {**code_series(), **{name: frozenset() for name in PROMETHEUS_SERIES}}
    checked = set()
    for path in (PROMETHEUS_DIR / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for series in case["input_series"]:
                found = _SERIES.match(series["series"])
                assert found, series
                name = found.group("name")
                labels = set(_LABEL.findall(found.group("labels") or ""))
                assert name in exported, f"{path}: {name} is not a metric the gateway exports"
                assert labels - TARGET_LABELS == exported[name], (
                    f"{path}: {name} has labels {sorted(labels)}, "
                    f"the gateway exports {sorted(exported[name])}"
                )
                checked.add(name)
    assert {"aigw_quota_used", "aigw_quota_limit", "aigw_requests_total",
            "aigw_request_duration_seconds_bucket", "up"} <= checked  # fmt: skip


def test_rules_use_only_exported_names() -> None:
    known = set(code_series()) | recording_rules() | PROMETHEUS_SERIES
    for expr in rule_expressions():
        unknown = promql_metric_names(expr) - known
        assert not unknown, f"rule expression uses unknown metrics {unknown}: {expr}"


def test_the_metric_name_parser_reads_promql() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, model) (rate(aigw_request_duration_seconds_bucket"
        '{model=~"$model", route!="x"}[$__rate_interval]))) / on (model) group_left '
        "aigw:quota_utilisation:ratio offset 5m"
    )
    assert promql_metric_names(expr) == {
        "aigw_request_duration_seconds_bucket",
        "aigw:quota_utilisation:ratio",
    }
    assert promql_metric_names("label_values(tokens_consumed_total, group_id)") == {
        "tokens_consumed_total"
    }


def test_the_dashboard_is_valid_grafana_json_on_the_provisioned_datasource() -> None:
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    assert dashboard["uid"] == "aigw-overview"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("group", "user", "api key", "model", "cost", "quota", "rate-limited",
                  "time to first token", "p95", "error", "failover"):  # fmt: skip
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
    datasource = yaml.safe_load(
        Path("deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(Path("deploy/grafana/provisioning/dashboards/aigw.yml").read_text())[
        "providers"
    ][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert dashboard_expressions(dashboard)


def test_every_dashboard_query_is_promql_prometheus_parses(tmp_path: Path) -> None:
    """The name checks above read queries with regular expressions, which a missing
    parenthesis or a misspelt keyword passes; Grafana would show that panel as an error.
    Each query, its variables filled in as Grafana fills them, loaded as a recording rule:
    promtool parses it with Prometheus' own parser."""
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    queries = [
        as_grafana_sends(expr)
        for expr in dashboard_expressions(dashboard)
        if not expr.startswith("label_values(")  # Grafana's, not PromQL
    ]
    rules = [{"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(queries)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout
    assert "$" not in "".join(queries), "a dashboard variable was left unfilled"
