"""Telemetry review, third pass: what an operator's alerts select on /metrics must not fold
into `other`, however low `telemetry.metrics.max_label_values` is set.

The label budget is there for values a client or a provider can make up (model names,
identities). The statuses the shipped alerts select (`status_code=~"5..|aborted"`), the
gateway's own fixed values (token types, operations, guard actions, store operations)
and the names the config gives (quota rules, guards) are bounded without it; folding
them made a 5xx or a rule's refusals vanish into `other` once a low cap filled up.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from extproc.config import GatewayConfig
from extproc.telemetry.metrics import GatewayMetrics
from extproc.workers import _BoundedCollector
from tests.unit.guard_helpers import config_with

# Every status a day of ordinary traffic gives, the ones the alerts select included.
STATUSES = ("200", "400", "401", "403", "404", "413", "429", "500", "502", "503", "aborted",
            "stream_error", "error_body")  # fmt: skip
UPSTREAM_STATUSES = ("429", "500", "503", "529", "stream_error")
OPERATIONS = ("chat", "embeddings", "text_completion", "generate_content", "compact")
CAP = 3


def label_values(source: Collector, name: str, label: str) -> set[str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(source)
    text = generate_latest(registry).decode()
    return {
        sample.labels[label]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def busy_day(metrics: GatewayMetrics) -> None:
    for status in STATUSES:
        metrics.observe_request(route="openai-chat", provider="mock", model="gpt-4o-mini",
                                status=status, duration_s=0.1)  # fmt: skip
    for status in UPSTREAM_STATUSES:
        metrics.upstream_error(provider="mock", model="gpt-4o-mini", status=status)
    for operation in OPERATIONS:
        metrics.observe_token_usage(operation=operation, provider_type="openai",
                                    request_model="gpt-4o-mini", response_model="gpt-4o-mini",
                                    prompt=3, completion=2)  # fmt: skip
    for action in ("pass", "mask", "reject", "fail_open", "fail_closed"):
        metrics.count_guardrail_decision("no-secrets", "request", action)
    for operation in ("quota_reserve", "quota_settle", "usage_record", "key_lookup"):
        metrics.store_error(operation)


def test_a_low_label_cap_keeps_every_status_and_fixed_value_apart() -> None:
    """An operator with three keys sets max_label_values: 3. The 5xx and cut streams the
    error-rate alert selects keep their status; the gateway's own values keep theirs."""
    metrics = GatewayMetrics(max_label_values=CAP)
    busy_day(metrics)
    for page in (metrics.registry, _BoundedCollector(metrics.registry, CAP)):
        assert label_values(page, "aigw_requests_total", "status_code") == set(STATUSES)
        assert label_values(page, "aigw_upstream_errors_total", "status_code") == set(
            UPSTREAM_STATUSES
        )
        assert label_values(page, "gen_ai_client_token_usage_count", "gen_ai_operation_name") == (
            set(OPERATIONS)
        )
        assert label_values(page, "aigw_guardrail_decisions_total", "action") == {
            "pass", "mask", "reject", "fail_open", "fail_closed"
        }  # fmt: skip
        assert label_values(page, "aigw_store_errors_total", "operation") == {
            "quota_reserve", "quota_settle", "usage_record", "key_lookup"
        }  # fmt: skip


def test_a_status_that_is_no_http_status_still_goes_through_the_budget() -> None:
    """Only HTTP statuses (three digits) and the gateway's two words are kept outside the
    budget: anything else in that label cannot grow the page without bound."""
    metrics = GatewayMetrics(max_label_values=CAP)
    for index in range(10):
        metrics.upstream_error(provider="mock", model="gpt-4o-mini", status=f"odd-{index}")
    assert len(label_values(metrics.registry, "aigw_upstream_errors_total", "status_code")) == (
        CAP + 1
    )


def rules_and_guards_config() -> GatewayConfig:
    guards = [{"name": f"guard-{index}", "literals": [f"secret-{index}"]} for index in range(6)]
    config = config_with({"policies": [{"name": "strict", "request": guards}]}, {})
    rule = {"subject": "api_key", "requests_per_minute": 10}
    rules = config.quotas.model_validate(
        {"rules": [{"name": f"team-{index}-rpm", **rule} for index in range(6)]}
    )
    return config.model_copy(update={"quotas": rules})


def test_the_configs_rule_and_guard_names_are_kept_whatever_the_cap() -> None:
    """Six quota rules and six guards with max_label_values: 3: each rule's refusals and
    each guard's decisions stay under its name (docs: bounded by the config), on a
    worker's page and on the merged page of `serve --workers N`."""
    config = rules_and_guards_config()
    metrics = GatewayMetrics(max_label_values=CAP)
    metrics.admit_config(config)
    for index in range(6):
        metrics.rate_limit(f"team-{index}-rpm", "api_key")
        metrics.count_guardrail_decision(f"guard-{index}", "request", "reject")
    # Made-up names (none reach these labels today) still fold.
    for index in range(10):
        metrics.rate_limit(f"not-configured-{index}", "api_key")
    rules = {f"team-{index}-rpm" for index in range(6)}
    guards = {f"guard-{index}" for index in range(6)}
    for page in (metrics.registry, _BoundedCollector(metrics.registry, CAP, config)):
        found = label_values(page, "aigw_rate_limited_total", "rule")
        assert rules <= found
        assert len(found - rules) == CAP + 1
        assert label_values(page, "aigw_guardrail_decisions_total", "guard") == guards
