"""Fault-injection instructions for the mock LLM provider.

A test asks for a misbehaving upstream per request with the ``x-mock-fault`` header (the gateway
forwards headers it does not know), or for every request with ``MockOptions.default_fault``.
The value is a semicolon-separated list of ``key=value`` pairs::

    fault      = pair *( ";" pair )
    pair       = key "=" value        ; whitespace around keys and values is ignored
    status     = 400..599             ; answer with this status and a provider-shaped error body
    delay      = float >= 0           ; seconds to sleep before answering
    first_chunk_delay = float >= 0    ; streams: the status and headers at once, then this
                                      ; many seconds before the first event (a provider
                                      ; reading a long prompt, a model thinking)
    reset_after= int >= 0             ; abort the connection after this many content chunks
                                      ; (non-streaming: before sending anything)
    error_after= int >= 0             ; streams: after this many content chunks, send the
                                      ; provider's own mid-stream error event and end the
                                      ; stream (non-streaming answers are not affected)
    end_after  = int >= 0             ; Anthropic's Messages, OpenAI chat and speech: after
                                      ; this many content chunks, end the body cleanly,
                                      ; before message_delta and message_stop (the finish
                                      ; chunk, the usage chunk and [DONE]): a proxy, or a
                                      ; body that ends with its connection, closing a cut
                                      ; stream as if whole
    end_inside = int >= 0             ; OpenAI chat and completions, Anthropic Messages, Bedrock
                                      ; ConverseStream and Claude's InvokeModelWith-
                                      ; ResponseStream streams: after this many content
                                      ; chunks, the first half of the next event (or frame),
                                      ; then the body ends cleanly (an upstream reset
                                      ; mid-line behind a proxy that ends the body there)
    end_before_blank = int >= 0       ; OpenAI chat streams: after this many content
                                      ; chunks, the next event's line without the blank
                                      ; line that ends it, then the body ends cleanly
    crlf       = 0 | 1 | true | false ; OpenAI chat streams: every line ends with CRLF (as
                                      ; servers built on sse-starlette write)
    error_first= 429 | 500 | 503      ; streams: the provider's own error, in that status's
                                      ; form, as the stream's first event, before the
                                      ; answer began (non-streaming answers: not affected)
    garbage    = 0 | 1 | true | false ; answer 200 with a body (or SSE data) that is not JSON
    chunks     = int >= 1             ; stream the reply as exactly this many content chunks
    interval   = float >= 0           ; seconds between SSE events (overrides chunk_delay_s)
    cached     = int >= 0             ; report this many prompt tokens (at most all) as read
                                      ; from the provider's prompt cache
    no_usage   = 0 | 1 | true | false ; OpenAI streams: no usage chunk, even when asked for
                                      ; (a provider that ignores stream_options.include_usage)
    gzip       = 0 | 1 | true | false ; compress the answer with gzip although the client
                                      ; asked for no encoding (a misbehaving server or proxy)
    stream_anyway = 0 | 1 | true | false
                                      ; OpenAI chat: answer a request that did not ask for a
                                      ; stream with one, its usage chunk included (a server or
                                      ; proxy that streams regardless)
    error_body = openai | bare | anthropic | google
                                      ; answer 200 with an error body of that shape (a server
                                      ; or proxy that reports errors in a success answer)
    google_errors = 0 | 1 | true | false
                                      ; with status: the error in Google's one-element list
                                      ; (Gemini's OpenAI-compatible endpoint)
    anthropic_errors = 0 | 1 | true | false
                                      ; with status: the error in Anthropic's shape (an
                                      ; OpenAI-compatible endpoint whose edge answers so);
                                      ; with error_after, OpenAI chat streams: the
                                      ; mid-stream error as Anthropic's event: error
                                      ; (overloaded_error), as a proxy in front of Claude
                                      ; fails a stream
    error_quotes_user = 0 | 1 | true | false
                                      ; with error_after, OpenAI chat streams: the
                                      ; mid-stream error refuses the request's ``user``,
                                      ; quoting its value (invalid_request_error)
    hold_body  = float >= 0           ; non-streamed answers, an error status's included:
                                      ; the status and headers at once, the body this many
                                      ; seconds later (a client that gives up in between
                                      ; left before the body)
    reset_in_body = 0 | 1 | true | false
                                      ; non-streamed answers: the status, the headers and
                                      ; half the body, then the connection dropped (a
                                      ; provider reset mid-body)
    no_output_count = 0 | 1 | true | false
                                      ; Bedrock's InvokeModel JSON answers: the input count
                                      ; header without the output count header (a proxy
                                      ; that dropped one)

``error_body`` excludes ``status`` (it is the 200's body), and ``google_errors`` and
``anthropic_errors`` need ``status`` (``anthropic_errors`` ``status`` or ``error_after``:
alone they would break nothing, and a test relying on one would check nothing) and exclude
each other. ``error_quotes_user`` needs ``error_after`` and excludes ``anthropic_errors``.
``error_first`` excludes ``status`` and ``error_body`` (no stream would start) and
``error_after``, ``reset_after``, ``end_after``, ``end_inside`` and ``end_before_blank`` (no
content chunk would come to count).

This module only parses; what a fault looks like on the wire is the provider module's business,
because error bodies differ between providers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

FAULT_HEADER = "x-mock-fault"


class FaultSpecError(ValueError):
    """The fault instructions cannot be parsed; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Fault:
    """What to break in one response. The default instance breaks nothing."""

    status: int | None = None
    delay_s: float = 0.0
    # Streams: seconds between the status (headers sent) and the first event.
    first_chunk_delay_s: float = 0.0
    reset_after: int | None = None
    # Streams: the content chunks sent before the provider's mid-stream error event.
    error_after: int | None = None
    # Anthropic's Messages streams: the content chunks sent before the body ends cleanly.
    end_after: int | None = None
    # Streams: the content chunks sent before half an event, then the body's clean end.
    end_inside: int | None = None
    # OpenAI chat streams: the content chunks sent before an event's line without its blank
    # line, then the body's clean end.
    end_before_blank: int | None = None
    # OpenAI chat streams: CRLF line ends instead of LF.
    crlf: bool = False
    # Streams: the status whose streamed form the provider's error sent first is (the
    # error before its answer began: a throttle, an outage), None for none.
    error_first: int | None = None
    garbage: bool = False
    chunks: int | None = None
    interval_s: float | None = None
    cached_tokens: int | None = None
    no_usage: bool = False
    gzip: bool = False
    # A chat request that did not ask for a stream gets one, with its usage chunk.
    stream_anyway: bool = False
    # The shape of the error a 200 answer carries (ERROR_BODIES), None for none.
    error_body: str | None = None
    # A status fault's body in Google's list shape instead of the provider's own.
    google_errors: bool = False
    # A status fault's body in Anthropic's shape instead of the provider's own.
    anthropic_errors: bool = False
    # With error_after, OpenAI chat streams: the error event quotes the request's user.
    error_quotes_user: bool = False
    # Non-streamed answers: seconds between the status (headers sent) and the body.
    hold_body_s: float = 0.0
    # Non-streamed answers: half the body after the status, then the connection dropped.
    reset_in_body: bool = False
    # InvokeModel's JSON answers: X-Amzn-Bedrock-Input-Token-Count alone, no output count.
    no_output_count: bool = False

    def pause_before_event(self, sent: int, interval: float) -> float:
        """Seconds a stream waits before its event number ``sent`` (0: the first, after
        its status left): ``first_chunk_delay`` before the first, ``interval`` between
        the others."""
        return interval if sent else self.first_chunk_delay_s

    def cached_part(self, prompt_tokens: int) -> int:
        """How many of a request's prompt tokens to report as read from the cache."""
        return min(self.cached_tokens or 0, prompt_tokens)


