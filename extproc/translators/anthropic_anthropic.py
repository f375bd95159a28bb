"""Anthropic client to Anthropic's Messages API: model rename, usage read, bytes passed through.

Requests: the model is renamed to the provider's name for it; nothing else changes, because
Anthropic reports usage in every response and stream without being asked.
Responses are not rewritten, but for a stream the gateway must end (an event too long to
hold, ``sse.event_too_large``; a body that ended before the answer did), and a stream is
passed on in whole events: an event the body ended inside of never reaches the client.
Usage is read from the message body, or from the stream's
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

A stream cut before its ``message_delta`` (the client hung up, the provider failed) would
bill no search, and a search costs more than most answers' tokens. So the stream's own
blocks are counted as they pass (``ServerToolTally``): each request of a tool Anthropic
bills per request (``server_tool_use`` named ``web_search`` or ``web_fetch``, counted as
``web_search_requests`` / ``web_fetch_requests``), less those whose result is an error
(Anthropic bills no failed search). ``stages.partial_usage`` bills that count, marked
estimated, when the stream ends without Anthropic's; once a ``message_delta`` reports
``server_tool_use``, Anthropic's count is the bill.

Server-side compaction (Anthropic's ``compact_20260112`` context edit) summarises the
conversation in a sampling step of its own, on the request's model, before the answer.
Its tokens are billed, yet the top-level counts leave them out: they sum the answer's
own (``message``) iterations alone. ``usage.iterations`` lists every step; its
``compaction`` entries (``CompactionCounts``) are added to the request's counts, each
kind to its own (input, cache reads, cache writes and their 1-hour part, output), so a
compacting request is billed what Anthropic bills. They come in the message's ``usage``
and in a stream's last ``message_delta``, whose list replaces any earlier one.

The service tier that served the answer (``usage.service_tier``: ``standard``,
``priority``, ``batch``) prices the request. It is read with the usage: from the message
body, or from a stream's ``message_start`` (a ``message_delta`` that names one too
replaces it), so a stream cut after its start is billed at its tier. An answer served in
fast mode (``usage.speed: "fast"``, asked for with the request's ``speed``) is billed at
a multiple of the standard price whatever capacity served it, so its tier is its speed,
``fast`` (``ServiceTierReport``); one that fell back to standard speed keeps its tier.

Where the request ran (``usage.inference_geo``: ``global``, or ``us`` for US-only
inference, billed at a multiple of the price) is read the same way, as ``inference_geo``:
from the message body, from a stream's ``message_start`` and any later usage that names
it (``inference_geo_from_usage``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from extproc.context import Usage
from extproc.errors import GatewayError, UpstreamError
from extproc.translators.anthropic_errors import stream_error
from extproc.translators.base import (
    STREAM_ENDED_EARLY,
    BufferedBodyReader,
    StreamFailure,
    inference_geo_of,
    renamed,
    service_tier_of,
)
from extproc.translators.sse import (
    EVENT_END,
    EventBuffer,
    WholeEventBytes,
    event_data,
    event_too_large,
)
from extproc.translators.token_counts import token_count

# Only the events that carry usage, and errors, are parsed. Their JSON type is matched with
# its quotes, so text deltas that merely mention the name (escaped as \"message_delta\")
# are skipped too.
_USAGE_EVENT = re.compile(rb'"(?:message_start|message_delta|error)"')
# The event that ends every whole answer. Quoted as JSON writes the type, which text
# inside a JSON string cannot be (its quotes are escaped).
_MESSAGE_STOP = b'"message_stop"'


# The request goes as the client sent it, under the provider's name for the model.
prepare_request = renamed


# usage.server_tool_use names each tool's count "<tool>_requests".
_REQUESTS_SUFFIX = "_requests"
# A tool's name as it may appear in a log line and the price table; a provider (or a proxy
# in front of it) that sends more, or odd names, cannot grow the line without bound.
_TOOL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_SERVER_TOOLS = 16


def server_tool_requests(value: Any) -> dict[str, int]:
    """The counts of a ``usage.server_tool_use`` object by tool name (``web_search``), 0s
    included (a later report replaces an earlier one); malformed entries are left out."""
    if not isinstance(value, dict):
        return {}
    counts: dict[str, int] = {}
    for key, raw in value.items():
        count = token_count(raw)
        if count is None or count < 0 or not isinstance(key, str):
            continue
        name = key.removesuffix(_REQUESTS_SUFFIX)
        if name != key and _TOOL_NAME.fullmatch(name) and len(counts) < MAX_SERVER_TOOLS:
            counts[name] = count
    return counts


# The server tools whose requests Anthropic counts in usage.server_tool_use, by the name of
# their server_tool_use blocks (the same as the count's, "<name>_requests"). Code execution
# and tool search run as server tools too, but are billed by time or not at all.
BILLED_PER_REQUEST = frozenset({"web_search", "web_fetch"})
# The bytes an event naming a server tool's request or result must hold, quotes included
# (generated text escapes its quotes, so it cannot fake them): a plain search per chunk,
# far cheaper than one more alternative in _USAGE_EVENT.
_REQUEST_BLOCK = b'"server_tool_use"'
_RESULT_BLOCK = b'_tool_result"'


class ServerToolTally:
    """The server tools' requests a stream's blocks showed, for a stream cut before
    Anthropic's own count (``usage.server_tool_use`` in ``message_delta``).

    Each ``server_tool_use`` block of a tool billed per request is one request, unless its
    result block (``<name>_tool_result``) carries a ``<name>_tool_result_error``: Anthropic
    bills no failed search (``max_uses_exceeded`` among them). Once Anthropic reports its
    count, that is the bill and ``counts`` is empty.
    """

    __slots__ = ("_counts", "_superseded")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._superseded = False

    @staticmethod
    def may_name_a_block(data: bytes) -> bool:
        """Whether ``data`` may hold a server tool's request or result block."""
        return _REQUEST_BLOCK in data or _RESULT_BLOCK in data

    def block_started(self, block: Any) -> None:
        """Count the ``content_block`` of a ``content_block_start`` event."""
        if not isinstance(block, dict):
            return
        kind = block.get("type")
        if kind == "server_tool_use":
            name = block.get("name")
            if name in BILLED_PER_REQUEST:
                self._counts[name] = self._counts.get(name, 0) + 1
        elif isinstance(kind, str) and kind.endswith("_tool_result"):
            name = kind.removesuffix("_tool_result")
            content = block.get("content")
            failed = isinstance(content, dict) and content.get("type") == f"{kind}_error"
            if failed and self._counts.get(name, 0) > 0:
                self._counts[name] -= 1

    def reported(self, usage: dict[str, Any]) -> None:
        """A ``message_delta``'s usage: its ``server_tool_use``, if any, is the bill."""
        if isinstance(usage.get("server_tool_use"), dict):
            self._superseded = True

    @property
    def counts(self) -> dict[str, int]:
        """The requests counted by tool (those above 0); empty once Anthropic counted."""
        if self._superseded:
            return {}
        return {name: count for name, count in self._counts.items() if count > 0}


