"""Bedrock ConverseStream's binary event stream, rewritten as OpenAI chat-completion SSE chunks.

ConverseStream answers ``application/vnd.amazon.eventstream``: length-prefixed, CRC-checked
binary frames, which body chunks cut anywhere. botocore's ``EventStreamBuffer`` reassembles
and checks them; each frame names its event in ``:event-type`` and carries JSON:

- ``messageStart``: the chunk that opens the answer (``role``).
- ``contentBlockStart`` with ``toolUse``: a tool call's id and name; its ``contentBlockIndex``
  is numbered among the tool calls, since OpenAI counts tool calls, not content blocks.
- ``contentBlockDelta``: text, a piece of a tool call's JSON arguments, or reasoning
  (``reasoningContent``): its ``text`` is sent as ``reasoning_content`` deltas, as the
  gateway streams Claude's thinking from Anthropic's API; its ``signature`` and
  ``redactedContent`` (encrypted thinking) are not shown, being of no use to an OpenAI
  client.
- ``messageStop``: the chunk with ``finish_reason`` (sent with ``metadata``, below).
- ``metadata`` (the last event): usage, with ``cacheDetails`` splitting the cache writes
  by TTL (5m, 1h) for models that have both caches, and the tier that served the stream
  (``serviceTier.type``). The usage chunk (``choices: []``) is sent only when the client
  asked for it; usage is read either way. ``data: [DONE]`` follows it.

The service tier is read as ``service_tier`` (it prices the request) and shown at the top
level of the chunks as OpenAI shows it (``shown_tier``). Bedrock names it last, so the
chunk with ``finish_reason`` is held from ``messageStop`` until ``metadata`` (the next
event) and shows it, as does the usage chunk; the text went before it was known. A stream
that ends without ``metadata`` still gets its finish chunk, with no tier. A stream cut (or
failed) before ``metadata`` is priced at the tier the request asked for (``asked_tier``)
where Bedrock serves the tier it accepted: ``flex``, ``priority`` and ``default`` (a model
or region without the tier is refused before the stream starts). Reserved capacity
overflows to the standard tier, which only ``metadata`` would tell, so a cut stream that
asked for it, or for nothing, is priced at the model's own price. Nothing of this is
shown: the client sees only the tier Bedrock named.

An exception frame (``:message-type`` ``exception``, e.g. ``throttlingException``), a frame
that fails its checks, or a stream that ends before ``messageStop`` becomes an OpenAI error
chunk and ``[DONE]``; usage is then None, as nothing trustworthy was counted, and the rest
of the stream is dropped. An exception frame is the provider's own error after the prompt
was read and part of the answer sent: it is also recorded as ``failure``
(``base.StreamFailure``, with no counts: Bedrock reports usage last), so the gateway
charges the request with an estimate and names the error in its log line; an exception
before any event (a ``throttlingException`` before ``messageStart``) is the streamed form
of its status, recorded with ``began`` False and charged nothing.

This module also holds what the buffered answer shares with the stream: stop reasons, usage
and AWS error names. ``openai_bedrock`` imports them and re-exports ``StreamTranslator``, so
the dependency runs one way.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from extproc.context import Usage
from extproc.errors import UpstreamError, error_body
from extproc.translators.base import (
    CONTEXT_LENGTH_EXCEEDED,
    MAX_PROVIDER_MESSAGE,
    STREAM_ENDED_EARLY,
    UNDECODABLE_STREAM,
    ProviderStreamError,
    StreamFailure,
    overflows_context,
    service_tier_of,
)
from extproc.translators.generated_text import generated_chars
from extproc.translators.openai_openai import show_billed_apart
from extproc.translators.token_counts import token_count

_DONE = b"data: [DONE]\n\n"
# What a frame that passed its CRCs can still raise from its headers or JSON payload:
# unknown header types, truncated header fields, undecodable text.
BAD_FRAME = (ParserError, KeyError, ValueError, struct.error)


# --- what buffered and streamed answers share -------------------------------------------

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}


# Stop reasons that say the model's answer is broken, not finished: a tool call Bedrock
# could not read as one (malformed_tool_use), an output it could not parse
# (malformed_model_output). No finish_reason says so (OpenAI's SDK takes stop, length,
# tool_calls, content_filter and function_call), and each of them reads as an answer to
# use; LangChain's Bedrock client reads both as an error.
_MALFORMED = {
    "malformed_tool_use": "the model's tool call was malformed",
    "malformed_model_output": "the model's output was malformed",
}


def malformed_answer(stop_reason: Any) -> UpstreamError | None:
    """The error an answer that stopped for being malformed is to its OpenAI client (a
    502 ``upstream_error`` whose code is the stop reason, which the openai SDK retries
    when it is not a stream); None for an answer that ended as answers do."""
    said = _MALFORMED.get(stop_reason) if isinstance(stop_reason, str) else None
    if said is None:
        return None
    return UpstreamError(
        f"{said} (Bedrock stopped with {stop_reason}): retry the request",
        code=str(stop_reason),
    )


def finish_reason(stop_reason: Any, *, called_tools: bool) -> str:
    """OpenAI's finish_reason for Converse's stopReason; unknown reasons read as a stop.

    ``called_tools``: whether the answer holds tool calls. Some Bedrock models end a turn
    that calls tools with ``end_turn`` (AWS's own Strands agents SDK corrects it to
    ``tool_use``), and some end a text-only turn with ``tool_use``. OpenAI answers
    ``tool_calls`` exactly when it returns calls, and clients rely on it: one that runs
    tools only on ``tool_calls`` would drop the calls, one that reads ``tool_calls`` off
    the message on that reason would find none. A length or content-filter stop is kept.
    """
    reason = _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    if reason == "stop" and called_tools:
        return "tool_calls"
    if reason == "tool_calls" and not called_tools:
        return "stop"
    return reason


# Bedrock's service tiers in OpenAI's words (its chat.completion service_tier values).
# Reserved capacity has none: OpenAI clients that decode the field as an enum would fail
# on it, so it is priced as "reserved" but not shown. A failover chain prices a fallback at
# the tier it shows (``openai_openai`` reads it downstream), hence each name is the one the
# tier is priced under.
_OPENAI_TIERS = {"default": "default", "flex": "flex", "priority": "priority"}


# The tiers Bedrock serves a request at once it accepts the request asking for them: it
# refuses (ValidationException, before the stream) a tier the model or region lacks.
# Reserved is not among them: past the reserved capacity, Bedrock serves the standard tier.
SERVED_AS_ASKED = frozenset({"default", "flex", "priority"})


def served_tier(value: Any) -> str | None:
    """The tier a Converse answer or ``metadata`` event says served it (``serviceTier``:
    ``{"type": "flex"}``); None when it names none, or nothing readable."""
    return service_tier_of(value.get("type")) if isinstance(value, dict) else None


def shown_tier(service_tier: str | None) -> str | None:
    """The ``service_tier`` an OpenAI client is shown for a Bedrock tier, if it has one."""
    return _OPENAI_TIERS.get(service_tier) if service_tier is not None else None


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id or uuid.uuid4().hex}"


def _cache_count(value: Any) -> int | None:
    """A cache count, which Converse leaves out when the request used no cache."""
    return 0 if value is None else token_count(value)


def read_usage(value: Any) -> tuple[Usage, dict[str, Any]] | None:
    """Converse's usage as the gateway's ``Usage`` and OpenAI's usage object; None when
    absent, or when a count in it is no token count (``token_counts``: negative, ``true``,
    past the bound): the answer is then charged the estimate, on the Converse API and
    translated for an OpenAI client alike (a malformed count read as 0 billed the
    prompt as nothing)."""
    if not isinstance(value, dict):
        return None
    uncached = token_count(value.get("inputTokens"))
    completion = token_count(value.get("outputTokens"))
    cache_read = _cache_count(value.get("cacheReadInputTokens"))
    cache_write = _cache_count(value.get("cacheWriteInputTokens"))
    if uncached is None or completion is None or cache_read is None or cache_write is None:
        return None
    # inputTokens counts only the uncached part: the prompt is everything the model read.
    prompt = uncached + cache_read + cache_write
    written_1h = min(_one_hour_writes(value.get("cacheDetails")), cache_write)
    usage = Usage(prompt, completion, prompt + completion, cache_read, cache_write, written_1h)
    # Shown even at 0, as OpenAI (and the gateway's Anthropic translation) show it: SDK
    # users read usage.prompt_tokens_details.cached_tokens, which fails on a missing object.
    shown: dict[str, Any] = {
        **usage.as_dict(),
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }
    return usage, shown


def _one_hour_writes(details: Any) -> int:
    """The cache writes ``cacheDetails`` puts in Claude's 1-hour cache (billed above the
    5-minute ones): the ``inputTokens`` of its entries with ``ttl`` "1h". The caller keeps
    them within ``cacheWriteInputTokens``, the total that makes the prompt count."""
    if not isinstance(details, list):
        return 0
    return sum(
        token_count(entry.get("inputTokens")) or 0
        for entry in details
        if isinstance(entry, dict) and entry.get("ttl") == "1h"
    )


# AWS error name (lowercased: event streams spell them throttlingException) ->
# (client status, OpenAI error type).
_ERRORS = {
    "throttlingexception": (429, "rate_limit_error"),
    "servicequotaexceededexception": (429, "rate_limit_error"),
    "validationexception": (400, "invalid_request_error"),
    "resourcenotfoundexception": (404, "not_found_error"),
    "serviceunavailableexception": (503, "service_unavailable"),
    "modelnotreadyexception": (503, "service_unavailable"),
    "modeltimeoutexception": (504, "timeout"),
}
# The provider refused who the gateway is, not what the client asked.
_REFUSED_CREDENTIALS = {
    "accessdeniedexception",
    "unrecognizedclientexception",
    "invalidsignatureexception",
    "incompletesignatureexception",
    "missingauthenticationtokenexception",
    "expiredtokenexception",
    "signaturedoesnotmatch",
}
_BY_STATUS = {
    400: (400, "invalid_request_error"),
    404: (404, "not_found_error"),
    429: (429, "rate_limit_error"),
    503: (503, "service_unavailable"),
}


def client_error(name: str, status: int, message: str) -> tuple[int, str, str]:
    """The client's status, OpenAI error type and message for an AWS error name (or status)."""
    key = name.lower()
    if key in _REFUSED_CREDENTIALS or status in (401, 403):
        return (
            502,
            "upstream_error",
            "the provider refused the gateway's AWS credentials"
            f"{f' ({name})' if name else ''}: the gateway operator must check its AWS "
            "identity and its access to this model",
        )
    client_status, error_type = _ERRORS.get(key) or _BY_STATUS.get(status, (502, "upstream_error"))
    # AWS messages are short; the cap keeps a misbehaving proxy's page out of the error.
    text = message[:MAX_PROVIDER_MESSAGE] or f"the provider answered {name or f'HTTP {status}'}"
    return client_status, error_type, text