NO_FAULT = Fault()

# The shapes of error a provider (or a proxy) may put in a 200 answer: OpenAI's
# {"error": {...}}, a bare {"error": "..."}, Anthropic's {"type": "error", ...} and
# Google's [{"error": {...}}].
ERROR_BODIES = ("openai", "bare", "anthropic", "google")


def _status(value: str) -> int:
    code = int(value)
    # Only error statuses make sense: a 2xx "fault" would need a success body we do not invent.
    if not 400 <= code <= 599:
        raise ValueError("must be between 400 and 599")
    return code


# The statuses a provider reports as a stream's first event, each with a name in every
# surface's stream: Bedrock's throttlingException, internalServerException and
# serviceUnavailableException, OpenAI's rate_limit_error and server_error.
STREAM_ERROR_STATUSES = (429, 500, 503)


def _stream_error_status(value: str) -> int:
    code = int(value)
    if code not in STREAM_ERROR_STATUSES:
        raise ValueError(f"must be one of {', '.join(map(str, STREAM_ERROR_STATUSES))}")
    return code


def _delay(value: str) -> float:
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a finite number of seconds >= 0")
    return seconds


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError("must be >= 0")
    return n


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise ValueError("must be >= 1")
    return n


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false"):
        return False
    raise ValueError("must be 0, 1, true or false")


