"""The dashboard's Envoy panels see every request Envoy sends to a provider.

Envoy counts a request's router statistics (``upstream_rq_time``, ``upstream_rq_xx``,
``upstream_rq_retry``) on the cluster its route names. A model with ``fallbacks``
routes to its chain's aggregate cluster (``failover_<model>``), not to a
``provider_<name>`` cluster: run through the real Envoy, three requests for a model
whose primary refused connections left ``envoy_cluster_upstream_rq_retry`` and
``envoy_cluster_upstream_rq_time`` at 3 on ``failover_<model>`` and at nothing on any
provider cluster. The panels selected ``provider_.*`` only, so the provider response time
and Envoy's retries (failover attempts included, as docs/metrics.md says) left out every
request of such a model, and showed nothing at all where every model has fallbacks.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from extproc.config.loader import load_config
from extproc.envoy_bootstrap import render_bootstrap
from tests.exported_metrics import DASHBOARD, dashboard_expressions

_CLUSTER_MATCHER = re.compile(r'envoy_cluster_name\s*=~\s*"([^"]*)"')
# Clusters no client request is routed to: the gateway itself and the trace collector.
_NOT_PROVIDERS = {"extproc", "otel_collector"}


def routed_clusters(node: Any) -> set[str]:
    """Every cluster a route of the rendered listeners sends requests to."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "cluster" and isinstance(value, str):
                found.add(value)
            else:
                found |= routed_clusters(value)
    elif isinstance(node, list):
        for item in node:
            found |= routed_clusters(item)
    return found


def test_every_provider_request_is_on_the_envoy_panels_failover_chains_included() -> None:
    config = load_config("config/gateway.yaml", environ={})
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw["models"].append({"name": "gpt-4o-with-fallback", "provider": "openai",
                          "fallbacks": ["claude-3-5-haiku-latest"]})  # fmt: skip
    bootstrap = render_bootstrap(type(config).model_validate(raw))
    clusters = routed_clusters(bootstrap["static_resources"]["listeners"]) - _NOT_PROVIDERS
    assert any(name.startswith("failover_") for name in clusters), clusters
    assert any(name.startswith("provider_") for name in clusters), clusters

    dashboard = orjson.loads(DASHBOARD.read_bytes())
    upstream = [e for e in dashboard_expressions(dashboard) if "envoy_cluster_upstream_rq" in e]
    assert upstream
    for expr in upstream:
        [selected] = _CLUSTER_MATCHER.findall(expr)
        # PromQL anchors a label regex at both ends.
        missed = sorted(name for name in clusters if not re.fullmatch(selected, name))
        assert not missed, f"{expr} leaves out {missed}"
