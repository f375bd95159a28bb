"""Gemini's native API on the mock's Vertex AI surface: generateContent, its stream and
countTokens, for Google's own models (``gemini-...``, ``gemma-...``).

``vertex_api`` checks the token, project, region and fault first and routes
``.../publishers/google/models/{model}:{method}`` here. What is answered, in the shared
rules of ``tokens`` (so one prompt costs the same on every surface):

- A content's text is its text parts joined by a space (other parts, images, function
  calls, count nothing); ``systemInstruction`` counts as one more content.
  ``promptTokenCount`` = sum over contents of (tokens + 4), + 2. The reply quotes the last
  content whose role is ``user`` (a content without a role is the user's, as Google takes
  it); ``x-mock-reply`` chooses it instead (``scripted``).
- ``generationConfig.maxOutputTokens`` keeps the first N pieces, ``finishReason``
  ``MAX_TOKENS``, else ``STOP``. A positive ``thinkingConfig.thinkingBudget`` reports
  ``thoughtsTokenCount`` = min(budget, 8), billed as output: in ``totalTokenCount``, not
  in ``candidatesTokenCount``. The ``cached`` fault reports ``cachedContentTokenCount``,
  a part of ``promptTokenCount`` as Google counts it. ``trafficType`` is the capacity
  the request's headers ask for (``traffic_type``): ``ON_DEMAND_PRIORITY`` or
  ``ON_DEMAND_FLEX`` for ``X-Vertex-AI-LLM-Shared-Request-Type: priority`` or ``flex``,
  ``PROVISIONED_THROUGHPUT`` for ``X-Vertex-AI-LLM-Request-Type: dedicated``, else
  ``ON_DEMAND``.
- ``:streamGenerateContent?alt=sse``: one event per piece, ``data: <JSON>`` and
  ``\\r\\n\\r\\n`` as Google writes them. Every event carries ``usageMetadata``, the output
  count growing with the text sent (thinking comes first, so its count is in every
  event); the last event carries ``finishReason`` and the bill. Without ``alt=sse`` the
  same chunks come as one JSON array, as Google answers a client that forgets it.
  ``error_after`` ends either with Google's ``{"error": {...}}`` as an event or element;
  ``error_first`` sends that status's error (``RESOURCE_EXHAUSTED``, ``INTERNAL``,
  ``UNAVAILABLE``) so, as the first and only one.
- An image model (a name with ``-image``: ``gemini-2.5-flash-image``) answers one picture
  too, an ``inlineData`` PNG part after the text of the first chunk (or of the whole
  answer), counted as Google counts a 1024x1024 image: ``IMAGE_TOKENS`` more in
  ``candidatesTokenCount``, and ``candidatesTokensDetails`` giving the ``TEXT`` and
  ``IMAGE`` parts, in every event from the one that carries it.
- ``:countTokens``: ``{"totalTokens": N}`` for ``{"contents"[, "systemInstruction"]}`` or
  ``{"generateContentRequest": {...}}``, N the ``promptTokenCount`` generateContent reports.

Requests are read as the REST API reads them, camelCase or snake_case field names
(google-genai 3.6 itself sends ``thinkingConfig: {"thinking_budget": N}``). Refused with
Google's 400 ``INVALID_ARGUMENT`` naming the field: ``contents`` missing, not a list or
empty, a content or part that is not an object, ``parts`` not a list, a ``role`` other
than ``user`` and ``model``, a ``maxOutputTokens`` or ``thinkingBudget`` that is not an
integer. Other fields are taken and ignored.

Not modelled: one candidate whatever ``candidateCount`` asks; no thought summary parts
(``includeThoughts``), function calls, JSON answers (``responseSchema``) or safety ratings.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.error_bodies import google_error
from extproc.mock_llm.faults import Fault
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.scripted import ScriptError, scripted_pieces
from extproc.mock_llm.tokens import prompt_tokens, reply_pieces

# The methods a Google model serves, after the colon of its path.
GENERATE = "generateContent"
STREAM = "streamGenerateContent"
COUNT = "countTokens"
GEMINI_CALL = re.compile(
    rf"/publishers/google/models/(?P<model>[^/:]+):(?P<method>{GENERATE}|{STREAM}|{COUNT})"
)
# Google's own models on Vertex; another name under publishers/google is not found.
_GOOGLE_MODEL = re.compile(r"(?:gemini|gemma)-[a-z0-9][a-z0-9.-]*(?:@[a-z0-9.-]+)?")
ROLES = ("user", "model")
# thoughtsTokenCount for a positive thinking budget: min(budget, this).
THOUGHT_TOKENS = 8
# What Gemini's image models count for one 1024x1024 picture, billed at the image price.
IMAGE_TOKENS = 1290
# An image model's name holds this (gemini-2.5-flash-image, gemini-3-pro-image-preview).
_IMAGE_MODEL = "-image"
# The picture an image model answers: a 1x1 PNG, base64 as Google sends inlineData.
_PICTURE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAA"
    "AABJRU5ErkJggg=="
)
INVALID_JSON = "Invalid JSON payload received. The body must be a JSON object."
_ROLE_MESSAGE = "Please use a valid role: user, model."
STREAM_ERROR_MESSAGE = "Internal error encountered. (injected by x-mock-fault)"

_JSON_HEADERS = {"Content-Type": "application/json; charset=UTF-8"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_GARBAGE = b'{"candidates": [{"content": this is not json'
_GARBAGE_CHUNK = b"{this is not json"
_STREAM_ERROR = {"error": {"code": 500, "message": STREAM_ERROR_MESSAGE, "status": "INTERNAL"}}


# The headers that choose the capacity serving a request, and the trafficType each
# choice is answered with (Priority PayGo, Flex PayGo, Provisioned Throughput alone).
SHARED_REQUEST_TYPE = "X-Vertex-AI-LLM-Shared-Request-Type"
REQUEST_TYPE = "X-Vertex-AI-LLM-Request-Type"
_SHARED_TRAFFIC = {"priority": "ON_DEMAND_PRIORITY", "flex": "ON_DEMAND_FLEX"}


def traffic_type(headers: Mapping[str, str]) -> str:
    """The ``trafficType`` Vertex reports for a request with ``headers``: the shared
    capacity its ``X-Vertex-AI-LLM-Shared-Request-Type`` asks for, Provisioned
    Throughput for ``X-Vertex-AI-LLM-Request-Type: dedicated``, else pay as you go."""
    if headers.get(REQUEST_TYPE, "").lower() == "dedicated":
        return "PROVISIONED_THROUGHPUT"
    return _SHARED_TRAFFIC.get(headers.get(SHARED_REQUEST_TYPE, "").lower(), "ON_DEMAND")


def is_google_model(model: str) -> bool:
    """Whether ``model`` names one of Google's models (Gemini, Gemma)."""
    return _GOOGLE_MODEL.fullmatch(model) is not None


