"""The mock's OpenAI surface: chat completions (plain and SSE streaming), the model list, errors.

Replies and token counts are deterministic (the rules are in ``tokens``). In OpenAI's terms:
``prompt_tokens`` is the input count, ``completion_tokens`` the number of reply pieces sent,
``max_tokens`` (or ``max_completion_tokens``) keeps the first N pieces and sets
``finish_reason`` to "length", and a stream sends one content chunk per piece.

``service_tier`` is answered as OpenAI answers it, at the top level of the completion and
of every chunk: the tier asked for serves the request (``flex``, ``priority``, ``scale``;
``fast`` is shown as ``priority``), ``auto``, ``default`` or none is served at ``default``.
Another value is refused with a 400 naming ``service_tier``.

A stream asked for its usage reports it as OpenAI does, in one usage-only chunk last.
With the ``error_after`` fault it ends with OpenAI's ``data: {"error": ...}`` after that
many content chunks, with ``end_after`` its body just ends there (no finish chunk, no
usage chunk, no ``[DONE]``); with ``error_quotes_user`` as well, that event refuses the
request's ``user`` value, quoting it (a provider that validates a field mid-stream and
quotes what it was sent); with ``error_first`` that event, in the status's form, is the
stream's first, before the role chunk (the provider never began its answer).
With ``x-mock-usage: every-chunk`` it reports it as Gemini's OpenAI endpoint and vLLM's
``continuous_usage_stats`` do as well: every chunk carries the running count (the pieces
sent so far, that chunk's included), the finish chunk the final one.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.chat_audio import (
    asks_for_audio,
    audio_output_tokens,
    audio_prompt_tokens,
    data_delta,
    spoken_message,
    transcript_delta,
)
from extproc.mock_llm.error_bodies import anthropic_error, error_in_success, google_error_list
from extproc.mock_llm.faults import FAULT_HEADER, Fault, FaultSpecError, parse_fault
from extproc.mock_llm.json_reply import json_reply
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.scripted import REPLY_HEADER, ScriptError, scripted_pieces
from extproc.mock_llm.strict_schemas import strict_schema_error
from extproc.mock_llm.tokens import prompt_tokens, reply_pieces, reply_text

SYSTEM_FINGERPRINT = "fp_mock"
MODELS_CREATED = 1_700_000_000  # fixed so the model list is byte-for-byte stable

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_SSE_DONE = b"data: [DONE]\n\n"
_GARBAGE = b'{"id": "chatcmpl-garbage", this is not json'
# Where a stream asked for its usage reports it beside the usage-only chunk (module doc).
USAGE_HEADER = "x-mock-usage"
EVERY_CHUNK = "every-chunk"
# The service_tier a request may ask for -> the one OpenAI reports serving it at.
SERVICE_TIERS = {
    "auto": "default",
    "default": "default",
    "flex": "flex",
    "scale": "scale",
    "priority": "priority",
    "fast": "priority",
}


class InvalidRequestError(Exception):
    """A request OpenAI would reject with 400; carries the fields of OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    # OpenAI's response_format: JSON answers when it asks for them (json_reply).
    response_format: Any = None
    # The tier that serves the request, as the answer reports it (SERVICE_TIERS); None:
    # no top-level service_tier (Vertex's OpenAI-compatible endpoint writes none).
    service_tier: str | None = "default"
    # Asked for a spoken answer (``modalities`` holds "audio"; chat_audio).
    spoken: bool = False
    # The request's ``user`` (the ``error_quotes_user`` fault's event quotes it).
    user: str | None = None


def optional_positive_int(doc: dict[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    # bool is an int subclass; `"max_tokens": true` must not mean 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequestError(
            f"Invalid '{name}': expected an integer >= 1, got {value!r}.", name, "invalid_value"
        )
    return value


def json_request(body: Body) -> tuple[dict[str, Any], str]:
    """A request body as OpenAI reads it first: a JSON object, and its ``model``."""
    if not body.is_json or not isinstance(body.json, dict):
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be a JSON object."
        )
    doc: dict[str, Any] = body.json
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError(
            "you must provide a model parameter", "model", "missing_required_parameter"
        )
    return doc, model


