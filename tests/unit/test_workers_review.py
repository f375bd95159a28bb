"""The supervisor's merged page across config reloads: a model the reload adds shows under
its own name, and one it removes keeps its series (its history never moves into `other`,
which Prometheus would read as a drop of one series and a jump of another)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from extproc.config.loader import parse_config
from extproc.config.model import GatewayConfig
from extproc.workers import _BoundedCollector


def config_with_models(*names: str) -> GatewayConfig:
    models = "".join(f"  - {{name: {name}, provider: mock}}\n" for name in names)
    text = (
        "version: 1\n"
        "providers:\n  - {name: mock, base_url: 'http://127.0.0.1:1/v1', api_key: k}\n"
        f"models:\n{models}"
        "routes:\n  - {name: chat, path: /v1/chat/completions}\n"
    )
    return parse_config(text, "test.yaml", {})


class _Tokens(Collector):
    """Workers' merged counts: tokens per model, as the multiprocess files hold them."""

    def __init__(self) -> None:
        self.by_model: dict[str, float] = {}

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily("tokens_consumed", "tokens", labels=["model"])
        for model, value in self.by_model.items():
            family.add_metric([model], value)
        return [family]


def page(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tokens_consumed_total"
    }


def test_models_a_reload_adds_or_removes_keep_their_own_series() -> None:
    tokens = _Tokens()
    merged = _BoundedCollector(tokens, max_values=1, config=config_with_models("old-model"))
    registry = CollectorRegistry()
    registry.register(merged)
    # A made-up name (a `claude-` prefix sends any) takes the whole budget.
    tokens.by_model = {"old-model": 10, "made-up-1": 5}
    assert page(registry) == {"old-model": 10, "made-up-1": 5}

    merged.admit_config(config_with_models("new-model"))  # the reload: old out, new in
    tokens.by_model = {"old-model": 11, "made-up-1": 5, "made-up-2": 3, "new-model": 7}
    assert page(registry) == {"old-model": 11, "made-up-1": 5, "other": 3, "new-model": 7}
