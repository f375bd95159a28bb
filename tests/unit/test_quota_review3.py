"""A mistyped time zone in one of many quota rules: the config error says which rule."""

from __future__ import annotations

import pytest

from extproc.config import ConfigError, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.runtime import Runtime, Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics

QUOTAS = """
quotas:
  time_zone: %s
  rules:
    - {name: sales-monthly, subject: group, token_quota: {limit: 100, period: calendar_month}}
    - {name: ops-weekly, subject: group,
       token_quota: {limit: 100, period: calendar_week, time_zone: %s}}
"""


def problems(zone: str, rule_zone: str) -> list[str]:
    config = parse_config(DEFAULT_CONFIG.read_text() + QUOTAS % (zone, rule_zone), "g.yaml", {})
    with pytest.raises(ConfigError) as refused:
        Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    return refused.value.problems


def test_a_rules_unknown_time_zone_is_named_by_its_field() -> None:
    [problem] = problems("Europe/Berlin", "Europe/Berln")
    assert problem.startswith("quotas: rules[1].token_quota.time_zone (rule 'ops-weekly'):")
    assert "unknown time zone 'Europe/Berln'" in problem


def test_the_default_time_zone_is_named_by_its_field() -> None:
    [problem] = problems("Europe/Berln", "Europe/Paris")
    assert problem.startswith("quotas: time_zone: unknown time zone 'Europe/Berln'")
