"""Gateway API mode gets the Envoy limits of the gateway's own bootstrap.

The standalone bootstrap (extproc/envoy_bootstrap.py, tests/unit/test_envoy_limits.py)
bounds every cluster by ``envoy.max_concurrent_requests``, buffers answers up to
``envoy.max_response_body_bytes``, lets a provider's timeout bound only the wait
for its answer to start, and removes the provider's own ``x-ratelimit-*``
headers. Under Envoy Gateway or kgateway the same limits come from the
controllers' own policy resources, rendered from the same config fields: a
changed config value changes the rendered one, and every rendered resource
still fits its API's field tree (crd_fields.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from extproc.config.model import GatewayConfig, ProviderConfig
from extproc.envoy_bootstrap import BUFFER_SLACK_BYTES
from extproc.gateway_api import (
    CONTROLLERS,
    EXTPROC_SERVICE,
    PROVIDERS_HOSTS_ROUTE,
    PROVIDERS_ROUTE,
    Controller,
    gateway_api_duration,
    render_attachments,
)
from extproc.headers import ANTHROPIC_RATE_LIMIT_HEADERS, RATE_LIMIT_HEADERS, metadata_key

from . import crd_fields

Manifest = dict[str, Any]
MIB = 1024 * 1024
PROVIDER_ROUTES = (PROVIDERS_ROUTE, PROVIDERS_HOSTS_ROUTE)


def gateway(envoy: dict[str, Any] | None = None) -> GatewayConfig:
    """An external provider with its own timeout, an in-cluster one with the default,
    and a route on a host of its own (so the provider rules are rendered twice)."""
    return GatewayConfig.model_validate(
        {
            "envoy": envoy or {},
            "providers": [
                {"name": "openai", "base_url": "https://api.openai.com/v1", "timeout_s": 120},
                {"name": "local_llm", "base_url": "http://mock-llm:8080/v1"},
            ],
            "models": [
                {"name": "gpt-4o", "provider": "openai"},
                {"name": "local", "provider": "local_llm"},
            ],
            "routes": [
                {"name": "chat", "path": "/v1/chat/completions"},
                {"name": "team", "path": "/v1/chat/completions", "hosts": ["ai.example.com"]},
            ],
        }
    )


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def provider_rules(manifests: list[Manifest]) -> list[tuple[str, Manifest]]:
    """(HTTPRoute name, rule) for every rule that sends requests to a provider."""
    return [
        (route["metadata"]["name"], rule)
        for route in of_kind(manifests, "HTTPRoute")
        if route["metadata"]["name"] in PROVIDER_ROUTES
        for rule in route["spec"]["rules"]
    ]


def provider_of(rule: Manifest, config: GatewayConfig) -> ProviderConfig:
    [rewrite] = [f for f in rule["filters"] if f["type"] == "URLRewrite"]
    host = rewrite["urlRewrite"]["hostname"]
    return next(p for p in config.providers if p.host == host)


def policy_for_rule(manifests: list[Manifest], kind: str, route: str, rule: Manifest) -> Manifest:
    """The one policy of ``kind`` attached to this rule of this HTTPRoute by its name."""
    found = [
        policy
        for policy in of_kind(manifests, kind)
        for ref in policy["spec"]["targetRefs"]
        if ref["kind"] == "HTTPRoute"
        and ref["name"] == route
        and ref.get("sectionName") == rule.get("name")
    ]
    assert len(found) == 1, f"{route} rule {rule.get('name')}: {len(found)} {kind}s"
    return found[0]


def policy_for_target(manifests: list[Manifest], kind: str, target: Manifest) -> Manifest:
    """The one policy of ``kind`` whose targetRefs name ``target`` (group, kind, name)."""
    wanted = {key: target.get(key, "") for key in ("group", "kind", "name")}
    found = [
        policy
        for policy in of_kind(manifests, kind)
        for ref in policy["spec"]["targetRefs"]
        if {key: ref.get(key, "") for key in wanted} == wanted
    ]
    assert len(found) == 1, f"{wanted}: {len(found)} {kind}s"
    return found[0]


def backend_target(rule: Manifest) -> Manifest:
    """What a policy on the provider's cluster targets: its Backend, or its Service."""
    [ref] = rule["backendRefs"]
    return {"group": ref.get("group", ""), "kind": ref.get("kind", "Service"), "name": ref["name"]}


def extproc_settings(manifests: list[Manifest]) -> Manifest:
    [policy] = of_kind(manifests, "EnvoyExtensionPolicy")
    [extproc] = policy["spec"]["extProc"]
    settings: Manifest = extproc["backendSettings"]
    return settings


# --- concurrency: envoy.max_concurrent_requests on every cluster -------------------


