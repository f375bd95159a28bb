"""Prometheus metrics: every name and label set is defined here, once.

Identity labels (``api_key_id``, ``user_id``, ``group_id``) stay empty until a
request is authenticated. Label values are bounded per label name: past
``max_label_values`` distinct values, new ones are counted under ``other`` so a
flood of made-up model names cannot blow up the series count.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

TOKEN_LABELS = ("api_key_id", "user_id", "group_id", "model", "provider", "token_type")
REQUEST_LABELS = ("route", "provider", "model", "status_code")
OVERFLOW_VALUE = "other"

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class LabelBudget:
    """Caps the distinct values each label may take."""

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def bound(self, label: str, value: str) -> str:
        seen = self._seen.get(label)
        if seen is not None and value in seen:
            return value
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if value in seen:
                return value
            if len(seen) >= self.max_values:
                return OVERFLOW_VALUE
            seen.add(value)
            return value


class GatewayMetrics:
    def __init__(self, max_label_values: int = 1000) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = LabelBudget(max_label_values)
        self.tokens_consumed = Counter(
            "tokens_consumed",
            "LLM tokens consumed, by identity, model, provider and token type (prompt, completion)",
            TOKEN_LABELS,
            registry=self.registry,
        )
        self.requests = Counter(
            "aigw_requests",
            "AI requests handled by the gateway, by route, provider, model and HTTP status",
            REQUEST_LABELS,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "aigw_request_duration_seconds",
            "Time from the request reaching the gateway to the end of its response",
            ("route", "provider", "model"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "aigw_store_errors",
            "Failed operations against the Redis-protocol store, by operation",
            ("operation",),
            registry=self.registry,
        )
        self.spooled = Counter(
            "aigw_spooled_batches",
            "Batches the store could not take, written to the local spool for replay, by kind",
            ("kind",),
            registry=self.registry,
        )
        self.failovers = Counter(
            "aigw_failovers",
            "Requests answered by a fallback model after the primary's provider failed",
            ("model", "to_model"),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "aigw_rate_limited",
            "Requests refused by a quota or rate limit, by rule and subject kind",
            ("rule", "subject_kind"),
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "aigw_config_reloads",
            "Config reload attempts, by result (success, failure)",
            ("result",),
            registry=self.registry,
        )

        # Label children cached by their values: prometheus_client's labels() is
        # the costliest part of recording a request otherwise.
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric._name, *values)
        child = self._children.get(key)
        if child is None:
            bounded = [
                self.labels.bound(name, value)
                for name, value in zip(metric._labelnames, values, strict=True)
            ]
            child = self._children[key] = metric.labels(*bounded)
        return child

    def observe_request(
        self,
        *,
        route: str,
        provider: str,
        model: str,
        status: str,
        duration_s: float | None,
    ) -> None:
        self._child(self.requests, route, provider, model, status).inc()
        if duration_s is not None:
            self._child(self.request_duration, route, provider, model).observe(duration_s)

    def count_tokens(
        self,
        *,
        identity: tuple[str, str, str],
        model: str,
        provider: str,
        prompt: int,
        completion: int,
    ) -> None:
        if prompt:
            self._child(self.tokens_consumed, *identity, model, provider, "prompt").inc(prompt)
        if completion:
            self._child(self.tokens_consumed, *identity, model, provider, "completion").inc(
                completion
            )
