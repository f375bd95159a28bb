"""A provider's redirect loses its ``location`` in Envoy, on the lean path too.

The openai SDK follows a redirect's ``location`` past the gateway, sending the client's
gateway key to whatever host it names. Where the gateway reads the answer's headers it
answers a redirect with its own 502 (tests/unit/test_upstream_redirects.py); on the lean
path the headers leave before it reads them, so every route Envoy sends a model's request
on removes the header: a provider's own, a failover chain's, a chain's pinned member's,
and the Gateway API rules to each provider. Agent routes keep it: the gateway points an
MCP or A2A server's redirect at its own route (agents.stages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extproc.config.model import GatewayConfig, cluster_name
from extproc.envoy_bootstrap import render_bootstrap, render_bootstrap_yaml
from extproc.envoy_failover import failover_cluster_name, pinned_cluster_name
from extproc.gateway_api import (
    CONTROLLERS,
    PROVIDERS_HOSTS_ROUTE,
    PROVIDERS_ROUTE,
    render_attachments,
)
from tests.unit.test_agents import AGENT_ROUTES, SERVERS
from tests.unit.test_envoy_bootstrap import ENVOY, assert_envoy_accepts, gateway, routes

# A model on OpenAI and one on Anthropic, each the other's fallback, and agent servers.
CONFIG = gateway(
    providers=[
        {"name": "openai", "base_url": "https://api.openai.com/v1"},
        {"name": "local-llm", "base_url": "http://10.0.0.7:8000/v1"},
        {"name": "claude", "type": "anthropic", "base_url": "https://api.anthropic.com"},
    ],
    models=[
        {"name": "gpt-4o", "provider": "openai", "fallbacks": ["llama", "claude-sonnet-4"]},
        {"name": "llama", "provider": "local-llm"},
        {"name": "claude-sonnet-4", "provider": "claude"},
    ],
    routes=[
        {"name": "chat", "path": "/v1/chat/completions", "api": "openai_chat"},
        {
            "name": "team-chat",
            "path": "/team/v1/chat/completions",
            "api": "openai_chat",
            "hosts": ["team.gateway.local"],
        },
        {"name": "messages", "path": "/v1/messages", "api": "anthropic_messages"},
        *AGENT_ROUTES,
    ],
    agents=SERVERS,
)


def by_name(config: GatewayConfig) -> dict[str, dict[str, Any]]:
    return {route["name"]: route for route in routes(render_bootstrap(config))}


def test_every_route_to_a_models_provider_removes_a_redirects_location() -> None:
    rendered = by_name(CONFIG)
    model_routes = [
        *(cluster_name(provider) for provider in CONFIG.providers),
        failover_cluster_name("gpt-4o"),
        failover_cluster_name("gpt-4o", (0,)),
        failover_cluster_name("gpt-4o", (1,)),
        failover_cluster_name("gpt-4o", (0, 1)),
        pinned_cluster_name("gpt-4o", 0),
    ]
    # Nothing else but the agents' routes and the catch-all 404.
    assert set(rendered) - set(model_routes) == {"agent_tools", "agent_helper", "not_found"}
    for name in model_routes:
        removed = rendered[name]["response_headers_to_remove"]
        assert "location" in removed, name
        assert len(removed) == len(set(removed)), name


def test_agent_routes_keep_a_redirects_location_for_the_gateway_to_read() -> None:
    rendered = by_name(CONFIG)
    for name in ("agent_tools", "agent_helper"):
        assert "location" not in rendered[name].get("response_headers_to_remove", []), name
    assert "response_headers_to_remove" not in rendered["not_found"]


def test_envoy_accepts_the_bootstrap_that_removes_it(tmp_path: Path) -> None:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    assert_envoy_accepts(render_bootstrap_yaml(CONFIG), tmp_path)


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_every_gateway_api_rule_to_a_provider_removes_it(controller: Any) -> None:
    manifests = render_attachments(CONFIG, controller)
    provider_routes = [
        manifest
        for manifest in manifests
        if manifest["kind"] == "HTTPRoute"
        and manifest["metadata"]["name"] in (PROVIDERS_ROUTE, PROVIDERS_HOSTS_ROUTE)
    ]
    assert len(provider_routes) == 2
    for route in provider_routes:
        for rule in route["spec"]["rules"]:
            [modifier] = [
                found["responseHeaderModifier"]
                for found in rule["filters"]
                if found["type"] == "ResponseHeaderModifier"
            ]
            assert "location" in modifier["remove"], rule["name"]
            # Gateway API's limit of names to remove per modifier.
            assert len(modifier["remove"]) <= 16, rule["name"]
