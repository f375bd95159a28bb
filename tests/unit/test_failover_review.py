"""A caller's access rules hold for fallbacks: each request goes to the chain of the
fallbacks its caller may use, which the Envoy bootstrap renders for every combination."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc import headers
from extproc.config import parse_config
from extproc.config.loader import ConfigError
from extproc.devstack import DEFAULT_CONFIG
from extproc.envoy_bootstrap import render_bootstrap
from extproc.envoy_failover import failover_cluster_name
from extproc.testing import processor_for, request_body, request_headers, run_stream

# gpt-4o fails over to Anthropic, then Bedrock. team2 (marketing) may use gpt-4o and the
# Bedrock model; an access rule keeps claude-3-5-haiku-latest for engineering.
CONFIG = (
    DEFAULT_CONFIG.read_text()
    .replace(
        "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n",
        "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n"
        "    fallbacks: [claude-3-5-haiku-latest, amazon.titan-text-express-v1]\n",
    )
    .replace(
        "\nauth:\n",
        "\nauth:\n  access_rules:\n"
        "    - {name: haiku-for-engineering, models: [claude-3-5-haiku-latest],"
        " groups: [engineering]}\n",
        1,
    )
)
ONLY_GPT_4O = CONFIG.replace(
    "      group_id: marketing\n",
    "      group_id: marketing\n      allowed_models: [gpt-4o]\n",
    1,
)


async def cluster_for(config_text: str, key: str) -> str:
    """The provider cluster Envoy is told to use for a gpt-4o request with ``key``."""
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    answers = await run_stream(
        processor_for(parse_config(config_text, "gateway.yaml", {})),
        [
            request_headers("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}),
            request_body(body),
        ],
    )
    mutation = answers[-1].request_body.response.header_mutation
    found = {o.header.key: o.header.raw_value.decode() for o in mutation.set_headers}
    return found[headers.CLUSTER]


async def test_a_caller_allowed_every_fallback_gets_the_whole_chain() -> None:
    assert await cluster_for(CONFIG, "team1-key") == failover_cluster_name("gpt-4o")


async def test_a_fallback_an_access_rule_keeps_from_the_caller_is_left_out() -> None:
    assert await cluster_for(CONFIG, "team2-key") == failover_cluster_name("gpt-4o", [0])


async def test_a_key_allowed_only_the_primary_gets_a_chain_of_the_primary_alone() -> None:
    assert await cluster_for(ONLY_GPT_4O, "team2-key") == failover_cluster_name("gpt-4o", [0, 1])


def _chains() -> dict[str, tuple[list[str], dict[str, Any]]]:
    """Each failover chain of the bootstrap: its clusters, in order, and its retry policy."""
    bootstrap = render_bootstrap(parse_config(CONFIG, "gateway.yaml", {}))
    resources = bootstrap["static_resources"]
    manager = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = {r["name"]: r for r in manager["route_config"]["virtual_hosts"][0]["routes"]}
    return {
        c["name"]: (
            c["cluster_type"]["typed_config"]["clusters"],
            routes[c["name"]]["route"]["retry_policy"],
        )
        for c in resources["clusters"]
        if c["name"].startswith("failover_")
    }


def test_the_bootstrap_has_the_chain_without_each_combination_of_fallbacks() -> None:
    chains = _chains()
    expected = {
        (): ["provider_mock", "provider_mock_anthropic", "provider_mock_bedrock"],
        (0,): ["provider_mock", "provider_mock_bedrock"],
        (1,): ["provider_mock", "provider_mock_anthropic"],
        (0, 1): ["provider_mock"],
    }
    assert set(chains) == {failover_cluster_name("gpt-4o", s) for s in expected}
    for skipped, clusters in expected.items():
        members, retry = chains[failover_cluster_name("gpt-4o", skipped)]
        assert members == clusters
        # One attempt per member: never the primary twice, never a left-out fallback.
        assert retry["num_retries"] == len(clusters) - 1


def test_chain_names_cannot_be_taken_by_another_models_chain() -> None:
    # A model named like a chain without a fallback still gets a name of its own.
    assert failover_cluster_name("gpt-4o-without-1") != failover_cluster_name("gpt-4o", [0])


def config_problems(config_text: str) -> str:
    with pytest.raises(ConfigError) as refused:
        parse_config(config_text, "gateway.yaml", {})
    return "; ".join(refused.value.problems)


def test_more_fallbacks_than_envoy_gets_chains_for_are_refused_at_load() -> None:
    five = CONFIG.replace(
        "fallbacks: [claude-3-5-haiku-latest, amazon.titan-text-express-v1]",
        "fallbacks: [a, b, c, d, e]",
    )
    assert "models[1].fallbacks: Tuple should have at most 4 items" in config_problems(five)


def test_two_models_whose_chains_would_share_a_name_are_refused_at_load() -> None:
    twin = CONFIG.replace(
        "  - name: gpt-4o\n",
        "  - name: GPT_4o\n    provider: ${LLM_PROVIDER:-mock}\n"
        "    fallbacks: [claude-3-5-haiku-latest]\n  - name: gpt-4o\n",
        1,
    )
    problems = config_problems(twin)
    assert "'gpt-4o' and 'GPT_4o'" in problems or "'GPT_4o' and 'gpt-4o'" in problems
