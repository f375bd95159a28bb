"""Envoy's production limits in the rendered bootstrap: concurrency, buffers, timeouts.

Each limit is one an LLM gateway hits where a web proxy would not: calls that last
minutes (so many are in flight at once), answers of several megabytes, streams
longer than any timeout that bounds the wait for an answer. The integration tests
in ``tests/integration/test_envoy_limits.py`` show what clients see; these pin the
rendered values, and the real Envoy binary checks that it accepts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from extproc.config.model import AUDIO_MAX_REQUEST_BODY_BYTES, GatewayConfig
from extproc.envoy_bootstrap import (
    BUFFER_SLACK_BYTES,
    EXT_PROC_CLUSTER,
    render_bootstrap,
    render_bootstrap_yaml,
)
from tests.unit.test_envoy_bootstrap import ENVOY, assert_envoy_accepts

MIB = 1024 * 1024


def gateway(**sections: Any) -> GatewayConfig:
    """Two providers, and a model that fails over from one to the other."""
    raw: dict[str, Any] = {
        "providers": [
            {"name": "openai", "base_url": "https://api.openai.com/v1", "timeout_s": 120},
            {"name": "local-llm", "base_url": "http://10.0.0.7:8000/v1", "timeout_s": 30},
        ],
        "models": [
            {"name": "gpt-4o", "provider": "openai", "fallbacks": ["local"]},
            {"name": "local", "provider": "local-llm"},
        ],
    }
    raw.update(sections)
    return GatewayConfig.model_validate(raw)


def hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def routes(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = hcm(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]
    return {route["name"]: route for route in found}


def clusters(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}


def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def openai_mappers(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    """The local reply mappers of OpenAI's clients (each has a Bedrock, a Google and an
    Anthropic twin, first, that match only those APIs' clients), less those of the
    catch-all 404, which match no other reply."""
    mappers: list[dict[str, Any]] = hcm(bootstrap)["local_reply_config"]["mappers"]
    return [
        m
        for m in mappers
        if "request." not in _expression(m) and "direct_response" not in _expression(m)
    ]


def _expression(mapper: dict[str, Any]) -> str:
    expression: str = mapper["filter"]["extension_filter"]["typed_config"]["expression"]
    return expression


def mapper_for(bootstrap: dict[str, Any], needle: str) -> dict[str, Any]:
    for mapper in openai_mappers(bootstrap):
        if needle in _expression(mapper):
            found: dict[str, Any] = mapper
            return found
    raise AssertionError(f"no local reply mapper matches {needle!r}")


# --- concurrency ----------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, 4])
def test_every_cluster_allows_the_configured_calls_and_failovers_in_flight(
    limit: int | None,
) -> None:
    """Envoy's defaults (1024 requests, 3 retries per cluster) would refuse calls and
    silently skip failovers long before a busy gateway reaches any real limit."""
    config = gateway(envoy={} if limit is None else {"max_concurrent_requests": limit})
    expected = limit or 10_000
    found = clusters(render_bootstrap(config))
    # The gateway's own cluster, each provider's, and each failover chain's aggregate.
    assert {EXT_PROC_CLUSTER, "provider_openai", "failover_gpt_4o"} <= set(found)
    for name, cluster in found.items():
        [thresholds] = cluster["circuit_breakers"]["thresholds"]
        for key in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
            assert thresholds[key] == expected, (name, key)


def test_the_concurrency_limit_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="max_concurrent_requests"):
        gateway(envoy={"max_concurrent_requests": 0})


def test_an_overflowing_cluster_is_a_retryable_503_that_names_the_gateway() -> None:
    """Over the limit, Envoy answered a 500 (the gateway's own cluster) or a 503 that
    blamed the provider; both are the gateway's limit, and worth a retry."""
    mapper = mapper_for(render_bootstrap(gateway()), "overflow")
    assert mapper["status_code"] == 503
    error = mapper["body_format_override"]["json_format"]["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "gateway_overloaded")
    mappers = openai_mappers(render_bootstrap(gateway()))
    assert mappers.index(mapper) == 0, "the first matching mapper wins"


# --- buffers --------------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, 8 * MIB])
def test_provider_answers_are_buffered_up_to_their_own_limit(limit: int | None) -> None:
    config = gateway(envoy={} if limit is None else {"max_response_body_bytes": limit})
    expected = limit or 32 * MIB
    bootstrap = render_bootstrap(config)
    by_name = routes(bootstrap)
    for name in ("provider_openai", "provider_local_llm", "failover_gpt_4o"):
        assert by_name[name]["request_body_buffer_limit"] == expected, name
    # Requests are buffered before any provider route is picked: the listener's
    # limit (the body limit plus slack) still bounds them.
    assert "request_body_buffer_limit" not in by_name["not_found"]
    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["per_connection_buffer_limit_bytes"] == MIB + BUFFER_SLACK_BYTES


def test_the_gateways_connection_carries_a_whole_buffered_answer_in_one_message() -> None:
    """Envoy 1.40 crashed (SIGSEGV) when the per-attempt filter of a failover sent the
    gateway a body larger than this connection's buffer (1 MiB by default)."""
    config = gateway(
        envoy={"max_response_body_bytes": 8 * MIB}, limits={"max_request_body_bytes": 12 * MIB}
    )
    ext_proc = clusters(render_bootstrap(config))[EXT_PROC_CLUSTER]
    # The default routes' largest body: the audio routes' 26 MiB (an audio file's form).
    largest = max(12 * MIB, AUDIO_MAX_REQUEST_BODY_BYTES)
    assert ext_proc["per_connection_buffer_limit_bytes"] == largest + BUFFER_SLACK_BYTES
    config = gateway()
    ext_proc = clusters(render_bootstrap(config))[EXT_PROC_CLUSTER]
    assert ext_proc["per_connection_buffer_limit_bytes"] == 32 * MIB + BUFFER_SLACK_BYTES


@pytest.mark.parametrize("limit", [MIB - 1, 64 * MIB])
def test_the_response_limit_stays_within_what_one_grpc_message_carries(limit: int) -> None:
    with pytest.raises(ValidationError, match="max_response_body_bytes"):
        gateway(envoy={"max_response_body_bytes": limit})


def test_an_answer_over_the_buffer_limit_is_an_openai_shaped_502() -> None:
    mapper = mapper_for(render_bootstrap(gateway()), "response_payload_too_large")
    assert mapper["status_code"] == 502
    error = mapper["body_format_override"]["json_format"]["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "response_too_large")


# --- timeouts -------------------------------------------------------------------


def test_a_provider_timeout_bounds_the_wait_for_an_answer_not_the_answer_itself() -> None:
    """A route timeout counts until the last byte: it cut a 10-minute stream at the
    provider's timeout while tokens were still flowing. The per-attempt timeout
    only runs until the answer starts."""
    by_name = routes(render_bootstrap(gateway()))
    for name, provider_timeout in (("provider_openai", "120s"), ("provider_local_llm", "30s")):
        route = by_name[name]["route"]
        assert route["timeout"] == "0s", name
        assert route["retry_policy"]["per_try_timeout"] == provider_timeout, name
    failover = by_name["failover_gpt_4o"]["route"]
    assert failover["timeout"] == "0s"
    assert failover["retry_policy"]["per_try_timeout"] == "120s"


def test_envoys_idle_timer_outlasts_every_attempt_of_the_longest_failover() -> None:
    """Nothing reaches the client while a failover waits out its attempts; Envoy's
    stream idle timer must not end the request before the last attempt answered."""
    models = [
        {"name": "gpt-4o", "provider": "openai", "fallbacks": ["local", "other"]},
        {"name": "local", "provider": "local-llm"},
        {"name": "other", "provider": "other"},
    ]
    providers = [
        {"name": "openai", "base_url": "https://api.openai.com/v1", "timeout_s": 120},
        {"name": "local-llm", "base_url": "http://10.0.0.7:8000/v1", "timeout_s": 30},
        {"name": "other", "base_url": "http://10.0.0.8:8000/v1", "timeout_s": 30},
    ]
    bootstrap = render_bootstrap(gateway(models=models, providers=providers))
    # Three attempts, each allowed the primary's 120 s before its answer starts.
    assert seconds(hcm(bootstrap)["stream_idle_timeout"]) > 3 * 120


@pytest.mark.parametrize(("envoy", "idle"), [({}, "270s"), ({"request_slack_s": 90}, "330s")])
def test_envoys_idle_timer_gives_the_gateways_own_turns_the_configured_slack(
    envoy: dict[str, Any], idle: str
) -> None:
    """The failover's two attempts of 120 s each, plus ``envoy.request_slack_s`` for
    the gateway's phases (a slow guardrail webhook needs more than the default 30 s)."""
    bootstrap = render_bootstrap(gateway(envoy=envoy))
    assert hcm(bootstrap)["stream_idle_timeout"] == idle


def test_a_request_slack_outside_its_bounds_is_refused_naming_its_field() -> None:
    for slack, problem in ((0, "greater than 0"), (3601, "less than or equal to 3600")):
        with pytest.raises(
            ValidationError, match=rf"envoy\.request_slack_s\n  Input should be {problem}"
        ):
            gateway(envoy={"request_slack_s": slack})


def test_envoy_accepts_the_limits(tmp_path: Path) -> None:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    config = gateway(envoy={"max_concurrent_requests": 50, "max_response_body_bytes": 4 * MIB})
    assert_envoy_accepts(render_bootstrap_yaml(config), tmp_path)
