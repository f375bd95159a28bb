"""The failover parts of the Envoy bootstrap: only there when a model has fallbacks."""

from __future__ import annotations

import subprocess
from pathlib import Path

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG, envoy_binary
from extproc.envoy_bootstrap import render_bootstrap, render_bootstrap_yaml
from extproc.envoy_failover import UPSTREAM_FILTER, failover_cluster_name

WITH_FALLBACKS = DEFAULT_CONFIG.read_text().replace(
    "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n",
    "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n"
    "    fallbacks: [claude-3-5-haiku-latest, amazon.titan-text-express-v1]\n",
)


def manager(bootstrap: dict) -> dict:  # type: ignore[type-arg]
    return bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][  # type: ignore[no-any-return]
        "typed_config"
    ]


def test_no_fallbacks_means_no_failover_machinery() -> None:
    plain = render_bootstrap(parse_config(DEFAULT_CONFIG.read_text(), "g.yaml", {}))
    router = manager(plain)["http_filters"][-1]["typed_config"]
    assert "upstream_http_filters" not in router


def test_fallbacks_render_an_aggregate_cluster_a_retrying_route_and_the_attempt_filter(
    tmp_path: Path,
) -> None:
    config = parse_config(WITH_FALLBACKS, "g.yaml", {})
    bootstrap = render_bootstrap(config)
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    aggregate = clusters[failover_cluster_name("gpt-4o")]
    assert aggregate["cluster_type"]["typed_config"]["clusters"] == [
        "provider_mock",
        "provider_mock_anthropic",
        "provider_mock_bedrock",
    ]
    routes = manager(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]
    failover = next(r for r in routes if r["name"] == failover_cluster_name("gpt-4o"))
    assert failover["route"]["retry_policy"]["num_retries"] == 2
    assert 429 in failover["route"]["retry_policy"]["retriable_status_codes"]
    assert routes[-1]["name"] == "not_found"
    # Every other route turns the per-attempt filter off: no cost without failover.
    others = [r for r in routes if not r["name"].startswith("failover_")]
    assert all(UPSTREAM_FILTER in r["typed_per_filter_config"] for r in others)
    assert UPSTREAM_FILTER not in failover.get("typed_per_filter_config", {})
    router = manager(bootstrap)["http_filters"][-1]["typed_config"]
    assert router["upstream_http_filters"][0]["name"] == UPSTREAM_FILTER
    path = tmp_path / "envoy.yaml"
    path.write_text(render_bootstrap_yaml(config))
    checked = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_chains_answer_loses_the_account_headers_of_whichever_provider_answered() -> None:
    # The chain's route is the one the answer comes back on, from OpenAI, Anthropic or
    # Bedrock: each one's account headers are removed there, as on its own route.
    bootstrap = render_bootstrap(parse_config(WITH_FALLBACKS, "g.yaml", {}))
    routes = manager(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]
    failover = next(r for r in routes if r["name"] == failover_cluster_name("gpt-4o"))
    removed = failover["response_headers_to_remove"]
    assert {"x-ratelimit-remaining-tokens", "openai-organization"} <= set(removed)
    assert {"anthropic-organization-id", "anthropic-ratelimit-tokens-remaining"} <= set(removed)
    assert len(removed) == len(set(removed))


def test_an_attempt_never_goes_past_a_gateway_that_did_not_answer_it() -> None:
    # With failure_mode_allow: true an attempt the gateway did not answer went on as
    # Envoy replayed it: to the next provider, with the previous provider's credential.
    fail_open = WITH_FALLBACKS.replace("\nenvoy:\n", "\nenvoy:\n  failure_mode_allow: true\n", 1)
    filters = manager(render_bootstrap(parse_config(fail_open, "g.yaml", {})))["http_filters"]
    downstream = next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")
    assert downstream["typed_config"]["failure_mode_allow"] is True
    [attempt] = filters[-1]["typed_config"]["upstream_http_filters"][:1]
    assert attempt["name"] == UPSTREAM_FILTER
    assert attempt["typed_config"]["failure_mode_allow"] is False
