"""What the gateway makes of an agent server's status before its answer is read.

A redirect is pointed at the gateway's route (or refused when no route reaches
where it leads); a refusal of the gateway's own credential becomes a 502, the
operator's to fix; a failure without a JSON-RPC body (an HTML 500 page, an empty
502) becomes a JSON-RPC error with the same status.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from extproc import headers
from extproc.agents import jsonrpc
from extproc.agents.call import AgentCall
from extproc.agents.refusals import JSON
from extproc.context import PhaseOutput, RequestContext
from extproc.errors import UpstreamError

# The error of a server that failed without a JSON-RPC answer (an error page, no body).
FAILED_CODE = "upstream_failed"


def redirect_through_route(call: AgentCall, out: PhaseOutput, location: str) -> None:
    """Point a redirect of the server's at the gateway's route.

    The server builds the URL from the Host the gateway sent it, its own (Starlette's
    ``/mcp/`` to ``/mcp``, say): a client following it would reach the server without
    the gateway, where no rule filters its tool lists, or fail to reach it. A path below
    the server's URL becomes the same path on the route, relative, so the client keeps
    the scheme and host it used; another site's URL (an authorization server) is left
    as it is; one elsewhere on the server, which no route reaches, is refused (502), and
    so is one the gateway cannot read (``http://[host/``): it cannot tell where it goes."""
    server = call.server
    try:
        parts = urlsplit(location)
    except ValueError:
        raise UpstreamError(
            f"the {call.protocol.value.upper()} server '{server.name}' redirected to a"
            " malformed URL",
            code="upstream_redirect",
        ) from None
    if parts.netloc and parts.netloc.lower() != server.authority.lower():
        return
    if not parts.netloc and not parts.path.startswith("/"):
        return  # relative to the request's path, which mirrors the server's
    path = parts.path
    if server.path and path != server.path and not path.startswith(server.path + "/"):
        raise UpstreamError(
            f"the {call.protocol.value.upper()} server '{server.name}' redirected to a path"
            " outside its URL, which no route of the gateway reaches",
            code="upstream_redirect",
        )
    moved = (call.route_path + path[len(server.path) :]) or "/"
    out.set_headers["location"] = moved + ("?" + parts.query if parts.query else "")


def refuses_gateway_credential(status: int, response_headers: dict[str, str]) -> bool:
    """Whether the upstream refused the request's credentials: a 401, or a 403 that asks
    for other authorization (``WWW-Authenticate``, as MCP's insufficient_scope does).

    The client's credentials never reach the upstream, so that is the gateway's own
    (``api_key``) or the lack of one: the operator's to fix. Passed on, it would tell the
    client its key is wrong and send an MCP SDK into OAuth against the internal server
    its ``WWW-Authenticate`` names. (A 403 without it, such as a refused ``Origin``, is
    about the request and goes on as it came.)"""
    return status == 401 or (status == 403 and "www-authenticate" in response_headers)


def credentials_refused(call: AgentCall, status: int) -> UpstreamError:
    """The 502 for a server that refused the gateway's own credential."""
    return UpstreamError(
        f"the {call.protocol.value.upper()} server '{call.server.name}' refused the"
        f" gateway's own credentials (HTTP {status}); this is not a problem with"
        " your API key",
        code="upstream_credentials_refused",
    )


def error_page_replaced(
    ctx: RequestContext, out: PhaseOutput, status: int, response_headers: dict[str, str]
) -> None:
    """Answer a server's failure without JSON (an HTML 500 page, an empty 502 from a proxy
    before it) with the same status and a JSON-RPC error the client's SDK reads.

    MCP's SDK reads a non-2xx body only as a JSON-RPC error and turns anything else
    into "Server returned an error response"; the page itself may show the server's
    internals. As on LLM routes, where a provider's error page becomes an error in the
    client's shape. ``retry-after`` is kept: it is the server's to say."""
    call = ctx.agent
    assert call is not None
    message = (
        f"the {call.protocol.value.upper()} server '{call.server.name}' failed"
        f" (HTTP {status}) without a JSON-RPC answer"
    )
    answer_headers = {"content-type": JSON}
    if "retry-after" in response_headers:
        answer_headers["retry-after"] = response_headers["retry-after"]
    if ctx.request_id:
        answer_headers[headers.REQUEST_ID] = ctx.request_id
    body = jsonrpc.http_error_body(message, status, UpstreamError.error_type, FAILED_CODE)
    out.answer = (status, body, answer_headers)
