"""Tracing in the rendered bootstrap: off by default, Envoy's OpenTelemetry tracer when on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from extproc.config.model import GatewayConfig
from extproc.envoy_bootstrap import render_bootstrap, render_bootstrap_yaml
from extproc.envoy_tracing import COLLECTOR_CLUSTER
from extproc.headers import METADATA_NAMESPACE
from extproc.telemetry.span_attributes import CONTENT_ATTRIBUTES, SPAN_ATTRIBUTES
from tests.unit.test_envoy_bootstrap import assert_envoy_accepts


def gateway(**tracing: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "providers": [{"name": "openai", "base_url": "https://api.openai.com/v1"}],
            "models": [{"name": "gpt-4o", "provider": "openai"}],
            "telemetry": {"tracing": tracing},
        }
    )


def hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    found: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return found


def tags(bootstrap: dict[str, Any]) -> dict[str, list[str]]:
    """Span attribute -> the metadata path Envoy reads it from."""
    found = {}
    for tag in [t for t in hcm(bootstrap)["tracing"]["custom_tags"] if "metadata" in t]:
        key = tag["metadata"]["metadata_key"]
        assert tag["metadata"]["kind"] == {"request": {}}
        found[tag["tag"]] = [key["key"], *(step["key"] for step in key["path"])]
    return found


def test_tracing_is_off_by_default() -> None:
    bootstrap = render_bootstrap(gateway())
    assert "tracing" not in hcm(bootstrap)
    assert COLLECTOR_CLUSTER not in {c["name"] for c in bootstrap["static_resources"]["clusters"]}
    assert "layered_runtime" not in bootstrap


def test_enabled_tracing_exports_to_the_collector_with_the_gen_ai_attributes() -> None:
    bootstrap = render_bootstrap(
        gateway(
            enabled=True,
            otlp_endpoint="jaeger:4317",
            sampling_percent=12.5,
            service_name="ai-gateway",
        )
    )
    tracing = hcm(bootstrap)["tracing"]
    provider = tracing["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["service_name"] == "ai-gateway"
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == (
        COLLECTOR_CLUSTER
    )
    assert tracing["random_sampling"] == {"value": 12.5}
    collector = next(
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == COLLECTOR_CLUSTER
    )
    assert collector["type"] == "STRICT_DNS"
    address = collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {"address": "jaeger", "port_value": 4317}
    assert "http2_protocol_options" in str(collector["typed_extension_protocol_options"])

    found = tags(bootstrap)
    for attribute in (
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.response.finish_reasons",
        "aigw.api_key_id",
        "aigw.user_id",
        "aigw.group_id",
    ):
        assert found[attribute][0] == METADATA_NAMESPACE
    assert found["gen_ai.usage.input_tokens"] == [METADATA_NAMESPACE, "prompt_tokens"]
    # Without capture_content no span can carry text.
    assert not {name for name, _ in CONTENT_ATTRIBUTES} & set(found)


def test_capture_content_adds_the_message_attributes() -> None:
    found = tags(render_bootstrap(gateway(enabled=True, capture_content=True)))
    assert set(found) == {name for name, _ in SPAN_ATTRIBUTES + CONTENT_ATTRIBUTES}


@pytest.mark.parametrize("configured", [None, 8])
def test_the_collector_cluster_holds_few_exports_not_the_providers_limit(
    configured: int | None,
) -> None:
    """A collector that takes connections and never answers held up to
    envoy.max_concurrent_requests export calls (10000), each with its batch of spans."""
    settings = {} if configured is None else {"max_exports_in_flight": configured}
    bootstrap = render_bootstrap(gateway(enabled=True, **settings))
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    [thresholds] = clusters[COLLECTOR_CLUSTER]["circuit_breakers"]["thresholds"]
    expected = configured or 256
    assert thresholds["max_requests"] == thresholds["max_pending_requests"] == expected
    assert thresholds["max_connections"] == expected and thresholds["max_retries"] == 0
    # Every other cluster keeps the configured concurrency.
    [provider] = clusters["provider_openai"]["circuit_breakers"]["thresholds"]
    assert provider["max_requests"] == 10_000


@pytest.mark.parametrize("count", [0, 10_001])
def test_max_exports_in_flight_is_bounded(count: int) -> None:
    with pytest.raises(ValidationError, match="max_exports_in_flight"):
        gateway(enabled=True, max_exports_in_flight=count)


def test_flush_settings_go_to_envoys_runtime() -> None:
    bootstrap = render_bootstrap(gateway(enabled=True, flush_interval_ms=250, min_flush_spans=1))
    [layer] = bootstrap["layered_runtime"]["layers"]
    assert layer["static_layer"] == {
        "tracing.opentelemetry.flush_interval_ms": 250,
        "tracing.opentelemetry.min_flush_spans": 1,
    }


@pytest.mark.parametrize(
    "endpoint", ["http://jaeger:4317", "jaeger", "jaeger:0", "jaeger:http", ":4317"]
)
def test_an_endpoint_that_is_not_host_port_is_refused(endpoint: str) -> None:
    with pytest.raises(ValidationError, match="otlp_endpoint"):
        gateway(enabled=True, otlp_endpoint=endpoint)


@pytest.mark.parametrize("percent", [-1, 100.5])
def test_sampling_is_a_percentage(percent: float) -> None:
    with pytest.raises(ValidationError, match="sampling_percent"):
        gateway(enabled=True, sampling_percent=percent)


@pytest.mark.parametrize(
    "tracing",
    [
        pytest.param({"otlp_endpoint": "otel-collector.observability:4317"}, id="dns-collector"),
        pytest.param(
            {"otlp_endpoint": "127.0.0.1:4317", "capture_content": True, "sampling_percent": 1},
            id="ip-collector-with-content",
        ),
    ],
)
def test_envoy_accepts_the_bootstrap_with_tracing(tracing: dict[str, Any], tmp_path: Path) -> None:
    assert_envoy_accepts(render_bootstrap_yaml(gateway(enabled=True, **tracing)), tmp_path)