def server_tools_counted(translator: object) -> dict[str, int]:
    """The server tool requests a stream translator counted from its blocks (its
    ``server_tool_tally``); empty for any other translator, or once Anthropic counted."""
    tally = getattr(translator, "server_tool_tally", None)
    return tally.counts if isinstance(tally, ServerToolTally) else {}


# The type of the usage.iterations entry of a compaction step, whose tokens the top-level
# counts leave out.
_COMPACTION_ITERATION = "compaction"


class CompactionCounts:
    """The tokens of a usage object's compaction steps (``usage.iterations`` entries of
    type ``compaction``), summed: billed beside the top-level counts, which leave them
    out. A count that is no token count (``token_counts``) is read as 0."""

    __slots__ = (
        "cache_creation",
        "cache_creation_1h",
        "cache_read",
        "output",
        "steps",
        "uncached",
    )

    def __init__(self) -> None:
        # Each step's own counts, which the long-context price judges one by one.
        self.steps: list[Usage] = []
        self.uncached = 0
        self.cache_creation = 0
        self.cache_creation_1h = 0
        self.cache_read = 0
        self.output = 0

    @classmethod
    def of(cls, iterations: list[Any]) -> CompactionCounts:
        counts = cls()
        for entry in iterations:
            if isinstance(entry, dict) and entry.get("type") == _COMPACTION_ITERATION:
                counts._add(entry)
        return counts

    def _add(self, entry: dict[str, Any]) -> None:
        creation = token_count(entry.get("cache_creation_input_tokens")) or 0
        split = entry.get("cache_creation")
        one_hour = 0
        if isinstance(split, dict):
            one_hour = token_count(split.get("ephemeral_1h_input_tokens")) or 0
        uncached = token_count(entry.get("input_tokens")) or 0
        read = token_count(entry.get("cache_read_input_tokens")) or 0
        output = token_count(entry.get("output_tokens")) or 0
        # Each step's 1-hour writes are part of its writes, never more.
        one_hour = min(one_hour, creation)
        self.uncached += uncached
        self.cache_creation += creation
        self.cache_creation_1h += one_hour
        self.cache_read += read
        self.output += output
        prompt = uncached + creation + read
        self.steps.append(Usage(prompt, output, prompt + output, read, creation, one_hour))

    @property
    def prompt(self) -> int:
        return self.uncached + self.cache_creation + self.cache_read


