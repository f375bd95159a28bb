"""Anthropic Messages clients to Claude on Bedrock (InvokeModel), both ways.

Bedrock runs Claude on Anthropic's own Messages API, reached through InvokeModel
(``/model/{modelId}/invoke``) and InvokeModelWithResponseStream
(``.../invoke-with-response-stream``): a client of Anthropic's API (the ``anthropic``
SDK, Claude Code) keeps its requests and reads the same answers, while the gateway
sends them to Claude in the company's AWS account.

- Request (``translate_request``): the client's body without ``model`` (the path names
  it) and ``stream`` (the operation says it), which Bedrock refuses as extraneous keys,
  with ``anthropic_version: bedrock-2023-05-31``, the one version Bedrock takes; the
  betas the client asked for in its ``anthropic-beta`` header go in the body's
  ``anthropic_beta`` list, where Bedrock reads them (only those of the provider's
  ``anthropic_betas``, when it lists them: Bedrock refuses a flag it does not know, and
  Claude Code sends some of Anthropic's own). Anthropic's ``service_tier``
  (``auto``, ``standard_only``: whether Anthropic's priority capacity may serve) is left
  out too: Bedrock takes tiers in a header, refuses the key in the body, and serves a
  request that names none at its standard tier, which both values allow.
- Which models (``may_run_claude``): a model id that names its model must name Claude's;
  an ARN that hides it (an application inference profile, a provisioned or custom
  model, a prompt router) is Bedrock's to check, and it refuses another model's.
- JSON answer: Claude's Message as Anthropic sends it: passed through and read as on
  Anthropic's own API (``MessageReader``, Anthropic's reader).
- Service tier: Bedrock serves InvokeModel at the tier its ``X-Amzn-Bedrock-Service-Tier``
  request header asks for (``default``, ``flex``, ``priority``, ``reserved``), which a
  client may send through the gateway, and names the tier that served it in the same
  header of its answer, not in Claude's usage. Both readers take that header's tier
  (``served_tier``), which prices the request; without it, what Claude's usage says.
- Stream (``StreamTranslator``): AWS's binary event stream, one ``chunk`` frame per
  Anthropic event, its JSON base64-encoded in the frame's ``bytes``. Each event becomes
  the SSE event Anthropic would have sent (``event: <type>`` / ``data: <json>``), which
  Anthropic's stream reader then reads for usage, the server tools' blocks and errors,
  exactly as on Anthropic's own API. An exception frame (``throttlingException``,
  ``modelStreamErrorException``...) becomes Anthropic's ``event: error`` with the type its
  status maps to, recorded as the stream's failure; a frame that fails its checks ends
  the stream with an ``api_error`` event, and so does a body that ends before Claude's
  ``message_stop`` (a frame cut short, a proxy that closed the response): the client
  must not take half an answer (a tool call's input cut in two) for a whole one. Any of
  these ends the stream: nothing after it is sent.
  Since the provider's bytes hide the text, the translator counts the generated
  characters of what it unwrapped (``generated_chars``) for the bill of a cut stream.
- Errors: Bedrock's (``{"message"}`` and the exception's name in ``x-amzn-errortype``)
  become Anthropic's error shape, with the status the exception maps to
  (``translate_error``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage

from extproc.context import Usage
from extproc.errors import UpstreamError, anthropic_error_body
from extproc.providers.bedrock_model_ids import base_model_id
from extproc.translators import anthropic_anthropic
from extproc.translators.base import (
    INVALID_UPSTREAM_RESPONSE,
    STREAM_ENDED_EARLY,
    UNDECODABLE_STREAM,
    service_tier_of,
)
from extproc.translators.foreign_errors import provider_error
from extproc.translators.generated_text import generated_chars
from extproc.translators.openai_bedrock_stream import BAD_FRAME, client_error, frame_error

# InvokeModel's answer header naming the tier that served the request.
SERVICE_TIER_HEADER = "x-amzn-bedrock-service-tier"
# InvokeModel's answer header naming the latency it served the request at.
PERFORMANCE_LATENCY_HEADER = "x-amzn-bedrock-performanceconfig-latency"
# The price tier of an answer Bedrock served latency-optimized (``performanceConfig``):
# its own per-token price, which a model's ``service_tiers`` entry of this name gives.
LATENCY_OPTIMIZED = "latency_optimized"
# The only version Bedrock's Claude takes in the body.
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
# Keys of Anthropic's body that Bedrock takes elsewhere (the path) and refuses here.
_NOT_IN_BODY = ("model", "stream")
# Anthropic's service_tier values, both served by Bedrock's standard tier, which a body
# without one gets (any other value goes on, for Bedrock to refuse in its words).
_ANTHROPIC_TIERS = frozenset({"auto", "standard_only"})
# The characters a model id keeps in the path; AWS's SDKs encode the rest (":" and an
# ARN's "/").
_PATH_SAFE = "-._~"
# An Anthropic event's JSON names its type first; the SSE event line repeats it. Read
# without a parse (a text delta is most of the stream); a parse when the order differs.
_LEADING_TYPE = re.compile(rb'\A\s*\{\s*"type"\s*:\s*"([a-z_]+)"')
_EVENT_END = b"\n\n"
_STOP_EVENT = b"event: message_stop\n"


def translate_request(
    body: dict[str, Any], beta_header: str | None, allowed_betas: Collection[str] | None = None
) -> dict[str, Any]:
    """The InvokeModel body for an Anthropic Messages body (``body`` is left as it is);
    with ``allowed_betas``, the beta flags (of the header and the body) not in it are
    left out."""
    translated = {key: value for key, value in body.items() if key not in _NOT_IN_BODY}
    tier = translated.get("service_tier")
    # A list or an object is no tier (and cannot be looked up in a set): Bedrock's to refuse.
    if isinstance(tier, str) and tier in _ANTHROPIC_TIERS:
        del translated["service_tier"]
    translated["anthropic_version"] = BEDROCK_ANTHROPIC_VERSION
    betas = [beta.strip() for beta in (beta_header or "").split(",") if beta.strip()]
    listed = translated.get("anthropic_beta")
    if betas or (allowed_betas is not None and isinstance(listed, list)):
        known = [b for b in listed if isinstance(b, str)] if isinstance(listed, list) else []
        merged = known + [beta for beta in betas if beta not in known]
        if allowed_betas is not None:
            merged = [beta for beta in merged if beta in allowed_betas]
        if merged:
            translated["anthropic_beta"] = merged
        else:
            translated.pop("anthropic_beta", None)
    return translated


def request_path(model_id: str, *, stream: bool) -> str:
    """The InvokeModel path for a model id or ARN, e.g. ``/model/a.b-v1%3A0/invoke``."""
    action = "invoke-with-response-stream" if stream else "invoke"
    return f"/model/{quote(model_id, safe=_PATH_SAFE)}/{action}"


def may_run_claude(model_id: str) -> bool:
    """Whether InvokeModel may answer Anthropic's Messages API for ``model_id``: it names
    a Claude model (its id, an inference profile's, the ARN of either), or it is an ARN
    that hides its model, which Bedrock refuses itself when it runs no Claude."""
    named = base_model_id(model_id)
    return named.startswith("anthropic.") or named.startswith("arn:")


def served_tier(headers: dict[str, str]) -> str | None:
    """The price tier of an InvokeModel answer, from its headers: ``latency_optimized``
    when Bedrock served it so (``X-Amzn-Bedrock-PerformanceConfig-Latency``), else the
    tier ``X-Amzn-Bedrock-Service-Tier`` names, if any."""
    if headers.get(PERFORMANCE_LATENCY_HEADER) == "optimized":
        return LATENCY_OPTIMIZED
    return headers.get(SERVICE_TIER_HEADER)


def translate_error(status: int, body: bytes, error_type_header: str | None) -> tuple[int, bytes]:
    """Bedrock's error as an Anthropic client reads one: the status the exception maps to
    and ``{"type": "error", "error": {...}}`` with Bedrock's message."""
    name = (error_type_header or "").split(":", 1)[0]
    client_status, _, message = client_error(name, status, _message_of(body))
    return client_status, anthropic_error_body(message, client_status)


def _message_of(body: bytes) -> str:
    """Bedrock's ``{"message"}``, or the message of a proxy's error in another API's shape."""
    found = provider_error(body)
    return found.message if found else ""


class MessageReader(anthropic_anthropic.MessageReader):
    """InvokeModel's answer, Claude's Message, passed through and read as Anthropic's,
    priced at the tier Bedrock's answer headers name (``served_tier``), if any.
    ``counted``: the counts of InvokeModel's token headers, which bill an answer the
    client hung up on before its body was read (``stages.cut_answer``); ``prompt``: their
    prompt count alone, when they carry no output count, which such an answer is charged
    beside its allowance."""

    def __init__(
        self,
        served_tier: str | None = None,
        counted: Usage | None = None,
        prompt: Usage | None = None,
    ) -> None:
        super().__init__()
        self._served_tier = service_tier_of(served_tier)
        self.service_tier = self._served_tier
        self.counted_usage = counted
        self.counted_prompt = prompt if counted is None else None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        passed = super().feed(chunk, end_of_stream)
        self.service_tier = self._served_tier or self.service_tier
        if end_of_stream and self.usage is None:
            # A whole Message whose usage could not be read: Bedrock's token headers
            # counted it, and Bedrock bills those, as for one cut before its body.
            self.usage = self.counted_usage
        return passed


class StreamTranslator(anthropic_anthropic.EventStreamReader):
    """InvokeModelWithResponseStream's event stream as Anthropic's SSE, read for usage,
    failures and server tools as Anthropic's own stream is (the reader it extends), and
    priced at the tier Bedrock's answer header names (``served_tier``), if any."""

    def __init__(self, served_tier: str | None = None) -> None:
        super().__init__()
        # Known from the answer's headers, before any event: a cut stream is priced at it.
        self._served_tier = service_tier_of(served_tier)
        self.service_tier = self._served_tier
        # Characters of generated text in the events unwrapped so far (partial_usage).
        self.generated_chars = 0
        self._frames = EventStreamBuffer()
        self._closed = False
        # Claude's message_stop was unwrapped: the answer is whole.
        self._stopped = False
        # Set when the body ended before message_stop (the stream ends in an api_error).
        self.ended_early = False
        # The message of the error event the gateway ended the stream with (a frame it
        # could not decode, a body that ended early), to name the failure by it.
        self._ended_with: str | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if self._closed:
            return b""  # the client has read the stream's end already
        self._frames.add_data(chunk)
        out: list[bytes] = []
        try:
            for frame in self._frames:
                self._translate(frame, out)
                if self._closed:
                    break
        except BAD_FRAME:
            self._ended_with = UNDECODABLE_STREAM
            out.append(self._end_with(anthropic_error_body(UNDECODABLE_STREAM, 502)))
        if end_of_stream and not self._closed and not self._stopped:
            self.ended_early = True
            self._ended_with = STREAM_ENDED_EARLY
            out.append(self._end_with(anthropic_error_body(STREAM_ENDED_EARLY, 502)))
        sse = b"".join(out)
        if not sse:
            return sse
        # Anthropic's reader reads the events (and ends a stream whose event it cannot
        # hold, returning what the client gets instead).
        replaced = super().feed(sse, end_of_stream)
        if self._ended_with is not None and self.failure is not None:
            # Read back from the error event written above, the failure would be named by
            # its Anthropic type (api_error): it is named as every translation logs it.
            error = UpstreamError(self._ended_with, code=INVALID_UPSTREAM_RESPONSE)
            self.failure = replace(self.failure, error=error)
        self.service_tier = self._served_tier or self.service_tier
        return sse if replaced is None else replaced

    def _translate(self, frame: EventStreamMessage, out: list[bytes]) -> None:
        error = frame_error(frame)
        if error is not None:
            self._exception(*error, out)
        elif frame.headers.get(":event-type") == "chunk":
            event = unwrapped_chunk(frame.payload)
            self.generated_chars += generated_chars(event)
            sse = sse_event(event)
            self._stopped = self._stopped or sse.startswith(_STOP_EVENT)
            out.append(sse)

    def _exception(self, name: str, message: str, out: list[bytes]) -> None:
        # Exception frames spell names in lowerCamel (throttlingException).
        shown = name[:1].upper() + name[1:]
        status, _, text = client_error(shown, 0, message)
        out.append(self._end_with(anthropic_error_body(text, status)))

    def _end_with(self, error: bytes) -> bytes:
        """End the stream with Anthropic's error event; nothing after it is read or sent."""
        self._closed = True
        self._frames = EventStreamBuffer()
        return b"event: error\ndata: " + error + _EVENT_END


def sse_event(event: bytes) -> bytes:
    """An Anthropic event's JSON as the SSE event Anthropic's API sends
    (``event: <type>`` / ``data: <json>``); a ValueError when it is no typed JSON object."""
    if b"\n" in event or b"\r" in event:
        # Whitespace between JSON tokens: one SSE data line must hold the event.
        event = orjson.dumps(orjson.loads(event))
    return b"event: " + _event_type(event) + b"\ndata: " + event + _EVENT_END


def unwrapped_chunk(payload: bytes) -> bytes:
    """The Anthropic event a ``chunk`` frame carries (``{"bytes": "<base64>"}``)."""
    parsed = orjson.loads(payload)  # a ValueError, a bad frame, when it is not JSON
    encoded = parsed.get("bytes") if isinstance(parsed, dict) else None
    if not isinstance(encoded, str):
        raise ValueError("chunk without bytes")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("chunk bytes are not base64") from None


def _event_type(event: bytes) -> bytes:
    """The ``type`` of an Anthropic event's JSON, for its SSE ``event:`` line."""
    found = _LEADING_TYPE.match(event)
    if found is not None:
        return found.group(1)
    parsed = orjson.loads(event)  # a ValueError, a bad frame, when it is not JSON
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    if not isinstance(kind, str) or not re.fullmatch(r"[a-z_]{1,64}", kind):
        raise ValueError("event without a type")
    return kind.encode()
