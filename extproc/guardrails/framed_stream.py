"""Guards on Claude's InvokeModelWithResponseStream answers: AWS frames around Anthropic's events.

An AWS SDK client of InvokeModel (boto3, Claude Code in its Bedrock mode) reads Claude's
stream as Bedrock frames it: one ``chunk`` message of AWS's binary event stream per
Anthropic event, the event's JSON base64-encoded in the payload's ``bytes``. The text a
guard rewrites lies inside, so ``FramedStreamGuard`` takes the frames apart, gives the
events to the stream guard that guards Anthropic's own SSE (``StreamGuard``, which it
extends: the same channels, hold-back, leftovers and tool-input masking), and frames
what that guard releases again, each event its own ``chunk`` message with fresh CRCs,
so the client's SDK reads the masked stream as it would read Bedrock's.

- Exception and error frames (``throttlingException``...) are not events: they end the
  stream, so what the channels held goes out before them (the SDK raises at them and
  reads nothing after), and they follow as they came, byte for byte but the CRCs.
- A reject guard ends the stream with an exception frame named as the gateway's own
  refusals are in Bedrock's shape, among the exceptions the stream declares (boto3 reads
  neither the name nor the message of another): ``validationException`` for the default
  403, as the stream has no access denied one. The SDK raises it with the guard's
  message; nothing after it is sent.
- A frame that fails its checks ends the guarding: nothing after it can be read, so
  nothing after it is sent, and an ``internalServerException`` frame ends the stream
  (the client's SDK would have raised at the broken frame itself).

``unwrapped`` keeps the events last released, as Anthropic's SSE, for telemetry's finish
reasons and captured text: what the client reads, masked.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage

from extproc.aws_eventstream import encode_event, encode_exception, encode_message
from extproc.errors import anthropic_error_status, bedrock_exception
from extproc.guardrails.matching import Matchers
from extproc.guardrails.stream import StreamGuard
from extproc.translators.anthropic_bedrock import sse_event, unwrapped_chunk
from extproc.translators.base import UNDECODABLE_STREAM
from extproc.translators.openai_bedrock_stream import BAD_FRAME, frame_error

_EVENT_END = b"\n\n"
_ERROR_EVENT = b"error"
_CHUNK = "chunk"
# The SSE event carrying a frame no guard reads, to send on as it came, in its place.
_PASSED = "aws_frame"
# An error event's JSON whose message could not be read: said plainly.
_UNREADABLE_REFUSAL = "the answer was refused by a guardrail"
# What ends the client's stream where a provider's frame broke.
_UNDECODABLE = orjson.dumps({"message": UNDECODABLE_STREAM})
# The exceptions ConverseStream's stream declares (botocore's ConverseStreamOutput);
# InvokeModel's adds modelTimeoutException (ResponseStream).
_CONVERSE_EXCEPTIONS = frozenset(
    {
        "internalServerException",
        "modelStreamErrorException",
        "validationException",
        "throttlingException",
        "serviceUnavailableException",
    }
)


class FramedStreamGuard(StreamGuard):
    """``StreamGuard`` for Claude's events inside InvokeModel's stream frames."""

    # The exception names the stream declares: of another, boto3 raises an error with
    # neither a code nor a message.
    exceptions: ClassVar[frozenset[str]] = _CONVERSE_EXCEPTIONS | {"modelTimeoutException"}
    # Whether telemetry reads the events released (``unwrapped``) rather than the frames:
    # Claude's events hide in base64; Converse's are plain JSON in the frames, which
    # telemetry reads as they are.
    unwraps: ClassVar[bool] = True

    def __init__(self, matchers: Matchers, *, json_text: bool = False) -> None:
        super().__init__(matchers, anthropic=True, json_text=json_text)
        self._frames = EventStreamBuffer()
        # Exception frames read with this chunk: sent after its released events.
        self._after: list[bytes] = []
        # A frame broke: the chunk's events go out, and nothing after them (the stream
        # ended without a refusal: its masks are still recorded at the request's end).
        self.broken = False
        self.unwrapped: bytes | None = b""

    def split(self, data: bytes, end_of_stream: bool) -> list[Any]:
        """The Anthropic events of the complete frames in ``data``, as the SSE guard reads
        them (a partial frame waits for the next chunk)."""
        if self.ended:
            return []
        self._frames.add_data(data)
        sse: list[bytes] = []
        try:
            for frame in self._frames:
                self._unframe(frame, sse)
        except BAD_FRAME:
            # Nothing after a broken frame can be read, so none of it can be guarded; the
            # client's SDK, which would have raised at it, raises at this instead.
            self._frames = EventStreamBuffer()
            self.broken = True
            self._after.append(encode_exception("internalServerException", _UNDECODABLE))
            return super().split(b"".join(sse), True)
        return super().split(b"".join(sse), end_of_stream)

    def render(
        self, events: list[Any], end_of_stream: bool, error: Callable[[int], bytes]
    ) -> bytes:
        # An exception frame (or a broken one) ends the stream: what the channels hold goes
        # out now, before it, not after it, where the SDK that raised reads nothing.
        return super().render(events, end_of_stream or bool(self._after), error)

    def _unframe(self, frame: EventStreamMessage, sse: list[bytes]) -> None:
        if frame_error(frame) is not None:
            # As it came: an error message's code and message are in its headers, a model
            # error's payload has the model's own status too.
            headers = {name: str(value) for name, value in frame.headers.items()}
            self._after.append(encode_message(headers, frame.payload))
            return
        kind = str(frame.headers.get(":event-type", ""))
        event = self._event(kind, frame.payload)
        if event is None:
            # No text the guards read: the frame goes on as it came, in its place.
            passed = {"type": _PASSED, "event": kind, "payload": frame.payload.decode()}
            event = b"event: " + _PASSED.encode() + b"\ndata: " + orjson.dumps(passed) + _EVENT_END
        sse.append(event)

    def _event(self, kind: str, payload: bytes) -> bytes | None:
        """The Anthropic SSE event an event frame carries; None for a frame that carries
        none (passed on unread)."""
        if kind != _CHUNK:
            return None
        return sse_event(unwrapped_chunk(payload))

    def reframe(self, sse: bytes) -> bytes:
        """The frames of what the SSE guard released (``render``'s bytes, or the error
        event of a webhook's refusal), then the exception frames read with them."""
        self.unwrapped = sse if self.unwraps else None
        out: list[bytes] = []
        for block in sse.split(_EVENT_END):
            if block.strip():
                out.append(self._frame(block))
        if not self.ended:
            out.extend(self._after)
        self._after = []
        if self.broken:
            self.ended = True
        return b"".join(out)

    def _frame(self, block: bytes) -> bytes:
        name, _, data = block.partition(b"\n")
        kind = name.removeprefix(b"event:").strip()
        payload = data.removeprefix(b"data:").strip()
        if kind == _PASSED.encode():
            passed = orjson.loads(payload)
            return encode_event(passed["event"], passed["payload"].encode())
        if kind != _ERROR_EVENT:
            return self._event_frame(kind, payload)
        # A guard's refusal (the SSE guard's error event): the stream ends with it.
        self.ended = True
        message, status = _refusal_of(payload)
        # Exception frames spell names in lowerCamel (throttlingException).
        exception = bedrock_exception(status)
        raised = exception[:1].lower() + exception[1:]
        if raised not in self.exceptions:
            # AccessDenied, ResourceNotFound: the call's errors, which no stream declares.
            raised = "validationException"
        return encode_exception(raised, orjson.dumps({"message": message}))

    def _event_frame(self, kind: bytes, payload: bytes) -> bytes:
        """The frame of one event the SSE guard released: Claude's event in a chunk."""
        encoded = base64.b64encode(payload)
        return encode_event(_CHUNK, b'{"bytes":"' + encoded + b'"}')


def _refusal_of(payload: bytes) -> tuple[str, int]:
    """The message of Anthropic's error event, and the status its type stands for."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return _UNREADABLE_REFUSAL, 403
    message, kind = error.get("message"), error.get("type")
    status = anthropic_error_status(kind) if isinstance(kind, str) else 403
    return (message if isinstance(message, str) and message else _UNREADABLE_REFUSAL), status


class ConverseStreamGuard(FramedStreamGuard):
    """``StreamGuard`` for a ConverseStream answer's frames: Converse's events, each its
    own frame (no base64), read as the Anthropic events they stand for.

    A ``contentBlockDelta`` with ``text`` is a ``text_delta`` of its block, one with
    ``toolUse.input`` an ``input_json_delta`` (the tool call's JSON input, guarded as
    Anthropic's is), ``contentBlockStop`` closes the block (what its channel held goes
    out before it), ``messageStop`` ends the answer's text (every channel's leftovers go
    out before it). Each keeps its own payload, the text replaced: nothing else of
    Bedrock's changes. Every other frame (``messageStart``, ``contentBlockStart``,
    ``metadata``, citation deltas, redacted reasoning) goes on as it came. A reasoning
    delta's ``text`` is read as Claude's ``thinking_delta`` and its ``signature`` as the
    ``signature_delta`` that closes it: signed (Bedrock refuses a changed one sent back),
    so a mask there ends the stream as a reject guard does."""

    exceptions: ClassVar[frozenset[str]] = _CONVERSE_EXCEPTIONS
    unwraps: ClassVar[bool] = False

    def _event(self, kind: str, payload: bytes) -> bytes | None:
        if kind not in _CONVERSE_READ:
            return None
        event = orjson.loads(payload)
        if not isinstance(event, dict):
            return None
        index = event.get("contentBlockIndex", 0)
        anthropic: dict[str, Any] = {"type": _CONVERSE_READ[kind], "index": index}
        if kind == _DELTA:
            delta = event.get("delta")
            text = delta.get("text") if isinstance(delta, dict) else None
            tool = delta.get("toolUse") if isinstance(delta, dict) else None
            reasoning = delta.get("reasoningContent") if isinstance(delta, dict) else None
            if isinstance(text, str):
                anthropic["delta"] = {"type": "text_delta", "text": text}
            elif isinstance(tool, dict) and isinstance(tool.get("input"), str):
                anthropic["delta"] = {"type": "input_json_delta", "partial_json": tool["input"]}
            elif isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
                # Signed reasoning, read as Claude's thinking: a mask there ends the stream.
                anthropic["delta"] = {"type": "thinking_delta", "thinking": reasoning["text"]}
            elif isinstance(reasoning, dict) and "signature" in reasoning:
                # Its signature closes the reasoning: what was held goes out before it.
                anthropic["delta"] = {"type": "signature_delta"}
            else:
                return None
        # The frame's own payload rides along: it is written back with the text replaced.
        anthropic[_CONVERSE_KEY] = event
        name = _CONVERSE_READ[kind].encode()
        return b"event: " + name + b"\ndata: " + orjson.dumps(anthropic) + _EVENT_END

    def _event_frame(self, kind: bytes, payload: bytes) -> bytes:
        event = orjson.loads(payload)
        original = event.get(_CONVERSE_KEY)
        name = kind.decode()
        if name == "content_block_delta":
            delta = event.get("delta", {})
            part = delta.get("type")
            if part == "signature_delta" and isinstance(original, dict):
                return encode_event(_DELTA, orjson.dumps(original))
            written: dict[str, Any]
            if part == "text_delta":
                written = {"text": delta.get("text", "")}
            elif part == "thinking_delta":
                written = {"reasoningContent": {"text": delta.get("thinking", "")}}
            else:
                written = {"toolUse": {"input": delta.get("partial_json", "")}}
            if isinstance(original, dict):
                converse = {**original, "delta": written}
            else:
                # Leftovers the guard released before the block closed: a delta of its own.
                converse = {"contentBlockIndex": event.get("index", 0), "delta": written}
            return encode_event(_DELTA, orjson.dumps(converse))
        frame_kind = _CONVERSE_WRITTEN.get(name, name)
        return encode_event(frame_kind, orjson.dumps(original if original is not None else event))


_DELTA = "contentBlockDelta"
# The Converse events the guard reads, and the Anthropic events they stand for.
_CONVERSE_READ = {
    _DELTA: "content_block_delta",
    "contentBlockStop": "content_block_stop",
    "messageStop": "message_stop",
}
_CONVERSE_WRITTEN = {anthropic: converse for converse, anthropic in _CONVERSE_READ.items()}
# Where a read event keeps its frame's own payload.
_CONVERSE_KEY = "converse"
