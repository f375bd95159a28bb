"""What the gateway exports, read from its code, and the metric names a PromQL expression uses.

Shared by the tests that keep deploy/prometheus, deploy/grafana and the metrics reference
(docs/metrics.md) from rotting: every name they use must be one the gateway (or Envoy, or
a recording rule) exports.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import QuotasConfig
from extproc.quota.rules import RuleSet
from extproc.telemetry.metrics import GatewayMetrics
from extproc.telemetry.quota_gauges import QuotaGauges

PROMETHEUS_DIR = Path("deploy/prometheus")
DASHBOARD = Path("deploy/grafana/dashboards/aigw.json")
# Series Prometheus itself adds for every target.
PROMETHEUS_SERIES = {"up"}
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def code_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Every metric the gateway's code registers, by the name a scrape shows for it
    (counters with ``_total``), with its type and label names: the gateway's own, the
    agent metrics on the same registry, and the quota gauges read from the store."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    metrics = GatewayMetrics()
    for value in [*vars(metrics).values(), *vars(metrics.agents).values()]:
        if isinstance(value, MetricWrapperBase):
            found[_shown(value._name, value._type)] = (value._type, frozenset(value._labelnames))
    gauges = QuotaGauges(None, "", lambda: RuleSet(QuotasConfig()), time.time, QuotaGaugesConfig())
    for family in gauges.collect():
        labels = frozenset(getattr(family, "_labelnames", ()))
        found[_shown(family.name, family.type)] = (family.type, labels)
    return found


def _shown(name: str, kind: str) -> str:
    return name + "_total" if kind == "counter" else name


def code_series() -> dict[str, frozenset[str]]:
    """Every series name the gateway's code defines, with its label names."""
    found: dict[str, frozenset[str]] = {}
    for name, (kind, labels) in code_metrics().items():
        _add(found, name.removesuffix("_total") if kind == "counter" else name, kind, labels)
    return found


def _add(found: dict[str, frozenset[str]], name: str, kind: str, labels: Any) -> None:
    for suffix in _SUFFIXES[kind]:
        extra = {"le"} if suffix == "_bucket" else set()
        found[name + suffix] = frozenset(labels) | extra


def recording_rules() -> set[str]:
    names: set[str] = set()
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names


def rule_expressions() -> list[str]:
    found = []
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(rule["expr"] for rule in group["rules"])
    return found


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([a-zA-Z_:][\w:]*)")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and labels left out)."""
    found = _LABEL_VALUES.match(expr)
    if found:
        return {found.group(1)}
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    return {
        name
        for name in _IDENTIFIER.findall(text)
        if name.lower() not in _KEYWORDS and not name[0].isdigit()
    }


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    found = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
        if "expr" in target
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


# What the dashboard's "All" choice sends for a multi-value variable, and a rate window
# of at least four scrapes, as Grafana fills them in.
GRAFANA_DEFAULTS = {"$__rate_interval": "5m", "$__range": "1d", "$group": ".*", "$model": ".*"}


def as_grafana_sends(expr: str, **variables: str) -> str:
    """A dashboard query as Grafana sends it to Prometheus: its variables filled in
    (``group="research"`` for the group selection; else every value)."""
    values = {**GRAFANA_DEFAULTS, **{f"${name}": value for name, value in variables.items()}}
    # Longest first, so that no name replaces the start of a longer one.
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr
