"""The Gateway API attachments route like the gateway's own bootstrap.

A request is matched against the rendered HTTPRoutes with Gateway API's
precedence (exact path, then the longest prefix, then the most header matches,
then the most query matches; regular expressions between exact and prefix, as
Envoy Gateway orders them). First as the client sent it: a client route must
take it, and it must be the route the gateway resolves for that request. Then as
the gateway rewrote it (routing header set, path rewritten for the provider):
the provider's rule must win over every client route.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from extproc.config.loader import load_config
from extproc.config.model import GatewayConfig, ProviderType, cluster_name
from extproc.controller_routes import route_names
from extproc.gateway_api import CONTROLLERS, render_attachments
from extproc.headers import (
    CLUSTER,
    RATE_LIMIT_HEADERS,
    gateway_headers_added,
    metadata_key,
    provider_headers_removed,
)
from extproc.runtime import RouteTable

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "deploy/kubernetes/base/gateway.yaml", ROOT / "deploy/config/gateway.yaml"]

Match = dict[str, Any]


def path_matches(match: Match, path: str) -> bool:
    kind, value = match["type"], match["value"]
    if kind == "Exact":
        return path == value
    if kind == "PathPrefix":
        prefix = value.rstrip("/")
        return prefix == "" or path == prefix or path.startswith(prefix + "/")
    return re.fullmatch(value, path) is not None


def values_match(wanted: list[Match], found: dict[str, str]) -> bool:
    for item in wanted:
        value = found.get(item["name"].lower())
        if value is None:
            return False
        if item["type"] == "Exact" and value != item["value"]:
            return False
        if item["type"] == "RegularExpression" and not re.fullmatch(item["value"], value):
            return False
    return True


def precedence(match: Match) -> tuple[int, int, int, int]:
    path = match["path"]
    rank = {"Exact": 3, "RegularExpression": 2, "PathPrefix": 1}[path["type"]]
    headers, query = match.get("headers", []), match.get("queryParams", [])
    return (rank, len(path["value"]), len(headers), len(query))


def route(
    manifests: list[dict[str, Any]], path: str, headers: dict[str, str], query: dict[str, str]
) -> tuple[str, dict[str, Any]] | None:
    """(HTTPRoute name, rule) Envoy would pick for the request, or None (404)."""
    candidates = []
    for manifest in manifests:
        if manifest["kind"] != "HTTPRoute":
            continue
        for rule in manifest["spec"]["rules"]:
            for match in rule["matches"]:
                if (
                    path_matches(match["path"], path)
                    and values_match(match.get("headers", []), headers)
                    and values_match(match.get("queryParams", []), query)
                ):
                    candidates.append((precedence(match), manifest["metadata"]["name"], rule))
    if not candidates:
        return None
    best = max(candidates, key=lambda item: item[0])
    tied = [c for c in candidates if c[0] == best[0] and c[1] != best[1]]
    assert not tied, f"{path}: tie between {best[1]} and {[c[1] for c in tied]}"
    return best[1], best[2]


def requests(config: GatewayConfig) -> list[tuple[str, dict[str, str], dict[str, str], str]]:
    """(path, headers, query, gateway route) for every route shape the config serves."""
    cases = []
    for spec in config.routes:
        base = spec.path or (spec.path_prefix or "").rstrip("/")
        if spec.path is None and any(other.path == base for other in config.routes):
            # That very path is the exact route's (/v1/responses): the prefix's are below it.
            base += "/resp_1"
        cases.append((base, {}, {}, spec.name))
        if spec.model_from_path:
            cases.append((f"{base}/gpt-4o-mini", {}, {}, spec.name))
        if spec.model_header:
            cases.append((base, {spec.model_header: "gpt-4o"}, {}, spec.name))
        if spec.model_query:
            cases.append((base, {}, {spec.model_query: "gpt-4o"}, spec.name))
    return cases


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_client_shape_lands_on_the_route_the_gateway_resolves(
    controller: Any, config_path: Path
) -> None:
    config = load_config(config_path, environ={})
    manifests = render_attachments(config, controller)
    table = RouteTable(config)
    for path, headers, query, expected in requests(config):
        found = route(manifests, path, headers, query)
        assert found is not None, path
        name, rule = found
        assert "backendRefs" not in rule, f"{path} reached a provider before the gateway"
        # What Envoy Gateway sends: the route name (and the annotation) name the route.
        attributes = {"f": _Struct(f"httproute/ai/{name}/rule/0/match/0/*")}
        resolved = next(r for n in route_names(attributes) if (r := table.named(n)))
        assert resolved.name == expected
        # What kgateway leaves to the path: the path resolves the same route.
        path_route = table.resolve(path)
        assert path_route is not None and path_route.name == expected


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_provider_rule_wins_once_the_gateway_has_routed(
    controller: Any, config_path: Path
) -> None:
    config = load_config(config_path, environ={})
    manifests = render_attachments(config, controller)
    upstream_paths = {"/v1/chat/completions", "/v1/messages", "/model/amazon.titan/converse"}
    for provider in config.providers:
        for original, headers, query, _ in requests(config):
            for upstream_path in upstream_paths | {original}:
                sent = {**headers, CLUSTER: cluster_name(provider)}
                found = route(manifests, upstream_path, sent, query)
                assert found is not None
                name, rule = found
                assert name == "aigw-providers", (provider.name, upstream_path, name)
                routed = {h["value"] for m in rule["matches"] for h in m["headers"]}
                assert cluster_name(provider) in routed
                assert not {v for v in routed if v.startswith("provider_")} - {
                    cluster_name(provider)
                }
                [rewrite] = [f for f in rule["filters"] if f["type"] == "URLRewrite"]
                assert rewrite["urlRewrite"]["hostname"] == provider.host


def test_a_request_without_the_routing_header_never_reaches_a_provider() -> None:
    config = load_config(CONFIGS[0], environ={})
    manifests = render_attachments(config, "envoy-gateway")
    assert route(manifests, "/somewhere/else", {}, {}) is None
    found = route(manifests, "/v1/chat/completions", {}, {})
    assert found is not None and found[0] == "aigw-openai-chat"


def test_in_cluster_providers_are_services_and_external_ones_backends() -> None:
    config = load_config(CONFIGS[1], environ={})
    manifests = render_attachments(config, "envoy-gateway")
    providers = next(m for m in manifests if m["metadata"]["name"] == "aigw-providers")
    refs = {
        rule["matches"][0]["headers"][-1]["value"]: rule["backendRefs"][0]
        for rule in providers["spec"]["rules"]
    }
    assert refs["provider_mock"] == {"name": "mock-llm", "port": 8080}
    assert refs["provider_openai"]["kind"] == "Backend"
    tls = [m for m in manifests if m["kind"] == "BackendTLSPolicy"]
    assert {t["spec"]["validation"]["hostname"] for t in tls} == {
        "api.openai.com",
        "api.anthropic.com",
    }


class _Struct:
    """The one field of an ext_proc attribute Struct the resolution reads."""

    def __init__(self, route_name: str) -> None:
        self.fields = {"xds.route_name": _Value(route_name)}


class _Value:
    def __init__(self, text: str) -> None:
        self.string_value = text


def test_envoy_gateway_sets_the_rate_limit_headers_from_the_gateways_metadata() -> None:
    config = load_config(CONFIGS[0], environ={})
    for controller in CONTROLLERS:
        manifests = render_attachments(config, controller)
        providers = next(m for m in manifests if m["metadata"]["name"] == "aigw-providers")
        for rule in providers["spec"]["rules"]:
            modifiers = [
                found["responseHeaderModifier"]
                for found in rule["filters"]
                if found["type"] == "ResponseHeaderModifier"
            ]
            set_headers = {
                header["name"]: header["value"]
                for modifier in modifiers
                for header in modifier.get("set", [])
            }
            if controller == "kgateway":
                # kgateway's ext_proc accepts no metadata from the processor: the
                # provider's own headers (its account's limits) are removed instead.
                assert not set_headers
                removed = [name for modifier in modifiers for name in modifier.get("remove", [])]
                assert removed in [list(provider_headers_removed(t)) for t in ProviderType]
                continue
            # Anthropic's names too on the rules of types Anthropic clients reach.
            assert set_headers in [
                {
                    name: f"%DYNAMIC_METADATA(io.aigw:{metadata_key(name)})%"
                    for name in (*RATE_LIMIT_HEADERS, *gateway_headers_added(t))
                }
                for t in ProviderType
            ]


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_a_model_path_prefix_is_matched_as_written_not_as_a_pattern(controller: Any) -> None:
    """A prefix holding a regex metacharacter (`.`, `+`) matches itself alone: `/v1.5`
    must not take `/v1x5/...`, which belongs to no route (404 at Envoy, not the gateway's
    route), and `/a+b` must still take `/a+b/<model>`."""
    config = GatewayConfig.model_validate(
        {
            "providers": [{"name": "openai", "base_url": "https://api.openai.com/v1"}],
            "models": [{"name": "gpt-4o", "provider": "openai"}],
            "routes": [
                {"name": "dotted", "path_prefix": "/v1.5", "model_from_path": True},
                {"name": "plus", "path_prefix": "/a+b", "model_from_path": True},
            ],
        }
    )
    manifests = render_attachments(config, controller)
    found = route(manifests, "/v1.5/gpt-4o", {}, {})
    assert found is not None and found[0].endswith("dotted")
    assert route(manifests, "/v1x5/gpt-4o", {}, {}) is None
    found = route(manifests, "/a+b/gpt-4o", {}, {})
    assert found is not None and found[0].endswith("plus")