class UsageCounts:
    """What a usage object reports besides the output tokens: uncached input, the cache
    counts, of the cache writes those Anthropic made for its 1-hour cache
    (``cache_creation.ephemeral_1h_input_tokens``, billed above the 5-minute writes), the
    requests of its server tools (``server_tool_use``, billed per request), and its
    compaction steps (``iterations``), which the other counts leave out."""

    __slots__ = (
        "cache_creation",
        "cache_creation_1h",
        "cache_read",
        "compaction",
        "server_tools",
        "uncached",
    )

    def __init__(self) -> None:
        self.uncached: int | None = None
        self.cache_creation = 0
        self.cache_creation_1h = 0
        self.cache_read = 0
        self.server_tools: dict[str, int] = {}
        self.compaction = CompactionCounts()

    @classmethod
    def of(cls, usage: Any) -> UsageCounts:
        """The counts of one usage object (nothing for what is not one)."""
        tokens = cls()
        if isinstance(usage, dict):
            tokens.update(usage)
        return tokens

    def update(self, usage: dict[str, Any]) -> None:
        """Take the counts a usage object carries; absent ones keep their earlier value."""
        uncached = token_count(usage.get("input_tokens"))
        if uncached is not None:
            self.uncached = uncached
        creation = token_count(usage.get("cache_creation_input_tokens"))
        if creation is not None:
            self.cache_creation = creation
        read = token_count(usage.get("cache_read_input_tokens"))
        if read is not None:
            self.cache_read = read
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            one_hour = token_count(split.get("ephemeral_1h_input_tokens"))
            if one_hour is not None:
                self.cache_creation_1h = one_hour
        # Counts are cumulative: each tool's latest replaces its earlier one.
        reported = server_tool_requests(usage.get("server_tool_use"))
        if reported:
            merged = {**self.server_tools, **reported}
            self.server_tools = dict(list(merged.items())[:MAX_SERVER_TOOLS])
        # The list of every step so far: the latest replaces an earlier one.
        iterations = usage.get("iterations")
        if isinstance(iterations, list):
            self.compaction = CompactionCounts.of(iterations)

    @property
    def total(self) -> int | None:
        """The prompt: the answer's input, cached and written, and its compaction steps'."""
        if self.uncached is None:
            return None
        return self.uncached + self.cache_creation + self.cache_read + self.compaction.prompt

    @property
    def cache_reads(self) -> int:
        return self.cache_read + self.compaction.cache_read

    @property
    def cache_writes(self) -> int:
        return self.cache_creation + self.compaction.cache_creation

    @property
    def cache_creation_1h_part(self) -> int:
        """The 1-hour writes, never more than all the writes: the total is what makes the
        prompt count, so a split that disagrees with it cannot add tokens."""
        answer = min(max(self.cache_creation_1h, 0), self.cache_creation)
        return answer + self.compaction.cache_creation_1h

    def output(self, output_tokens: int | None) -> int | None:
        """The output reported (None while none is), with the compaction steps'."""
        return None if output_tokens is None else output_tokens + self.compaction.output

    @property
    def server_tools_used(self) -> dict[str, int]:
        """The server tools that made requests (a count of 0 bills nothing and says nothing)."""
        return {name: count for name, count in self.server_tools.items() if count > 0}

    def usage(self, output_tokens: int) -> Usage | None:
        """The request's usage with these counts; None while the input is unknown."""
        prompt = self.total
        if prompt is None:
            return None
        output = output_tokens + self.compaction.output
        return Usage(
            prompt,
            output,
            prompt + output,
            self.cache_reads,
            self.cache_writes,
            self.cache_creation_1h_part,
            self.server_tools_used,
            steps=tuple(self.compaction.steps),
        )

    def failure(
        self, error: GatewayError | None, completion_tokens: int | None, began: bool = True
    ) -> StreamFailure:
        """A stream's failure, with the counts reported before it (base.StreamFailure);
        with no error, the counts of a stream cut short. ``began``: the message had
        started (``message_start``) when it failed."""
        return StreamFailure(
            error,
            prompt_tokens=self.total,
            cached_tokens=self.cache_reads,
            completion_tokens=self.output(completion_tokens),
            cache_write_tokens=self.cache_writes,
            cache_write_1h_tokens=self.cache_creation_1h_part,
            server_tool_requests=self.server_tools_used,
            began=began,
        )


