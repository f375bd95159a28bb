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
  ``anthropic_beta`` list, where Bedrock reads them.
- JSON answer: Claude's Message as Anthropic sends it: passed through and read as on
  Anthropic's own API (``anthropic_anthropic.MessageReader``).
- Stream (``StreamTranslator``): AWS's binary event stream, one ``chunk`` frame per
  Anthropic event, its JSON base64-encoded in the frame's ``bytes``. Each event becomes
  the SSE event Anthropic would have sent (``event: <type>`` / ``data: <json>``), which
  Anthropic's stream reader then reads for usage, the server tools' blocks and errors,
  exactly as on Anthropic's own API. An exception frame (``throttlingException``,
  ``modelStreamErrorException``...) becomes Anthropic's ``event: error`` with the type its
  status maps to, recorded as the stream's failure; a frame that fails its checks ends
  the stream with an ``api_error`` event. Either ends the stream: nothing after it is sent.
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
from typing import Any
from urllib.parse import quote

import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage

from extproc.errors import anthropic_error_body
from extproc.translators.anthropic_anthropic import EventStreamReader
from extproc.translators.base import MAX_PROVIDER_MESSAGE
from extproc.translators.generated_text import generated_chars
from extproc.translators.openai_bedrock_stream import BAD_FRAME, client_error, frame_message

# The only version Bedrock's Claude takes in the body.
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
# Keys of Anthropic's body that Bedrock takes elsewhere (the path) and refuses here.
_NOT_IN_BODY = ("model", "stream")
# The characters a model id keeps in the path; AWS's SDKs encode the rest (":" and an
# ARN's "/").
_PATH_SAFE = "-._~"
# An Anthropic event's JSON names its type first; the SSE event line repeats it. Read
# without a parse (a text delta is most of the stream); a parse when the order differs.
_LEADING_TYPE = re.compile(rb'\A\s*\{\s*"type"\s*:\s*"([a-z_]+)"')
_EVENT_END = b"\n\n"
_UNDECODABLE = "the provider's event stream could not be decoded"


def translate_request(body: dict[str, Any], beta_header: str | None) -> dict[str, Any]:
    """The InvokeModel body for an Anthropic Messages body (``body`` is left as it is)."""
    translated = {key: value for key, value in body.items() if key not in _NOT_IN_BODY}
    translated["anthropic_version"] = BEDROCK_ANTHROPIC_VERSION
    betas = [beta.strip() for beta in (beta_header or "").split(",") if beta.strip()]
    if betas:
        listed = translated.get("anthropic_beta")
        known = (
            [beta for beta in listed if isinstance(beta, str)] if isinstance(listed, list) else []
        )
        translated["anthropic_beta"] = known + [beta for beta in betas if beta not in known]
    return translated


def request_path(model_id: str, *, stream: bool) -> str:
    """The InvokeModel path for a model id or ARN, e.g. ``/model/a.b-v1%3A0/invoke``."""
    action = "invoke-with-response-stream" if stream else "invoke"
    return f"/model/{quote(model_id, safe=_PATH_SAFE)}/{action}"


def translate_error(status: int, body: bytes, error_type_header: str | None) -> tuple[int, bytes]:
    """Bedrock's error as an Anthropic client reads one: the status the exception maps to
    and ``{"type": "error", "error": {...}}`` with Bedrock's message."""
    name = (error_type_header or "").split(":", 1)[0]
    client_status, _, message = client_error(name, status, _message_of(body))
    return client_status, anthropic_error_body(message, client_status)


def _message_of(body: bytes) -> str:
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(parsed, dict):
        return ""
    message = parsed.get("message") or parsed.get("Message")
    return message[:MAX_PROVIDER_MESSAGE] if isinstance(message, str) else ""


class StreamTranslator(EventStreamReader):
    """InvokeModelWithResponseStream's event stream as Anthropic's SSE, read for usage,
    failures and server tools as Anthropic's own stream is (the reader it extends)."""

    def __init__(self) -> None:
        super().__init__()
        # Characters of generated text in the events unwrapped so far (partial_usage).
        self.generated_chars = 0
        self._frames = EventStreamBuffer()
        self._closed = False

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
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
            out.append(self._end_with(anthropic_error_body(_UNDECODABLE, 502)))
        sse = b"".join(out)
        if not sse:
            return sse
        # Anthropic's reader reads the events (and ends a stream whose event it cannot
        # hold, returning what the client gets instead).
        replaced = super().feed(sse, end_of_stream)
        return sse if replaced is None else replaced

    def _translate(self, frame: EventStreamMessage, out: list[bytes]) -> None:
        headers = frame.headers
        kind = headers.get(":message-type", "event")
        if kind == "exception":
            name = str(headers.get(":exception-type", ""))
            self._exception(name, frame_message(frame.payload), out)
        elif kind == "error":
            name = str(headers.get(":error-code", ""))
            self._exception(name, str(headers.get(":error-message", "")), out)
        elif headers.get(":event-type") == "chunk":
            event = _unwrapped(frame.payload)
            if b"\n" in event or b"\r" in event:
                # Whitespace between JSON tokens: one SSE data line must hold the event.
                event = orjson.dumps(orjson.loads(event))
            self.generated_chars += generated_chars(event)
            out.append(b"event: " + _event_type(event) + b"\ndata: " + event + _EVENT_END)

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


def _unwrapped(payload: bytes) -> bytes:
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