@pytest.mark.parametrize("limit", [None, 2500])
def test_envoy_gateway_bounds_every_cluster_by_max_concurrent_requests(limit: int | None) -> None:
    config = gateway({"max_concurrent_requests": limit} if limit else None)
    expected = limit or 10_000
    manifests = render_attachments(config, "envoy-gateway")
    thresholds = {
        "maxConnections": expected,
        "maxPendingRequests": expected,
        "maxParallelRequests": expected,
        # Envoy Gateway's default (1024) would skip retries long before any real limit.
        "maxParallelRetries": expected,
    }
    rules = provider_rules(manifests)
    assert len(rules) == 4
    for route, rule in rules:
        policy = policy_for_rule(manifests, "BackendTrafficPolicy", route, rule)
        assert policy["spec"]["circuitBreaker"] == thresholds
    # The gateway's own cluster: one ext_proc stream per request in flight.
    assert extproc_settings(manifests)["circuitBreaker"] == thresholds


@pytest.mark.parametrize("limit", [None, 2500])
def test_kgateway_bounds_every_cluster_by_max_concurrent_requests(limit: int | None) -> None:
    config = gateway({"max_concurrent_requests": limit} if limit else None)
    expected = limit or 10_000
    manifests = render_attachments(config, "kgateway")
    thresholds = {
        "maxConnections": expected,
        "maxPendingRequests": expected,
        "maxRequests": expected,
        # kgateway's default of 3 parallel retries silently skipped retries.
        "maxRetries": expected,
    }
    for _, rule in provider_rules(manifests):
        policy = policy_for_target(manifests, "BackendConfigPolicy", backend_target(rule))
        assert policy["spec"]["circuitBreakers"] == thresholds
    service = {"group": "", "kind": "Service", "name": EXTPROC_SERVICE}
    policy = policy_for_target(manifests, "BackendConfigPolicy", service)
    assert policy["spec"]["circuitBreakers"] == thresholds


# --- answers up to envoy.max_response_body_bytes ------------------------------------


@pytest.mark.parametrize("answer", [None, 8 * MIB])
def test_envoy_gateway_buffers_answers_up_to_max_response_body_bytes(answer: int | None) -> None:
    config = gateway({"max_response_body_bytes": answer} if answer else None)
    largest = max(config.limits.max_request_body_bytes, answer or 32 * MIB) + BUFFER_SLACK_BYTES
    manifests = render_attachments(config, "envoy-gateway")
    [client] = of_kind(manifests, "ClientTrafficPolicy")
    # The stream's buffer, requests and answers alike (at 1 MiB a longer answer
    # broke off or got a 500, uncounted).
    assert client["spec"]["connection"]["bufferLimit"] == str(largest)
    # The gateway's connection carries a whole buffered answer in one message.
    assert extproc_settings(manifests)["connection"]["bufferLimit"] == str(largest)


@pytest.mark.parametrize("answer", [None, 8 * MIB])
def test_kgateway_buffers_answers_up_to_max_response_body_bytes(answer: int | None) -> None:
    config = gateway({"max_response_body_bytes": answer} if answer else None)
    largest = max(config.limits.max_request_body_bytes, answer or 32 * MIB) + BUFFER_SLACK_BYTES
    manifests = render_attachments(config, "kgateway")
    [listener] = of_kind(manifests, "ListenerPolicy")
    assert listener["spec"]["default"]["perConnectionBufferLimitBytes"] == largest
    service = {"group": "", "kind": "Service", "name": EXTPROC_SERVICE}
    policy = policy_for_target(manifests, "BackendConfigPolicy", service)
    assert policy["spec"]["perConnectionBufferLimitBytes"] == largest


# --- what ends a call: the wait for the answer to start, never the answer -----------


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("upstream", [None, 45.5])
def test_a_provider_timeout_bounds_only_the_wait_for_its_answer(
    controller: Controller, upstream: float | None
) -> None:
    config = gateway({"upstream_timeout_s": upstream} if upstream else None)
    manifests = render_attachments(config, controller)
    waits = {"openai": "120s", "local_llm": "45s500ms" if upstream else "300s"}
    for route, rule in provider_rules(manifests):
        # No overall route timeout: it ran until the answer's last byte and cut
        # streams still flowing (Gateway API: a zero duration disables it).
        assert rule["timeouts"] == {"request": "0s"}
        wait = waits[provider_of(rule, config).name]
        if controller == "envoy-gateway":
            policy = policy_for_rule(manifests, "BackendTrafficPolicy", route, rule)
            # Only failures where the provider never saw the request are retried.
            assert policy["spec"]["retry"] == {
                "numRetries": 1,
                "retryOn": {"triggers": ["connect-failure"]},
                "perRetry": {"timeout": wait},
            }
        else:
            policy = policy_for_rule(manifests, "TrafficPolicy", route, rule)
            assert policy["spec"]["retry"] == {
                "retryOn": ["connect-failure", "reset-before-request"],
                "attempts": 1,
                "perTryTimeout": wait,
            }


