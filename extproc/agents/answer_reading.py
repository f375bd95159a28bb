"""Reading an agent server's answer as it streams: which reader, if any, and feeding it.

When the answer's headers come, the gateway decides whether to read it: a tool
list to filter (and, on a server whose tools rules hide, any answer that might
carry a stray list), a tool call's or A2A task's outcome to observe, an agent
card to rewrite, the MCP server stream to filter. A read answer switches to
STREAMED mode, decoded first if the server compressed it anyway; one that cannot
be read where it must be fails closed (``refusals.fail_closed``). The readers
themselves live in ``answers``.
"""

from __future__ import annotations

from typing import Any

from extproc.agents import call as outcome
from extproc.agents.answers import (
    STREAM_ENDED_EARLY,
    AnswerReader,
    CardReader,
    ToolListFilter,
    unreadable_answer,
)
from extproc.agents.call import AgentCall
from extproc.agents.caller_key_echo import caller_key_search
from extproc.agents.credential_echo import StarredAnswer, credential_echoed, star_headers
from extproc.agents.decoded import AnswerFeed, DecodedAnswer
from extproc.agents.mcp_headers import SESSION_HEADER
from extproc.agents.refusals import JSON, fail_closed, unreadable_error
from extproc.agents.upstream_status import (
    credentials_refused,
    error_page_replaced,
    redirect_through_route,
    refuses_gateway_credential,
)
from extproc.answer_encoding import readable_encoding
from extproc.config.agents_model import AgentProtocol
from extproc.context import ModeOverride, PhaseOutput, RequestContext
from extproc.credential_cleaner import echoed_credential
from extproc.envoy_messages import status_code
from extproc.translators.unreadable_answers import UnreadableAnswerError

SSE = "text/event-stream"
_READ_ANSWER = ModeOverride(response_body="STREAMED")
_UNREAD_ANSWER = ModeOverride(response_body="NONE")


class AgentStreamEndedEarlyError(UnreadableAnswerError):
    """An A2A stream its agent ended before its task settled (``invalid_upstream_response``).

    An answer the upstream did not deliver whole, as a provider's unreadable answer is:
    the log line's outcome is ``upstream_error``, not the gateway's refusal."""


def start_answer(ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]) -> None:
    """On the answer's headers: record its status and choose its reader, if any."""
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
        redirect_through_route(call, out, location)
    if status >= 400:
        call.answered(outcome.UPSTREAM_ERROR)
        if refuses_gateway_credential(status, response_headers):
            raise credentials_refused(call, status)
        if status >= 500 and call.kind == "rpc" and not (_is_json(media) or media == SSE):
            error_page_replaced(ctx, out, status, response_headers)
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
        reader = _rpc_reader(ctx, out, call, response_headers, media)
        if out.answer is not None:
            return
    elif call.kind == "stream" and 200 <= status < 300 and has_body:
        reader = _stream_reader(ctx, out, call, response_headers, media)
        if out.answer is not None:
            return
    searched = _searched(ctx, out, call, reader, response_headers, status, has_body)
    if out.answer is not None:
        return
    if reader is None and searched is None:
        # Nothing to read: Envoy delivers the answer (a server stream stays open).
        out.mode_override = _UNREAD_ANSWER
        ctx.completed = True
        return
    if reader is None:
        # Only searched: its length is kept, and the client may leave once it started.
        ctx.completed = True
    encoding = _encoding(response_headers)
    if encoding:
        # Compressed although the gateway asked for no encoding: read decoded, and
        # sent on so (the reader may change it; its length is the reader's anyway).
        out.remove_headers.append("content-encoding")
    if reader is not None or encoding:
        out.remove_headers.append("content-length")
    feed: AnswerFeed = searched if searched is not None else reader
    call.reader = DecodedAnswer(feed, encoding) if encoding else feed
    out.mode_override = _READ_ANSWER


def _searched(
    ctx: RequestContext,
    out: PhaseOutput,
    call: AgentCall,
    reader: AnswerFeed | None,
    response_headers: dict[str, str],
    status: int,
    has_body: bool,
) -> StarredAnswer | None:
    """On a server with the gateway's credential, the answer's reader (None: it is only
    searched) behind the search for that credential (``credential_echo``), whose headers
    were searched now; None on a server without one, which pays nothing.

    An answer in an encoding the gateway cannot decode (br, zstd) cannot be searched: it
    never reaches the client, each request of the body gets a JSON-RPC error instead."""
    forms = call.credential_forms
    if not forms:
        return None
    # The caller's own key too, where the answer is an error (``caller_key_echo``): only
    # on answers searched anyway, so a server without a credential still pays nothing.
    sse = _media_type(response_headers) == SSE
    caller = caller_key_search(echoed_credential(ctx), status, sse)
    star_headers(ctx, out, response_headers, forms, caller if status >= 400 else None)
    if not has_body:
        return None
    if _unreadable_encoding(response_headers):
        http_status = status if status >= 400 else 200 if call.kind == "rpc" else 502
        fail_closed(ctx, out, http_status, unreadable_answer(call.request_ids or [None]))
        return None
    return StarredAnswer(reader, forms, lambda: credential_echoed(ctx, call), caller)


def _rpc_reader(
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
    # A2A takes no batches: its answer is the one request's, whatever ids it names.
    sole = call.protocol is AgentProtocol.A2A
    one = len(call.request_ids) == 1
    if _unreadable_encoding(response_headers):
        if call.strays is not None:
            fail_closed(ctx, out, 200, unreadable_answer(call.request_ids or [None]))
        elif rewriting:
            fail_closed(ctx, out, 200, unreadable_answer(rewriting))
        return None
    if media == SSE:
        return AnswerReader(
            call.watches, sse=True, call=call, strays=call.strays, sole=sole, one_request=one
        )
    if rewriting or _is_json(media):
        if rewriting and not _is_json(media):
            # What the client gets is JSON: the filtered document or an error.
            out.set_headers["content-type"] = JSON
        return AnswerReader(
            call.watches, sse=False, call=call, strays=call.strays, sole=sole, one_request=one
        )
    return None


def _stream_reader(
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
        fail_closed(ctx, out, 502, unreadable_answer([None]))
        return None
    lists = ToolListFilter(
        None, call, lambda tool: agents.access.denial(identity, server, tool) is None
    )
    return AnswerReader([], sse=True, any_answer=lists, call=call)


def read_answer(ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool) -> None:
    """Feed one chunk of the answer to its reader; what it sends instead goes to ``out``."""
    call = ctx.agent
    if call is None or call.reader is None:
        return
    replaced = call.reader.feed(chunk, end_of_stream)
    if replaced is not None:
        out.body = replaced
    reader = answer_reader(call)
    if reader is not None and reader.failed and ctx.error is None:
        # The client got a JSON-RPC error in place of the answer (the reader
        # recorded it on the call): the log line says so, not "forwarded".
        ctx.error = unreadable_error()
    if reader is not None and reader.ended_early and ctx.error is None:
        # The agent's stream ended before its task settled: the client read the
        # gateway's error after the last whole event; the agent's fault, not a refusal.
        ctx.error = AgentStreamEndedEarlyError(STREAM_ENDED_EARLY)
    if reader is not None and reader.settled:
        # The answer is in: a client hanging up now has lost nothing.
        ctx.completed = True


def answer_reader(call: AgentCall) -> AnswerReader | None:
    """The call's JSON-RPC answer reader, under its decoder if the answer was compressed
    and its credential search."""
    reader = call.reader
    while isinstance(reader, DecodedAnswer | StarredAnswer):
        reader = reader.reader
    return reader if isinstance(reader, AnswerReader) else None


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