class InvalidArgumentError(Exception):
    """A request Google refuses with 400 INVALID_ARGUMENT; the message names the field."""


def _field(doc: Mapping[str, Any], camel: str) -> Any:
    """A field by its camelCase name or, as the REST API also takes it, its snake_case one."""
    if camel in doc:
        return doc[camel]
    return doc.get(re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower())


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"Invalid value at '{where}': expected an object.")
    return value


def _text(container: dict[str, Any], where: str) -> str:
    """The text parts of a content (or system instruction), joined by a space."""
    parts = _field(container, "parts")
    if parts is None:
        return ""
    if not isinstance(parts, list):
        raise InvalidArgumentError(f"Invalid value at '{where}.parts': expected a list of parts.")
    texts = []
    for k, part in enumerate(parts):
        text = _object(part, f"{where}.parts[{k}]").get("text")
        if isinstance(text, str):
            texts.append(text)
    return " ".join(texts)


def _messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's contents as the shared rules read messages (role, text), the system
    instruction first as one more; InvalidArgumentError names a refused field."""
    contents = _field(doc, "contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidArgumentError(
            "Invalid value at 'contents': a request must include at least one content."
        )
    messages = []
    system = _field(doc, "systemInstruction")
    if system is not None:
        text = _text(_object(system, "systemInstruction"), "systemInstruction")
        messages.append({"role": "system", "content": text})
    for i, raw in enumerate(contents):
        content = _object(raw, f"contents[{i}]")
        # An unset role (absent, null or empty, as protobuf's JSON reads them) is the user's.
        role = content.get("role") or "user"
        if role not in ROLES:
            raise InvalidArgumentError(f"Invalid value at 'contents[{i}].role': {_ROLE_MESSAGE}")
        messages.append({"role": role, "content": _text(content, f"contents[{i}]")})
    return messages


def _optional_int(config: Mapping[str, Any], camel: str, where: str) -> int | None:
    value = _field(config, camel)
    # bool is an int subclass; `true` must not mean 1.
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidArgumentError(f"Invalid value at '{where}': expected an integer.")
    return value


@dataclass(frozen=True, slots=True)
class GeminiRequest:
    messages: list[dict[str, Any]]
    max_output_tokens: int | None
    thoughts: int  # thoughtsTokenCount to report; 0: no thinking

    @property
    def prompt_tokens(self) -> int:
        return prompt_tokens(self.messages)


def parse_generate_request(body: Body) -> GeminiRequest:
    """A GenerateContentRequest; InvalidArgumentError names the field Google refuses."""
    if not body.is_json or not isinstance(body.json, dict):
        raise InvalidArgumentError(INVALID_JSON)
    messages = _messages(body.json)
    config = _field(body.json, "generationConfig")
    config = {} if config is None else _object(config, "generationConfig")
    limit = _optional_int(config, "maxOutputTokens", "generationConfig.maxOutputTokens")
    if limit is not None and limit < 1:
        raise InvalidArgumentError(
            "Invalid value at 'generationConfig.maxOutputTokens': expected an integer >= 1."
        )
    thinking = _field(config, "thinkingConfig")
    thinking = {} if thinking is None else _object(thinking, "generationConfig.thinkingConfig")
    budget = _optional_int(
        thinking, "thinkingBudget", "generationConfig.thinkingConfig.thinkingBudget"
    )
    thoughts = min(budget, THOUGHT_TOKENS) if budget is not None and budget > 0 else 0
    return GeminiRequest(messages, limit, thoughts)


def count_request_tokens(body: Body) -> int:
    """countTokens' ``totalTokens``: the prompt of ``{"contents": ...}`` or of
    ``{"generateContentRequest": {...}}``."""
    if not body.is_json or not isinstance(body.json, dict):
        raise InvalidArgumentError(INVALID_JSON)
    inner = _field(body.json, "generateContentRequest")
    doc = body.json if inner is None else _object(inner, "generateContentRequest")
    return prompt_tokens(_messages(doc))


@dataclass(frozen=True, slots=True)
class Answer:
    """What one generateContent call answers, and how it reports its usage."""

    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    thoughts: int
    cached: int
    model: str
    response_id: str
    create_time: str
    traffic_type: str = "ON_DEMAND"
    # The picture's tokens of an image model's answer, sent with its first chunk; 0: none.
    image_tokens: int = 0

    def usage(self, sent: int | None = None) -> dict[str, Any]:
        """``usageMetadata`` of the whole answer, or of its first ``sent`` pieces."""
        text = len(self.pieces) if sent is None else sent
        candidates = text + self.image_tokens
        usage: dict[str, Any] = {
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": candidates,
            "totalTokenCount": self.prompt_tokens + candidates + self.thoughts,
        }
        if self.image_tokens:
            usage["candidatesTokensDetails"] = [
                {"modality": "TEXT", "tokenCount": text},
                {"modality": "IMAGE", "tokenCount": self.image_tokens},
            ]
        if self.thoughts:
            usage["thoughtsTokenCount"] = self.thoughts
        if self.cached:
            usage["cachedContentTokenCount"] = self.cached
        usage["trafficType"] = self.traffic_type
        return usage

    def document(
        self, text: str, *, finish: bool, sent: int | None, with_usage: bool
    ) -> dict[str, Any]:
        """A GenerateContentResponse carrying ``text``: the whole answer, or a stream's
        chunk (``finish``: its last, with the finish reason and the bill). An image
        model's picture comes with the whole answer, or with a stream's first chunk."""
        parts: list[dict[str, Any]] = [{"text": text}]
        if self.image_tokens and (sent is None or sent <= 1):
            parts.append({"inlineData": {"mimeType": "image/png", "data": _PICTURE}})
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
        if finish:
            candidate["finishReason"] = self.finish_reason
        candidate["index"] = 0
        document: dict[str, Any] = {"candidates": [candidate]}
        if with_usage:
            document["usageMetadata"] = self.usage(None if finish else sent)
        document.update(
            modelVersion=self.model, createTime=self.create_time, responseId=self.response_id
        )
        return document


def _now() -> str:
    """The time as Google writes ``createTime`` (RFC 3339, microseconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def abort_connection(
    request: web.Request, response: web.StreamResponse | None = None
) -> web.StreamResponse:
    """Drop the connection so the client sees a reset instead of a (complete) response."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp still wants a response object; finishing it fails quietly on the closed transport.
    return response if response is not None else web.Response(status=500)


class _Framing:
    """How a stream's chunks are written: SSE events, or the elements of one JSON array."""

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.headers = _SSE_HEADERS if sse else _JSON_HEADERS
        self._written = 0

    def chunk(self, data: bytes) -> bytes:
        self._written += 1
        if self.sse:
            return b"data: " + data + b"\r\n\r\n"
        return (b"[" if self._written == 1 else b",\r\n") + data

    def end(self) -> bytes:
        if self.sse:
            return b""
        return b"]" if self._written else b"[]"


class GeminiEndpoints:
    """Answers Gemini's methods. ``vertex_api`` has checked the token, the project, the
    region, the fault's delay and status, and turns InvalidArgumentError, raised before
    anything is sent, into Google's 400: the error shape is its business."""

    def __init__(self, *, chunk_delay_s: float) -> None:
        self._chunk_delay_s = chunk_delay_s
        self._ids = itertools.count(1)

    async def answer(
        self, model: str, method: str, request: web.Request, body: Body, fault: Fault
    ) -> web.StreamResponse:
        """The answer to ``method`` (``generateContent``...) of Google's ``model``."""
        if method == COUNT:
            total = count_request_tokens(body)
            return web.Response(body=orjson.dumps({"totalTokens": total}), headers=_JSON_HEADERS)
        answer = self._answer(model, parse_generate_request(body), request, fault)
        if method == STREAM:
            framing = _Framing(sse=request.query.get("alt") == "sse")
            return await self._stream(request, answer, fault, framing)
        if fault.reset_after is not None:
            return abort_connection(request)
        if fault.garbage:
            return web.Response(body=_GARBAGE, headers=_JSON_HEADERS)
        document = answer.document(
            "".join(answer.pieces), finish=True, sent=None, with_usage=not fault.no_usage
        )
        return web.Response(body=orjson.dumps(document), headers=_JSON_HEADERS)

    def _answer(self, model: str, req: GeminiRequest, request: web.Request, fault: Fault) -> Answer:
        pieces, truncated = reply_pieces(
            req.messages, max_tokens=req.max_output_tokens, chunks=fault.chunks
        )
        prompt = req.prompt_tokens
        answer = Answer(
            pieces=pieces,
            finish_reason="MAX_TOKENS" if truncated else "STOP",
            prompt_tokens=prompt,
            thoughts=req.thoughts,
            cached=fault.cached_part(prompt),
            model=model,
            response_id=f"mock-gemini-{next(self._ids)}",
            create_time=_now(),
            traffic_type=traffic_type(request.headers),
            image_tokens=IMAGE_TOKENS if _IMAGE_MODEL in model else 0,
        )
        try:
            scripted = scripted_pieces(request.headers)
        except ScriptError as exc:
            raise InvalidArgumentError(str(exc)) from None
        if scripted is not None:
            answer = replace(answer, pieces=scripted, finish_reason="STOP")
        return answer

    async def _stream(
        self, request: web.Request, answer: Answer, fault: Fault, framing: _Framing
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=framing.headers)
        await response.prepare(request)
        # One write per chunk, so each reaches the client as its own HTTP chunk.
        writes = 0
        interval = self._chunk_delay_s if fault.interval_s is None else fault.interval_s

        async def send(document: dict[str, Any]) -> None:
            nonlocal writes
            pause = fault.pause_before_event(writes, interval)
            if pause:
                await asyncio.sleep(pause)
            writes += 1
            data = _GARBAGE_CHUNK if fault.garbage else orjson.dumps(document)
            await response.write(framing.chunk(data))

        async def fail(error: dict[str, Any] = _STREAM_ERROR) -> web.StreamResponse:
            """End the stream with Google's error (the ``error_after`` and ``error_first``
            faults)."""
            await response.write(framing.chunk(orjson.dumps(error)) + framing.end())
            await response.write_eof()
            return response

        # A fault that cuts the stream keeps the finish reason from every chunk it sends.
        cut = fault.reset_after is not None or fault.error_after is not None
        pieces = answer.pieces or [""]  # an empty reply still sends its finishing chunk
        last = len(pieces) - 1
        try:
            if fault.error_first is not None:
                status = fault.error_first
                message = f"Injected error {status} (x-mock-fault)."
                return await fail({"error": google_error(status, message)})
            for sent, piece in enumerate(pieces):
                if sent == fault.reset_after:
                    return abort_connection(request, response)
                if sent == fault.error_after:
                    return await fail()
                finish = sent == last and not cut
                counted = min(sent + 1, len(answer.pieces))
                await send(
                    answer.document(
                        piece, finish=finish, sent=counted, with_usage=not fault.no_usage
                    )
                )
            if fault.reset_after is not None:
                # Fewer pieces than reset_after: the stream must still never finish.
                return abort_connection(request, response)
            if fault.error_after is not None:
                # Fewer pieces than error_after: the stream must still fail.
                return await fail()
            if not framing.sse:
                await response.write(framing.end())
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream; nothing left to tell it
        return response
