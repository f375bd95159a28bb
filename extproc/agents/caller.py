"""What the upstream learns of the caller: the gateway's credential, and who is calling.

Every caller reaches an agent server with the gateway's own credential (or none),
the client's having been stripped; the caller the gateway authenticated is named
in ``x-aigw-caller`` and its kin, over anything the client sent.
"""

from __future__ import annotations

import string
from urllib.parse import quote

from extproc import headers
from extproc.context import PhaseOutput, RequestContext
from extproc.store.response_owners import owner_of

# What a caller header carries as it is; anything else (a JWT claim may hold any
# character) is percent-encoded, so every value is a valid header value.
_HEADER_SAFE = "".join(c for c in string.punctuation if c != "%")


def set_upstream_identity(ctx: RequestContext, out: PhaseOutput) -> None:
    """Put the server's credential in and name the caller (after the client's credentials
    were removed in this same answer)."""
    call = ctx.agent
    if call is None or ctx.route is None:
        return
    upstream = ctx.runtime.agents.by_route[ctx.route.name]
    credential = upstream.credential
    if credential is not None:
        name, value = credential
        # Set after the client's credentials were removed in this same answer.
        out.remove_headers[:] = [header for header in out.remove_headers if header != name]
        out.set_headers[name] = value
    _name_caller(ctx, out, upstream.server.forward_identity)


def _name_caller(ctx: RequestContext, out: PhaseOutput, forward: bool) -> None:
    """Tell the upstream who the gateway authenticated, over anything the client said.

    The upstream gets the gateway's credential, the same for every caller: without these
    headers an agent keeps every caller's tasks as one caller's (``ListTasks`` lists them
    all) and an MCP server cannot bind a session to its creator. ``x-aigw-caller`` is the
    caller as the gateway's own records name it (``owner_of``: ``user:<id>``,
    ``key:<id>``, ``jwt:<provider>:<group>``); a client's copy of any of them is removed,
    so that a client never speaks for the gateway."""
    identity = ctx.identity
    named = {
        headers.CALLER: owner_of(identity),
        headers.CALLER_API_KEY_ID: identity.api_key_id or "",
        headers.CALLER_USER_ID: identity.user_id or "",
        headers.CALLER_GROUP_ID: identity.group_id or "",
    }
    for name, value in named.items():
        if forward and value:
            out.set_headers[name] = quote(value, safe=_HEADER_SAFE)
        elif name in ctx.request_headers:
            out.remove_headers.append(name)
