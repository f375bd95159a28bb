"""Agent routes in the request flow: two stages, one on each side of authentication.

``AgentRouteStage`` (request headers, before authentication) points Envoy at the
route's upstream and decides what kind of request this is: a JSON-RPC POST, an
MCP server stream (GET) or session end (DELETE), or an A2A agent card, which is
public so that clients can discover how to authenticate. ``AgentCallStage``
(after the client's credentials are stripped) puts the upstream's own
credential in, reads the JSON-RPC body once, applies access rules and request
limits, reads the answer as it streams, and records the call for the log line
and the metrics.

Refusals of a JSON-RPC request are JSON-RPC error objects with the request's id,
so SDKs surface them as that call's error: an access rule answers HTTP 200 with
code -32003 (MCP) or -32030 (A2A), a request limit HTTP 200 with code -32029 and
``retry-after``, a body that is not JSON-RPC HTTP 400 with -32700 or -32600.
Failures before the body is read (no or bad credentials, a method the route does
not take) are HTTP errors as on every route; so is the upstream refusing the
gateway's own credential (a 502: the client's never goes upstream, it is not the
client's to fix). Their bodies are JSON-RPC errors too, with the id null
(``ctx.error_shape``), and so are Envoy's own replies on agent routes
(``extproc.agents.envoy``): MCP's SDK reads no other error body.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import string
from collections.abc import Awaitable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from extproc import headers
from extproc.agents import call as outcome
from extproc.agents import jsonrpc, mcp_headers
from extproc.agents.answers import (
    STREAM_ENDED_EARLY,
    AnswerReader,
    CardReader,
    ExtendedCardRewrite,
    TaskWatch,
    ToolCallOutcome,
    ToolListFilter,
    Watch,
    unreadable_answer,
)
from extproc.agents.call import A2A_STREAM_METHODS, AgentCall
from extproc.agents.decoded import DecodedAnswer
from extproc.agents.jsonrpc import RequestId, RpcMessage, RpcParseError
from extproc.agents.limits import COUNTER_PREFIX, rule_label
from extproc.answer_encoding import readable_encoding
from extproc.config.agents_model import AgentProtocol
from extproc.config.model import RouteApi
from extproc.context import ModeOverride, PhaseOutput, RequestContext
from extproc.envoy_messages import status_code
from extproc.errors import (
    BadRequestError,
    GatewayError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from extproc.headers import metadata_key
from extproc.quota.rules import Limit
from extproc.quota.store import Denial
from extproc.stages.body_headers import check_body_headers
from extproc.stages.quota import rate_limit_headers
from extproc.store.response_owners import owner_of
from extproc.translators.unreadable_answers import UnreadableAnswerError

log = logging.getLogger(__name__)

AGENT_APIS = frozenset({RouteApi.MCP, RouteApi.A2A})
CARD_PATHS = frozenset({"/.well-known/agent-card.json", "/.well-known/agent.json"})
EXTENDED_CARD_METHODS = frozenset({"GetExtendedAgentCard", "agent/getAuthenticatedExtendedCard"})
# MCP tool names are at most 128 characters by the spec; some slack for older servers.
MAX_TOOL_NAME = 256
SESSION_HEADER = "mcp-session-id"
MAX_METHOD_NAME = 1024
# Methods the gateway reads by name, by their lookalikes' canonical form: MCP tool calls
# are checked and counted, tool lists filtered; A2A messages counted, extended cards rewritten.
_MCP_GOVERNED = {jsonrpc.canonical_method(m): m for m in ("tools/call", "tools/list")}
_A2A_GOVERNED = {
    jsonrpc.canonical_method(m): m for m in outcome.A2A_MESSAGE_METHODS | EXTENDED_CARD_METHODS
}
SSE = "text/event-stream"
JSON = "application/json"
# The Host a client used, put into agent card URLs: a name (``_`` included, as Docker
# Compose service names have it), IPv4 or IPv6, and a port; nothing that could end the
# authority and move the URL elsewhere (``/``, ``@``, ``?``, ``#``).
_AUTHORITY = re.compile(r"^[A-Za-z0-9._\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
# What a caller header carries as it is; anything else (a JWT claim may hold any
# character) is percent-encoded, so every value is a valid header value.
_HEADER_SAFE = "".join(c for c in string.punctuation if c != "%")
# The answer is Envoy's to deliver as it comes (server streams, session ends).
# Requests that carry no JSON-RPC (GET, DELETE) keep their body phase: there is no
# body to read, and one that comes anyway is refused, since a lax server might run
# the JSON-RPC in it unchecked. A body-less request costs no extra message.
_PASS_ANSWER = ModeOverride(response_body="NONE")
# Whether the answer is read is decided when its headers come.
_ANSWER_LATER = ModeOverride()
_READ_ANSWER = ModeOverride(response_body="STREAMED")
_UNREAD_ANSWER = ModeOverride(response_body="NONE")
# A refusal of a body without requests is an HTTP error (invalid bodies: 400).
_STATUS_WITHOUT_REQUEST = {
    jsonrpc.TOOL_FORBIDDEN: 403,
    jsonrpc.AGENT_FORBIDDEN: 403,
    jsonrpc.RATE_LIMITED: 429,
}


class AgentRouteStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
        route = ctx.route
        if route is None or route.api not in AGENT_APIS:
            return
        upstream = ctx.runtime.agents.by_route[route.name]
        server = upstream.server
        call = AgentCall(AgentProtocol(route.api.value), server)
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


class AgentCallStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
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

    def request_body(
        self, ctx: RequestContext, out: PhaseOutput, body: bytes
    ) -> Awaitable[None] | None:
        call = ctx.agent
        if call is None:
            return None
        if call.kind != "rpc":
            if body:
                message = f"a {ctx.method} carries no body: send JSON-RPC messages in a POST"
                invalid = BadRequestError(message, code="unexpected_body")
                _refuse(ctx, out, [None], False, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
            return None
        limit = ctx.runtime.config.limits.max_request_body_bytes
        if len(body) > limit:
            raise PayloadTooLargeError(
                f"request body of {len(body)} bytes is over the limit of {limit} bytes"
            )
        try:
            messages, batch = jsonrpc.parse_body(body)
        except RpcParseError as error:
            call.method = None
            invalid = BadRequestError(error.message, code="invalid_jsonrpc")
            _refuse(ctx, out, [None], False, error.code, outcome.INVALID, invalid)
            return None
        method = next((m.method for m in messages if m.method is not None), None)
        # Bounded for the log line: a longer one is refused below, not forwarded.
        call.method = method[:MAX_METHOD_NAME] if method is not None else None
        requests = [m for m in messages if m.is_request]
        mcp = call.protocol is AgentProtocol.MCP
        unchecked = _unchecked_request(messages, _MCP_GOVERNED if mcp else _A2A_GOVERNED)
        if unchecked is not None:
            invalid = BadRequestError(unchecked, code="invalid_request")
            ids = [m.id for m in requests]
            _refuse(ctx, out, ids, batch, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
            return None
        if mcp:
            return self._mcp(ctx, out, call, messages, requests, batch)
        return self._a2a(ctx, out, call, requests, batch)

    def _mcp(
        self,
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
            _refuse(ctx, out, ids, batch, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
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
                _refuse(ctx, out, ids, batch, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
            return None
        request = tool_calls[0]
        params = request.params
        tool = params.get("name") if isinstance(params, dict) else None
        if not isinstance(tool, str) or not tool or len(tool) > MAX_TOOL_NAME:
            message = f"tools/call needs params.name: a tool name of 1 to {MAX_TOOL_NAME} chars"
            invalid = BadRequestError(message, code="invalid_tool_name")
            _refuse(ctx, out, ids, batch, jsonrpc.INVALID_PARAMS, outcome.INVALID, invalid)
            return None
        call.tool = tool
        if _check_mirror(ctx, out, request, tool):
            return None
        denial = agents.access.denial(identity, server, tool)
        if denial is not None:
            refused = PermissionDeniedError(denial, code="tool_not_allowed")
            data = {"type": "permission_error", "code": "tool_not_allowed", "tool": tool}
            _refuse(ctx, out, ids, batch, jsonrpc.TOOL_FORBIDDEN, outcome.DENIED, refused, data)
            return None
        call.watches.append(ToolCallOutcome(request.id, call))
        return _limit(ctx, out, call, tool, ids, batch)

    def _a2a(
        self,
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
            _refuse(ctx, out, ids, batch, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
            return None
        denial = ctx.runtime.agents.access.denial(ctx.identity, call.server.name, None)
        if denial is not None:
            refused = PermissionDeniedError(denial, code="agent_not_allowed")
            data = {"type": "permission_error", "code": "agent_not_allowed"}
            _refuse(ctx, out, ids, batch, jsonrpc.AGENT_FORBIDDEN, outcome.DENIED, refused, data)
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
        if not call.is_message:
            return None
        return _limit(ctx, out, call, None, ids, batch)

    def response_headers(
        self, ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]
    ) -> None:
        call = ctx.agent
        if call is None:
            return
        status_text = response_headers.get(":status", "0")
        status = status_code(status_text)
        session = response_headers.get(SESSION_HEADER)
        if session and call.session is None:
            call.set_session(session)
        media = _media_type(response_headers)
        # In the log line: the answer came as a stream (SSE), whoever asked for it.
        ctx.stream = media == SSE
        # Envoy marks a bodiless answer (headers end the stream): nothing to read.
        has_body = not ctx.completed
        reader: Any = None
        location = response_headers.get("location")
        if location is not None and 300 <= status < 400:
            _redirect_through_route(call, out, location)
        if status >= 400:
            call.answered(outcome.UPSTREAM_ERROR)
            if _refuses_gateway_credential(status, response_headers):
                raise UpstreamError(
                    f"the {call.protocol.value.upper()} server '{call.server.name}' refused the"
                    f" gateway's own credentials (HTTP {status}); this is not a problem with"
                    " your API key",
                    code="upstream_credentials_refused",
                )
            if status >= 500 and call.kind == "rpc" and not (_is_json(media) or media == SSE):
                _error_page_replaced(ctx, out, status, response_headers)
                return
        elif call.kind == "card":
            # Read whatever the content type says (a card served as text/html or
            # text/plain is still JSON to a client): the reader rewrites a body that is
            # a JSON object and passes anything else on as it came.
            if (
                status == 200
                and call.server.rewrite_agent_card
                and not _unreadable_encoding(response_headers)
            ):
                reader = CardReader(call)
        elif call.kind == "rpc" and (call.watches or call.strays is not None) and has_body:
            reader = self._rpc_reader(ctx, out, call, response_headers, media)
            if out.answer is not None:
                return
        elif call.kind == "stream" and 200 <= status < 300 and has_body:
            reader = self._stream_reader(ctx, out, call, response_headers, media)
            if out.answer is not None:
                return
        if reader is None:
            # Nothing to read: Envoy delivers the answer (a server stream stays open).
            out.mode_override = _UNREAD_ANSWER
            ctx.completed = True
            return
        encoding = _encoding(response_headers)
        if encoding:
            # Compressed although the gateway asked for no encoding: read decoded, and
            # sent on so (the reader may change it; its length is the reader's anyway).
            reader = DecodedAnswer(reader, encoding)
            out.remove_headers.append("content-encoding")
        call.reader = reader
        out.mode_override = _READ_ANSWER
        out.remove_headers.append("content-length")

    def _rpc_reader(
        self,
        ctx: RequestContext,
        out: PhaseOutput,
        call: AgentCall,
        response_headers: dict[str, str],
        media: str,
    ) -> AnswerReader | None:
        """The reader of a JSON-RPC POST's answer; None to pass it on unread.

        An answer the gateway must rewrite (a tool list) is read whatever its
        content type says: JSON under ``text/plain`` or no type at all is still
        filtered, and anything that is not JSON fails closed in the reader. Only an
        answer in an encoding the gateway cannot decode (br, zstd) cannot be read: on a
        server whose tools rules hide (any answer may carry a stray list) its requests
        get a JSON-RPC error now, as do those of an answer to rewrite (an extended card).
        Answers the gateway only observes are read when they say JSON or SSE.
        """
        rewriting = [watch.request_id for watch in call.watches if watch.rewrites]
        if _unreadable_encoding(response_headers):
            if call.strays is not None:
                _fail_closed(ctx, out, 200, unreadable_answer(call.request_ids or [None]))
            elif rewriting:
                _fail_closed(ctx, out, 200, unreadable_answer(rewriting))
            return None
        if media == SSE:
            return AnswerReader(call.watches, sse=True, call=call, strays=call.strays)
        if rewriting or _is_json(media):
            if rewriting and not _is_json(media):
                # What the client gets is JSON: the filtered document or an error.
                out.set_headers["content-type"] = JSON
            return AnswerReader(call.watches, sse=False, call=call, strays=call.strays)
        return None

    def _stream_reader(
        self,
        ctx: RequestContext,
        out: PhaseOutput,
        call: AgentCall,
        response_headers: dict[str, str],
        media: str,
    ) -> AnswerReader | None:
        """The reader of MCP's GET stream, which may replay earlier answers, tool lists too.

        Read only when rules may hide tools of the server; then an answer that is
        not an SSE stream, or in an encoding the gateway cannot decode, cannot be
        filtered and is refused (502).
        """
        agents = ctx.runtime.agents
        server, identity = call.server.name, ctx.identity
        if not agents.access.governs_tools(server):
            return None
        if media != SSE or _unreadable_encoding(response_headers):
            _fail_closed(ctx, out, 502, unreadable_answer([None]))
            return None
        lists = ToolListFilter(
            None, call, lambda tool: agents.access.denial(identity, server, tool) is None
        )
        return AnswerReader([], sse=True, any_answer=lists, call=call)

    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> None:
        call = ctx.agent
        if call is None or call.reader is None:
            return
        replaced = call.reader.feed(chunk, end_of_stream)
        if replaced is not None:
            out.body = replaced
        reader = call.reader.reader if isinstance(call.reader, DecodedAnswer) else call.reader
        if isinstance(reader, AnswerReader) and reader.failed and ctx.error is None:
            # The client got a JSON-RPC error in place of the answer (the reader
            # recorded it on the call): the log line says so, not "forwarded".
            ctx.error = _unreadable_error()
        if isinstance(reader, AnswerReader) and reader.ended_early and ctx.error is None:
            # The agent's stream ended before its task settled: the client read the
            # gateway's error after the last whole event; the agent's fault, not a refusal.
            ctx.error = AgentStreamEndedEarlyError(STREAM_ENDED_EARLY)
        if isinstance(reader, AnswerReader) and reader.settled:
            # The answer is in: a client hanging up now has lost nothing.
            ctx.completed = True

    def done(self, ctx: RequestContext) -> None:
        call = ctx.agent
        if call is None:
            return
        if call.status == outcome.FORWARDED and ctx.error is not None:
            # Refused with an HTTP error before anything went upstream (credentials, a
            # method or size the route does not take, the quota store down): the log line
            # and the metrics must not count it as a call the server saw.
            call.status = _refusal_status(ctx.error)
        elif ctx.aborted and (call.status == outcome.FORWARDED or _awaiting_end(call)):
            # Gone before the answer: for an A2A stream, before its task settled.
            call.status = outcome.ABORTED
        if not (call.is_tool_call or call.is_message or call.tools_hidden):
            return
        metrics = ctx.runtime.services.metrics.agents
        identity = ctx.identity
        who = (identity.api_key_id or "", identity.user_id or "", identity.group_id or "")
        ended = call.answered_at if call.answered_at is not None else None
        seconds = (ended - ctx.started) if ended is not None else ctx.elapsed_ms() / 1000.0
        server = call.server.name
        if call.is_tool_call and call.tool is not None:
            metrics.child(metrics.tool_calls, server, call.tool, call.status, *who).inc()
            metrics.child(metrics.tool_call_duration, server, call.tool, call.status).observe(
                seconds
            )
        if call.tools_hidden:
            metrics.child(metrics.tools_hidden, server).inc(call.tools_hidden)
        if call.is_message and call.method is not None:
            metrics.child(metrics.a2a_messages, server, call.method, call.status, *who).inc()
            metrics.child(metrics.a2a_message_duration, server, call.method).observe(seconds)
            if call.task_state is not None:
                metrics.child(metrics.a2a_tasks, server, call.task_state).inc()


async def _reserve(
    ctx: RequestContext,
    out: PhaseOutput,
    call: AgentCall,
    limits: list[Limit],
    ids: list[RequestId],
    batch: bool,
) -> None:
    services = ctx.runtime.services
    store = services.quota_store
    assert store is not None
    try:
        result = await asyncio.wait_for(
            store.reserve(limits, 0), ctx.runtime.config.store.timeout_ms / 1000.0
        )
    except Exception as exc:
        services.metrics.store_error("agent_limit")
        # A shadow rule never blocks, as on the LLM path: only enforced rules can fail
        # the call closed (a shadow rule alone turned a store outage into 503s).
        if all(limit.fail_open or not limit.enforce for limit in limits):
            log.warning("quota store unavailable, agent limits fail open: %s", type(exc).__name__)
            ctx.quota_decision = "failed_open"
            return
        ctx.quota_decision = "unavailable"
        down = ServiceUnavailableError(
            "the quota store is unavailable; try again shortly", code="quota_store_unavailable"
        )
        # HTTP 503 as on every route, its JSON-RPC error under the request's id.
        data = {"type": down.error_type, "code": down.code}
        _refuse(ctx, out, ids, batch, jsonrpc.INTERNAL_ERROR, outcome.UNAVAILABLE, down, data,
                http_status=down.status)  # fmt: skip
        return
    if isinstance(result, Denial):
        # aigw_mcp_tool_calls_total{status="rate_limited"} has the tool, within its budget.
        services.metrics.rate_limit(rule_label(result.limit.rule), result.limit.subject_kind)
        ctx.quota_decision = "rejected"
        ctx.quota_rule = result.limit.rule
        error, data = _limit_refusal(result, store.now(), call)
        _refuse(ctx, out, ids, batch, jsonrpc.RATE_LIMITED, outcome.RATE_LIMITED, error, data)
        return
    ctx.quota_decision = "allowed"
    ctx.reservation = result
    # Envoy adds OpenAI's x-ratelimit-* headers to the answer from this metadata.
    published = {
        metadata_key(name): value for name, value in rate_limit_headers(result, store.now()).items()
    }
    out.metadata = {**(out.metadata or {}), **published}


def _limit(
    ctx: RequestContext,
    out: PhaseOutput,
    call: AgentCall,
    tool: str | None,
    ids: list[RequestId],
    batch: bool,
) -> Awaitable[None] | None:
    agents = ctx.runtime.agents
    store = ctx.runtime.services.quota_store
    if not agents.limits or store is None:
        return None
    limits = agents.limits.limits_for(
        ctx.identity, ctx.request_headers, call.server.name, tool, store.now()
    )
    if not limits:
        return None
    return _reserve(ctx, out, call, limits, ids, batch)


def _limit_refusal(
    denial: Denial, now: float, call: AgentCall
) -> tuple[RateLimitError, dict[str, Any]]:
    limit = denial.limit
    rule = rule_label(limit.rule).removeprefix(COUNTER_PREFIX)
    what = f"tool '{call.tool}'" if call.tool is not None else f"agent '{call.server.name}'"
    left = limit.window.seconds_left(now)
    retry = max(1, math.ceil(left)) if left is not None else None
    reset = limit.reset_time()
    resets = f" it resets at {reset}" if reset is not None else ""
    kind = limit.subject_kind.replace("header:", "header ")
    message = (
        f"Rate limit reached for {what}, {kind} '{limit.subject}' (rule '{rule}'): "
        f"{limit.describe(denial.effective_limit)};{resets}"
    )
    error_headers = {"retry-after": str(retry)} if retry is not None else {}
    error = RateLimitError(message, code="rate_limit_exceeded", headers=error_headers)
    data: dict[str, Any] = {"type": "rate_limit_error", "code": "rate_limit_exceeded", "rule": rule}
    if retry is not None:
        data["retry_after_s"] = retry
    return error, data


def _refuse(
    ctx: RequestContext,
    out: PhaseOutput,
    ids: list[RequestId],
    batch: bool,
    code: int,
    status: str,
    error: GatewayError,
    data: dict[str, Any] | None = None,
    *,
    http_status: int | None = None,
) -> None:
    """Answer the JSON-RPC request(s) with an error object; nothing goes upstream.

    ``ids`` are the ids of the body's requests (``[None]``: one whose id could not be
    read). A body without any (notifications, a client's answers) awaits no JSON-RPC
    answer: JSON-RPC never answers an empty array, and MCP's transport answers a
    refused notification with an HTTP error status, its body an error without an id.
    So it gets that, never ``[]`` nor a 200 that reads as accepted."""
    call = ctx.agent
    assert call is not None
    call.answered(status, code)
    # The log line's outcome and error fields say it was the gateway's refusal.
    ctx.error = error
    if http_status is None:
        http_status = 400 if code in {jsonrpc.PARSE_ERROR, jsonrpc.INVALID_REQUEST,
                                      jsonrpc.INVALID_PARAMS} else 200  # fmt: skip
        if not ids:
            http_status = _STATUS_WITHOUT_REQUEST.get(code, 400)
    if not ids:
        ids, batch = [None], False
    answer_headers = {"content-type": "application/json", **error.headers}
    if ctx.request_id:
        answer_headers[headers.REQUEST_ID] = ctx.request_id
    body = jsonrpc.error_body(ids, code, error.message, data, batch)
    out.answer = (http_status, body, answer_headers)


def _check_mirror(
    ctx: RequestContext, out: PhaseOutput, request: RpcMessage, tool: str | None
) -> bool:
    """Refuse an MCP request whose ``Mcp-Method``/``Mcp-Name`` headers name another
    call than its body; True if refused."""
    why = mcp_headers.mismatch(ctx.request_headers, request.method, tool)
    if why is None:
        return False
    invalid = BadRequestError(why, code="header_mismatch")
    _refuse(ctx, out, [request.id], False, jsonrpc.INVALID_REQUEST, outcome.INVALID, invalid)
    return True


def _refusal_status(error: GatewayError) -> str:
    """The ``agent.status`` of a request the gateway answered with an HTTP error."""
    if error.status in {401, 403}:
        return outcome.DENIED
    if error.status == 429:
        return outcome.RATE_LIMITED
    if isinstance(error, ServiceUnavailableError):
        return outcome.UNAVAILABLE
    return outcome.INVALID if error.status < 500 else outcome.UPSTREAM_ERROR


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


def _redirect_through_route(call: AgentCall, out: PhaseOutput, location: str) -> None:
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


def _rest_binding_path(rest: str) -> bool:
    """Whether a path below an A2A route is one of the agent's HTTP+JSON binding (1.0 and
    0.3, under a tenant or ``/v1``): ``message:send``, ``message:stream``, ``tasks/...``.
    Read decoded, as the agent's server reads it (``message%3Asend``)."""
    segments = unquote(rest).split("/")
    return "tasks" in segments or any(segment.startswith("message:") for segment in segments)


