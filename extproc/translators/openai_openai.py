"""OpenAI client to an OpenAI-compatible provider: model rename, usage in streams, usage read.

Requests: the model is renamed to the provider's name for it, and streams always
ask for ``stream_options.include_usage`` so the gateway can count tokens.
Responses: usage is read from the JSON body, or from the last SSE chunk; when the
client did not ask for that chunk, it is removed from the stream it receives. An error
event inside a stream (``data: {"error": {...}}``, how OpenAI fails a stream whose 200
has left) reaches the client unchanged and is recorded as the reader's ``failure``
(``base.StreamFailure``), so the gateway charges the request and names the error. An event
too long to hold (``sse.EventBuffer``) fails the stream the same way, with the gateway's
own error event (``sse.event_too_large``) the client reads last.

The service tier that served the answer (``service_tier``, top level of a
``chat.completion`` and of every ``chat.completion.chunk``: ``default``, ``flex``,
``priority``...) prices the request. A JSON answer's is read from the parsed body; a
stream's from its first event (one search of that event's bytes, no parse), so a stream
cut before its usage chunk is billed at its tier too, and from the usage chunk, which is
parsed anyway. A stream whose first event names no tier is read at its usage chunk only.
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

# Only events that carry a usage or an error object are parsed; the rest pass
# untouched, which keeps a long stream cheap. Generated text cannot fake either:
# its quotes are escaped.
_USAGE_OR_ERROR = re.compile(rb'"(?:usage|error)"\s*:\s*\{')
_DONE = b"data: [DONE]" + EVENT_END
# The service tier of an event, top level of a chunk. Generated text cannot fake it: its
# quotes are escaped, so none stands right after the name.
_SERVICE_TIER = re.compile(rb'"service_tier"\s*:\s*"([a-z0-9_]{1,32})"')


def prepare_request(
    body: dict[str, Any], upstream_model: str, *, stream: bool, client_wants_usage: bool
) -> dict[str, Any] | None:
    """Return the body to send upstream, or None when the client's body can go as is."""
    changed = False
    if body.get("model") != upstream_model:
        body["model"] = upstream_model
        changed = True
    if stream and not client_wants_usage:
        options = body.get("stream_options")
        body["stream_options"] = (
            {**options, "include_usage": True}
            if isinstance(options, dict)
            else {"include_usage": True}
        )
        changed = True
    return body if changed else None


def usage_from_object(value: Any) -> Usage | None:
    """Read OpenAI's usage object; None when absent or malformed."""
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    completion = value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = value.get("total_tokens")
    details = value.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt,
        completion,
        total if isinstance(total, int) else prompt + completion,
        _cached(cached, prompt),
    )


def _cached(value: Any, prompt: int) -> int:
    """``prompt_tokens_details.cached_tokens``: part of the prompt, so never more than it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return 0
    return min(value, prompt)


def service_tier_from_answer(answer: dict[str, Any]) -> str | None:
    """The ``service_tier`` of a chat completion or chunk (top level)."""
    return service_tier_of(answer.get("service_tier"))


class CompletionReader(BufferedBodyReader):
    """A buffered (non-streaming) chat completion: reads usage, model and service tier,
    passes bytes through."""

    read_usage = staticmethod(usage_from_object)
    read_service_tier = staticmethod(service_tier_from_answer)


class ChunkStreamReader:
    """An SSE stream of chat completion chunks.

    Reads usage from the chunk that carries it. With ``hide_usage_chunk`` the
    usage-only chunk (``choices: []``) is cut out of what the client receives,
    because the gateway asked for it, not the client; then only whole events are
    forwarded and a partial one waits for its end in the next body chunk.

    The only other bytes it changes end a stream whose event grew too long to hold
    (``_end_unreadable``).
    """

    def __init__(self, *, hide_usage_chunk: bool) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # passed through as it is
        # Set when the provider sent an error event mid-stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        # The tier that served the stream, as its first event or usage chunk names it.
        self.service_tier: str | None = None
        # True until the first data event has been looked at for the service tier.
        self._first_event = True
        self._hide = hide_usage_chunk
        self._events = EventBuffer()
        # Set once the gateway ended a stream it could no longer read (an event too long).
        self._ended = False

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if self._ended:
            return b""  # the client has read the stream's end already
        complete = self._events.whole_events(chunk, end_of_stream)
        if self._first_event and complete:
            self._read_first_tier(complete)
        if self._events.overflowed:
            return self._end_unreadable(chunk, complete)
        if not _USAGE_OR_ERROR.search(complete):
            if not self._hide or complete is chunk:
                return None  # Envoy forwards the chunk as it came: no body mutation
            return complete
        kept = self._read_events(complete)
        return kept if self._hide else None

    def _read_first_tier(self, complete: bytes) -> None:
        """The service tier the stream's first data event names (OpenAI names it in every
        chunk): known from the start, it prices a stream cut before its usage chunk."""
        if b"data:" not in complete:
            return  # comments or keep-alives before the first event
        self._first_event = False
        found = _SERVICE_TIER.search(complete)
        if found is not None:
            self.service_tier = service_tier_of(found.group(1).decode())

    def _read_events(self, complete: bytes) -> bytes:
        """Read the usage (or the provider's error) of whole events; the events a client
        whose usage chunk is hidden receives."""
        kept: list[bytes] = []
        for event in complete.split(EVENT_END):
            if not event.strip():
                continue
            if _USAGE_OR_ERROR.search(event) and self._read_usage(event) and self._hide:
                continue
            kept.append(event + EVENT_END)
        return b"".join(kept)

    def _end_unreadable(self, chunk: bytes, complete: bytes) -> bytes:
        """End a stream whose event grew too long to hold (``sse.EventBuffer``).

        The gateway can no longer read what the provider sends, and going on would
        silently leave that event out of what a client whose usage chunk is hidden
        receives. So the stream fails as it does on a provider's error event: the client
        reads what came before, the gateway's error event and ``[DONE]``, nothing after;
        the request is charged an estimate (``stages.partial_usage``). Hiding the usage
        chunk, only whole events were forwarded, so those this chunk ended come first.
        Otherwise the chunks went as they came, the oversized event's start among them:
        this chunk goes too, then a blank line that ends the broken event (an SSE client
        drops or rejects it), as ``anthropic_anthropic`` ends one for Anthropic clients.
        """
        self._ended = True
        kept = self._read_events(complete)
        error = event_too_large(self._events.max_event_bytes)
        self._stream_failed(error)
        ending = b"data: " + error.body() + EVENT_END + _DONE
        return kept + ending if self._hide else chunk + EVENT_END + ending

    def _read_usage(self, event: bytes) -> bool:
        """Take usage (or the provider's error) from one event; True when the event is a
        usage-only chunk."""
        try:
            parsed = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            return False
        if not isinstance(parsed, dict):
            return False
        if isinstance(parsed.get("error"), dict):
            self._stream_failed(ProviderStreamError.from_openai(parsed["error"]))
            return False
        usage = usage_from_object(parsed.get("usage"))
        if usage is None:
            return False
        self.usage = usage
        # The usage chunk's tier is the provider's last word on it.
        self.service_tier = service_tier_from_answer(parsed) or self.service_tier
        model = parsed.get("model")
        if isinstance(model, str):
            self.response_model = model
        return parsed.get("choices") == []

    def _stream_failed(self, error: GatewayError) -> None:
        """Record the stream's first failure: the provider's error event, or the gateway's."""
        if self.failure is not None:
            return
        # OpenAI reports usage last: nothing counted yet is complete, the gateway estimates.
        self.failure = StreamFailure(error)
        self.usage = None