def parse_chat_request(body: Body) -> ChatRequest:
    """Validate the fields the mock relies on; everything else is accepted and ignored."""
    doc, model = json_request(body)
    messages = doc.get("messages")
    if messages is None:
        raise InvalidRequestError(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError(
            "Invalid 'messages': expected a non-empty array of message objects.",
            "messages",
            "empty_array" if isinstance(messages, list) else "invalid_type",
        )
    if not all(isinstance(m, dict) for m in messages):
        raise InvalidRequestError(
            "Invalid 'messages': every message must be an object.", "messages", "invalid_type"
        )
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("Invalid 'stream': expected a boolean.", "stream", "invalid_type")
    stream_options = doc.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    # max_completion_tokens supersedes the deprecated max_tokens when both are sent.
    max_tokens = optional_positive_int(doc, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = optional_positive_int(doc, "max_tokens")
    schema_error = strict_schema_error(doc.get("response_format"))
    if schema_error is not None:
        raise InvalidRequestError(schema_error, "response_format")
    return ChatRequest(
        model,
        messages,
        bool(stream),
        include_usage,
        max_tokens,
        doc.get("response_format"),
        served_tier(doc.get("service_tier")),
        asks_for_audio(doc),
        user if isinstance(user := doc.get("user"), str) else None,
    )


def served_tier(asked: Any) -> str:
    """The tier that serves a request asking for ``asked`` (None: not asked)."""
    if asked is None:
        return "default"
    served = SERVICE_TIERS.get(asked) if isinstance(asked, str) else None
    if served is None:
        supported = ", ".join(f"'{tier}'" for tier in SERVICE_TIERS)
        raise InvalidRequestError(
            f"Invalid value for 'service_tier': {asked!r}. Supported values are: {supported}.",
            "service_tier",
            "invalid_value",
        )
    return served


@dataclass(frozen=True, slots=True)
class Completion:
    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    # Prompt tokens reported as read from the cache (the `cached` fault key).
    cached_tokens: int = 0
    # Vertex's traffic type, reported in usage.extra_properties.google (vertex_api).
    google_traffic_type: str | None = None
    # Of prompt_tokens, those of the request's audio (chat_audio).
    audio_prompt_tokens: int = 0
    # A spoken answer: its pieces count audio tokens too (chat_audio).
    spoken: bool = False

    @property
    def content(self) -> str:
        return "".join(self.pieces)

    def usage(self, sent: int | None = None) -> dict[str, Any]:
        """The usage of the whole answer, or of its first ``sent`` pieces (a running count)."""
        text_tokens = len(self.pieces) if sent is None else sent
        audio_out = audio_output_tokens(text_tokens) if self.spoken else 0
        completion_tokens = text_tokens + audio_out
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }
        if self.cached_tokens or self.audio_prompt_tokens:
            usage["prompt_tokens_details"] = {
                "cached_tokens": self.cached_tokens,
                "audio_tokens": self.audio_prompt_tokens,
            }
        if self.spoken:
            usage["completion_tokens_details"] = {
                "reasoning_tokens": 0,
                "audio_tokens": audio_out,
                "text_tokens": text_tokens,
            }
        if self.google_traffic_type is not None:
            usage["extra_properties"] = {"google": {"traffic_type": self.google_traffic_type}}
        return usage


def build_completion(chat: ChatRequest, fault: Fault) -> Completion:
    as_json = json_reply(chat.response_format, reply_text(chat.messages))
    pieces, truncated = reply_pieces(
        chat.messages, max_tokens=chat.max_tokens, chunks=fault.chunks, text=as_json
    )
    finish_reason = "length" if truncated else "stop"
    audio = audio_prompt_tokens(chat.messages)
    prompt = prompt_tokens(chat.messages) + audio
    return Completion(
        pieces,
        finish_reason,
        prompt,
        fault.cached_part(prompt),
        audio_prompt_tokens=audio,
        spoken=chat.spoken,
    )


def error_response(
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in OpenAI's shape, which the openai client turns into its typed exceptions."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), headers={**_JSON_HEADERS, **(headers or {})}
    )


def masked_key(key: str) -> str:
    """How OpenAI echoes a key it refused: its first eight and last four characters."""
    return key[:8] + "*" * max(len(key) - 12, 4) + key[-4:]


def fault_status_response(status: int, presented_key: str = "") -> web.Response:
    if status == 401:
        # OpenAI's own 401 names a fragment of the key it was sent; a gateway that
        # passes it through shows its clients a piece of the provider's key.
        return error_response(
            401,
            f"Incorrect API key provided: {masked_key(presented_key)}. You can find your "
            "API key at https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )
    fields = fault_error_fields(status)
    headers = {"retry-after": "1"} if status == 429 else None
    return error_response(
        status,
        fields["message"],
        error_type=fields["type"],
        code=fields["code"],
        headers=headers,
    )


def fault_error_fields(status: int) -> dict[str, Any]:
    """The fields of OpenAI's error for a status fault (not a 401: it names the key),
    which a stream's first event carries too (the ``error_first`` fault)."""
    if status == 429:
        message, error_type, code = (
            "Rate limit reached (injected by x-mock-fault).",
            "rate_limit_error",
            "rate_limit_exceeded",
        )
    elif status >= 500:
        message, error_type, code = (
            "The server had an error (injected by x-mock-fault).",
            "server_error",
            None,
        )
    else:
        message, error_type, code = (
            f"Injected error {status} (x-mock-fault).",
            "invalid_request_error",
            None,
        )
    return {"message": message, "type": error_type, "param": None, "code": code}


def _abort(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Drop the connection so the client sees a reset instead of a (complete) response."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp still wants a response object; finishing it fails quietly on the closed transport.
    return response if response is not None else web.Response(status=500)


# OpenAI's error event inside a stream whose 200 has left: an SSE data line holding
# {"error": ...} (no event name), after which the stream ends without [DONE].
STREAM_ERROR_EVENT = (
    b"data: "
    + orjson.dumps(
        {
            "error": {
                "message": "The server had an error while processing your request."
                " (injected by x-mock-fault)",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    )
    + b"\n\n"
)


# The ``error_after`` fault's event with ``anthropic_errors``: a proxy in front of Claude
# failing an OpenAI stream the way Anthropic's API fails its own.
ANTHROPIC_STREAM_ERROR_EVENT = (
    b"event: error\ndata: "
    + orjson.dumps(
        {
            "type": "error",
            "error": {
                "type": "overloaded_error",
                "message": "Overloaded (injected by x-mock-fault)",
            },
        }
    )
    + b"\n\n"
)


def user_refused_event(user: str | None) -> bytes:
    """The ``error_quotes_user`` fault's mid-stream event: OpenAI's error refusing the
    request's ``user``, quoting it as OpenAI's 400s quote the value they refuse."""
    said = f"Invalid value for 'user': {user!r} (injected by x-mock-fault)."
    error = {"message": said, "type": "invalid_request_error", "param": "user", "code": None}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


def first_error_event(status: int) -> bytes:
    """A stream's first event when the provider fails it before its answer began (the
    ``error_first`` fault): the error of that status's answer, as a data event."""
    return b"data: " + orjson.dumps({"error": fault_error_fields(status)}) + b"\n\n"


async def _fail_stream(
    response: web.StreamResponse,
    send: Callable[[bytes], Awaitable[None]],
    event: bytes = STREAM_ERROR_EVENT,
) -> web.StreamResponse:
    """End a stream with OpenAI's error event (the ``error_after`` and ``error_first``
    faults)."""
    await send(event)
    await response.write_eof()
    return response


class OpenAIEndpoints:
    """Request handlers for the OpenAI endpoints; one instance per mock application."""

    def __init__(
        self, *, models: Sequence[str], chunk_delay_s: float, default_fault: Fault
    ) -> None:
        self._chunk_delay_s = chunk_delay_s
        self._default_fault = default_fault
        self._ids = itertools.count(1)
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": MODELS_CREATED, "owned_by": "mock"}
                    for m in models
                ],
            }
        )

    async def _precheck(self, request: web.Request) -> web.Response | Fault:
        return await precheck(request, self._default_fault)

    async def models(self, request: web.Request, body: Body) -> web.StreamResponse:
        fault = await self._precheck(request)
        if isinstance(fault, web.Response):
            return fault
        if fault.reset_after is not None:
            return _abort(request)
        if fault.garbage:
            return web.Response(body=_GARBAGE, headers=_JSON_HEADERS)
        return web.Response(body=self._models_body, headers=_JSON_HEADERS)

    async def chat_completions(
        self, request: web.Request, body: Body, *, google_traffic_type: str | None = None
    ) -> web.StreamResponse:
        """A chat completion; ``google_traffic_type`` answers as Vertex's OpenAI-compatible
        endpoint does: no top-level ``service_tier``, that traffic type in the usage."""
        fault = await self._precheck(request)
        if isinstance(fault, web.Response):
            return fault
        try:
            chat = parse_chat_request(body)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        completion = build_completion(chat, fault)
        if google_traffic_type is not None:
            chat = replace(chat, service_tier=None)
            completion = replace(completion, google_traffic_type=google_traffic_type)
        try:
            scripted = scripted_pieces(request.headers)
        except ScriptError as exc:
            return error_response(400, str(exc), param=REPLY_HEADER)
        if scripted is not None:
            completion = replace(completion, pieces=scripted, finish_reason="stop")
        if fault.stream_anyway and not chat.stream:
            # Streamed regardless of the request, usage chunk and all, as such servers do.
            chat = replace(chat, stream=True, include_usage=True)
        if chat.stream:
            return await self._stream(request, chat, completion, fault)
        if fault.reset_after is not None:
            return _abort(request)
        if fault.garbage:
            return web.Response(body=_GARBAGE, headers=_JSON_HEADERS)
        number, created = next(self._ids), int(time.time())
        message: dict[str, Any] = {"role": "assistant", "content": completion.content}
        if completion.spoken:
            message = spoken_message(f"audio_mock_{number}", completion.content, created)
        document = {
            "id": f"chatcmpl-mock-{number}",
            "object": "chat.completion",
            "created": created,
            "model": chat.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": completion.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": completion.usage(),
            "service_tier": chat.service_tier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if chat.service_tier is None:
            del document["service_tier"]
        return web.Response(body=orjson.dumps(document), headers=_JSON_HEADERS)

    async def _stream(
        self, request: web.Request, chat: ChatRequest, completion: Completion, fault: Fault
    ) -> web.StreamResponse:
        number = next(self._ids)
        completion_id, audio_id = f"chatcmpl-mock-{number}", f"audio_mock_{number}"
        created = int(time.time())

        def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> bytes:
            if fault.garbage:
                return b"data: {this is not json\n\n"
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": chat.model,
                "service_tier": chat.service_tier,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }
            if chat.service_tier is None:
                del chunk["service_tier"]
            # OpenAI sends "usage": null on every chunk once include_usage is on.
            if chat.include_usage and not fault.no_usage:
                chunk["usage"] = usage
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        def piece_delta(sent: int, piece: str) -> dict[str, Any]:
            if completion.spoken:
                return transcript_delta(audio_id, piece, first=sent == 0)
            return {"content": piece}

        def choice(delta: dict[str, Any], finish_reason: str | None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

        every_chunk = request.headers.get(USAGE_HEADER) == EVERY_CHUNK

        def running(sent: int | None) -> dict[str, Any] | None:
            """A content chunk's usage: null, or the running count of ``x-mock-usage``."""
            return completion.usage(sent) if every_chunk else None

        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        # One write per event, so each reaches the client as its own HTTP chunk.
        writes = 0
        interval = self._chunk_delay_s if fault.interval_s is None else fault.interval_s

        async def send(data: bytes) -> None:
            nonlocal writes
            pause = fault.pause_before_event(writes, interval)
            if pause:
                await asyncio.sleep(pause)
            writes += 1
            # An event's JSON holds no raw line end (JSON escapes them): each LF ends a line.
            await response.write(data.replace(b"\n", b"\r\n") if fault.crlf else data)

        mid_stream_error = (
            ANTHROPIC_STREAM_ERROR_EVENT if fault.anthropic_errors else STREAM_ERROR_EVENT
        )
        if fault.error_quotes_user:
            mid_stream_error = user_refused_event(chat.user)
        try:
            if fault.error_first is not None:
                # Before the role chunk: the provider never began its answer.
                return await _fail_stream(response, send, first_error_event(fault.error_first))
            await send(event(choice({"role": "assistant", "content": ""}, None), running(0)))
            for sent, piece in enumerate(completion.pieces):
                if sent == fault.reset_after:
                    return _abort(request, response)
                if sent == fault.error_after:
                    return await _fail_stream(response, send, mid_stream_error)
                if sent == fault.end_after:
                    return response  # aiohttp ends the body: a clean, early end
                content = event(choice(piece_delta(sent, piece), None), running(sent + 1))
                if sent == fault.end_inside:
                    return await _end_inside(response, send, content)
                if sent == fault.end_before_blank:
                    return await _end_before_blank(response, send, content)
                await send(content)
            if fault.end_inside is not None:
                # Fewer pieces than end_inside: the stream must still end inside an event.
                return await _end_inside(response, send, event(choice({}, "stop"), None))
            if fault.end_before_blank is not None:
                # Fewer pieces: the stream must still end before an event's blank line.
                finish = event(choice({}, "stop"), None)
                return await _end_before_blank(response, send, finish)
            if fault.reset_after is not None:
                # Fewer pieces than reset_after: the stream must still never finish.
                return _abort(request, response)
            if fault.error_after is not None:
                # Fewer pieces than error_after: the stream must still fail.
                return await _fail_stream(response, send, mid_stream_error)
            if fault.end_after is not None:
                return response  # fewer pieces than end_after: it must still end early
            if completion.spoken:
                spoken = data_delta(completion.content, created)
                await send(event(choice(spoken, None), running(len(completion.pieces))))
            await send(event(choice({}, completion.finish_reason), running(None)))
            if chat.include_usage and not fault.no_usage:
                await send(event([], completion.usage()))
            await send(_SSE_DONE)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream; nothing left to tell it
        return response


async def precheck(request: web.Request, default_fault: Fault) -> web.Response | Fault:
    """OpenAI's key check and the request's fault (``x-mock-fault``, else the mock's
    default); a response here ends the request."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return error_response(
            401,
            "You didn't provide an API key. Provide it as 'Authorization: Bearer KEY'.",
            code="invalid_api_key",
        )
    spec = request.headers.get(FAULT_HEADER)
    try:
        fault = default_fault if spec is None else parse_fault(spec)
    except FaultSpecError as exc:
        return error_response(400, str(exc), param=FAULT_HEADER, code="invalid_fault")
    if fault.delay_s:
        await asyncio.sleep(fault.delay_s)
    if fault.status is not None and fault.anthropic_errors:
        # As an OpenAI-compatible endpoint in front of Claude may answer OpenAI clients.
        return anthropic_error(fault.status, f"Injected error {fault.status} (x-mock-fault).")
    if fault.status is not None and fault.google_errors:
        # As Gemini's OpenAI-compatible endpoint answers OpenAI clients.
        return google_error_list(fault.status, f"Injected error {fault.status} (x-mock-fault).")
    if fault.status is not None:
        return fault_status_response(fault.status, key.strip())
    if fault.error_body is not None:
        return error_in_success(fault.error_body)
    return fault


async def _end_before_blank(
    response: web.StreamResponse, send: Callable[[bytes], Awaitable[None]], event: bytes
) -> web.StreamResponse:
    """The ``end_before_blank`` fault: ``event``'s line without the blank line that ends the
    event, then the body's clean end (aiohttp ends it when the handler returns)."""
    await send(event.removesuffix(b"\n"))
    return response


async def _end_inside(
    response: web.StreamResponse, send: Callable[[bytes], Awaitable[None]], event: bytes
) -> web.StreamResponse:
    """The ``end_inside`` fault: the first half of ``event``, then the body's clean end
    (aiohttp ends it when the handler returns), as a proxy ends an upstream reset mid-line."""
    await send(event[: len(event) // 2])
    return response
