"""The gateway's own answers on agent routes, in place of the upstream's.

A refused JSON-RPC request gets a JSON-RPC error object with its id, so SDKs
surface it as that call's error: an access rule answers HTTP 200 with code -32003
(MCP) or -32030 (A2A), a request limit HTTP 200 with -32029 and ``retry-after``, a
body that is not JSON-RPC HTTP 400 with -32700 or -32600. An answer the gateway
had to rewrite but cannot read fails closed with -32603. Each records the call's
outcome for the log line and the metrics.
"""

from __future__ import annotations

from typing import Any

from extproc import headers
from extproc.agents import call as outcome
from extproc.agents import jsonrpc
from extproc.agents.jsonrpc import RequestId
from extproc.context import PhaseOutput, RequestContext
from extproc.credential_cleaner import cleaned, echoed_credential
from extproc.errors import GatewayError, ServiceUnavailableError, UpstreamError

JSON = "application/json"
# A refusal of a body without requests is an HTTP error (invalid bodies: 400).
_STATUS_WITHOUT_REQUEST = {
    jsonrpc.TOOL_FORBIDDEN: 403,
    jsonrpc.AGENT_FORBIDDEN: 403,
    jsonrpc.RATE_LIMITED: 429,
}


def refuse(
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
    # Answered here, not raised to the processor, which hides the request's own key in
    # what it answers: a denial quotes the tool as sent ("may not use tool '...'"), and
    # its data names it.
    credential = echoed_credential(ctx)
    if credential is not None:
        error.message = cleaned(error.message, credential, shapes_shown=True)
        if data:
            data = {
                name: cleaned(value, credential, shapes_shown=True)
                if isinstance(value, str)
                else value
                for name, value in data.items()
            }
    # The log line's outcome and error fields say it was the gateway's refusal.
    ctx.error = error
    if http_status is None:
        http_status = 400 if code in {jsonrpc.PARSE_ERROR, jsonrpc.INVALID_REQUEST,
                                      jsonrpc.INVALID_PARAMS} else 200  # fmt: skip
        if not ids:
            http_status = _STATUS_WITHOUT_REQUEST.get(code, 400)
    if not ids:
        ids, batch = [None], False
    answer_headers = {"content-type": JSON, **error.headers}
    if ctx.request_id:
        answer_headers[headers.REQUEST_ID] = ctx.request_id
    body = jsonrpc.error_body(ids, code, error.message, data, batch)
    out.answer = (http_status, body, answer_headers)


def refusal_status(error: GatewayError) -> str:
    """The ``agent.status`` of a request the gateway answered with an HTTP error."""
    if error.status in {401, 403}:
        return outcome.DENIED
    if error.status == 429:
        return outcome.RATE_LIMITED
    if isinstance(error, ServiceUnavailableError):
        return outcome.UNAVAILABLE
    return outcome.INVALID if error.status < 500 else outcome.UPSTREAM_ERROR


def fail_closed(ctx: RequestContext, out: PhaseOutput, http_status: int, body: bytes) -> None:
    """Answer with ``body`` (JSON-RPC errors) in place of an upstream answer the gateway
    had to rewrite but cannot read; the original never reaches the client."""
    call = ctx.agent
    assert call is not None
    call.answered(outcome.UPSTREAM_ERROR, jsonrpc.INTERNAL_ERROR)
    ctx.error = unreadable_error()
    answer_headers = {"content-type": JSON}
    if ctx.request_id:
        answer_headers[headers.REQUEST_ID] = ctx.request_id
    out.answer = (http_status, body, answer_headers)


def unreadable_error() -> UpstreamError:
    return UpstreamError(
        "the upstream's answer could not be read to apply access rules", code="unreadable_answer"
    )
