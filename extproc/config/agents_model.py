"""The ``agents`` section: MCP servers and A2A agents behind the gateway, who may use
which tool or agent, and request limits per tool, agent and subject.

A route with ``api: mcp`` or ``api: a2a`` names one entry of ``agents.servers``
in its ``server`` field; Envoy gets one cluster per server. Validation happens
here; the meaning lives in ``extproc.agents``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from extproc.config.quota_model import (
    MAX_LIMIT,
    QuotaMode,
    StoreFailure,
    check_match,
    check_subject,
    host_match,
)
from extproc.config.section import Section as _Section
from extproc.config.service_urls import checked_url

_CLUSTER_SLUG = str.maketrans({c: "_" for c in "-."})
# Of every agent server's Envoy cluster and route, and of nothing else's.
ENVOY_CLUSTER_PREFIX = "agent_"

_NAME = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=_NAME)]


class AgentProtocol(StrEnum):
    MCP = "mcp"
    A2A = "a2a"


class AgentServerConfig(_Section):
    """An upstream MCP server (Streamable HTTP) or A2A agent (JSON-RPC), one Envoy cluster."""

    name: Name
    protocol: AgentProtocol
    # MCP: the server's endpoint (``http://tools:8000/mcp``). A2A: the agent's base
    # URL, where ``/.well-known/agent-card.json`` and its JSON-RPC endpoint live.
    url: str
    # The longest one request may take, a streamed answer included; an MCP client
    # reopens its GET stream when this ends it. 0: no limit (only the idle timeout).
    timeout_s: float = Field(default=300.0, ge=0)
    # A credential the gateway sends upstream in place of the client's (which never
    # leaves the gateway): ``Authorization: Bearer <api_key>`` or ``<api_key_header>: <api_key>``.
    api_key: SecretStr | None = None
    api_key_header: str = "authorization"
    # A2A: point the agent card's URLs at the gateway, so clients call through it.
    rewrite_agent_card: bool = True
    # Name the caller the gateway authenticated in x-aigw-caller and its kin: the
    # server's only way to keep callers' tasks and sessions apart. Off for a server
    # that must not learn who calls it (it then cannot tell callers apart).
    forward_identity: bool = True
    # Only the caller who opened an MCP session or created an A2A task uses it; off for a
    # server whose sessions or tasks are shared by design.
    bind_to_caller: bool = True
    # How long the record of a session's or task's caller lives from its opening (not
    # refreshed): past it, the next caller to use the id claims it.
    binding_ttl_s: int = Field(default=7 * 86_400, ge=60)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        # Envoy sends the path alone; a user and password went out as part of the
        # `:authority` (and sat in the rendered bootstrap), never as a credential.
        url = checked_url(
            url,
            no_query="only its path reaches the server (its key goes in api_key)",
            no_credentials="give the server's credential in api_key",
        )
        return url.rstrip("/")

    @field_validator("api_key_header")
    @classmethod
    def _lower(cls, header: str) -> str:
        return header.strip().lower()

    @property
    def envoy_cluster(self) -> str:
        """The server's Envoy cluster, which its routing header names too: its name with
        "-" and "." as "_" (Envoy's stat names read a "." as a separator)."""
        return ENVOY_CLUSTER_PREFIX + self.name.translate(_CLUSTER_SLUG)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def authority(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def path(self) -> str:
        """The upstream path the route's path maps to (``/mcp``; ``""`` for a bare host)."""
        return urlsplit(self.url).path.rstrip("/")


class AccessEffect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class ToolAccessRule(_Section):
    """Who may call which tools (MCP) or use which agents (A2A).

    ``servers`` and ``tools`` are glob patterns (``deploy_*``); empty means all. A
    rule with ``tools`` applies to MCP tool calls and tool lists only; a rule
    without covers every tool of an MCP server and every call to an A2A agent.
    A rule naming no group, user or key applies to everyone.
    """

    name: str = Field(min_length=1)
    effect: AccessEffect = AccessEffect.ALLOW
    servers: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()


class AgentLimitRule(_Section):
    """Request limits per subject for MCP tool calls and A2A messages.

    Counted: each ``tools/call`` whose tool matches ``tools``, and each A2A message
    (``message/send``, ``message/stream``, ``SendMessage``, ``SendStreamingMessage``)
    to a matching agent. With ``per_tool`` every tool has its own counter; without,
    the matching tools share one.
    """

    name: Name
    # api_key, user, group, or header:<name>: the same subjects as quotas.rules.
    subject: str
    match: str | tuple[str, ...] = "*"
    servers: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    per_tool: bool = True
    # At most what the store's Lua scripts count exactly, as quotas.rules: a larger limit
    # came back as -2**63 in every x-ratelimit-limit-requests header, remaining 0.
    requests_per_second: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    requests_per_minute: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    requests_per_hour: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    requests_per_day: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    mode: QuotaMode = QuotaMode.ENFORCE
    # Default: quotas.on_store_failure.
    on_store_failure: StoreFailure | None = None

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, subject: str) -> str:
        return check_subject(subject)

    @field_validator("match")
    @classmethod
    def _check_match(
        cls, match: str | tuple[str, ...], info: ValidationInfo
    ) -> str | tuple[str, ...]:
        # As quotas.rules: match: ["*"] or [] loaded and limited no one.
        return check_match(host_match(info.data.get("subject", ""), match))

    @model_validator(mode="after")
    def _has_a_limit(self) -> AgentLimitRule:
        limits = (
            self.requests_per_second,
            self.requests_per_minute,
            self.requests_per_hour,
            self.requests_per_day,
        )
        if all(limit is None for limit in limits):
            raise ValueError("set at least one of requests_per_second/minute/hour/day")
        return self


class AgentsConfig(_Section):
    servers: tuple[AgentServerConfig, ...] = ()
    access: tuple[ToolAccessRule, ...] = ()
    # What happens to a tool or agent no allow rule covers.
    default_access: AccessEffect = AccessEffect.ALLOW
    limits: tuple[AgentLimitRule, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> AgentsConfig:
        for section, names in (
            ("servers", [s.name for s in self.servers]),
            ("limits", [r.name for r in self.limits]),
        ):
            seen: set[str] = set()
            for index, name in enumerate(names):
                if name in seen:
                    raise ValueError(f"{section}[{index}].name: duplicate name {name!r}")
                seen.add(name)
        # Two names must not become one Envoy cluster (envoy_cluster): the first route
        # would take both servers' traffic, or Envoy refuse the bootstrap.
        clusters: dict[str, str] = {}
        for index, server in enumerate(self.servers):
            cluster = server.envoy_cluster
            if cluster in clusters:
                raise ValueError(
                    f"servers[{index}].name: {server.name!r} and {clusters[cluster]!r} would"
                    f" share the Envoy cluster {cluster}; rename one"
                )
            clusters[cluster] = server.name
        return self

    def server(self, name: str) -> AgentServerConfig | None:
        return next((s for s in self.servers if s.name == name), None)


def agent_route_problems(routes: Sequence[Any], agents: AgentsConfig) -> Iterator[str]:
    """Routes with ``api: mcp|a2a`` name a server of that protocol; no other route names one.
    Every problem, so that check-config lists them all at once."""
    for index, route in enumerate(routes):
        api = str(route.api)
        if api not in {AgentProtocol.MCP, AgentProtocol.A2A}:
            if route.server is not None:
                yield f"routes[{index}].server: only for routes with api mcp or a2a"
            continue
        server = None if route.server is None else agents.server(route.server)
        if route.server is None:
            yield f"routes[{index}].server: required for api {api}"
        elif server is None:
            known = ", ".join(s.name for s in agents.servers) or "none"
            yield (
                f"routes[{index}].server: unknown server {route.server!r} in agents.servers"
                f" (known: {known})"
            )
        elif server.protocol != api:
            yield f"routes[{index}].server: {route.server!r} speaks {server.protocol}, not {api}"
        if api == AgentProtocol.A2A and route.path_prefix is None:
            # The agent card and the JSON-RPC endpoint live under one base path.
            yield f"routes[{index}]: an a2a route needs a path_prefix"
        if route.model is not None or route.provider is not None or route.model_from_path:
            yield f"routes[{index}]: model and provider settings do not apply to {api}"