def _refuses_gateway_credential(status: int, response_headers: dict[str, str]) -> bool:
    """Whether the upstream refused the request's credentials: a 401, or a 403 that asks
    for other authorization (``WWW-Authenticate``, as MCP's insufficient_scope does).

    The client's credentials never reach the upstream, so that is the gateway's own
    (``api_key``) or the lack of one: the operator's to fix. Passed on, it would tell the
    client its key is wrong and send an MCP SDK into OAuth against the internal server
    its ``WWW-Authenticate`` names. (A 403 without it, such as a refused ``Origin``, is
    about the request and goes on as it came.)"""
    return status == 401 or (status == 403 and "www-authenticate" in response_headers)


def _fail_closed(ctx: RequestContext, out: PhaseOutput, http_status: int, body: bytes) -> None:
    """Answer with ``body`` (JSON-RPC errors) in place of an upstream answer the gateway
    had to rewrite but cannot read; the original never reaches the client."""
    call = ctx.agent
    assert call is not None
    call.answered(outcome.UPSTREAM_ERROR, jsonrpc.INTERNAL_ERROR)
    ctx.error = _unreadable_error()
    answer_headers = {"content-type": JSON}
    if ctx.request_id:
        answer_headers[headers.REQUEST_ID] = ctx.request_id
    out.answer = (http_status, body, answer_headers)