def aws_error(name: str, status: int, message: str) -> tuple[int, bytes]:
    """The client's status and OpenAI error body for an AWS error name (or HTTP status).
    A prompt over the context window gets OpenAI's code for it, which agents read."""
    client_status, error_type, text = client_error(name, status, message)
    if client_status == 400 and overflows_context(message):
        return client_status, error_body(
            text, error_type, code=CONTEXT_LENGTH_EXCEEDED, param="messages"
        )
    return client_status, error_body(text, error_type, code=name or None)


# --- the stream ----------------------------------------------------------------------------


def stream_exception(name: str, message: str) -> ProviderStreamError:
    """The error of an exception or error frame, named and classified as clients are shown
    it (``ThrottlingException``: a ``rate_limit_error``)."""
    # Exception frames spell names in lowerCamel (throttlingException); AWS documents them
    # capitalised (the HTTP header's spelling), which is what clients are shown.
    shown = name[:1].upper() + name[1:]
    _, error_type, text = client_error(shown, 0, message)
    return ProviderStreamError(text, error_type=error_type, code=shown or None)


class StreamTranslator:
    """Bedrock's event stream in, OpenAI SSE out, chunk by chunk."""

    def __init__(
        self,
        *,
        model: str,
        include_usage: bool,
        request_id: str,
        created: int,
        asked_tier: str | None = None,
        bill_apart: bool = False,
    ) -> None:
        """``asked_tier``: the ``serviceTier`` type the request asked Converse for
        (``openai_bedrock.asked_service_tier``), None when it asked for none.
        ``bill_apart``: the usage chunk shows what OpenAI's counts leave out, for the
        failover route that bills it (``openai_openai.show_billed_apart``)."""
        self.usage: Usage | None = None
        # Bedrock does not say which model answered.
        self.response_model: str | None = None
        self.status: int | None = None  # a stream's headers have left
        # Set when Bedrock sent an exception mid-stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        # The tier Bedrock served the stream at (metadata's serviceTier); until metadata
        # comes, the tier asked for where Bedrock serves the tier it accepted, so a stream
        # cut before it is priced at the tier that served it rather than the standard one.
        self.service_tier: str | None = asked_tier if asked_tier in SERVED_AS_ASKED else None
        # The OpenAI name of the tier metadata names, which the chunks sent after it show.
        self._shown_tier: str | None = None
        # messageStop's finish chunk, held until metadata names the tier it shows.
        self._held_finish: str | None = None
        self._model = model
        self._include_usage = include_usage
        self._bill_apart = bill_apart
        self._id = completion_id(request_id)
        self._created = created
        self._frames = EventStreamBuffer()
        # Converse content block index -> OpenAI tool call index.
        self._tool_calls: dict[int, int] = {}
        # Tool calls (by block index) that have had no argument text yet.
        self._no_arguments_yet: set[int] = set()
        # The block the last thinking text came from (None: none yet): thoughts of
        # different blocks are set apart by a blank line, as the whole answer has them.
        self._thought_block: int | None = None
        self._stopped = False
        # The error of a messageStop whose stop reason says the answer is malformed.
        self._malformed: UpstreamError | None = None
        self._done = False
        # Whether an event came before any exception (Bedrock began its answer): an
        # exception first is the streamed form of its status, charged nothing as the
        # status is (base.StreamFailure.began).
        self._began = False
        # Characters of generated text in the frames so far (stages.partial_usage), counted
        # in whole frames: the body's chunks cut a frame, its text too, anywhere.
        self.generated_chars = 0

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        if self._done:
            return b""
        out: list[bytes] = []
        self._frames.add_data(chunk)
        try:
            for frame in self._frames:
                self._translate(frame, out)
                if self._done:
                    return b"".join(out)
        except BAD_FRAME:
            out.append(self._fail(UNDECODABLE_STREAM))
            return b"".join(out)
        if end_of_stream:
            if self._malformed is not None:
                # Ended without metadata: the malformed answer is charged its estimate.
                out.append(self._malformed_end(None))
            else:
                out.append(self._finish() if self._stopped else self._fail(STREAM_ENDED_EARLY))
        return b"".join(out)

    def _translate(self, frame: EventStreamMessage, out: list[bytes]) -> None:
        headers = frame.headers
        error = frame_error(frame)
        if error is not None:
            out.append(self._provider_error(*error))
            return
        self._began = True
        payload = orjson.loads(frame.payload) if frame.payload else {}
        if not isinstance(payload, dict):
            raise ValueError("event payload is not a JSON object")
        self.generated_chars += generated_chars(frame.payload)
        event = headers.get(":event-type")
        if event == "messageStart":
            out.append(self._chunk({"role": "assistant", "content": ""}))
        elif event == "contentBlockStart":
            self._block_start(payload, out)
        elif event == "contentBlockDelta":
            self._block_delta(payload, out)
        elif event == "contentBlockStop":
            self._block_stop(payload, out)
        elif event == "messageStop":
            self._stopped = True
            self._malformed = malformed_answer(payload.get("stopReason"))
            if self._malformed is None:
                self._held_finish = finish_reason(
                    payload.get("stopReason"), called_tools=bool(self._tool_calls)
                )
        elif event == "metadata":
            self._take_tier(payload.get("serviceTier"))
            self._release_finish(out)
            usage = read_usage(payload.get("usage"))
            if self._malformed is not None:
                out.append(self._malformed_end(usage[0] if usage is not None else None))
                return
            if usage is not None:
                self.usage = usage[0]
                if self._include_usage:
                    shown = show_billed_apart(usage[1], usage[0]) if self._bill_apart else usage[1]
                    out.append(self._event([], shown))
            if self._stopped:
                out.append(self._finish())

    def _take_tier(self, value: Any) -> None:
        # Bedrock's word replaces the tier asked for, even when it names none: the stream
        # is then priced as one that named none always was.
        self.service_tier = served_tier(value)
        self._shown_tier = shown_tier(self.service_tier)

    def _release_finish(self, out: list[bytes]) -> None:
        """Send the finish chunk messageStop left held, if it did."""
        if self._held_finish is not None:
            out.append(self._chunk({}, self._held_finish))
            self._held_finish = None

    def _block_start(self, payload: dict[str, Any], out: list[bytes]) -> None:
        start = payload.get("start")
        tool = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(tool, dict):
            return
        index = len(self._tool_calls)
        self._tool_calls[_block_index(payload)] = index
        self._no_arguments_yet.add(_block_index(payload))
        call = {
            "index": index,
            "id": tool.get("toolUseId"),
            "type": "function",
            "function": {"name": tool.get("name"), "arguments": ""},
        }
        out.append(self._chunk({"tool_calls": [call]}))

    def _block_delta(self, payload: dict[str, Any], out: list[bytes]) -> None:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return
        text = delta.get("text")
        if isinstance(text, str):
            if text:
                out.append(self._chunk({"content": text}))
            return
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict):
            # Only the thinking's text: a signature or redacted thinking is not shown.
            thought = reasoning.get("text")
            if isinstance(thought, str) and thought:
                block = _block_index(payload)
                if self._thought_block is not None and block != self._thought_block:
                    thought = "\n\n" + thought
                self._thought_block = block
                out.append(self._chunk({"reasoning_content": thought}))
            return
        tool = delta.get("toolUse")
        arguments = tool.get("input") if isinstance(tool, dict) else None
        index = self._tool_calls.get(_block_index(payload))
        # Citation deltas have no OpenAI counterpart and are not shown.
        if isinstance(arguments, str) and arguments and index is not None:
            self._no_arguments_yet.discard(_block_index(payload))
            call = {"index": index, "function": {"arguments": arguments}}
            out.append(self._chunk({"tool_calls": [call]}))

    def _block_stop(self, payload: dict[str, Any], out: list[bytes]) -> None:
        block = _block_index(payload)
        if block not in self._no_arguments_yet:
            return
        # A tool without parameters gets no argument text at all; OpenAI clients parse
        # the arguments they assembled, and "" is not JSON.
        self._no_arguments_yet.discard(block)
        call = {"index": self._tool_calls[block], "function": {"arguments": "{}"}}
        out.append(self._chunk({"tool_calls": [call]}))

    def _malformed_end(self, usage: Usage | None) -> bytes:
        """The end of a stream Bedrock stopped as malformed (``malformed_answer``): the
        error, not a finish reason, then ``[DONE]``, which the openai SDK raises; the
        text and calls before it were no answer to use. Bedrock billed the tokens: the
        request is charged its metadata's counts as they are (the whole answer's), else
        the estimate of what it streamed."""
        assert self._malformed is not None
        error = self._malformed
        self.failure = (
            StreamFailure(error)
            if usage is None
            else StreamFailure.reported(error, usage, whole=True)
        )
        return self._abort(error.body())

    def _provider_error(self, name: str, message: str) -> bytes:
        error = stream_exception(name, message)
        # Bedrock reports usage last (metadata): no count is known, the gateway estimates.
        self.failure = StreamFailure(error, began=self._began)
        return self._abort(error.body())

    def _fail(self, message: str) -> bytes:
        # The stream ended early or broke: the client gets an error, and the request is a
        # failed stream (logged so, counted among upstream errors), its usage estimated.
        error = UpstreamError(message, code="invalid_upstream_response")
        self.failure = StreamFailure(error)
        return self._abort(error.body())

    def _abort(self, body: bytes) -> bytes:
        self.usage = None
        self._done = True
        # A finish chunk already decided goes first, as it did before the error.
        held: list[bytes] = []
        self._release_finish(held)
        return b"".join(held) + b"data: " + body + b"\n\n" + _DONE

    def _finish(self) -> bytes:
        self._done = True
        held: list[bytes] = []
        self._release_finish(held)
        return b"".join(held) + _DONE

    def _chunk(self, delta: dict[str, Any], reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return self._event([choice], None)

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if self._shown_tier is not None:
            chunk["service_tier"] = self._shown_tier
        # OpenAI puts "usage": null on every chunk of a stream that asked for usage.
        if self._include_usage:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _block_index(payload: dict[str, Any]) -> int:
    index = payload.get("contentBlockIndex")
    return index if isinstance(index, int) else -1


def frame_error(frame: EventStreamMessage) -> tuple[str, str] | None:
    """The name and message of an exception or error frame (``throttlingException``, and
    what it says); None for an event."""
    headers = frame.headers
    kind = headers.get(":message-type", "event")
    if kind == "exception":
        return str(headers.get(":exception-type", "")), frame_message(frame.payload)
    if kind == "error":
        return str(headers.get(":error-code", "")), str(headers.get(":error-message", ""))
    return None


def frame_message(payload: bytes) -> str:
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    value = parsed.get("message") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else ""
