"""The mock's Anthropic surface: the Messages API (plain and SSE streaming) and its errors.

Replies and token counts follow the shared rules in ``tokens``. In Anthropic's terms:

- ``input_tokens`` counts the system prompt, when there is one, as one more message.
- ``output_tokens`` is the number of reply pieces sent; ``max_tokens`` (required, as on the
  real API) keeps the first N pieces and sets ``stop_reason`` to "max_tokens", else "end_turn".
- A stream is Anthropic's event sequence: ``message_start`` (input tokens, output tokens 1),
  ``content_block_start``, ``ping``, one ``content_block_delta`` per piece,
  ``content_block_stop``, ``message_delta`` (stop reason and cumulative output tokens) and
  ``message_stop``, each written on its own. With the ``error_after`` fault, an ``error``
  event (``overloaded_error``) replaces the rest after that many deltas.

Credentials are an ``x-api-key`` header or ``Authorization: Bearer``: the anthropic Python
client (2.14 here) sends its ``api_key`` as a bearer token, while older clients and curl
examples use ``x-api-key``. ``anthropic-version`` is required, as on the real API.

Errors use Anthropic's shape ``{"type": "error", "error": {"type": ..., "message": ...}}``,
whose ``error.type`` the anthropic client and gateways branch on.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.faults import FAULT_HEADER, Fault, FaultSpecError, parse_fault
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.scripted import ScriptError, scripted_pieces
from extproc.mock_llm.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    count_tokens,
    message_text,
    prompt_tokens,
    reply_pieces,
)

API_KEY_HEADER = "x-api-key"
VERSION_HEADER = "anthropic-version"
MISSING_KEY_MESSAGE = "x-api-key header is required"

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_GARBAGE = b'{"id": "msg_garbage", this is not json'
_GARBAGE_DATA = b"{this is not json"
_ROLES = ("user", "assistant")

# Anthropic's error.type for each HTTP status it documents; other 5xx are api_error and
# other 4xx invalid_request_error.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in Anthropic's shape, which the anthropic client turns into its typed exceptions."""
    body = {"type": "error", "error": {"type": error_type_for(status), "message": message}}
    return web.Response(
        status=status, body=orjson.dumps(body), headers={**_JSON_HEADERS, **(headers or {})}
    )


def fault_status_response(status: int) -> web.Response:
    if status == 429:
        return error_response(
            429,
            "Number of request tokens has exceeded your rate limit (injected by x-mock-fault).",
            headers={"retry-after": "1"},
        )
    if status == 529:
        return error_response(529, "Overloaded (injected by x-mock-fault).")
    if status >= 500:
        return error_response(status, "Internal server error (injected by x-mock-fault).")
    return error_response(status, f"Injected error {status} (x-mock-fault).")


class InvalidRequestError(Exception):
    """A request Anthropic would reject with 400 invalid_request_error."""


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    model: str
    messages: list[dict[str, Any]]
    system: str | None  # the system prompt's text, None when absent
    max_tokens: int
    stream: bool


def _check_content(content: object, where: str) -> None:
    """Content is a string or a list of blocks; text blocks must carry their text."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequestError(f"{where}: Input should be a valid string or list of blocks")
    for i, block in enumerate(content):
        # Blocks other than text (image, tool_use, ...) are accepted and count no tokens.
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequestError(f"{where}.{i}: Input should be an object with a 'type'")
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise InvalidRequestError(f"{where}.{i}.text: Field required")


def _check_system(system: object) -> str | None:
    if system is None:
        return None
    if isinstance(system, list):
        for i, block in enumerate(system):
            # The real API takes only text blocks in system, unlike in messages.
            if not isinstance(block, dict) or block.get("type") != "text":
                raise InvalidRequestError(f"system.{i}: Input should be a text block")
            if not isinstance(block.get("text"), str):
                raise InvalidRequestError(f"system.{i}.text: Field required")
    elif not isinstance(system, str):
        raise InvalidRequestError("system: Input should be a valid string or list of text blocks")
    return message_text(system)


def parse_messages_request(body: Body) -> MessagesRequest:
    """Validate the fields the mock relies on; everything else is accepted and ignored."""
    if not body.is_json or not isinstance(body.json, dict):
        raise InvalidRequestError("The request body is not valid JSON: expected a JSON object.")
    doc: dict[str, Any] = body.json
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: Field required")
    max_tokens = doc.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequestError("max_tokens: Field required")
    # bool is an int subclass; `"max_tokens": true` must not mean 1.
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequestError(
            f"max_tokens: Input should be an integer >= 1, got {max_tokens!r}"
        )
    messages = doc.get("messages")
    if messages is None:
        raise InvalidRequestError("messages: Field required")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"messages.{i}: Input should be an object")
        if message.get("role") not in _ROLES:
            raise InvalidRequestError(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise InvalidRequestError(f"messages.{i}.content: Field required")
        _check_content(message["content"], f"messages.{i}.content")
    system = _check_system(doc.get("system"))
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("stream: Input should be a valid boolean")
    return MessagesRequest(model, messages, system, max_tokens, bool(stream))


@dataclass(frozen=True, slots=True)
class Reply:
    pieces: list[str]
    stop_reason: str
    input_tokens: int
    # Of input_tokens, those reported as read from the cache (the `cached` fault key).
    cached_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        return len(self.pieces)

    def input_usage(self) -> dict[str, int]:
        """The input side of usage: Anthropic's input_tokens excludes cache reads."""
        usage = {"input_tokens": self.input_tokens - self.cached_tokens}
        if self.cached_tokens:
            usage["cache_read_input_tokens"] = self.cached_tokens
        return usage


