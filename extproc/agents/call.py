"""The record of one agent request (an MCP or A2A HTTP request): what it asked, what came back.

Lives on ``RequestContext.agent``; stages fill it in, answer readers update it
as the response streams, and it becomes the log line's ``agent`` object.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from extproc.config.agents_model import AgentProtocol, AgentServerConfig

# What happened to the call, as the log line and the metrics' `status` label say it.
OK = "ok"  # the upstream answered with a result
TOOL_ERROR = "tool_error"  # an MCP tool ran and reported an error (isError)
# MCP 2026-07-28: the server asks the client for input (elicitation, sampling, roots)
# before it runs the tool; the client sends the call again with it, a call of its own.
INPUT_REQUIRED = "input_required"
RPC_ERROR = "rpc_error"  # the upstream answered with a JSON-RPC error
DENIED = "denied"  # refused by an access rule, or for the caller's credentials
RATE_LIMITED = "rate_limited"  # refused by a request limit
# Refused: the MCP session or A2A task belongs to another caller (answered as unknown).
NOT_OWNER = "not_owner"
INVALID = "invalid"  # not JSON-RPC, too large, a method the route does not take
UNAVAILABLE = "unavailable"  # refused because the quota store could not check the limits
UPSTREAM_ERROR = "upstream_error"  # HTTP error from the upstream (or Envoy: unreachable)
ABORTED = "aborted"  # the client or the upstream went away before the answer
FORWARDED = "forwarded"  # passed on without an answer to read (notifications, streams)

A2A_MESSAGE_METHODS = frozenset(
    {"message/send", "message/stream", "SendMessage", "SendStreamingMessage"}
)
# Methods answered with a stream that ends once the task settles (A2A 0.3 and 1.0).
A2A_STREAM_METHODS = frozenset(
    {"message/stream", "SendStreamingMessage", "tasks/resubscribe", "SubscribeToTask"}
)


@dataclass(slots=True)
class AgentCall:
    protocol: AgentProtocol
    server: AgentServerConfig
    # rpc: a JSON-RPC POST; stream: MCP's GET stream; session_end: MCP's DELETE;
    # card: the A2A agent card; other: any other request on the route.
    kind: str = "rpc"
    method: str | None = None
    tool: str | None = None
    session: str | None = None
    status: str = FORWARDED
    error_code: int | None = None
    tools_listed: int | None = None
    tools_hidden: int | None = None
    task_id: str | None = None
    context_id: str | None = None
    task_state: str | None = None
    answered_at: float | None = None
    # Where the route is reached from outside, for agent card URLs.
    public_base: str = ""
    # The route's path as the client sent it, without what lies below it: where the
    # server's own path lies, for redirects.
    route_path: str = ""
    # What reads the answer: watches of the request's ids, and their reader.
    watches: list[Any] = field(default_factory=list)
    # The filter of tool lists under ids no request has, in the answer to any POST on a
    # server whose tools rules hide (answers.ToolListFilter): a client takes a list by its
    # id, whatever answer carries it (a tool call's, a ping's, an initialize's).
    strays: Any = None
    # The ids of the body's requests: who gets the error if its answer cannot be read.
    request_ids: list[Any] = field(default_factory=list)
    reader: Any = None
    # The gateway's credential for the server, in each form its answers are searched for
    # (``credential_echo``); empty for a server without one, whose answers pay nothing.
    credential_forms: tuple[bytes, ...] = ()
    # An answer quoted it (logged and counted once per request).
    credential_echoed: bool = False
    # The A2A task this request's caller was recorded as the creator of (``binding``).
    bound_task: str | None = None

    @property
    def is_tool_call(self) -> bool:
        return self.protocol is AgentProtocol.MCP and self.method == "tools/call"

    @property
    def is_message(self) -> bool:
        return self.protocol is AgentProtocol.A2A and self.method in A2A_MESSAGE_METHODS

    def answered(self, status: str, error_code: int | None = None) -> None:
        # The last answer counts: a stream's latency runs to its final event.
        self.answered_at = time.monotonic()
        self.status = status
        self.error_code = error_code

    def set_session(self, session_id: str) -> None:
        # A session id lets its holder act in the session: log a digest that
        # correlates a session's requests, never the id itself.
        self.session = hashlib.sha256(session_id.encode()).hexdigest()[:16]

    def log_fields(self, started: float) -> dict[str, Any]:
        latency = (
            round((self.answered_at - started) * 1000.0, 3)
            if self.answered_at is not None
            else None
        )
        return {
            "protocol": self.protocol.value,
            "server": self.server.name,
            "kind": self.kind,
            "method": self.method,
            "tool": self.tool,
            "session": self.session,
            "status": self.status,
            "rpc_error_code": self.error_code,
            "tools_listed": self.tools_listed,
            "tools_hidden": self.tools_hidden,
            "task_id": self.task_id,
            "context_id": self.context_id,
            "task_state": self.task_state,
            "answer_ms": latency,
        }
