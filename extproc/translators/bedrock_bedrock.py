"""A Converse client to Bedrock's Converse API: Bedrock's answer passed on unchanged, usage read.

The client speaks Bedrock's own API (boto3's ``bedrock-runtime`` ``converse`` and
``converse_stream``, ``extproc.converse_api``), so the answer is already in its shape: every
byte reaches it as Bedrock sent it, and its SDK checks what it gets as it would from AWS. The
gateway only reads, to bill the request and to log a failure:

- A Converse answer (``ConverseReader``): ``usage`` and ``serviceTier.type``; the parsed
  answer is kept for response guards.
- A ConverseStream answer (``ConverseStreamReader``): AWS's binary event stream, frames cut
  anywhere by the body chunks, reassembled and CRC-checked by botocore's
  ``EventStreamBuffer``. Only the ``metadata`` event (the last one) has its JSON parsed, for
  its usage and tier: text deltas make up most of the stream, and every chunk of every
  stream passes here on the request path.

Usage is read as the OpenAI -> Bedrock translator reads it (``openai_bedrock_stream``), so
one request costs the same whichever API the client spoke: the prompt is everything the
model read, ``inputTokens`` (the uncached part) plus the cache reads and writes, with the
writes' 1-hour part (``cacheDetails``) kept for the bill. A count that is not a
non-negative integer makes the usage unreadable (None) rather than a guessed 0. Converse
names no model in its answer, so ``response_model`` stays None.

A stream that fails after its 200 left is recorded as ``failure`` (``base.StreamFailure``,
with no counts: Bedrock reports usage last, so the gateway estimates the charge): an
exception frame (``:message-type`` ``exception``, e.g. ``throttlingException``) or an error
frame, named and classified as the OpenAI -> Bedrock stream names them (one that is the
stream's first frame came before the answer began: ``began`` False, charged nothing, as
the same error's status is); and a frame that
fails its checks, after which nothing of the stream can be trusted or found, so parsing
stops. Its bytes still go on: the client's SDK rejects the broken frame itself. Usage is
then None. A stream cut before ``metadata`` (the client gone, the upstream reset: no end
of stream) has no usage and no failure: the gateway estimates it as any stream cut short;
no counts are kept before ``metadata``, so there is no ``counts_so_far``
(``base.counts_so_far`` reads None). The client gets the stream in whole frames
(``aws_eventstream.WholeMessages``): a frame's start waits for its end. One whose body
ends, cleanly, after its answer began, or inside a frame (dropped), and before
``messageStop`` is failed by the gateway (``_end_early``), the one frame it ever adds.
"""

from __future__ import annotations

from typing import Any

import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage

from extproc.aws_eventstream import WholeMessages, encode_exception
from extproc.context import Usage
from extproc.translators.anthropic_bedrock import LATENCY_OPTIMIZED
from extproc.translators.base import (
    INVALID_UPSTREAM_RESPONSE,
    STREAM_ENDED_EARLY,
    UNDECODABLE_STREAM,
    BufferedBodyReader,
    ProviderStreamError,
    StreamFailure,
)
from extproc.translators.generated_text import generated_chars

# The stream translator's own classification of Bedrock's frames and errors: the
# pass-through names a failure exactly as it does.
from extproc.translators.openai_bedrock_stream import (
    BAD_FRAME,
    SERVED_AS_ASKED,
    frame_error,
    read_usage,
    served_tier,
    stream_exception,
)

# The frame that ends a stream whose body ended before the answer did: the gateway's 502
# (bedrock_exception's InternalServerException) as exception frames spell it, which
# ConverseStream's and InvokeModelWithResponseStream's outputs declare, so botocore
# raises it by name (EventStreamError).
ENDED_EARLY_FRAME = encode_exception(
    "internalServerException", orjson.dumps({"message": STREAM_ENDED_EARLY})
)


def ended_early_error() -> ProviderStreamError:
    """The request's error for a stream ended by ``ENDED_EARLY_FRAME``, as the log names it."""
    return ProviderStreamError(
        STREAM_ENDED_EARLY, error_type="upstream_error", code="invalid_upstream_response"
    )


def converse_usage(value: Any) -> Usage | None:
    """A Converse ``usage`` object (answer or ``metadata`` event) as the gateway's ``Usage``;
    None when absent, or when a count in it is no token count (``read_usage``)."""
    read = read_usage(value)
    return read[0] if read is not None else None


def _answer_service_tier(answer: dict[str, Any]) -> str | None:
    """The price tier of a Converse answer or ``metadata`` event: ``latency_optimized``
    when Bedrock served it so (``performanceConfig.latency``), else its ``serviceTier``."""
    performance = answer.get("performanceConfig")
    if isinstance(performance, dict) and performance.get("latency") == "optimized":
        return LATENCY_OPTIMIZED
    return served_tier(answer.get("serviceTier"))


class ConverseReader(BufferedBodyReader):
    """A Converse JSON answer: reads usage and service tier, passes the bytes through."""

    read_usage = staticmethod(converse_usage)
    read_service_tier = staticmethod(_answer_service_tier)

    def __init__(self, *, asked_tier: str | None = None) -> None:
        """``asked_tier``: the tier the request asked for, where Bedrock serves it as
        asked (``backends.bedrock_tier_asked``): it prices an answer cut before its body
        named the tier, as a cut stream is. The answer's word replaces it."""
        super().__init__()
        self.service_tier = asked_tier

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        super().feed(chunk, end_of_stream)
        # Converse names no model; a "model" field a proxy added is not the provider's word.
        self.response_model = None
        return None


