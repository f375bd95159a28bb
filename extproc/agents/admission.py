"""Admission of a JSON-RPC body on an agent route: read once, checked, counted.

The body is parsed once; a message the rules could not read as meant (a
governed method under a lookalike name or without an id, keys given twice) is
refused. MCP tool calls are checked against the access rules and counted in the
request limits, and ``tools/list`` answers (and stray lists in any answer) get
their filters; A2A calls are checked against the agent's rules, messages
counted, and their answers watched for the task. Refusals are JSON-RPC errors
(``refusals``). A GET or DELETE, which carries no JSON-RPC, is refused a body.
"""

from __future__ import annotations

from collections.abc import Awaitable

from extproc.agents import binding, jsonrpc, limit_check, mcp_headers
from extproc.agents import call as outcome
from extproc.agents.answers import (
    ExtendedCardRewrite,
    TaskWatch,
    ToolCallOutcome,
    ToolListFilter,
    Watch,
)
from extproc.agents.call import A2A_STREAM_METHODS, AgentCall
from extproc.agents.jsonrpc import RpcMessage, RpcParseError
from extproc.agents.refusals import refuse
from extproc.config.agents_model import AgentProtocol
from extproc.context import PhaseOutput, RequestContext
from extproc.errors import BadRequestError, PermissionDeniedError
from extproc.stages.body_headers import check_body_size

EXTENDED_CARD_METHODS = frozenset({"GetExtendedAgentCard", "agent/getAuthenticatedExtendedCard"})
# MCP tool names are at most 128 characters by the spec; some slack for older servers.
MAX_TOOL_NAME = 256
MAX_METHOD_NAME = 1024
# Methods the gateway reads by name, by their lookalikes' canonical form: MCP tool calls
# are checked and counted, tool lists filtered; A2A messages counted, extended cards rewritten.
_MCP_GOVERNED = {jsonrpc.canonical_method(m): m for m in ("tools/call", "tools/list")}
_A2A_GOVERNED = {
    jsonrpc.canonical_method(m): m for m in outcome.A2A_MESSAGE_METHODS | EXTENDED_CARD_METHODS
}


