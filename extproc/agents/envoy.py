"""Agent servers in the Envoy bootstrap: one cluster and one route per MCP server or A2A agent.

Like providers, an agent route matches only the routing header the gateway sets
(``x-aigw-cluster: agent_<name>``) after it authenticated the caller, so no
request reaches an agent server without passing the gateway. The route
streams: SSE answers and MCP's GET stream go through as they come (the
gateway reads the answers it must read in STREAMED mode). No retries beyond a
connection that never opened: a tool call is not idempotent.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.agents.directory import agent_cluster_name
from extproc.agents.jsonrpc import http_error_body
from extproc.config.agents_model import ENVOY_CLUSTER_PREFIX, AgentServerConfig
from extproc.config.egress_model import EgressConfig
from extproc.config.model import GatewayConfig
from extproc.envoy_values import duration, is_ip
from extproc.headers import CLUSTER

Json = dict[str, Any]
AGENT_CONNECT_TIMEOUT_S = 5.0
AGENT_IDLE_TIMEOUT_S = 60.0


def add_agents(bootstrap: Json, config: GatewayConfig) -> None:
    """Extend a rendered bootstrap with the agent servers' clusters and routes."""
    servers = config.agents.servers
    if not servers:
        return
    from extproc import envoy_bootstrap as base  # the renderer's helpers (it imports us)

    resources = bootstrap["static_resources"]
    resources["clusters"].extend(_cluster(base, server, config.egress) for server in servers)
    manager = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[Json] = manager["route_config"]["virtual_hosts"][0]["routes"]
    # Before the catch-all 404, which is last.
    routes[-1:-1] = [_route(base, server) for server in servers]
    # Before the OpenAI-shaped ones, which match any path.
    mappers: list[Json] = manager["local_reply_config"]["mappers"]
    mappers[:0] = [_jsonrpc_error_mapper(base, reply) for reply in base._local_replies()]


def longest_agent_timeout_s(config: GatewayConfig) -> float:
    return max((server.timeout_s for server in config.agents.servers), default=0.0)


def _cluster(base: Any, server: AgentServerConfig, egress: EgressConfig) -> Json:
    name = agent_cluster_name(server)
    proxy = base.egress_proxy(server.host, egress)
    if proxy is not None:
        # An agent server outside the network: through the egress proxy, as providers.
        destination = (server.host, server.port, server.tls)
        proxied: Json = base.proxied_cluster(name, destination, proxy, AGENT_IDLE_TIMEOUT_S)
        proxied["circuit_breakers"] = base._circuit_breakers()
        return proxied
    ip = is_ip(server.host)
    cluster: Json = {
        "name": name,
        "type": "STATIC" if ip else "LOGICAL_DNS",
        "connect_timeout": duration(AGENT_CONNECT_TIMEOUT_S),
        "typed_extension_protocol_options": base._protocol_options(
            {"http_protocol_options": {}},
            common={"idle_timeout": duration(AGENT_IDLE_TIMEOUT_S)},
        ),
        "circuit_breakers": base._circuit_breakers(),
        "load_assignment": base._load_assignment(
            name, base._socket_address(server.host, server.port)
        ),
    }
    if not ip:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if server.tls:
        cluster["transport_socket"] = base._upstream_tls(server.host)
    return cluster


def _jsonrpc_error_mapper(base: Any, reply: Any) -> Json:
    """Envoy's own reply (the server unreachable, too slow, its answer too large) on an
    agent route, as a JSON-RPC error: MCP's SDK reads an error body only in that shape
    (any other is "Server returned an error response"). Agent routes are the ones named
    ``agent_*``; the routing header that picked them is gone by the time Envoy answers."""
    condition, error_type, code, message, status, answered = reply
    on_agent_route = f"xds.route_name.startsWith('{ENVOY_CLUSTER_PREFIX}')"
    condition = on_agent_route if condition is None else f"{condition} && {on_agent_route}"
    said = message.replace("upstream provider", "agent server").replace(
        "provider's", "agent server's"
    )
    mapper: Json = base._error_mapper(condition, error_type, code, said, status)
    mapper["body_format_override"] = {"json_format": orjson.loads(
        http_error_body(said, answered, error_type, code)
    )}  # fmt: skip
    return mapper


def _route(base: Any, server: AgentServerConfig) -> Json:
    cluster = agent_cluster_name(server)
    return {
        "name": cluster,
        "match": {
            "prefix": "/",
            "headers": [{"name": CLUSTER, "string_match": {"exact": cluster}}],
        },
        "route": {
            "cluster": cluster,
            # 0s: no limit on the whole request (a server stream), the idle timeout still applies.
            "timeout": duration(server.timeout_s),
            "host_rewrite_literal": server.authority,
            "retry_policy": {"retry_on": "connect-failure,reset-before-request", "num_retries": 1},
        },
        "request_headers_to_remove": [CLUSTER],
    }