def build_reply(req: MessagesRequest, fault: Fault) -> Reply:
    pieces, truncated = reply_pieces(req.messages, max_tokens=req.max_tokens, chunks=fault.chunks)
    input_tokens = prompt_tokens(req.messages)
    if req.system is not None:
        input_tokens += count_tokens(req.system) + MESSAGE_OVERHEAD_TOKENS
    stop_reason = "max_tokens" if truncated else "end_turn"
    return Reply(pieces, stop_reason, input_tokens, fault.cached_part(input_tokens))


def _has_credentials(request: web.Request) -> bool:
    """An API key in ``x-api-key``, or a bearer token (how the anthropic client sends it)."""
    if request.headers.get(API_KEY_HEADER, "").strip():
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _abort(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Drop the connection so the client sees a reset instead of a (complete) response."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp still wants a response object; finishing it fails quietly on the closed transport.
    return response if response is not None else web.Response(status=500)


# Anthropic's error inside a stream whose 200 has left: an SSE ``error`` event, after
# which the stream ends without message_delta or message_stop. Overloaded is the one
# Anthropic documents as happening mid-stream.
STREAM_ERROR = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded (injected by x-mock-fault)"},
}


async def _fail_stream(
    response: web.StreamResponse, send: Callable[[str, dict[str, Any]], Awaitable[None]]
) -> web.StreamResponse:
    """End a stream with Anthropic's mid-stream error event (the ``error_after`` fault)."""
    await send("error", STREAM_ERROR)
    await response.write_eof()
    return response


class AnthropicEndpoints:
    """Request handlers for Anthropic's endpoints; one instance per mock application."""

    def __init__(self, *, chunk_delay_s: float, default_fault: Fault) -> None:
        self._chunk_delay_s = chunk_delay_s
        self._default_fault = default_fault
        self._ids = itertools.count(1)

    async def _precheck(self, request: web.Request) -> web.Response | Fault:
        """Authentication, the API version and the request's fault; a response ends the request."""
        if not _has_credentials(request):
            return error_response(401, MISSING_KEY_MESSAGE)
        if not request.headers.get(VERSION_HEADER, "").strip():
            return error_response(400, "anthropic-version: header is required")
        spec = request.headers.get(FAULT_HEADER)
        try:
            fault = self._default_fault if spec is None else parse_fault(spec)
        except FaultSpecError as exc:
            return error_response(400, str(exc))
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.status is not None:
            return fault_status_response(fault.status)
        return fault

    async def messages(self, request: web.Request, body: Body) -> web.StreamResponse:
        fault = await self._precheck(request)
        if isinstance(fault, web.Response):
            return fault
        try:
            req = parse_messages_request(body)
        except InvalidRequestError as exc:
            return error_response(400, str(exc))
        reply = build_reply(req, fault)
        try:
            scripted = scripted_pieces(request.headers)
        except ScriptError as exc:
            return error_response(400, str(exc))
        if scripted is not None:
            reply = replace(reply, pieces=scripted, stop_reason="end_turn")
        message_id = f"msg_mock_{next(self._ids)}"
        if req.stream:
            return await self._stream(request, req, reply, fault, message_id)
        if fault.reset_after is not None:
            return _abort(request)
        if fault.garbage:
            return web.Response(body=_GARBAGE, headers=_JSON_HEADERS)
        document = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": {**reply.input_usage(), "output_tokens": reply.output_tokens},
        }
        return web.Response(body=orjson.dumps(document), headers=_JSON_HEADERS)

    async def _stream(
        self,
        request: web.Request,
        req: MessagesRequest,
        reply: Reply,
        fault: Fault,
        message_id: str,
    ) -> web.StreamResponse:
        def event(name: str, data: dict[str, Any]) -> bytes:
            payload = _GARBAGE_DATA if fault.garbage else orjson.dumps(data)
            return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"

        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        # One write per event, so each reaches the client as its own HTTP chunk.
        writes = 0
        interval = self._chunk_delay_s if fault.interval_s is None else fault.interval_s

        async def send(name: str, data: dict[str, Any]) -> None:
            nonlocal writes
            if writes and interval:
                await asyncio.sleep(interval)
            writes += 1
            await response.write(event(name, data))

        start_message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Anthropic reports the input up front and a placeholder output count of 1.
            "usage": {**reply.input_usage(), "output_tokens": 1},
        }
        try:
            await send("message_start", {"type": "message_start", "message": start_message})
            await send(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            await send("ping", {"type": "ping"})
            for sent, piece in enumerate(reply.pieces):
                if sent == fault.reset_after:
                    return _abort(request, response)
                if sent == fault.error_after:
                    return await _fail_stream(response, send)
                await send(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
            if fault.reset_after is not None:
                # Fewer pieces than reset_after: the stream must still never finish.
                return _abort(request, response)
            if fault.error_after is not None:
                # Fewer pieces than error_after: the stream must still fail.
                return await _fail_stream(response, send)
            await send("content_block_stop", {"type": "content_block_stop", "index": 0})
            await send(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": reply.output_tokens},
                },
            )
            await send("message_stop", {"type": "message_stop"})
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream; nothing left to tell it
        return response