def admit_body(ctx: RequestContext, out: PhaseOutput, body: bytes) -> Awaitable[None] | None:
    """Check the request body; refusals go to ``out.answer``. An awaitable when the
    request limits must be counted in the store."""
    call = ctx.agent
    if call is None:
        return None
    if call.kind != "rpc":
        if body:
            message = f"a {ctx.method} carries no body: send JSON-RPC messages in a POST"
            invalid = BadRequestError(message, code="unexpected_body")
            refuse(ctx, out, [None], False, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
        return None
    check_body_size(ctx, len(body))
    mcp = call.protocol is AgentProtocol.MCP
    try:
        if mcp:
            messages, batch = jsonrpc.parse_body(body, jsonrpc.MCP_PARAMS_KEYS)
        else:
            messages, batch = jsonrpc.parse_body(
                body, jsonrpc.A2A_PARAMS_KEYS, jsonrpc.A2A_MESSAGE_KEYS
            )
    except RpcParseError as error:
        call.method = None
        invalid = BadRequestError(error.message, code="invalid_jsonrpc")
        refuse(ctx, out, [None], False, error.code, outcome.INVALID, invalid)
        return None
    method = next((m.method for m in messages if m.method is not None), None)
    # Bounded for the log line: a longer one is refused below, not forwarded.
    call.method = method[:MAX_METHOD_NAME] if method is not None else None
    requests = [m for m in messages if m.is_request]
    unchecked = _unchecked_request(messages, _MCP_GOVERNED if mcp else _A2A_GOVERNED)
    if unchecked is not None:
        invalid = BadRequestError(unchecked, code="invalid_request")
        ids = [m.id for m in requests]
        refuse(ctx, out, ids, batch, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
        return None
    if mcp:
        return _admit_mcp(ctx, out, call, messages, requests, batch)
    return _admit_a2a(ctx, out, call, requests, batch)


def _admit_mcp(
    ctx: RequestContext,
    out: PhaseOutput,
    call: AgentCall,
    messages: list[RpcMessage],
    requests: list[RpcMessage],
    batch: bool,
) -> Awaitable[None] | None:
    agents = ctx.runtime.agents
    server = call.server.name
    identity = ctx.identity
    tool_calls = [m for m in requests if m.method == "tools/call"]
    ids = [m.id for m in requests]
    if tool_calls and batch:
        message = "send each tools/call in a request of its own, not in a batch"
        invalid = BadRequestError(message, code="batched_tool_call")
        refuse(ctx, out, ids, batch, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
        return None
    filtered = agents.access.governs_tools(server)
    call.request_ids = ids
    if filtered:
        # A tool list in any answer, under an id no request of this body has (a
        # server sending the answer to the client's pending tools/list down this
        # answer's stream, an SDK matching it by id): filtered as that list's own
        # answer would be, whatever this body asked (a tool call, a ping, a prompt).
        call.strays = ToolListFilter(
            None, call, lambda tool: agents.access.denial(identity, server, tool) is None
        )
    for request in requests:
        if request.method == "tools/list" and filtered:
            call.watches.append(
                ToolListFilter(
                    request.id,
                    call,
                    lambda tool: agents.access.denial(identity, server, tool) is None,
                )
            )
    if not tool_calls:
        if not batch and len(messages) == 1 and messages[0].method is not None:
            # One request or notification: its headers must name its method.
            _check_mirror(ctx, out, messages[0], None)
        elif mcp_headers.names_a_call(ctx.request_headers):
            # A batch or a client's answer is no one call: headers naming one are
            # what something after the gateway would route on, unchecked.
            message = "Mcp-Method and Mcp-Name name one call; this body is not one"
            invalid = BadRequestError(message, code="header_mismatch")
            refuse(ctx, out, ids, batch, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
        return None
    request = tool_calls[0]
    params = request.params
    tool = params.get("name") if isinstance(params, dict) else None
    if not isinstance(tool, str) or not tool or len(tool) > MAX_TOOL_NAME:
        message = f"tools/call needs params.name: a tool name of 1 to {MAX_TOOL_NAME} chars"
        invalid = BadRequestError(message, code="invalid_tool_name")
        refuse(ctx, out, ids, batch, jsonrpc.INVALID_PARAMS, outcome.INVALID, invalid)
        return None
    call.tool = tool
    if _check_mirror(ctx, out, request, tool):
        return None
    denial = agents.access.denial(identity, server, tool)
    if denial is not None:
        refused = PermissionDeniedError(denial, code="tool_not_allowed")
        data = {"type": "permission_error", "code": "tool_not_allowed", "tool": tool}
        refuse(ctx, out, ids, batch, jsonrpc.TOOL_FORBIDDEN, outcome.DENIED, refused, data)
        return None
    call.watches.append(ToolCallOutcome(request.id, call))
    # limit_check by module: it imports the stages package, which imports this one.
    return limit_check.check_limits(ctx, out, call, tool, ids, batch)


def _admit_a2a(
    ctx: RequestContext,
    out: PhaseOutput,
    call: AgentCall,
    requests: list[RpcMessage],
    batch: bool,
) -> Awaitable[None] | None:
    ids = [m.id for m in requests]
    if batch:
        message = "A2A does not take JSON-RPC batches: send one request per call"
        invalid = BadRequestError(message, code="batch_not_supported")
        refuse(ctx, out, ids, batch, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
        return None
    denial = ctx.runtime.agents.access.denial(ctx.identity, call.server.name, None)
    if denial is not None:
        refused = PermissionDeniedError(denial, code="agent_not_allowed")
        data = {"type": "permission_error", "code": "agent_not_allowed"}
        refuse(ctx, out, ids, batch, jsonrpc.AGENT_FORBIDDEN, outcome.DENIED, refused, data)
        return None
    if not requests:
        return None
    request = requests[0]
    watch: Watch
    if request.method in EXTENDED_CARD_METHODS:
        watch = ExtendedCardRewrite(request.id, call)
    else:
        watch = TaskWatch(request.id, call, stream=request.method in A2A_STREAM_METHODS)
    call.watches.append(watch)

    def count(owner_check: binding.OwnerCheck | None) -> Awaitable[None] | None:
        if not call.is_message:
            return None
        return limit_check.check_limits(ctx, out, call, None, ids, batch, owner_check)

    # The task's owner first: a request refused as another caller's counts in no limit.
    return binding.check_tasks(ctx, out, call, request, ids, count)


def _check_mirror(
    ctx: RequestContext, out: PhaseOutput, request: RpcMessage, tool: str | None
) -> bool:
    """Refuse an MCP request whose ``Mcp-Method``/``Mcp-Name`` headers name another
    call than its body; True if refused."""
    why = mcp_headers.mismatch(ctx.request_headers, request.method, tool)
    if why is None:
        return False
    invalid = BadRequestError(why, code="header_mismatch")
    refuse(ctx, out, [request.id], False, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
    return True


def _unchecked_request(messages: list[RpcMessage], governed: dict[str, str]) -> str | None:
    """Why a message meant as a governed request could not be checked as one.

    Rules read requests by their exact method and id: MCP's ``tools/call`` is
    checked and counted, ``tools/list`` filtered; A2A's messages are counted and
    its extended card rewritten. A lenient server may still run a ``tools/call``
    sent as a notification (no id: there is no answer to refuse) or under a
    lookalike name (``Tools/Call``), or answer a lookalike ``tools/list`` with the
    unfiltered list; such messages are refused, never forwarded unchecked.
    Clients never send them: these methods are requests, which always carry an
    id, and method names are exact.
    """
    for message in messages:
        if message.method is None:
            continue
        if len(message.method) > MAX_METHOD_NAME:
            # Padding (spaces, zero-width characters) makes a lookalike of any length, and
            # reading a huge name would hold the event loop: no protocol method is this long.
            return f"a method name is at most {MAX_METHOD_NAME} characters"
        meant = governed.get(jsonrpc.canonical_method(message.method))
        if meant is None:
            continue
        if message.method != meant:
            return (
                f"{message.method!r} is not a method of this protocol: method names are exact"
                f" (did you mean '{meant}'?)"
            )
        if not message.has_id:
            return f"{meant} is a request: it needs an id (a string or an integer)"
    return None
