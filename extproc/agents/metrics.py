"""Prometheus metrics of agent traffic, registered on the gateway's registry.

Label values go through the gateway's label budget and child cache like every
other metric: tool names a client makes up fold into ``other`` past the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

IDENTITY = ("api_key_id", "user_id", "group_id")
_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry, child: Callable[..., Any]) -> None:
        # GatewayMetrics._child: bounded label values, cached children.
        self.child = child
        self.tool_calls = Counter(
            "aigw_mcp_tool_calls",
            "MCP tool calls, by server, tool, outcome and identity",
            ("server", "tool", "status", *IDENTITY),
            registry=registry,
        )
        self.tool_call_duration = Histogram(
            "aigw_mcp_tool_call_duration_seconds",
            "Time from a tools/call reaching the gateway to its answer",
            ("server", "tool", "status"),
            buckets=_BUCKETS,
            registry=registry,
        )
        self.tools_hidden = Counter(
            "aigw_mcp_tools_hidden",
            "Tools removed from tools/list answers by access rules, by server",
            ("server",),
            registry=registry,
        )
        self.a2a_messages = Counter(
            "aigw_a2a_messages",
            "A2A messages (message/send, message/stream), by agent, method, outcome and identity",
            ("agent", "method", "status", *IDENTITY),
            registry=registry,
        )
        self.a2a_message_duration = Histogram(
            "aigw_a2a_message_duration_seconds",
            "Time from an A2A message reaching the gateway to its last answer (streams included)",
            ("agent", "method"),
            buckets=_BUCKETS,
            registry=registry,
        )
        self.credential_echoes = Counter(
            "aigw_agent_credential_echoes",
            "Requests whose answer quoted the gateway's own credential for the server"
            " (starred out before the client), by server",
            ("server",),
            registry=registry,
        )
        self.a2a_tasks = Counter(
            "aigw_a2a_tasks",
            "A2A messages by the state their task was left in when the answer ended",
            ("agent", "state"),
            registry=registry,
        )
        self.binding_refusals = Counter(
            "aigw_agent_binding_refusals",
            "Requests refused for naming an MCP session or A2A task another caller opened,"
            " by server and kind (session, task)",
            ("server", "kind"),
            registry=registry,
        )

    def binding_refused(self, server: str, kind: str) -> None:
        self.child(self.binding_refusals, server, kind).inc()

    def show_binding_refusals(self, servers: Iterable[str]) -> None:
        """Show each binding server's refusals from the start, at 0, as the echoes are."""
        for server in servers:
            for kind in ("session", "task"):
                self.child(self.binding_refusals, server, kind)

    def show_credential_echoes(self, servers: Iterable[str]) -> None:
        """Show each server's echo count from the start, at 0 (servers with a gateway
        credential): an alert on ``increase()`` then sees the first echo, which a series
        appearing at 1 would hide."""
        for server in servers:
            self.child(self.credential_echoes, server)