def test_kgateway_ends_a_call_silent_for_longer_than_the_longest_wait() -> None:
    config = gateway({"upstream_timeout_s": 600})
    [listener] = of_kind(render_attachments(config, "kgateway"), "ListenerPolicy")
    # The slowest provider's wait plus the gateway's own turns, as in the bootstrap.
    assert listener["spec"]["default"]["httpSettings"] == {"streamIdleTimeout": "630s"}


def test_kgateways_idle_timer_takes_the_configured_slack() -> None:
    config = gateway({"upstream_timeout_s": 600, "request_slack_s": 5})
    [listener] = of_kind(render_attachments(config, "kgateway"), "ListenerPolicy")
    assert listener["spec"]["default"]["httpSettings"] == {"streamIdleTimeout": "605s"}


# --- the provider's own x-ratelimit-* headers ---------------------------------------


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_the_providers_own_rate_limit_headers_never_reach_the_client(
    controller: Controller,
) -> None:
    """They describe the organisation's whole account, not the caller's limits.

    On an answer no quota rule applies to, the gateway returns no limits, so a
    header set from its metadata formats empty and is not added: the provider's
    own must be removed first (Envoy removes before it sets, on one route). Each
    provider's own names, within the 16 Gateway API allows one modifier to remove.
    """
    config = GatewayConfig.model_validate(
        {
            "providers": [
                {"name": "openai", "base_url": "https://api.openai.com/v1"},
                {"name": "claude", "type": "anthropic", "base_url": "https://api.anthropic.com"},
                {
                    "name": "aws",
                    "type": "bedrock",
                    "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
                    "aws": {"region": "us-east-1"},
                },
            ],
            "models": [
                {"name": "gpt-4o", "provider": "openai"},
                {"name": "claude-sonnet-4", "provider": "claude"},
                {"name": "nova", "provider": "aws"},
            ],
        }
    )
    manifests = render_attachments(config, controller)
    removed = {}
    for _, rule in provider_rules(manifests):
        [modifier] = [
            f["responseHeaderModifier"]
            for f in rule["filters"]
            if f["type"] == "ResponseHeaderModifier"
        ]
        removed[provider_of(rule, config).name] = modifier["remove"]
        assert len(modifier["remove"]) <= 16
        if controller == "envoy-gateway":
            # Anthropic's names too where Anthropic clients' requests go (Anthropic,
            # Claude on Bedrock), within the 16 Gateway API allows one modifier to set.
            names = RATE_LIMIT_HEADERS
            if provider_of(rule, config).name != "openai":
                names += ANTHROPIC_RATE_LIMIT_HEADERS
            assert modifier["set"] == [
                {"name": name, "value": f"%DYNAMIC_METADATA(io.aigw:{metadata_key(name)})%"}
                for name in names
            ]
            assert len(modifier["set"]) <= 16
    # And a redirect's location, which an SDK would follow past the gateway with its key.
    assert removed["openai"] == [
        "location",
        *RATE_LIMIT_HEADERS,
        "openai-organization",
        "openai-project",
    ]
    assert removed["aws"] == ["location", *RATE_LIMIT_HEADERS]
    assert {"location", "anthropic-organization-id"} <= set(removed["claude"])
    assert {
        f"anthropic-ratelimit-{unit}-{part}"
        for unit in ("requests", "tokens", "input-tokens", "output-tokens")
        for part in ("limit", "remaining", "reset")
    } <= set(removed["claude"])


# --- every rendered resource fits its API -------------------------------------------


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_every_rendered_resource_fits_its_api(controller: Controller) -> None:
    for manifest in render_attachments(gateway(), controller):
        assert not crd_fields.check(manifest), crd_fields.check(manifest)


def test_provider_names_that_clash_as_rule_names_are_refused() -> None:
    config = GatewayConfig.model_validate(
        {
            "providers": [
                {"name": "local_llm", "base_url": "http://mock-llm:8080/v1"},
                {"name": "local-llm", "base_url": "http://other-llm:8080/v1"},
            ],
            "models": [{"name": "local", "provider": "local_llm"}],
        }
    )
    with pytest.raises(ValueError, match=r"local_llm.*local-llm"):
        render_attachments(config, "envoy-gateway")


@pytest.mark.parametrize(
    ("seconds", "rendered"),
    [(0.0001, "1ms"), (0.5, "500ms"), (300, "300s"), (45.5, "45s500ms"), (200_000, "55h2000s")],
)
def test_a_timeout_renders_as_a_gateway_api_duration_and_never_as_no_timeout(
    seconds: float, rendered: str
) -> None:
    # A zero duration would disable the timeout; five digits at most per part.
    assert gateway_api_duration(seconds) == rendered
    assert re.match(crd_fields.DURATION.regex, rendered)
