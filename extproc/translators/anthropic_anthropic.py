"""Anthropic client to Anthropic's Messages API: model rename, usage read, bytes passed through.

Requests: the model is renamed to the provider's name for it; nothing else changes, because
Anthropic reports usage in every response and stream without being asked.
Responses are never rewritten. Usage is read from the message body, or from the stream's
``message_start`` (input side) and ``message_delta`` (output side) events. An ``error``
event inside a stream reaches the client as Anthropic sent it (its own API's shape); the
reader records it as a ``failure`` (``base.StreamFailure``) with the counts reported by
then, so the gateway charges the request and names the error in its log line.

Prompt tokens are everything the model read: ``input_tokens`` counts only the uncached part,
so ``cache_creation_input_tokens`` and ``cache_read_input_tokens`` are added to it. Of the
cache writes, ``cache_creation.ephemeral_1h_input_tokens`` went to the 1-hour cache, which
is billed above the 5-minute one; the rest of ``cache_creation_input_tokens`` (the total,
which makes the prompt count) are 5-minute writes. A ``message_delta`` that carries a split
replaces the one ``message_start`` carried, as it does for every other count.

Server tools (web search, web fetch) are billed per request on top of the tokens; Anthropic
counts them in ``usage.server_tool_use``, one ``<tool>_requests`` count per tool
(``web_search_requests``), in JSON answers and in a stream's ``message_start`` (0: they
run while the answer streams) and ``message_delta`` (cumulative). Every such count is read,
so a tool Anthropic adds later reaches the bill by its name without a change here.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from extproc.context import Usage
from extproc.errors import GatewayError
from extproc.translators.anthropic_errors import stream_error
from extproc.translators.base import BufferedBodyReader, StreamFailure
from extproc.translators.sse import EVENT_END, EventBuffer, event_data

# Only the events that carry usage, and errors, are parsed. Their JSON type is matched with
# its quotes, so text deltas that merely mention the name (escaped as \"message_delta\")
# are skipped too.
_USAGE_EVENT = re.compile(rb'"(?:message_start|message_delta|error)"')


def prepare_request(body: dict[str, Any], upstream_model: str) -> dict[str, Any] | None:
    """Return the body to send upstream, or None when the client's body can go as is."""
    if body.get("model") == upstream_model:
        return None
    body["model"] = upstream_model
    return body


# usage.server_tool_use names each tool's count "<tool>_requests".
_REQUESTS_SUFFIX = "_requests"
# A tool's name as it may appear in a log line and the price table; a provider (or a proxy
# in front of it) that sends more, or odd names, cannot grow the line without bound.
_TOOL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_SERVER_TOOLS = 16


def _count(value: Any) -> int | None:
    # bool is an int subclass; a `true` token count is malformed, not 1.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def server_tool_requests(value: Any) -> dict[str, int]:
    """The counts of a ``usage.server_tool_use`` object by tool name (``web_search``), 0s
    included (a later report replaces an earlier one); malformed entries are left out."""
    if not isinstance(value, dict):
        return {}
    counts: dict[str, int] = {}
    for key, raw in value.items():
        count = _count(raw)
        if count is None or count < 0 or not isinstance(key, str):
            continue
        name = key.removesuffix(_REQUESTS_SUFFIX)
        if name != key and _TOOL_NAME.fullmatch(name) and len(counts) < MAX_SERVER_TOOLS:
            counts[name] = count
    return counts