class ConverseStreamReader:
    """A ConverseStream event stream: passes every chunk unchanged, reads ``metadata``
    (usage, tier) and failures from the frames as they complete."""

    def __init__(self, *, asked_tier: str | None = None) -> None:
        """``asked_tier``: the ``serviceTier`` type the client's request asked for, None
        when it asked for none. It prices a stream cut before ``metadata`` where Bedrock
        serves the tier it accepted (flex, priority, default); reserved capacity overflows
        to the standard tier, which only ``metadata`` would tell."""
        self.usage: Usage | None = None
        # Bedrock does not say which model answered.
        self.response_model: str | None = None
        self.status: int | None = None  # a stream's headers have left
        # Set when the stream failed after its 200 (base.StreamFailure).
        self.failure: StreamFailure | None = None
        self.service_tier: str | None = asked_tier if asked_tier in SERVED_AS_ASKED else None
        self._frames = EventStreamBuffer()
        # The frames the client may have: whole ones (a partial one is held).
        self._whole = WholeMessages()
        # Cleared once nothing more can be read: a failure, or a frame that broke.
        self._reading = True
        # Whether an event came before any exception (Bedrock began its answer): an
        # exception first (throttlingException before messageStart) is the streamed form
        # of that error's status, charged nothing as the status is (StreamFailure.began).
        self._began = False
        # Set once ``metadata``, the stream's last event, was read: the answer is whole
        # even if the client hangs up before Envoy's end of stream.
        self.terminal_event_read = False
        # Set once messageStop came: with its stop reason, the SDK's answer is whole
        # (``terminal_event_read`` too: metadata, or another family's last chunk).
        self._answered = False
        # Characters of generated text in the frames so far (stages.partial_usage), counted
        # in whole frames: the body's chunks cut a frame, its text too, anywhere.
        self.generated_chars = 0

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if not self._reading:
            return None
        whole = self._whole.take(chunk)
        self._frames.add_data(chunk)
        try:
            for frame in self._frames:
                self._read(frame)
                if not self._reading:
                    break
        except BAD_FRAME:
            undecodable = ProviderStreamError(
                UNDECODABLE_STREAM, error_type="upstream_error", code=INVALID_UPSTREAM_RESPONSE
            )
            self._failed(undecodable)
        if not self._reading:
            # What follows is passed on unread, as it came: drop what the buffer holds,
            # and send what was held for the client (its SDK judges it).
            self._frames = EventStreamBuffer()
            whole += self._whole.release()
        elif end_of_stream and self._cut() and not (self._answered or self.terminal_event_read):
            return whole + self._end_early()
        return None if whole is chunk else whole

    def _cut(self) -> bool:
        """Whether the body ended after the answer began, or inside a frame (whose start
        the provider had sent: it was answering)."""
        return self._began or self._whole.partial

    def _end_early(self) -> bytes:
        """The end of a stream whose provider closed it, cleanly, after its answer began
        and before ``messageStop`` (a proxy, or an upstream whose body ends with its
        connection, ending a cut stream as if whole). Bedrock never does: passed on as it
        came, boto3 yielded the events so far as the whole answer, without a stop reason,
        and the request was logged completed. An exception frame the SDK raises
        (``EventStreamError``, ``internalServerException``) ends it instead, charged as
        Bedrock's own exception mid-stream is; a translated stream's client reads its own
        error there too. A frame the body ended inside of is dropped: sent, botocore read
        the exception frame as its rest and raised a ``ChecksumMismatch``, and with
        nothing after it ended the stream quietly."""
        self._failed(ended_early_error())
        return ENDED_EARLY_FRAME

    def _read(self, frame: EventStreamMessage) -> None:
        error = frame_error(frame)
        if error is not None:
            self._failed(stream_exception(*error), began=self._began)
            return
        self._began = True
        kind = frame.headers.get(":event-type")
        self._answered = self._answered or kind == "messageStop"
        if kind == "metadata":
            self._read_metadata(frame.payload)
        else:
            self.generated_chars += generated_chars(frame.payload)

    def _read_metadata(self, payload: bytes) -> None:
        # orjson's decode error is a ValueError: a payload that is not JSON is a bad frame.
        parsed = orjson.loads(payload)
        if not isinstance(parsed, dict):
            raise ValueError("metadata payload is not a JSON object")
        # Bedrock's word replaces the tier asked for, even when it names none.
        self.service_tier = _answer_service_tier(parsed)
        self.usage = converse_usage(parsed.get("usage"))
        self.terminal_event_read = True

    def _failed(self, error: ProviderStreamError, *, began: bool = True) -> None:
        """``began``: False for Bedrock's exception before any event; a frame that broke
        is always charged (what came may have been the answer)."""
        # Bedrock reports usage last: no count is known, the gateway estimates.
        self.failure = StreamFailure(error, began=began)
        self.usage = None
        self._reading = False