# usage.speed of an answer served at the model's standard speed. Any other speed (fast
# mode: "fast") is billed at its own price, a multiple of the standard one, whatever
# capacity served it: the price table gives it as the model's tier of that name.
STANDARD_SPEED = "standard"


class ServiceTierReport:
    """What a response's usage objects said of its tier and speed, each as the last one
    that named it said (a stream's ``message_delta`` may repeat neither), and the tier
    that bills it (``tier``)."""

    __slots__ = ("_service_tier", "_speed")

    def __init__(self) -> None:
        self._service_tier: str | None = None
        self._speed: str | None = None

    def update(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self._service_tier = service_tier_of(usage.get("service_tier")) or self._service_tier
        self._speed = service_tier_of(usage.get("speed")) or self._speed

    @property
    def tier(self) -> str | None:
        """The speed, unless standard (fast mode asked for may fall back to it, billed at
        standard rates); else the service tier."""
        if self._speed is not None and self._speed != STANDARD_SPEED:
            return self._speed
        return self._service_tier


def service_tier_from_usage(usage: Any) -> str | None:
    """The tier a usage object's request is billed at: its ``speed`` when not standard
    (``fast``), else its ``service_tier`` (``standard``, ``priority``, ``batch``)."""
    report = ServiceTierReport()
    report.update(usage)
    return report.tier


def inference_geo_from_usage(usage: Any) -> str | None:
    """Where a usage object says the request ran (``inference_geo``), or None."""
    return inference_geo_of(usage.get("inference_geo")) if isinstance(usage, dict) else None


def usage_from_object(value: Any) -> Usage | None:
    """Read a Message's usage object; None when absent or malformed."""
    if not isinstance(value, dict):
        return None
    completion = token_count(value.get("output_tokens"))
    if completion is None:
        return None
    return UsageCounts.of(value).usage(completion)


def _message_service_tier(answer: dict[str, Any]) -> str | None:
    return service_tier_from_usage(answer.get("usage"))


def _message_inference_geo(answer: dict[str, Any]) -> str | None:
    return inference_geo_from_usage(answer.get("usage"))


class MessageReader(BufferedBodyReader):
    """A buffered (non-streaming) message: reads usage, model, service tier and inference
    geography, passes bytes through."""

    read_usage = staticmethod(usage_from_object)
    read_service_tier = staticmethod(_message_service_tier)
    read_inference_geo = staticmethod(_message_inference_geo)


class EventStreamReader:
    """An SSE stream of Messages API events; reads usage, passes the bytes as they came.

    ``message_start`` carries the input tokens and the model; each ``message_delta`` carries
    cumulative counts, always ``output_tokens`` and sometimes input and cache counts, which
    then replace the earlier ones. Usage is known once a ``message_delta`` has been seen;
    a stream cut off before it reports no usage rather than a made-up output count, and so
    does one that ends in an ``error`` event (its counts so far go to ``failure``). Its
    server tools' blocks are counted (``server_tool_tally``) for the bill of a cut stream.

    The client gets the stream in whole events: an event's start waits for its end, and one
    the body ended inside of is dropped (``sse.EventBuffer.unfinished``). The only bytes it
    ever adds end a stream it cannot deliver whole: one whose event grew too long to hold
    (``_end_unreadable``), and one that ended after its message began, or inside an event,
    but before its end (``message_delta``, ``message_stop``) or an error (``_end_early``).
    """

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # passed through as it is
        # Set when Anthropic sent an error event mid-stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        # The tier that bills the stream (message_start's usage: service_tier, speed).
        self.service_tier: str | None = None
        self._tier_report = ServiceTierReport()
        # Where Anthropic ran the request (message_start's usage: inference_geo).
        self.inference_geo: str | None = None
        # The server tools' requests its blocks show, billed if the stream is cut.
        self.server_tool_tally = ServerToolTally()
        self._input = UsageCounts()
        self._output: int | None = None
        # Whether Anthropic began the message (message_start, or a message_delta of a
        # stream whose start a proxy dropped): an error before it is a refusal.
        self._began = False
        self._events = EventBuffer()
        # What the client gets: the provider's bytes, in whole events.
        self._sent = WholeEventBytes()
        # Set once the gateway ended a stream it could no longer read (an event too long).
        self._ended = False
        # The answer's end came: message_stop, or the message_delta Anthropic sends just
        # before it, with the stop reason and the final counts (the SDK's message is whole).
        self._answered = False
        # What ``_end_early`` added after the provider's last bytes, once it did.
        self.early_end: bytes | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if self._ended:
            return b""  # the client has read the stream's end already
        complete = self._events.whole_events(chunk, end_of_stream)
        self._answered = self._answered or _MESSAGE_STOP in complete
        if _worth_parsing(complete):
            for event in complete.split(EVENT_END):
                if _worth_parsing(event):
                    self._read_event(event)
        sent = self._sent.take(chunk, end_of_stream)
        if self._events.overflowed:
            self._sent.clear()
            return self._end_unreadable(sent)
        cut = self._began or bool(self._events.unfinished)
        if end_of_stream and cut and not self._answered and self.failure is None:
            return sent + self._end_early()
        return None if sent is chunk else sent

    def counts_so_far(self) -> StreamFailure:
        """What Anthropic had reported when the stream was cut (base.counts_so_far)."""
        return self._input.failure(None, self._output)

    def _end_unreadable(self, sent: bytes) -> bytes:
        """End a stream whose event grew too long to hold (``sse.EventBuffer``).

        The gateway could no longer read its usage, so it fails it as Anthropic fails a
        stream: the whole events before the broken one (never shown, it is dropped), then
        an ``event: error`` the client reads last, and nothing after it. The request is
        charged as for Anthropic's own error event.
        """
        self._ended = True
        error = event_too_large(self._events.max_event_bytes)
        self._provider_failed(error)
        return sent + b"event: error\ndata: " + error.body("anthropic") + EVENT_END

    def _end_early(self) -> bytes:
        """The end of a stream whose provider closed it, cleanly, after its message began
        and before its ``message_delta`` and ``message_stop`` (a proxy, or an upstream
        whose body ends with its connection, ending a cut stream as if whole). Anthropic
        never does: passed on as it came, the SDK returned the text so far as the whole
        answer (``stop_reason`` None) and the request was logged completed. After the
        whole events (an event the body ended inside of is dropped: closed with a blank
        line, it failed the SDK's JSON parse), an ``event: error`` (``api_error``) the SDK
        raises, as a translated stream's client reads its own error there; charged as
        after Anthropic's own error event."""
        error = UpstreamError(STREAM_ENDED_EARLY, code="invalid_upstream_response")
        self._provider_failed(error)
        self.early_end = b"event: error\ndata: " + error.body("anthropic") + EVENT_END
        return self.early_end

    def _read_event(self, event: bytes) -> None:
        try:
            parsed = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            return
        if not isinstance(parsed, dict):
            return
        kind = parsed.get("type")
        self._began = self._began or kind in ("message_start", "message_delta")
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
                self._take_tier(usage)
        elif kind == "message_delta":
            self._answered = True
            usage = parsed.get("usage")
            if not isinstance(usage, dict):
                return
            self._take_tier(usage)
            output = token_count(usage.get("output_tokens"))
            if output is None:
                return
            self._output = output
            self._input.update(usage)
            self.server_tool_tally.reported(usage)
        elif kind == "content_block_start":
            self.server_tool_tally.block_started(parsed.get("content_block"))
            return
        elif kind == "error":
            self._provider_failed(stream_error(parsed.get("error")))
            return
        else:
            return
        if self._output is not None and self.failure is None:
            self.usage = self._input.usage(self._output)

    def _take_tier(self, usage: dict[str, Any]) -> None:
        self._tier_report.update(usage)
        self.service_tier = self._tier_report.tier
        self.inference_geo = inference_geo_from_usage(usage) or self.inference_geo

    def _provider_failed(self, error: GatewayError) -> None:
        if self.failure is not None:
            return
        # The counts so far are kept for the charge; an incomplete answer has no usage.
        self.failure = self._input.failure(error, self._output, self._began)
        self.usage = None


def _worth_parsing(events: bytes) -> bool:
    """Whether these events may carry usage, an error or a server tool's block."""
    return bool(_USAGE_EVENT.search(events)) or ServerToolTally.may_name_a_block(events)
