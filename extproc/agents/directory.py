"""What the ``agents`` section of one loaded config means at run time.

Built once per (re)load with the ``Runtime``: which server each agent route
leads to, the access rules, the limit rules, and the upstream credentials.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.agents.access import ToolAccess
from extproc.agents.limits import AgentLimits
from extproc.config.agents_model import AgentServerConfig
from extproc.config.model import GatewayConfig, RouteApi

# The route APIs whose upstream is an agent server, not an LLM provider.
AGENT_APIS = frozenset({RouteApi.MCP, RouteApi.A2A})


def agent_cluster_name(server: AgentServerConfig) -> str:
    """The Envoy cluster of an agent server; one source of truth for render and routing."""
    return server.envoy_cluster


@dataclass(frozen=True, slots=True)
class AgentUpstream:
    server: AgentServerConfig
    cluster: str
    # The header carrying the server's own credential, when one is configured.
    credential: tuple[str, str] | None


class AgentDirectory:
    def __init__(self, config: GatewayConfig) -> None:
        agents = config.agents
        self.by_route: dict[str, AgentUpstream] = {}
        for route in config.routes:
            server = agents.server(route.server) if route.server else None
            if server is not None:
                self.by_route[route.name] = AgentUpstream(
                    server, agent_cluster_name(server), _credential(server)
                )
        self.access = ToolAccess(agents.access, agents.default_access)
        self.limits = AgentLimits(agents.limits, config.quotas)


def _credential(server: AgentServerConfig) -> tuple[str, str] | None:
    if server.api_key is None or not server.api_key.get_secret_value():
        return None
    secret = server.api_key.get_secret_value()
    if server.api_key_header == "authorization":
        return ("authorization", f"Bearer {secret}")
    return (server.api_key_header, secret)
