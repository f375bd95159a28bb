"""OpenAI client to an OpenAI-compatible provider: model rename, usage in streams, usage read.

Requests: the model is renamed to the provider's name for it, and streams always
ask for ``stream_options.include_usage`` so the gateway can count tokens.
Responses: usage is read from the JSON body, or from the SSE chunks that carry it (the
last one OpenAI sends; other OpenAI-compatible providers put it elsewhere, or on every
chunk: ``ChunkStreamReader``); when the client did not ask for it, it is removed from the
stream it receives. The usage object is read as each provider fills it: reasoning tokens
counted beside ``completion_tokens`` (xAI) and cache hits under other names (DeepSeek,
Moonshot) are billed once each (``usage_from_object``); the audio tokens of the prompt and
of the completion (OpenAI's audio models) are read too, billed at the audio prices. An error
event inside a stream (``data: {"error": {...}}``, how OpenAI fails a stream whose 200
has left) reaches the client unchanged and is recorded as the reader's ``failure``
(``base.StreamFailure``), with the counts a running report had given by then, so the
gateway charges the request and names the error; one that is the stream's first data
event came before the answer began (``began`` False), the streamed form of an error
status, charged nothing as that status is. One in Anthropic's shape (``{"type": "error",
"error": {...}}``, a proxy in front of Claude) is written in OpenAI's, then ``[DONE]``
(``ChunkStreamReader._anthropic_error``). An event
too long to hold (``sse.EventBuffer``) fails the stream the same way, with the gateway's
own error event (``sse.event_too_large``) the client reads last. The client gets the
stream in whole events; one whose body ended inside an event, or before the answer's end
(a ``finish_reason`` for every choice asked for, or ``[DONE]``) after the answer began,
ends with the gateway's error event (``invalid_upstream_response``) and ``[DONE]``, which
the SDK raises, not the text so far as if whole (``ChunkStreamReader._end_early``).

The service tier that served the answer (``service_tier``, top level of a
``chat.completion`` and of every ``chat.completion.chunk``: ``default``, ``flex``,
``priority``...) prices the request. A JSON answer's is read from the parsed body; a
stream's from its first event (one search of that event's bytes, no parse), so a stream
cut before its usage chunk is billed at its tier too, and from the usage chunk, which is
parsed anyway. A stream whose first event names no tier is read at its usage chunk only.
Gemini on Vertex's OpenAI-compatible endpoint names no ``service_tier``: its usage names
the capacity that served it, Vertex's traffic type (``vertex_traffic``), read first.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson

from extproc.context import Usage
from extproc.errors import GatewayError, UpstreamError
from extproc.translators import vertex_traffic
from extproc.translators.anthropic_anthropic import server_tool_requests
from extproc.translators.anthropic_errors import stream_error
from extproc.translators.base import (
    STREAM_ENDED_EARLY,
    BufferedBodyReader,
    ProviderStreamError,
    StreamFailure,
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

# Only events that carry a usage or an error object are parsed; the rest pass
# untouched, which keeps a long stream cheap. Generated text cannot fake either:
# its quotes are escaped.
_USAGE_OR_ERROR = re.compile(rb'"(?:usage|error)"\s*:\s*\{')
_DONE = b"data: [DONE]" + EVENT_END
# What says the answer ended (``answer_ends``): a choice's finish reason (quoted: the
# stop's name, a null is no finish), the end marker as an event's data line. Generated
# text escapes its quotes and line ends, so cannot fake either; it can hold "[DONE]"
# itself (a task list the model writes), which anywhere else in an event ended no answer.
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"')
_DONE_LINE = re.compile(rb"(?:^|[\r\n])data: ?\[DONE\]")
# The service tier of an event, top level of a chunk. Generated text cannot fake it: its
# quotes are escaped, so none stands right after the name.
_SERVICE_TIER = re.compile(rb'"service_tier"\s*:\s*"([a-z0-9_]{1,32})"')
# The model a chunk names (OpenAI names it in every chunk), unfakeable by generated text
# for the same reason. Empty is no name: Azure's opening chunk of prompt filter results
# has ``"model": ""``. A name with an escape in it is left to the usage chunk's parse.
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\\x00-\x1f]{1,256})"')


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
    """Read an OpenAI-shaped usage object; None when absent or malformed.

    OpenAI-compatible providers differ in three counts, all read here so the bill holds
    each token once: reasoning tokens, which xAI counts beside ``completion_tokens``
    rather than inside it (``_reasoning_beside``), cache hits, which DeepSeek and
    Moonshot name their own way (``_cached``), and cache writes, which OpenRouter
    reports for the models that bill them (``_cache_writes``). The total is always the
    counts' sum, the one every ledger records. The 1-hour part of the writes and the
    server tools' requests are read where a failover attempt shows them
    (``show_billed_apart``).
    """
    if not isinstance(value, dict):
        return None
    # Counts at 0 or above, as every other count here: a negative one (or JSON's true)
    # taken as it came priced the request below 0, a credit on the team's bill.
    prompt = token_count(value.get("prompt_tokens"))
    completion = token_count(value.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    total = token_count(value.get("total_tokens"))
    if total is not None:
        completion += _reasoning_beside(value, prompt, completion, total)
    cached = _cached(value, prompt)
    # The total is the counts' sum, as the metrics and the rollup count it: a provider's
    # total that matches neither reading would settle the quota at a number no other
    # ledger records.
    total = prompt + completion
    writes = _cache_writes(value, prompt - cached)
    usage = Usage(prompt, completion, total, cached, writes, _one_hour_writes(value, writes))
    usage.audio_tokens = _audio(value, "prompt_tokens_details", prompt)
    usage.audio_output_tokens = _audio(value, "completion_tokens_details", completion)
    usage.server_tool_requests = {
        tool: count
        for tool, count in server_tool_requests(value.get("server_tool_use")).items()
        if count
    }
    usage.reported_cost_picousd = reported_cost(value)
    return usage


def show_billed_apart(shown: dict[str, Any], usage: Usage) -> dict[str, Any]:
    """``shown``, an OpenAI usage object, with what ``usage`` bills apart that OpenAI's
    own counts leave out, in the names ``usage_from_object`` reads: the cache writes
    (OpenRouter's ``prompt_tokens_details.cache_write_tokens``), their 1-hour part
    (Anthropic's ``cache_creation``) and the server tools' requests (Anthropic's
    ``server_tool_use``). A failover route bills the answer an attempt translated to
    OpenAI's API from that object alone."""
    if usage.cache_write_tokens:
        details = shown.setdefault("prompt_tokens_details", {})
        details["cache_write_tokens"] = usage.cache_write_tokens
    if usage.cache_write_1h_tokens:
        shown["cache_creation"] = {"ephemeral_1h_input_tokens": usage.cache_write_1h_tokens}
    if usage.server_tool_requests:
        requests = usage.server_tool_requests.items()
        shown["server_tool_use"] = {f"{tool}_requests": count for tool, count in requests}
    return shown


def _reasoning_beside(value: dict[str, Any], prompt: int, completion: int, total: int) -> int:
    """The reasoning tokens a provider counted beside ``completion_tokens``, 0 when they
    are inside it.

    OpenAI counts ``completion_tokens_details.reasoning_tokens`` inside
    ``completion_tokens`` (total = prompt + completion); xAI counts them beside it, and
    bills them as output (total = prompt + completion + reasoning). Gemini, through
    Google's OpenAI-compatible endpoints, may count its thinking in ``total_tokens`` alone,
    naming no reasoning tokens (``{"prompt_tokens": 9, "completion_tokens": 1,
    "total_tokens": 103}``): what the total holds beyond the two counts is that thinking,
    which Google bills as output. A report that names reasoning tokens and whose total
    matches neither reading is read as OpenAI's, so no token is ever counted twice.
    """
    details = value.get("completion_tokens_details")
    reasoning = token_count(details.get("reasoning_tokens")) if isinstance(details, dict) else None
    return reasoning_beside(reasoning, prompt, completion, total)


def reasoning_beside(reasoning: int | None, prompt: int, completion: int, total: int) -> int:
    """The output tokens a report counts beside its input and output counts
    (``_reasoning_beside``), given the reasoning tokens it names (None or 0: none): the
    chat API's rule, which the Responses API's usage is read by too
    (``openai_responses.usage_from_responses``)."""
    if not reasoning:
        return max(0, total - prompt - completion)
    if total != prompt + completion + reasoning:
        return 0
    return reasoning


def _cached(value: dict[str, Any], prompt: int) -> int:
    """The prompt tokens read from the provider's cache (part of ``prompt_tokens``), by
    whichever name it gives them: OpenAI's (and most providers')
    ``prompt_tokens_details.cached_tokens``, DeepSeek's ``prompt_cache_hit_tokens``,
    Moonshot's ``cached_tokens`` beside the counts. The largest one reported (a provider
    that fills in two names fills them alike; a 0 or null under OpenAI's name beside
    DeepSeek's count is no hit), never more than the prompt."""
    details = value.get("prompt_tokens_details")
    named = (
        details.get("cached_tokens") if isinstance(details, dict) else None,
        value.get("prompt_cache_hit_tokens"),
        value.get("cached_tokens"),
    )
    return min(max(token_count(hits) or 0 for hits in named), prompt)


def _audio(value: dict[str, Any], details_name: str, whole: int) -> int:
    """The audio tokens a details object counts (``prompt_tokens_details`` or
    ``completion_tokens_details``' ``audio_tokens``), which OpenAI's audio models
    (gpt-audio, gpt-4o-audio-preview) bill far above text: part of ``whole``, the count it
    details, and never more than it; 0 when absent or no count."""
    details = value.get(details_name)
    audio = token_count(details.get("audio_tokens")) if isinstance(details, dict) else None
    return min(audio or 0, whole)


def _cache_writes(value: dict[str, Any], uncached: int) -> int:
    """The prompt tokens written to the provider's cache (part of ``prompt_tokens``, billed
    above the input price by Anthropic's models): OpenRouter's
    ``prompt_tokens_details.cache_write_tokens``; never more than the prompt's tokens
    not read from the cache."""
    details = value.get("prompt_tokens_details")
    if not isinstance(details, dict):
        return 0
    return min(token_count(details.get("cache_write_tokens")) or 0, max(uncached, 0))


def _one_hour_writes(value: dict[str, Any], writes: int) -> int:
    """Of the cache writes, those made for a 1-hour cache, as Anthropic names them
    (``cache_creation.ephemeral_1h_input_tokens``); never more than all the writes."""
    split = value.get("cache_creation")
    one_hour = (
        token_count(split.get("ephemeral_1h_input_tokens")) if isinstance(split, dict) else None
    )
    return min(one_hour or 0, writes)


def reported_cost(value: dict[str, Any]) -> int | None:
    """What the provider says the request cost, in picodollars: OpenRouter's ``cost`` (in
    credits, one USD each), plus, for a call OpenRouter made with the account's own key at
    the model's provider (BYOK, ``is_byok``: ``cost`` is then OpenRouter's fee alone),
    ``cost_details.upstream_inference_cost``, what that provider charged. None when there
    is no such number."""
    cost = _amount(value.get("cost"))
    if cost is None:
        return None
    if value.get("is_byok") is True:
        # On other calls OpenRouter fills the upstream cost in too, equal to ``cost``.
        details = value.get("cost_details")
        upstream = (
            _amount(details.get("upstream_inference_cost")) if isinstance(details, dict) else None
        )
        cost += upstream or 0
    return cost


# No single request costs this much: a larger amount is no cost report.
_MAX_REPORTED_USD = Decimal(1_000_000)


def _amount(value: Any) -> int | None:
    """A USD amount as JSON gives it (``0.00014``), in whole picodollars, exactly: read from
    its shortest text, as it was written. None for anything but a number from 0 up to
    ``_MAX_REPORTED_USD``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not amount.is_finite() or amount < 0 or amount > _MAX_REPORTED_USD:
        return None
    return int(amount.scaleb(12).to_integral_value(ROUND_HALF_EVEN))


def service_tier_from_answer(answer: dict[str, Any]) -> str | None:
    """The service tier of a chat completion or chunk: Vertex's traffic type in its usage
    (``vertex_traffic``: Gemini on Vertex's OpenAI-compatible endpoint names no
    ``service_tier``, and its capacity sets the price), else the ``service_tier`` at its
    top level."""
    return vertex_traffic.openai_usage_tier(answer.get("usage")) or service_tier_of(
        answer.get("service_tier")
    )


class CompletionReader(BufferedBodyReader):
    """A buffered (non-streaming) chat completion: reads usage, model and service tier,
    passes bytes through."""

    read_usage = staticmethod(usage_from_object)
    read_service_tier = staticmethod(service_tier_from_answer)


def answer_ends(events: bytes) -> bool:
    """Whether whole events say the answer ended: a finish reason, or ``[DONE]``.

    Two searches, not one pattern with both: a pattern that may match at the start of
    the bytes (``^``) gets no first-character scan from ``re``, which then tries it at
    every byte, about 20 times as slow on a stream's chunk (46 us for 2 KB of OpenAI's
    events, each with its ``"finish_reason":null``). ``[DONE]`` comes once, last, so
    its line is looked for only where the bytes hold it."""
    if _FINISH_REASON.search(events) is not None:
        return True
    return b"[DONE]" in events and _DONE_LINE.search(events) is not None


class ChunkStreamReader:
    """An SSE stream of chat completion chunks.

    Reads usage from the chunks that carry it, wherever an OpenAI-compatible provider
    puts it (``_reported_usage``): OpenAI's usage-only chunk (``choices: []``) last, a
    finish chunk's (Mistral, llama.cpp), a choice's (Moonshot), a finish chunk's
    ``x_groq`` (Groq), or a running count on every chunk (Gemini's OpenAI endpoint,
    vLLM's ``continuous_usage_stats``). Each report replaces the one before, never adds
    to it: the last one read is the usage.

    With ``hide_usage_chunk`` the client did not ask for usage (the gateway did): the
    usage-only chunk is cut out of what it receives, and a report in any other chunk
    is taken out of that chunk (``_without_usage``), so the client finds none, as from
    OpenAI. Either way only whole events are forwarded: a partial one waits for its end
    in the next body chunk, and one the body ended inside of is dropped.

    The only other bytes it changes end a stream it cannot deliver whole: one whose
    event grew too long to hold (``_end_unreadable``), one that ended before its answer
    did (``_end_early``). ``choices`` is how many choices the request asked for (chat's
    ``n``; a text completion's prompts times its ``n``): its answer ended when each has
    its finish reason, not at the first, which a batch of prompts or ``n`` > 1 streams
    long before the others end.
    """

    def __init__(self, *, hide_usage_chunk: bool, choices: int = 1) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # passed through as it is
        # Set when the provider sent an error event mid-stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        # The tier that served the stream, as its first event or usage chunk names it.
        self.service_tier: str | None = None
        # True until the first data event has been looked at for the service tier.
        self._first_event = True
        # Whether a data event other than an error came (the provider began its answer):
        # an error event first is the streamed form of an error status, charged nothing
        # as that status is (base.StreamFailure.began).
        self._began = False
        self._hide = hide_usage_chunk
        self._events = EventBuffer()
        # What a client that asked for usage gets: the provider's bytes, in whole events.
        self._sent = WholeEventBytes()
        # Set once the gateway ended a stream it could no longer read (an event too long)
        # or whose provider failed it in Anthropic's shape (``_anthropic_error``).
        self._ended = False
        # Set once an event was rewritten for the client (``_anthropic_error``).
        self._rewrote = False
        # Set once every choice's finish reason, or [DONE], came: the answer is whole.
        self._answered = False
        # Set once a usage-only chunk (no choices) came: the report OpenAI sends after the
        # answer's end. A running count on a content chunk (vLLM's
        # continuous_usage_stats, Gemini's OpenAI endpoint) ends nothing: a stream cut
        # after one is cut, not whole.
        self._usage_last = False
        # Whether the last data event read carried a usage report: a running count then
        # counts every text the stream carried, and bills a stream cut after it as is.
        self._counted_to_here = False
        self._choices = choices
        # The indexes of the choices whose finish reason came, when there are several.
        self._finished: set[int] = set()

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if self._ended:
            return b""  # the client has read the stream's end already
        complete = self._events.whole_events(chunk, end_of_stream)
        if self._first_event and complete:
            self._read_first_tier(complete)
        if self.response_model is None and complete:
            self._read_model(complete)
        sent = complete if self._hide else self._sent.take(chunk, end_of_stream)
        if self._events.overflowed:
            self._sent.clear()
            return self._end_unreadable(sent, complete)
        self._answered = self._answered or self._answer_ended(complete)
        if not _USAGE_OR_ERROR.search(complete):
            if b"data:" in complete:
                self._began = True
                self._counted_to_here = False
        else:
            kept = self._read_events(complete)
            # An event rewritten in OpenAI's shape (``_anthropic_error``) reaches every
            # client so; otherwise one that asked for usage gets the provider's bytes.
            sent = kept if self._hide or self._rewrote else sent
        cut = self._began or bool(self._events.unfinished)
        # The provider's usage-only chunk comes after the answer's end: it ended.
        answered = self._answered or self._usage_last
        if end_of_stream and cut and not answered and self.failure is None:
            return sent + self._end_early()
        # Envoy forwards the chunk as it came when it is whole events: no body mutation.
        return None if sent is chunk else sent

    @property
    def terminal_event_read(self) -> bool:
        """Whether the usage-only chunk came after every choice's finish reason: the answer
        and its bill are whole, and a client that stops reading there (before ``[DONE]``,
        which the response stage looks for itself) left nothing unread."""
        return self._answered and self._usage_last

    def _answer_ended(self, complete: bytes) -> bool:
        """Whether these whole events end the answer: ``[DONE]``, or the finish reason of
        its last choice still generating. One choice ends at its first finish reason,
        found without a parse; of several, the few events that carry one are parsed."""
        if self._choices <= 1:
            return answer_ends(complete)
        if _FINISH_REASON.search(complete) is None:
            return b"[DONE]" in complete and _DONE_LINE.search(complete) is not None
        for event in complete.split(EVENT_END):
            if _DONE_LINE.search(event):
                return True
            if _FINISH_REASON.search(event):
                # Only the choices asked for: an index past them ends none of them.
                found_choices = _finished_choices(event)
                self._finished.update(i for i in found_choices if 0 <= i < self._choices)
        return len(self._finished) >= self._choices

    def _end_early(self) -> bytes:
        """The end of a stream whose body ended (a proxy, or an upstream whose body ends
        with its connection, closing a cut stream as if whole) after its answer began, or
        inside an event, and before a finish reason or ``[DONE]``. As it came the SDK
        returned the text so far as the whole answer, or, given the cut event closed by a
        blank line, failed its JSON parse. The gateway's error event and ``[DONE]`` end it
        instead, which the SDK raises, charged as after the provider's own error event."""
        error = UpstreamError(STREAM_ENDED_EARLY, code="invalid_upstream_response")
        # A running count in the last event (vLLM's continuous_usage_stats, Gemini's
        # OpenAI endpoint) counted all the text the client got: billed as it is, as the
        # same stream cut by its client is. A broken event after it carried more.
        self._stream_failed(error, counted=self._counted_to_here and not self._events.unfinished)
        return b"data: " + error.body() + EVENT_END + _DONE

    def _read_first_tier(self, complete: bytes) -> None:
        """The service tier the stream's first data event names (OpenAI names it in every
        chunk): known from the start, it prices a stream cut before its usage chunk."""
        if b"data:" not in complete:
            return  # comments or keep-alives before the first event
        self._first_event = False
        found = _SERVICE_TIER.search(complete)
        if found is not None:
            self.service_tier = service_tier_of(found.group(1).decode())

    def _read_model(self, complete: bytes) -> None:
        """The model the first chunk that names one says answered. The usage chunk names
        it too, and has the last word; read only there, a stream without one (a provider
        that ignores ``include_usage``, one cut or failed before its report) was logged,
        traced and counted with no response model, though every chunk had named it."""
        found = _MODEL.search(complete)
        if found is not None:
            self.response_model = found.group(1).decode("utf-8", "replace")

    def _read_events(self, complete: bytes) -> bytes:
        """Read the usage (or the provider's error) of whole events; the events a client
        whose usage chunk is hidden receives."""
        kept: list[bytes] = []
        for event in complete.split(EVENT_END):
            if self._rewrote:
                break  # the stream's end was written: nothing after it reaches the client
            if not event.strip():
                continue
            if _USAGE_OR_ERROR.search(event):
                event = self._read_event(event)
                if not event:
                    continue  # the usage-only chunk of a client that did not ask for it
            elif b"data:" in event:
                self._began = True
                self._counted_to_here = False
            kept.append(event + EVENT_END)
        return b"".join(kept)

    def _end_unreadable(self, sent: bytes, complete: bytes) -> bytes:
        """End a stream whose event grew too long to hold (``sse.EventBuffer``).

        The gateway can no longer read what the provider sends, and going on would
        silently leave that event out of what the client receives. So the stream fails
        as it does on a provider's error event: the client reads the whole events before
        it (the oversized one, whose start was held, is dropped), the gateway's error
        event and ``[DONE]``, nothing after; the request is charged an estimate
        (``stages.partial_usage``). Hiding the usage chunk, those events are read first.
        """
        self._ended = True
        kept = self._read_events(complete)
        error = event_too_large(self._events.max_event_bytes)
        self._stream_failed(error)
        ending = b"data: " + error.body() + EVENT_END + _DONE
        return (kept if self._hide else sent) + ending

    def _read_event(self, event: bytes) -> bytes:
        """Take the usage (or the provider's error) from one event; the event as a client
        whose usage chunk is hidden receives it (empty: not at all)."""
        self._counted_to_here = False
        try:
            parsed = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            self._began = True
            return event
        if not isinstance(parsed, dict):
            self._began = True
            return event
        if isinstance(parsed.get("error"), dict):
            if parsed.get("type") == "error":
                return self._anthropic_error(parsed["error"])
            error = ProviderStreamError.from_openai(parsed["error"])
            self._stream_failed(error, began=self._began)
            return event
        self._began = True
        usage = _reported_usage(parsed)
        if usage is None:
            return event
        self.usage = usage
        self._counted_to_here = True
        self._usage_last = self._usage_last or not parsed.get("choices")
        # The usage chunk's tier is the provider's last word on it.
        self.service_tier = service_tier_from_answer(parsed) or self.service_tier
        model = parsed.get("model")
        if isinstance(model, str):
            self.response_model = model
        return _without_usage(event, parsed) if self._hide else event

    def _anthropic_error(self, error: Any) -> bytes:
        """The end of a stream failed by an error event in Anthropic's shape (``event:
        error``, ``{"type": "error", "error": {"type": "overloaded_error", ...}}``), which
        an OpenAI-compatible endpoint in front of Claude (a proxy, a vendor's edge) may
        send: OpenAI's error event, with the type and code the translation from Anthropic
        gives the same error (``anthropic_errors.stream_error``), then ``[DONE]``.

        As it came, clients that read OpenAI's shape found no error in it: go-openai's
        stream reader looks for ``data: {"error":`` and took the event for an empty chunk,
        then the body's end without ``[DONE]`` for the answer's, so the text so far passed
        for the whole answer; the openai SDK raised it with Anthropic's type, no code."""
        failure = stream_error(error)
        self._stream_failed(failure, began=self._began)
        self._ended = True
        self._rewrote = True
        return b"data: " + failure.body() + EVENT_END + _DONE.removesuffix(EVENT_END)

    def _stream_failed(
        self, error: GatewayError, *, began: bool = True, counted: bool = False
    ) -> None:
        """Record the stream's first failure: the provider's error event, or the gateway's.
        ``began``: False for a provider's error that came before any other data event
        (``base.StreamFailure.began``); the gateway's own failure is always charged.
        ``counted``: the last report read counts all the text streamed (``whole``)."""
        if self.failure is not None:
            return
        # The last report read is a floor, not the usage: OpenAI reports last, so its
        # streams have none yet, but a running count (Gemini, vLLM) counted the prompt
        # and the output up to it, which the provider bills. The rest is estimated
        # (stages.partial_usage).
        reported = self.usage
        self.failure = (
            StreamFailure(error, began=began)
            if reported is None
            else StreamFailure.reported(error, reported, whole=counted)
        )
        self.usage = None


def _finished_choices(event: bytes) -> list[int]:
    """The indexes of the choices an event gives a finish reason (none if unreadable)."""
    try:
        parsed = orjson.loads(event_data(event))
    except orjson.JSONDecodeError:
        return []
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    return [
        choice["index"]
        for choice in (choices if isinstance(choices, list) else ())
        if isinstance(choice, dict)
        and isinstance(choice.get("finish_reason"), str)
        and isinstance(choice.get("index"), int)
    ]


def _reported_usage(chunk: dict[str, Any]) -> Usage | None:
    """A chunk's usage report: OpenAI's, beside ``choices``; else Moonshot's, inside the
    choice (its finish chunk); else Groq's, in ``x_groq`` (its finish chunk). Moonshot
    may repeat it in a usage-only chunk after, and Groq asked for usage sends it beside
    ``x_groq``'s and again in a usage-only chunk: one report is read per chunk, and a
    report replaces the one before, so the copies are one."""
    found = usage_from_object(chunk.get("usage"))
    if found is not None:
        return found
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and (found := usage_from_object(choice.get("usage"))):
            return found
    groq = chunk.get("x_groq")
    return usage_from_object(groq.get("usage")) if isinstance(groq, dict) else None


def _without_usage(event: bytes, chunk: dict[str, Any]) -> bytes:
    """The event a client that did not ask for usage receives: none, for a usage-only
    chunk (``choices: []``, or no choices at all, as some OpenAI-compatible servers send
    it: without its report, such a chunk would reach the client as one OpenAI never
    sends, which strict clients reject); else the chunk without its report, beside the
    choices, inside one or in Groq's ``x_groq`` (whose request ``id`` stays), the
    event's other fields and lines kept. Only chunks with a report come here: the
    ``"usage": null`` OpenAI puts on every other chunk once the gateway asked for usage
    is no report, and goes as it came."""
    choices = chunk.get("choices")
    if choices is None or choices == []:
        return b""
    chunk.pop("usage", None)
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            choice.pop("usage", None)
    groq = chunk.get("x_groq")
    if isinstance(groq, dict):
        groq.pop("usage", None)
    others = [line for line in event.split(b"\n") if not line.startswith(b"data:")]
    return b"\n".join([*others, b"data: " + orjson.dumps(chunk)])
