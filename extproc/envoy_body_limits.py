"""Envoy's request buffer, bounded per route: ``routes[].max_request_body_bytes``.

Envoy buffers a request's whole body for the gateway (ext_proc's BUFFERED body mode)
up to the stream's buffer limit, and answers a 413 itself past it. That limit starts
as the listener's ``per_connection_buffer_limit_bytes`` (``limits.max_request_body_bytes``
plus slack) and becomes the matched route's ``request_body_buffer_limit``: Envoy
matches a route on the request's headers, before any body comes. The request is
buffered before the gateway names its provider, so it matches the routes below, one
per client path a gateway route serves, in the gateway's order (exact paths, then the
longest prefix), each carrying its route's limit plus the slack: a body just over the
limit still reaches the gateway, which answers its own 413 in the client's API shape,
never Envoy's plain text. Checked with Envoy 1.40: a ``direct_response`` route's limit
is not applied (a 3 MB edit got Envoy's 413 under an 8 MiB one), a forwarding route's
is. So these forward to the cluster the gateway names (``x-aigw-cluster``); named, the
provider's route matches first; a request the gateway lets pass unnamed finds no
cluster, and the bootstrap answers it the catch-all's 404 (``NO_CLUSTER_DETAILS``).

Rendered only when some route's limit differs from the global one: otherwise the
listener's limit says it all. Routes are told apart by path alone: two routes of one
path on different hosts share the larger of their limits in Envoy, and the gateway
still holds each to its own.
"""

from __future__ import annotations

from typing import Any

from extproc.config.model import GatewayConfig
from extproc.headers import CLUSTER

Json = dict[str, Any]

ROUTE_PREFIX = "body_limit_"
# Envoy's response code details of a route whose cluster header is missing.
NO_CLUSTER_DETAILS = "cluster_not_found"


def add_body_limit_routes(bootstrap: Json, config: GatewayConfig, slack_bytes: int) -> None:
    """Insert the per-path buffer routes before the catch-all 404, after every route the
    gateway picks by header (providers, failovers, agent servers): once it names one,
    the request must match it, not these."""
    limits = _limit_by_path(config)
    if not limits:
        return
    listener = bootstrap["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[Json] = manager["route_config"]["virtual_hosts"][0]["routes"]
    added = [
        _route(index, match, limit + slack_bytes) for index, (match, limit) in enumerate(limits)
    ]
    # As every route but a failover's: the per-attempt filters off (envoy_failover).
    per_filter = routes[-1].get("typed_per_filter_config")
    if per_filter is not None:
        for route in added:
            route["typed_per_filter_config"] = per_filter
    routes[-1:-1] = added


def _limit_by_path(config: GatewayConfig) -> list[tuple[Json, int]]:
    """Each client path's Envoy match and the largest limit of the routes serving it,
    most specific first; empty when every route keeps the global limit."""
    default = config.limits.max_request_body_bytes
    if all(config.request_body_limit(route) == default for route in config.routes):
        return []
    exact: dict[str, int] = {}
    prefixes: dict[str, int] = {}
    for route in config.routes:
        limit = config.request_body_limit(route)
        if route.path is not None:
            exact[route.path] = max(limit, exact.get(route.path, 0))
        elif route.path_prefix is not None:
            prefix = route.path_prefix.rstrip("/")
            prefixes[prefix] = max(limit, prefixes.get(prefix, 0))
    ordered: list[tuple[Json, int]] = [({"path": path}, limit) for path, limit in exact.items()]
    # The longest prefix first, as the gateway's route table picks them.
    for prefix in sorted(prefixes, key=len, reverse=True):
        # path_separated_prefix: `/v1/images` and `/v1/images/edits`, not `/v1/imagesX`,
        # as the gateway reads a prefix; the root prefix is every path.
        match = {"path_separated_prefix": prefix} if prefix else {"prefix": "/"}
        ordered.append((match, prefixes[prefix]))
    return ordered


def _route(index: int, match: Json, buffer_limit: int) -> Json:
    return {
        "name": f"{ROUTE_PREFIX}{index}",
        "match": match,
        "route": {"cluster_header": CLUSTER, "cluster_not_found_response_code": "NOT_FOUND"},
        "request_body_buffer_limit": buffer_limit,
    }
