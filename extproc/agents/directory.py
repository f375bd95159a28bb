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
from extproc.credential_forms import MIN_SEARCHED_SECRET, quoted_forms

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
    # That credential as its answers could quote it (``credential_echo``): searched for.
    credential_forms: tuple[bytes, ...]


class AgentDirectory:
    def __init__(self, config: GatewayConfig) -> None:
        agents = config.agents
        self.by_route: dict[str, AgentUpstream] = {}
        for route in config.routes:
            server = agents.server(route.server) if route.server else None
            if server is not None:
                self.by_route[route.name] = AgentUpstream(
                    server,
                    agent_cluster_name(server),
                    _credential(server),
                    _credential_forms(server),
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


def _credential_forms(server: AgentServerConfig) -> tuple[bytes, ...]:
    """The server's credential in every form its answers are searched for
    (``credential_echo``); none for a server without one, or with one too short to tell
    from a word (``MIN_SEARCHED_SECRET``), as for provider keys."""
    secret = server.api_key.get_secret_value() if server.api_key is not None else ""
    if len(secret) < MIN_SEARCHED_SECRET:
        return ()
    # Once per config load; not through the cache the provider credentials' forms share.
    forms: tuple[bytes, ...] = quoted_forms.__wrapped__((secret,))
    return forms
