"""OpenAI Responses API, passed through to an OpenAI-compatible provider.

The request goes as the client sent it, under the provider's name for the model, to
``<base_url>/responses``. The answer passes through unchanged; the gateway reads:

- usage: ``usage.input_tokens`` (of which ``input_tokens_details.cached_tokens`` came
  from the prompt cache), ``usage.output_tokens`` (reasoning tokens included, as OpenAI
  bills them) and ``usage.total_tokens``; a JSON answer's top level, a stream's
  terminal event's ``response.usage``. The Responses API always reports usage, so
  nothing is asked of the provider to get it;
- the model that answered, the service tier that served it (``service_tier``; a
  stream's first event echoes the tier asked for, read unless it is ``auto``), and
  the outcome for the log line's ``finish_reasons``: the response's ``status``
  (``completed``, ``failed``...), ``incomplete:<reason>`` for an incomplete one
  (``incomplete:max_output_tokens``).

A stream (SSE, ``event: response.<kind>`` lines) ends with one terminal event:
``response.completed``, ``response.incomplete`` or ``response.failed``, each carrying
the whole response; there is no ``data: [DONE]``. Only the events that carry what
the gateway reads are parsed (the first, ``response.created``, for the model and
tier of a stream cut before its end; the terminal one; an error): the deltas pass
untouched. The reader says when it has read the terminal event
(``terminal_event_read``), which is where the stream ends for the client.

A provider's failure inside a stream whose 200 has left is recorded as the reader's
``failure`` (``base.StreamFailure``), so the gateway charges what the provider did and
names its error: an ``error`` event, or ``response.failed`` (whose usage, when it
has one, is the provider's count of what it did). An event too long to hold
(``sse.EventBuffer``) fails the stream the same way, with the gateway's own ``error``
event the client reads last.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from extproc.context import Usage
from extproc.errors import GatewayError
from extproc.translators.base import (
    BufferedBodyReader,
    ProviderStreamError,
    StreamFailure,
    service_tier_of,
)
from extproc.translators.sse import EVENT_END, EventBuffer, event_data, event_too_large

# Under the provider's API path (``/v1`` for OpenAI).
ENDPOINT = "/responses"
# The events whose end makes a stream whole: each carries the final response.
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# An event worth parsing names one of these types. Generated text cannot fake the
# pattern: its quotes are escaped, so none stands right before the type.
_READ_EVENTS = re.compile(
    rb'"type"\s*:\s*"(?:response\.(?:created|completed|incomplete|failed)|error)"'
)
# The tier a request asks for to let the provider choose: no tier that served anything.
AUTO_TIER = "auto"
# A finish reason as the log line keeps it: short, no markup.
_REASON = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def usage_from_responses(value: Any) -> Usage | None:
    """The Responses API's usage object; None when absent or malformed."""
    if not isinstance(value, dict):
        return None
    prompt = _count(value.get("input_tokens"))
    completion = _count(value.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    total = _count(value.get("total_tokens"))
    details = value.get("input_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    return Usage(
        prompt,
        completion,
        total if total is not None else prompt + completion,
        # Part of the input, so never more than it.
        min(cached, prompt) if cached is not None else 0,
    )


def _count(value: Any) -> int | None:
    """A token count: an integer >= 0; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def finish_reason(response: dict[str, Any]) -> str | None:
    """The outcome of a response as the log line names it: its ``status``, or
    ``incomplete:<reason>`` when it stopped short (``incomplete:max_output_tokens``)."""
    status = response.get("status")
    if not isinstance(status, str) or not _REASON.fullmatch(status):
        return None
    if status != "incomplete":
        return status
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if isinstance(reason, str) and _REASON.fullmatch(reason):
        return f"incomplete:{reason}"
    return status


def _model(response: dict[str, Any]) -> str | None:
    model = response.get("model")
    return model if isinstance(model, str) else None


class ResponseReader(BufferedBodyReader):
    """A whole (non-streamed) response: reads usage, model, service tier and outcome,
    passes bytes through."""

    read_usage = staticmethod(usage_from_responses)

    def __init__(self) -> None:
        super().__init__()
        self.finish_reason: str | None = None

    @staticmethod
    def read_service_tier(answer: dict[str, Any]) -> str | None:
        return service_tier_of(answer.get("service_tier"))

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        super().feed(chunk, end_of_stream)
        if end_of_stream and isinstance(self.answer, dict):
            self.finish_reason = finish_reason(self.answer)
        return None


class EventStreamReader:
    """A streamed response: reads the events that carry usage, model, tier, outcome or
    an error (the module docstring), passes every byte through as it came."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # passed through as it is
        # Set when the provider failed the stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        self.service_tier: str | None = None
        self.finish_reason: str | None = None
        # Set once a terminal event (response.completed, .incomplete, .failed) was read.
        self.terminal_event_read = False
        self._events = EventBuffer()
        # Set once the gateway ended a stream it could no longer read (an event too long).
        self._ended = False

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if self._ended:
            return b""  # the client has read the stream's end already
        complete = self._events.whole_events(chunk, end_of_stream)
        if self._events.overflowed:
            return self._end_unreadable(chunk, complete)
        if complete and _READ_EVENTS.search(complete):
            for event in complete.split(EVENT_END):
                if _READ_EVENTS.search(event):
                    self._read_event(event)
        return None

    def _read_event(self, event: bytes) -> None:
        try:
            parsed = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            return
        if not isinstance(parsed, dict):
            return
        kind = parsed.get("type")
        if kind == "error":
            self._stream_failed(_error_event(parsed))
            return
        response = parsed.get("response")
        if not isinstance(response, dict):
            return
        self.response_model = _model(response) or self.response_model
        tier = service_tier_of(response.get("service_tier"))
        if kind not in TERMINAL_EVENTS:
            # response.created: the model and tier, for a stream cut before its end. It
            # echoes the tier asked for: "auto" names none, the terminal event will.
            if tier != AUTO_TIER:
                self.service_tier = tier or self.service_tier
            return
        self.service_tier = tier or self.service_tier
        self.terminal_event_read = True
        self.finish_reason = finish_reason(response)
        usage = usage_from_responses(response.get("usage"))
        if kind == "response.failed":
            self._stream_failed(_failed_response(response), usage)
        elif self.failure is None:
            self.usage = usage

    def _stream_failed(self, error: GatewayError, usage: Usage | None = None) -> None:
        """Record the stream's failure: the first error names it; a usage reported with
        ``response.failed`` (even after an ``error`` event) is the provider's count."""
        first = self.failure.error if self.failure is not None else error
        if usage is not None:
            self.failure = StreamFailure(
                first,
                prompt_tokens=usage.prompt_tokens,
                cached_tokens=usage.cached_tokens,
                completion_tokens=usage.completion_tokens,
            )
        elif self.failure is None:
            self.failure = StreamFailure(error)
        self.usage = None

    def _end_unreadable(self, chunk: bytes, complete: bytes) -> bytes:
        """End a stream whose event grew too long to hold (``sse.EventBuffer``): the
        chunks went as they came, the oversized event's start among them, so this chunk
        goes too, then a blank line that ends the broken event, then the gateway's
        ``error`` event, which the client reads last; nothing after it."""
        self._ended = True
        for event in complete.split(EVENT_END):
            if _READ_EVENTS.search(event):
                self._read_event(event)
        error = event_too_large(self._events.max_event_bytes)
        self._stream_failed(error)
        return chunk + EVENT_END + error_event(error)


def error_event(error: GatewayError) -> bytes:
    """An ``error`` event of the Responses API's stream, as the client's SDK reads one."""
    data = {"type": "error", "code": error.code, "message": error.message, "param": None}
    return b"event: error\ndata: " + orjson.dumps(data) + EVENT_END


def _error_event(event: dict[str, Any]) -> ProviderStreamError:
    """An ``error`` event: ``{"type": "error", "code", "message", "param"}``, or with the
    same fields under ``error``."""
    nested = event.get("error")
    if isinstance(nested, dict):
        return ProviderStreamError.from_openai(nested)
    # The flat event's own type is "error", which names no kind of error.
    return ProviderStreamError.from_openai({**event, "type": "server_error"})


def _failed_response(response: dict[str, Any]) -> ProviderStreamError:
    """The error of a ``response.failed`` event's response (``{"code", "message"}``)."""
    error = response.get("error")
    found = error if isinstance(error, dict) else {}
    return ProviderStreamError.from_openai({**found, "type": "server_error"})
