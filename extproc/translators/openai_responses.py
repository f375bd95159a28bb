"""OpenAI Responses API, passed through to an OpenAI-compatible provider.

The request goes as the client sent it, under the provider's name for the model, to
``<base_url>/responses``. The answer passes through unchanged; the gateway reads:

- usage: ``usage.input_tokens`` (of which ``input_tokens_details.cached_tokens`` came
  from the prompt cache and ``input_tokens_details.cache_write_tokens`` were written to
  it, read as chat's ``prompt_tokens_details`` are), ``usage.output_tokens`` (reasoning
  tokens included, as OpenAI bills them; those a provider counts beside it, as xAI does,
  told by ``usage.total_tokens`` and added, as on chat completions:
  ``openai_openai.reasoning_beside``), and what the provider says it charged
  (``usage.cost``, as OpenRouter reports it: ``openai_openai.reported_cost``); a JSON
  answer's top level, a stream's terminal event's ``response.usage``. The Responses API
  always reports usage, so nothing is asked of the provider to get it;
- the model that answered, the service tier that served it (``service_tier``; a
  stream's first event echoes the tier asked for, read unless it is ``auto``), and
  the outcome for the log line's ``finish_reasons``: the response's ``status``
  (``completed``, ``failed``...), ``incomplete:<reason>`` for an incomplete one
  (``incomplete:max_output_tokens``);
- the calls of OpenAI's built-in tools billed per call on top of the tokens, as
  ``Usage.server_tool_requests`` (``server_tool_calls``): each ``web_search_call`` output
  item that searched (its ``action`` ``search``, or no action), as ``web_search``; each
  ``file_search_call``, as ``file_search``; a call whose ``status`` is ``failed`` is not
  billed (docs/chargeback.md says why). A JSON answer's ``output``; a stream's terminal
  response's ``output``;
- the response's ``id`` (a JSON answer's; a stream's first event's), under which
  ``stages.response_owner`` records who created it.
- the pictures its ``image_generation`` tool drew (``tool_usage.image_gen``, beside
  ``usage``), added to the counts as parts of them and billed at the image model's prices
  (``openai_image_usage``): a JSON answer's top level, a stream's terminal response's. The
  image model is the one the response's ``tools`` names, else the request's
  (``image_model``). A stream cut before its terminal response never shows them: each
  picture it showed begun (``PictureTally``) is charged as the quota reserved it
  (``openai_image_usage.tool_picture_allowance``), as a cut Images API stream is
  (docs/chargeback.md#image-generation).

A stream (SSE, ``event: response.<kind>`` lines) ends with one terminal event:
``response.completed``, ``response.incomplete`` or ``response.failed``, each carrying
the whole response; there is no ``data: [DONE]``. Only the events that carry what
the gateway reads are parsed (the first, ``response.created``, for the model and
tier of a stream cut before its end; the terminal one; an error): the deltas pass
untouched. The reader says when it has read the terminal event
(``terminal_event_read``), which is where the stream ends for the client.

A stream cut before its terminal event (the client hung up) or failed by an ``error``
event never shows its whole ``output``, yet the tool calls it made are billed. So the
``response.output_item.added`` and ``.done`` events of billed tool calls are read too
(``ToolCallTally``: a plain pattern on the item's type picks them out), and
``stages.partial_usage`` bills what they showed; once the terminal response is read, its
``output`` is the count. So are the events of the image generation tool's calls
(``response.image_generation_call.in_progress``, ``.generating``, ``.partial_image``,
and the output item events of an ``image_generation_call``): the provider was drawing,
and bills the picture. They are told apart by a plain pattern too, never parsed (a
partial picture is megabytes of base64), and counted by their ``output_index``.

A compaction (``/responses/compact``) answers one JSON object, ``{"id", "object":
"response.compaction", "created_at", "output", "usage"}``, whose ``usage`` has this very
shape (reasoning tokens in ``output_tokens``): ``ResponseReader`` reads it as a response's,
and finds no ``model``, ``service_tier`` or ``status`` in it (the log line's
``finish_reasons`` stays empty). A token count (``/responses/input_tokens``,
``{"object": "response.input_tokens", "input_tokens": N}``) is not read: its number is a
count, not usage, and nothing is billed for it.

A provider's failure inside a stream whose 200 has left is recorded as the reader's
``failure`` (``base.StreamFailure``), so the gateway charges what the provider did and
names its error: an ``error`` event (or an event of no type holding an error object,
``{"error": {...}}`` as chat completions send one, which some OpenAI-compatible servers
send here too), or ``response.failed`` (whose usage, when it has one, is the provider's
count of what it did). An error before any other data event (before ``response.created``)
came before the answer began (``began`` False): the streamed form of an error status,
charged nothing as that status is. An event too long to hold
(``sse.EventBuffer``) fails the stream the same way, with the gateway's own ``error``
event the client reads last.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from extproc.context import ImageGeneration, Usage
from extproc.errors import GatewayError, UpstreamError
from extproc.translators.base import (
    STREAM_ENDED_EARLY,
    BufferedBodyReader,
    ProviderStreamError,
    StreamFailure,
    service_tier_of,
)
from extproc.translators.openai_image_usage import (
    image_generation_of,
    reserved_pictures,
    tool_model,
    with_image_generation,
)
from extproc.translators.openai_openai import reasoning_beside, reported_cost
from extproc.translators.sse import (
    EVENT_END,
    EventBuffer,
    WholeEventBytes,
    event_data,
    event_too_large,
)
from extproc.translators.token_counts import token_count

# Under the provider's API path (``/v1`` for OpenAI).
ENDPOINT = "/responses"
# The compaction and token-count endpoints beside it, which take a Responses body too.
COMPACT_ENDPOINT = "/responses/compact"
INPUT_TOKENS_ENDPOINT = "/responses/input_tokens"
# The events whose end makes a stream whole: each carries the final response.
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# The events whose response is read: the first (model, tier) and the terminal ones.
_RESPONSE_EVENTS = TERMINAL_EVENTS | {"response.created"}
# An event worth parsing names one of these types: its own, or (an output item event of a
# billed tool call) its item's; or it holds an error object (an error in chat's shape,
# ``{"error": {...}}``, as some OpenAI-compatible servers fail a Responses stream).
# Generated text cannot fake the pattern: its quotes are escaped, so none stands right
# before the type.
_READ_EVENTS = re.compile(
    rb'"type"\s*:\s*"(?:response\.(?:created|completed|incomplete|failed)|error'
    rb'|web_search_call|file_search_call)"|"error"\s*:\s*\{'
)
# The events that show one output item: a tool call as it starts, then as it ended.
_ITEM_EVENTS = frozenset({"response.output_item.added", "response.output_item.done"})
# The output items of OpenAI's built-in tools billed per call, by the name the bill gives
# the tool: its type in the request's ``tools``, which is also Anthropic's name for its web
# search, so one price table entry (``server_tools_per_thousand.web_search``) prices both.
BILLED_CALLS = {"web_search_call": "web_search", "file_search_call": "file_search"}
# OpenAI bills a web_search_call whose action searched ("Search actions incur a tool call
# cost"); a reasoning model's "open_page" and "find_in_page" actions are not searches.
_SEARCH_ACTION = "search"
# A call OpenAI reports as failed is not billed (docs/chargeback.md).
_FAILED = "failed"
# The image generation tool's events: the call's own (``response.image_generation_call.
# in_progress``, ``.generating``, ``.partial_image``, ``.completed``), and an output item
# event whose item is a call of it. Generated text cannot fake them (its quotes are
# escaped); a response's whole document (created, completed) is no output item event.
_PICTURE_MARK = b"image_generation_call"
_PICTURE_EVENT = re.compile(rb'"type"\s*:\s*"response\.image_generation_call\.[a-z_]+"')
_ITEM_EVENT = re.compile(rb'"type"\s*:\s*"response\.output_item\.(?:added|done)"')
_PICTURE_ITEM = re.compile(rb'"type"\s*:\s*"image_generation_call"')
_OUTPUT_INDEX = re.compile(rb'"output_index"\s*:\s*(\d+)')
# The tier a request asks for to let the provider choose: no tier that served anything.
AUTO_TIER = "auto"
# A finish reason as the log line keeps it: short, no markup.
_REASON = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def usage_from_responses(value: Any) -> Usage | None:
    """The Responses API's usage object; None when absent or malformed."""
    if not isinstance(value, dict):
        return None
    prompt = token_count(value.get("input_tokens"))
    completion = token_count(value.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    total = token_count(value.get("total_tokens"))
    output = value.get("output_tokens_details")
    named = token_count(output.get("reasoning_tokens")) if isinstance(output, dict) else None
    if total is not None and named:
        # Reasoning counted beside output_tokens (xAI: total = input + output +
        # reasoning) is billed as output too, as on chat completions. Only when the
        # report names its reasoning tokens: a total that is merely not the sum of the
        # counts says nothing of what the rest is, and is not billed.
        completion += reasoning_beside(named, prompt, completion, total)
    details = value.get("input_tokens_details")
    if not isinstance(details, dict):
        details = {}
    found = token_count(details.get("cached_tokens"))
    # Part of the input, so never more than it.
    cached = min(found, prompt) if found is not None else 0
    usage = Usage(
        prompt,
        completion,
        # The counts' sum, as every other ledger counts it (``openai_openai``).
        prompt + completion,
        cached,
        # Part of the input too, as on chat completions (``openai_openai``): never more
        # than the input not read from the cache.
        min(token_count(details.get("cache_write_tokens")) or 0, prompt - cached),
    )
    # What the provider says it charged, as OpenRouter reports it here too.
    usage.reported_cost_picousd = reported_cost(value)
    return usage


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


def billed_call(item: Any) -> str | None:
    """The tool an output item is a billed call of (``web_search``, ``file_search``); None
    for any other item, a call that failed, or a web search's action that is no search."""
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    tool = BILLED_CALLS.get(kind) if isinstance(kind, str) else None
    if tool is None or item.get("status") == _FAILED:
        return None
    action = item.get("action")
    if isinstance(action, dict):
        named = action.get("type")
        if isinstance(named, str) and named != _SEARCH_ACTION:
            return None
    return tool


def server_tool_calls(output: Any) -> dict[str, int]:
    """The billed tool calls of a response's ``output``, by tool (those above 0)."""
    counts: dict[str, int] = {}
    if isinstance(output, list):
        for item in output:
            tool = billed_call(item)
            if tool is not None:
                counts[tool] = counts.get(tool, 0) + 1
    return counts


class ToolCallTally:
    """The billed tool calls a stream showed, for a stream that ends without its terminal
    response (cut short, or failed by an ``error`` event).

    Each call is shown first by ``response.output_item.added`` (in progress: it was made,
    and counts), then by ``response.output_item.done``, whose item says how it ended (a
    ``failed`` call no longer counts). Both name the call's ``output_index``. Once the
    terminal response is read, its ``output`` is the whole list and the count.
    """

    __slots__ = ("_calls", "_final")

    def __init__(self) -> None:
        # By output_index (the item's id when there is none): the tool billed, None if none.
        self._calls: dict[int | str, str | None] = {}
        self._final: dict[str, int] | None = None

    def item_shown(self, event: dict[str, Any]) -> None:
        """An ``output_item.added`` or ``.done`` event: its item's latest state."""
        item = event.get("item")
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            return
        if item["type"] not in BILLED_CALLS:
            return
        index = event.get("output_index")
        item_id = item.get("id")
        key: int | str
        if isinstance(index, int) and not isinstance(index, bool):
            key = index
        elif isinstance(item_id, str):
            key = item_id
        else:
            # Nothing to match its other event by: a call of its own (negative, so no index).
            key = -1 - len(self._calls)
        self._calls[key] = billed_call(item)

    def response_read(self, response: dict[str, Any]) -> None:
        """The terminal response: its ``output`` is the count."""
        self._final = server_tool_calls(response.get("output"))

    @property
    def counts(self) -> dict[str, int]:
        """The billed calls by tool (those above 0)."""
        if self._final is not None:
            return dict(self._final)
        counts: dict[str, int] = {}
        for tool in self._calls.values():
            if tool is not None:
                counts[tool] = counts.get(tool, 0) + 1
        return counts


class PictureTally:
    """The image generation tool's calls a stream showed begun, each by its
    ``output_index``: what a stream that ends without its terminal response is charged a
    picture for (``pictures_begun``)."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: set[int] = set()

    def read(self, events: bytes) -> None:
        """Whole events as they came: those of an image generation call are counted."""
        if _PICTURE_MARK not in events:
            return  # nearly every chunk: no call of the tool in it
        for event in events.split(EVENT_END):
            if _PICTURE_EVENT.search(event) or (
                _ITEM_EVENT.search(event) and _PICTURE_ITEM.search(event)
            ):
                index = _OUTPUT_INDEX.search(event)
                # One without its index (never seen from OpenAI) is a call of its own.
                self._calls.add(int(index[1]) if index else -1 - len(self._calls))

    @property
    def pictures(self) -> int:
        return len(self._calls)


def pictures_begun(translator: object) -> ImageGeneration | None:
    """The pictures a Responses stream reader saw its image generation tool begin and
    never reported (its stream ended before its terminal response), each at the quota's
    reserve for one; None from any other translator, or when it saw none."""
    begun = getattr(translator, "pictures_begun", None)
    found = begun() if callable(begun) else None
    return found if isinstance(found, ImageGeneration) else None


def server_tool_calls_counted(translator: object) -> dict[str, int]:
    """The billed tool calls a Responses stream reader saw (its ``tool_call_tally``); empty
    for any other translator."""
    tally = getattr(translator, "tool_call_tally", None)
    return tally.counts if isinstance(tally, ToolCallTally) else {}


def _model(response: dict[str, Any]) -> str | None:
    model = response.get("model")
    return model if isinstance(model, str) else None


def _response_id(response: dict[str, Any]) -> str | None:
    """The id the provider stores a response under (``stages.response_owner`` records
    who created it)."""
    found = response.get("id")
    return found if isinstance(found, str) and found else None


class ResponseReader(BufferedBodyReader):
    """A whole (non-streamed) response: reads usage (its billed tool calls included),
    model, service tier and outcome, passes bytes through."""

    read_usage = staticmethod(usage_from_responses)

    def __init__(self, image_model: str | None = None) -> None:
        super().__init__()
        self.finish_reason: str | None = None
        self.response_id: str | None = None
        # The image generation tool's model as the request named it (openai_image_usage).
        self._image_model = image_model

    @staticmethod
    def read_service_tier(answer: dict[str, Any]) -> str | None:
        return service_tier_of(answer.get("service_tier"))

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        super().feed(chunk, end_of_stream)
        if end_of_stream and isinstance(self.answer, dict):
            self.finish_reason = finish_reason(self.answer)
            self.response_id = _response_id(self.answer)
            if self.usage is not None:
                self.usage.server_tool_requests = server_tool_calls(self.answer.get("output"))
                drawn = image_generation_of(self.answer, self._image_model)
                self.usage = with_image_generation(self.usage, drawn)
        return None


class EventStreamReader:
    """A streamed response: reads the events that carry usage, model, tier, outcome, a
    billed tool call or an error (the module docstring), passes every byte through as it
    came."""

    def __init__(self, image_model: str | None = None, picture_allowance: int = 0) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # passed through as it is
        # The image generation tool's model as the request named it (openai_image_usage),
        # then as the first event's ``tools`` names it (OpenAI fills in its default).
        self._image_model = image_model
        # The quota's reserve for one of the tool's pictures; 0: the request has no tool
        # (its stream is not searched for the tool's calls).
        self._picture_allowance = picture_allowance
        self.picture_tally = PictureTally()
        # Set when the provider failed the stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        self.service_tier: str | None = None
        self.finish_reason: str | None = None
        # The response's id, from its first event (or the terminal one).
        self.response_id: str | None = None
        # Set once a terminal event (response.completed, .incomplete, .failed) was read.
        self.terminal_event_read = False
        # The billed tool calls the stream showed, billed if it ends without its response.
        self.tool_call_tally = ToolCallTally()
        self._events = EventBuffer()
        # What the client gets: the provider's bytes, in whole events.
        self._sent = WholeEventBytes()
        # Set once the gateway ended a stream it could no longer read (an event too long).
        self._ended = False
        # Whether a data event other than an error came (the provider began its answer,
        # response.created first): an error before it is the streamed form of an error
        # status, charged nothing as that status is (base.StreamFailure.began).
        self._began = False

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if self._ended:
            return b""  # the client has read the stream's end already
        complete = self._events.whole_events(chunk, end_of_stream)
        sent = self._sent.take(chunk, end_of_stream)
        if self._events.overflowed:
            self._sent.clear()
            return self._end_unreadable(sent, complete)
        if complete and self._picture_allowance and not self.terminal_event_read:
            self.picture_tally.read(complete)
        if complete and (not self._began or _READ_EVENTS.search(complete)):
            for event in complete.split(EVENT_END):
                if _READ_EVENTS.search(event):
                    self._read_event(event)
                elif b"data:" in event:
                    self._began = True
        cut = self._began or bool(self._events.unfinished)
        if end_of_stream and cut and not self.terminal_event_read and self.failure is None:
            return sent + self._end_early()
        # Whole events only: one the body ended inside of never reaches the client.
        return None if sent is chunk else sent

    def _end_early(self) -> bytes:
        """The end of a stream whose body ended after the response began, or inside an
        event, and before its terminal event (a proxy, or an upstream whose body ends
        with its connection, closing a cut stream as if whole). As it came the SDK
        returned the events so far as if whole (``responses.stream`` found no
        ``response.completed``), or, given the cut event closed by a blank line, failed
        its JSON parse. The gateway's ``error`` event ends it instead (``error_event``),
        which the SDK raises (``APIError``); charged as after the provider's own error
        event."""
        error = UpstreamError(STREAM_ENDED_EARLY, code="invalid_upstream_response")
        self._stream_failed(error)
        return error_event(error)

    def _read_event(self, event: bytes) -> None:
        try:
            parsed = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            self._began = True
            return
        if not isinstance(parsed, dict):
            self._began = True
            return
        kind = parsed.get("type")
        if not isinstance(kind, str):
            if kind is None and isinstance(parsed.get("error"), dict):
                # No event type, an error object: an OpenAI-compatible server's error in
                # chat's shape, which the client reads as the stream's failure too.
                self._stream_failed(_error_event(parsed), began=self._began)
            else:
                self._began = True
            return
        if kind == "error":
            self._stream_failed(_error_event(parsed), began=self._began)
            return
        self._began = True
        if kind in _ITEM_EVENTS:
            self.tool_call_tally.item_shown(parsed)
            return
        response = parsed.get("response")
        if not isinstance(response, dict) or kind not in _RESPONSE_EVENTS:
            return
        self.response_model = _model(response) or self.response_model
        self.response_id = _response_id(response) or self.response_id
        tier = service_tier_of(response.get("service_tier"))
        self._image_model = tool_model(response.get("tools")) or self._image_model
        if kind not in TERMINAL_EVENTS:
            # response.created: the model and tier, for a stream cut before its end. It
            # echoes the tier asked for: "auto" names none, the terminal event will.
            if tier != AUTO_TIER:
                self.service_tier = tier or self.service_tier
            return
        self.service_tier = tier or self.service_tier
        self.terminal_event_read = True
        self.finish_reason = finish_reason(response)
        self.tool_call_tally.response_read(response)
        usage = usage_from_responses(response.get("usage"))
        if usage is not None:
            usage.server_tool_requests = self.tool_call_tally.counts
            drawn = image_generation_of(response, self._image_model)
            usage = with_image_generation(usage, drawn)
        if kind == "response.failed" or self.failure is not None:
            self._stream_failed(_failed_response(response), usage)
        else:
            self.usage = usage

    def pictures_begun(self) -> ImageGeneration | None:
        """The pictures the stream showed begun, none reported: each at the quota's
        reserve for one, all of it the picture (a cut Images API stream is charged so);
        the image model's input is not known, and not charged. None once the terminal
        response was read (its ``tool_usage`` is the count) or when none began."""
        if self.terminal_event_read:
            return None
        pictures = self.picture_tally.pictures
        return reserved_pictures(pictures, self._picture_allowance, self._image_model)

    def _stream_failed(
        self, error: GatewayError, usage: Usage | None = None, *, began: bool = True
    ) -> None:
        """Record the stream's failure: the first error names it; a usage its terminal
        response reports (``response.failed``'s, even after an ``error`` event) is the
        provider's count of the whole answer, billed as it is. ``began``: False for an
        error before any other data event (``base.StreamFailure.began``)."""
        first = self.failure.error if self.failure is not None else error
        if usage is not None:
            self.failure = StreamFailure.reported(first, usage, whole=True)
        elif self.failure is None:
            self.failure = StreamFailure(error, began=began)
        self.usage = None

    def _end_unreadable(self, sent: bytes, complete: bytes) -> bytes:
        """End a stream whose event grew too long to hold (``sse.EventBuffer``): the
        whole events before it (the oversized one, whose start was held, is dropped),
        then the gateway's ``error`` event, which the client reads last; nothing after."""
        self._ended = True
        for event in complete.split(EVENT_END):
            if _READ_EVENTS.search(event):
                self._read_event(event)
        error = event_too_large(self._events.max_event_bytes)
        self._stream_failed(error)
        return sent + error_event(error)


def error_event(error: GatewayError) -> bytes:
    """An ``error`` event of the Responses API's stream: the documented flat fields
    (``code``, ``message``, ``param``), for a client reading the events itself, and the
    same error under ``error``, which the openai SDK raises as ``APIError`` (given only the
    flat fields it hands the event over as one more item, and a loop that reads only
    the events it knows takes the answer so far for the whole one)."""
    data = {
        "type": "error",
        "code": error.code,
        "message": error.message,
        "param": None,
        **orjson.loads(error.body()),
    }
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
