"""Where an agent request goes and what kind it is, from its method and path alone.

Runs on the request headers, before authentication: points Envoy at the route's
upstream (its path mapped onto the server's URL), and tells a JSON-RPC POST from
an MCP server stream (GET), an MCP session end (DELETE) and an A2A agent card,
which is public so that clients can discover how to authenticate.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from extproc import headers
from extproc.agents.call import AgentCall
from extproc.agents.directory import AGENT_APIS
from extproc.agents.mcp_headers import SESSION_HEADER
from extproc.config.agents_model import AgentProtocol
from extproc.context import ModeOverride, PhaseOutput, RequestContext
from extproc.errors import BadRequestError, MethodNotAllowedError, NotFoundError
from extproc.stages.body_headers import check_body_headers

CARD_PATHS = frozenset({"/.well-known/agent-card.json", "/.well-known/agent.json"})
# The Host a client used, put into agent card URLs: a name (``_`` included, as Docker
# Compose service names have it), IPv4 or IPv6, and a port; nothing that could end the
# authority and move the URL elsewhere (``/``, ``@``, ``?``, ``#``).
_AUTHORITY = re.compile(r"^[A-Za-z0-9._\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
# The answer is Envoy's to deliver as it comes (server streams, session ends).
# Requests that carry no JSON-RPC (GET, DELETE) keep their body phase: there is no
# body to read, and one that comes anyway is refused, since a lax server might run
# the JSON-RPC in it unchecked. A body-less request costs no extra message.
_PASS_ANSWER = ModeOverride(response_body="NONE")
# Whether the answer is read is decided when its headers come.
_ANSWER_LATER = ModeOverride()


def route_agent_request(ctx: RequestContext, out: PhaseOutput) -> None:
    """Record the agent call on ``ctx.agent`` and send the request to the route's server."""
    route = ctx.route
    if route is None or route.api not in AGENT_APIS:
        return
    upstream = ctx.runtime.agents.by_route[route.name]
    server = upstream.server
    call = AgentCall(
        AgentProtocol(route.api.value), server, credential_forms=upstream.credential_forms
    )
    ctx.agent = call
    path, _, query = ctx.path.partition("?")
    rest = path[len(route.prefix) :] if route.prefix is not None else ""
    call.route_path = path[: len(path) - len(rest)]
    session = ctx.request_headers.get(SESSION_HEADER)
    if session:
        call.set_session(session)
    method = ctx.method
    mcp = call.protocol is AgentProtocol.MCP
    if method == "POST":
        if not mcp and _rest_binding_path(rest):
            # The binding the gateway does not read: a body that is JSON-RPC too (the
            # binding ignores what it does not know) would run there as a message
            # the gateway checked as another method, and no limit counted.
            raise NotFoundError(
                f"{path} is a path of A2A's HTTP+JSON binding, which this gateway does"
                " not serve: send JSON-RPC to the agent's JSON-RPC URL (its card's)",
                code="binding_not_served",
            )
        call.kind = "rpc"
        out.mode_override = _ANSWER_LATER
        check_body_headers(ctx)
        # The gateway reads the answer: it must come uncompressed.
        out.remove_headers.append("accept-encoding")
        if not mcp:
            call.public_base = _public_base(ctx, route.prefix or "")
    elif not mcp and method in {"GET", "HEAD"} and rest.rstrip("/") in CARD_PATHS:
        call.kind = "card"
        call.method = "agent_card"
        call.public_base = _public_base(ctx, route.prefix or "")
        # Discovery comes before credentials: the card says how to authenticate.
        ctx.public = True
        out.remove_headers.append("accept-encoding")
        out.mode_override = _ANSWER_LATER
    elif mcp and method == "GET":
        call.kind = "stream"
        # A resumed stream replays earlier answers, tool lists too: read it when
        # rules may hide tools; else Envoy passes it on untouched.
        governed = ctx.runtime.agents.access.governs_tools(server.name)
        out.mode_override = _ANSWER_LATER if governed else _PASS_ANSWER
        if governed:
            out.remove_headers.append("accept-encoding")
    elif mcp and method == "DELETE":
        call.kind = "session_end"
        out.mode_override = _PASS_ANSWER
    else:
        allowed = "GET, POST, DELETE" if mcp else "POST (and GET for the agent card)"
        raise MethodNotAllowedError(
            f"{method} is not allowed on {path}; use {allowed}",
            headers={"allow": "GET, POST, DELETE" if mcp else "GET, POST"},
        )
    upstream_path = server.path + rest or "/"
    out.set_headers[":path"] = upstream_path + ("?" + query if query else "")
    out.set_headers[headers.CLUSTER] = upstream.cluster
    out.clear_route_cache = True


def _rest_binding_path(rest: str) -> bool:
    """Whether a path below an A2A route is one of the agent's HTTP+JSON binding (1.0 and
    0.3, under a tenant or ``/v1``): ``message:send``, ``message:stream``, ``tasks/...``.
    Read decoded, as the agent's server reads it (``message%3Asend``)."""
    segments = unquote(rest).split("/")
    return "tasks" in segments or any(segment.startswith("message:") for segment in segments)


def _public_base(ctx: RequestContext, prefix: str) -> str:
    """Where clients reach this route: the scheme and host they used, and the route's path."""
    found = ctx.request_headers
    scheme = found.get("x-forwarded-proto", "").split(",")[0].strip() or found.get(":scheme", "")
    if scheme not in {"http", "https"}:
        scheme = "http"
    authority = found.get(":authority") or found.get("host", "")
    if not _AUTHORITY.match(authority):
        raise BadRequestError("the Host header is not a valid host name")
    return f"{scheme}://{authority}{prefix.rstrip('/')}"