def _error_page_replaced(
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
    body = jsonrpc.http_error_body(message, status, UpstreamError.error_type, "upstream_failed")
    out.answer = (status, body, answer_headers)


class AgentStreamEndedEarlyError(UnreadableAnswerError):
    """An A2A stream its agent ended before its task settled (``invalid_upstream_response``).

    An answer the upstream did not deliver whole, as a provider's unreadable answer is:
    the log line's outcome is ``upstream_error``, not the gateway's refusal."""


def _awaiting_end(call: AgentCall) -> bool:
    reader = call.reader.reader if isinstance(call.reader, DecodedAnswer) else call.reader
    return isinstance(reader, AnswerReader) and reader.awaiting_end


def _unreadable_error() -> UpstreamError:
    return UpstreamError(
        "the upstream's answer could not be read to apply access rules", code="unreadable_answer"
    )


def _media_type(response_headers: dict[str, str]) -> str:
    """The answer's media type, without parameters; lowercase, as RFC 9110 compares it."""
    return response_headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_json(media: str) -> bool:
    # Loose on purpose (application/json, ...+json, application/json-rpc): answers that
    # are only observed are read when they look like JSON; rewritten ones always are.
    return "json" in media


def _encoding(response_headers: dict[str, str]) -> str:
    """The answer's ``content-encoding``; "" when uncompressed. The gateway asks for no
    encoding, but a server may compress anyway."""
    encoding = response_headers.get("content-encoding", "").strip().lower()
    return "" if encoding == "identity" else encoding


def _unreadable_encoding(response_headers: dict[str, str]) -> bool:
    """Compressed in an encoding the gateway cannot decode (br, zstd, several at once)."""
    encoding = _encoding(response_headers)
    return bool(encoding) and not readable_encoding(encoding)


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