class UsageCounts:
    """What a usage object reports besides the output tokens: uncached input, the cache
    counts, of the cache writes those Anthropic made for its 1-hour cache
    (``cache_creation.ephemeral_1h_input_tokens``, billed above the 5-minute writes), and
    the requests of its server tools (``server_tool_use``, billed per request)."""

    __slots__ = ("cache_creation", "cache_creation_1h", "cache_read", "server_tools", "uncached")

    def __init__(self) -> None:
        self.uncached: int | None = None
        self.cache_creation = 0
        self.cache_creation_1h = 0
        self.cache_read = 0
        self.server_tools: dict[str, int] = {}

    @classmethod
    def of(cls, usage: Any) -> UsageCounts:
        """The counts of one usage object (nothing for what is not one)."""
        tokens = cls()
        if isinstance(usage, dict):
            tokens.update(usage)
        return tokens

    def update(self, usage: dict[str, Any]) -> None:
        """Take the counts a usage object carries; absent ones keep their earlier value."""
        uncached = _count(usage.get("input_tokens"))
        if uncached is not None:
            self.uncached = uncached
        creation = _count(usage.get("cache_creation_input_tokens"))
        if creation is not None:
            self.cache_creation = creation
        read = _count(usage.get("cache_read_input_tokens"))
        if read is not None:
            self.cache_read = read
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            one_hour = _count(split.get("ephemeral_1h_input_tokens"))
            if one_hour is not None:
                self.cache_creation_1h = one_hour
        # Counts are cumulative: each tool's latest replaces its earlier one.
        reported = server_tool_requests(usage.get("server_tool_use"))
        if reported:
            merged = {**self.server_tools, **reported}
            self.server_tools = dict(list(merged.items())[:MAX_SERVER_TOOLS])

    @property
    def total(self) -> int | None:
        if self.uncached is None:
            return None
        return self.uncached + self.cache_creation + self.cache_read

    @property
    def cache_creation_1h_part(self) -> int:
        """The 1-hour writes, never more than all the writes: the total is what makes the
        prompt count, so a split that disagrees with it cannot add tokens."""
        return min(max(self.cache_creation_1h, 0), self.cache_creation)

    @property
    def server_tools_used(self) -> dict[str, int]:
        """The server tools that made requests (a count of 0 bills nothing and says nothing)."""
        return {name: count for name, count in self.server_tools.items() if count > 0}

    def usage(self, output_tokens: int) -> Usage | None:
        """The request's usage with these counts; None while the input is unknown."""
        prompt = self.total
        if prompt is None:
            return None
        return Usage(
            prompt,
            output_tokens,
            prompt + output_tokens,
            self.cache_read,
            self.cache_creation,
            self.cache_creation_1h_part,
            self.server_tools_used,
        )

    def failure(self, error: GatewayError, completion_tokens: int | None) -> StreamFailure:
        """A stream's failure, with the counts reported before it (base.StreamFailure)."""
        return StreamFailure(
            error,
            prompt_tokens=self.total,
            cached_tokens=self.cache_read,
            completion_tokens=completion_tokens,
            cache_write_tokens=self.cache_creation,
            cache_write_1h_tokens=self.cache_creation_1h_part,
            server_tool_requests=self.server_tools_used,
        )


def usage_from_object(value: Any) -> Usage | None:
    """Read a Message's usage object; None when absent or malformed."""
    if not isinstance(value, dict):
        return None
    completion = _count(value.get("output_tokens"))
    if completion is None:
        return None
    return UsageCounts.of(value).usage(completion)


class MessageReader(BufferedBodyReader):
    """A buffered (non-streaming) message: reads usage and model, passes bytes through."""

    read_usage = staticmethod(usage_from_object)


class EventStreamReader:
    """An SSE stream of Messages API events; reads usage, never changes a byte.

    ``message_start`` carries the input tokens and the model; each ``message_delta`` carries
    cumulative counts, always ``output_tokens`` and sometimes input and cache counts, which
    then replace the earlier ones. Usage is known once a ``message_delta`` has been seen;
    a stream cut off before it reports no usage rather than a made-up output count, and so
    does one that ends in an ``error`` event (its counts so far go to ``failure``).
    """

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # passed through as it is
        # Set when Anthropic sent an error event mid-stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        self._input = UsageCounts()
        self._output: int | None = None
        self._events = EventBuffer()

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        complete = self._events.whole_events(chunk, end_of_stream)
        if _USAGE_EVENT.search(complete):
            for event in complete.split(EVENT_END):
                if _USAGE_EVENT.search(event):
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
        if kind == "message_start":
            message = parsed.get("message")
            if not isinstance(message, dict):
                return
            model = message.get("model")
            if isinstance(model, str):
                self.response_model = model
            usage = message.get("usage")
            if isinstance(usage, dict):
                self._input.update(usage)
        elif kind == "message_delta":
            usage = parsed.get("usage")
            if not isinstance(usage, dict):
                return
            output = _count(usage.get("output_tokens"))
            if output is None:
                return
            self._output = output
            self._input.update(usage)
        elif kind == "error":
            self._provider_failed(parsed.get("error"))
            return
        else:
            return
        if self._output is not None and self.failure is None:
            self.usage = self._input.usage(self._output)

    def _provider_failed(self, error: Any) -> None:
        if self.failure is not None:
            return
        # The counts so far are kept for the charge; an incomplete answer has no usage.
        self.failure = self._input.failure(stream_error(error), self._output)
        self.usage = None
