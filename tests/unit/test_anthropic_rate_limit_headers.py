"""Anthropic's names for the gateway's rate-limit headers: what they say, and which
Envoy routes add them (only those Anthropic clients' requests can take)."""

from __future__ import annotations

import calendar

from extproc.config import parse_config
from extproc.config.model import RouteApi
from extproc.devstack import DEFAULT_CONFIG
from extproc.envoy_bootstrap import render_bootstrap
from extproc.envoy_failover import failover_cluster_name
from extproc.headers import ANTHROPIC_CLIENT_PROVIDER_TYPES, ANTHROPIC_RATE_LIMIT_HEADERS
from extproc.quota.anthropic_headers import anthropic_rate_limit_headers
from extproc.response_path import _TRANSLATED_TO, PASS_THROUGH

# 2026-12-06T23:40:12.4Z: a minute's window ends 48 s later (the gateway says "48s").
NOW = calendar.timegm((2026, 12, 6, 23, 40, 12)) + 0.4


def test_limits_keep_their_values_and_resets_become_the_time_they_happen() -> None:
    headers = anthropic_rate_limit_headers(
        {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": "2",
            "x-ratelimit-reset-requests": "48s",
            "x-ratelimit-limit-tokens": "100000",
            "x-ratelimit-remaining-tokens": "99950",
            "x-ratelimit-reset-tokens": "13h19m48s",
            "retry-after": "48",
        },
        NOW,
    )
    assert headers == {
        "anthropic-ratelimit-requests-limit": "3",
        "anthropic-ratelimit-requests-remaining": "2",
        "anthropic-ratelimit-requests-reset": "2026-12-06T23:41:00Z",
        "anthropic-ratelimit-tokens-limit": "100000",
        "anthropic-ratelimit-tokens-remaining": "99950",
        "anthropic-ratelimit-tokens-reset": "2026-12-07T13:00:00Z",
    }


def test_a_lifetime_quota_has_no_reset_and_an_absent_unit_no_headers() -> None:
    headers = anthropic_rate_limit_headers(
        {"x-ratelimit-limit-tokens": "10", "x-ratelimit-remaining-tokens": "0"}, NOW
    )
    assert headers == {
        "anthropic-ratelimit-tokens-limit": "10",
        "anthropic-ratelimit-tokens-remaining": "0",
    }
    assert anthropic_rate_limit_headers({}, NOW) == {}


def test_the_routes_that_add_them_are_those_anthropic_clients_reach() -> None:
    messages = RouteApi.ANTHROPIC_MESSAGES
    reached = {PASS_THROUGH[messages], *_TRANSLATED_TO[messages]}
    assert reached == ANTHROPIC_CLIENT_PROVIDER_TYPES


def _routes(text: str) -> dict[str, dict]:  # type: ignore[type-arg]
    bootstrap = render_bootstrap(parse_config(text, "g.yaml", {}))
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    return {route["name"]: route for route in routes}


def _added(route: dict) -> list[str]:  # type: ignore[type-arg]
    return [entry["header"]["key"] for entry in route.get("response_headers_to_add", [])]


def test_routes_to_openai_pay_nothing_for_them() -> None:
    routes = _routes(DEFAULT_CONFIG.read_text())
    assert _added(routes["provider_mock"]) == []
    assert _added(routes["provider_openai"]) == []
    for name in ("provider_mock_anthropic", "provider_mock_bedrock"):
        assert _added(routes[name]) == list(ANTHROPIC_RATE_LIMIT_HEADERS)
        entry = routes[name]["response_headers_to_add"][0]
        assert entry["header"]["value"] == (
            "%DYNAMIC_METADATA(io.aigw:anthropic_ratelimit_requests_limit)%"
        )
        assert entry["keep_empty_value"] is False
        # The provider's own are removed on the same route, before these are added.
        removed = routes[name].get("response_headers_to_remove", [])
        if name == "provider_mock_anthropic":
            assert set(ANTHROPIC_RATE_LIMIT_HEADERS) <= set(removed)


def test_a_chain_with_a_claude_member_adds_them() -> None:
    text = DEFAULT_CONFIG.read_text().replace(
        "  - name: claude-sonnet-4-0\n    provider: ${ANTHROPIC_PROVIDER:-mock-anthropic}\n",
        "  - name: claude-sonnet-4-0\n    provider: ${ANTHROPIC_PROVIDER:-mock-anthropic}\n"
        "    fallbacks: [anthropic.claude-3-haiku-20240307-v1:0]\n",
    )
    chain = _routes(text)[failover_cluster_name("claude-sonnet-4-0")]
    assert _added(chain)[1:] == list(ANTHROPIC_RATE_LIMIT_HEADERS)