def _error_body(value: str) -> str:
    if value not in ERROR_BODIES:
        raise ValueError(f"must be one of {', '.join(ERROR_BODIES)}")
    return value


# key in the header -> (Fault field, converter)
_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "status": ("status", _status),
    "delay": ("delay_s", _delay),
    "first_chunk_delay": ("first_chunk_delay_s", _delay),
    "reset_after": ("reset_after", _non_negative),
    "error_after": ("error_after", _non_negative),
    "end_after": ("end_after", _non_negative),
    "end_inside": ("end_inside", _non_negative),
    "end_before_blank": ("end_before_blank", _non_negative),
    "crlf": ("crlf", _flag),
    "error_first": ("error_first", _stream_error_status),
    "garbage": ("garbage", _flag),
    "chunks": ("chunks", _positive),
    "interval": ("interval_s", _delay),
    "cached": ("cached_tokens", _non_negative),
    "no_usage": ("no_usage", _flag),
    "gzip": ("gzip", _flag),
    "stream_anyway": ("stream_anyway", _flag),
    "error_body": ("error_body", _error_body),
    "google_errors": ("google_errors", _flag),
    "anthropic_errors": ("anthropic_errors", _flag),
    "error_quotes_user": ("error_quotes_user", _flag),
    "hold_body": ("hold_body_s", _delay),
    "reset_in_body": ("reset_in_body", _flag),
    "no_output_count": ("no_output_count", _flag),
}


# What error_first contradicts: no stream would start (status, error_body), or no content
# chunk would come to count (error_after, reset_after, end_after, end_inside,
# end_before_blank).
_EXCLUDED_BY_ERROR_FIRST = (
    "status",
    "error_body",
    "error_after",
    "reset_after",
    "end_after",
    "end_inside",
    "end_before_blank",
)


def parse_fault(spec: str) -> Fault:
    """Parse a fault specification; raise FaultSpecError naming the offending pair."""
    changes: dict[str, Any] = {}
    seen: set[str] = set()
    for raw_pair in spec.split(";"):
        pair = raw_pair.strip()
        if not pair:
            continue  # tolerate "status=500;" and empty headers
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise FaultSpecError(f"{FAULT_HEADER}: expected key=value, got {pair!r}")
        if key not in _KEYS:
            known = ", ".join(sorted(_KEYS))
            raise FaultSpecError(f"{FAULT_HEADER}: unknown key {key!r} (known keys: {known})")
        if key in seen:
            raise FaultSpecError(f"{FAULT_HEADER}: key {key!r} given twice")
        seen.add(key)
        field, convert = _KEYS[key]
        try:
            changes[field] = convert(value)
        except ValueError as exc:
            # int()/float() messages are cryptic; name the key and echo the value instead.
            reason = str(exc) if "must" in str(exc) else "is not a valid number"
            raise FaultSpecError(f"{FAULT_HEADER}: {key}={value!r} {reason}") from None
    if "error_body" in changes and "status" in changes:
        raise FaultSpecError(f"{FAULT_HEADER}: error_body answers 200: it excludes status")
    if changes.get("google_errors") and "status" not in changes:
        raise FaultSpecError(f"{FAULT_HEADER}: google_errors needs a status to answer with")
    if changes.get("anthropic_errors") and not {"status", "error_after"} & changes.keys():
        raise FaultSpecError(
            f"{FAULT_HEADER}: anthropic_errors needs a status to answer with, or error_after"
        )
    if changes.get("error_quotes_user") and "error_after" not in changes:
        raise FaultSpecError(f"{FAULT_HEADER}: error_quotes_user needs error_after")
    if changes.get("error_quotes_user") and changes.get("anthropic_errors"):
        raise FaultSpecError(
            f"{FAULT_HEADER}: error_quotes_user and anthropic_errors exclude each other"
        )
    if changes.get("anthropic_errors") and changes.get("google_errors"):
        raise FaultSpecError(
            f"{FAULT_HEADER}: anthropic_errors and google_errors exclude each other"
        )
    if "error_first" in changes:
        clashing = [key for key in _EXCLUDED_BY_ERROR_FIRST if _KEYS[key][0] in changes]
        if clashing:
            raise FaultSpecError(
                f"{FAULT_HEADER}: error_first fails the stream before its answer began:"
                f" it excludes {', '.join(clashing)}"
            )
    return replace(NO_FAULT, **changes) if changes else NO_FAULT
