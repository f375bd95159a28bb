"""Anthropic's answers in OpenAI's shape: whole messages, event streams and errors.

The answer half of the OpenAI-client-to-Anthropic translator; import it from
``openai_anthropic``, which owns the requests and re-exports everything here.

Whole answers (``CompletionTranslator``): text blocks are joined into ``message.content``
(the web pages Claude's web search cited in a block, ``url_citations``, as OpenAI's
``url_citation`` annotations over that block's text), ``tool_use`` blocks become
``tool_calls``; the text of ``thinking`` blocks becomes
``message.reasoning_content``, as OpenAI-compatible servers and gateways show reasoning
(``redacted_thinking`` carries no text and is not shown; neither is a thinking block's
signature, which an OpenAI client has no way to send back). Thinking is billed as output
and Anthropic counts it in ``output_tokens``: ``completion_tokens`` is that count, thinking
included, with no ``reasoning_tokens`` detail, since Anthropic does not report how many of
them were thinking. Prompt tokens count
cache writes and reads, as ``anthropic_anthropic`` counts them (the 1-hour part of the writes
too, for the bill, and the server tools' requests, ``usage.server_tool_use``, billed per
request; OpenAI's usage has no place for them, so the client is not shown them, but for
a failover attempt's translation, which shows them to the request's filter that bills it,
``bill_apart``); cache reads are also reported as ``prompt_tokens_details.cached_tokens``.
A body that is not a message becomes an ``upstream_error`` / ``invalid_upstream_response``
error body, with no usage; one that is the provider's error (a ``200`` whose body is
Anthropic's ``{"type": "error", ...}``) that error, as ``unreadable_answers`` says.

Streams (``StreamTranslator``): each complete SSE event is translated as soon as its blank
line arrives; a partial event waits for the rest, so the output is the same however the
upstream body is cut into chunks. Events map as follows:

- ``message_start``: the first chunk, ``delta: {"role": "assistant", "content": ""}``.
- ``content_block_start`` of a ``tool_use`` block: a tool call with its id and name, numbered
  by its place among the answer's tool calls (Anthropic numbers all blocks, text included).
  Anthropic's own tools' blocks (``server_tool_use`` and its result) are not shown; they are
  counted (``anthropic_anthropic.ServerToolTally``) so a stream cut before ``message_delta``
  still bills its web searches.
- ``content_block_delta``: text as ``delta.content``, ``input_json_delta`` as a piece of the
  tool call's arguments, ``thinking_delta`` as ``delta.reasoning_content``; signatures are
  not shown. A ``citations_delta`` (a page Claude's web search read, cited by the text
  block it comes in) is kept until the block's ``content_block_stop``, when its text's
  place in the content is known.
- ``message_delta``: the chunk with ``finish_reason`` (once), and the usage counts. Before
  it, when the text cited pages, one chunk with ``delta.annotations``: the answer's
  ``url_citation`` annotations, as a whole answer has them, as OpenAI's search models
  stream their sources (all at once after the text, offsets into the whole content).
- ``message_stop``: the usage chunk (``choices: []``) when the client asked for it, then
  ``data: [DONE]``.
- ``error``: a chunk carrying ``{"error": {...}}``, as OpenAI sends mid-stream errors, then
  ``[DONE]``. A body that is not an event stream, one with an event that is not JSON, or
  one that ends before ``message_stop``, ends the same way. The translator then reports no
  usage and records a ``failure`` (``base.StreamFailure``) with the counts Anthropic had
  reported, so the gateway charges the request with them and an estimate of the rest. A
  stream whose event grows too long to hold (``sse.MAX_EVENT_BYTES``) ends the same way,
  with ``sse.event_too_large`` recorded as its ``failure``.

Usage is read whether or not the client asked for it, because the gateway accounts for it.
Like OpenAI, every chunk carries ``"usage": null`` when the client did ask, except the last.

The service tier Anthropic served the answer at (``usage.service_tier`` of the message, or
of the stream's ``message_start``; ``fast`` for an answer its ``usage.speed`` says fast mode
served, ``anthropic_anthropic.ServiceTierReport``) prices the request, as ``service_tier``.
The client is shown it in OpenAI's words, as OpenAI shows it (top level of the completion
and of every chunk once known): ``standard`` as ``default``, ``priority`` as ``priority``,
``fast`` as ``fast`` (OpenAI's name for its own faster tier); a tier OpenAI has no name for
is not shown. A failover chain's downstream filter, which reads the answer as an OpenAI
one, prices it at that tier the same way. Where Anthropic ran the request
(``usage.inference_geo``, which a workspace's default geography sets without the client
asking) is read the same way, as ``inference_geo``, and prices it too.

Errors (``translate_error``) are mapped as ``anthropic_errors`` says: a 401/403 from
Anthropic (the gateway's own credential) becomes a 502, an overload (529) a 503, a rate
limit stays a 429, other 5xx become 502; 400, 404 and 413 stay. A 400 for a prompt over
the context window gets OpenAI's code for it, ``context_length_exceeded``.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.context import Usage
from extproc.errors import BadRequestError, GatewayError, UpstreamError
from extproc.translators.anthropic_anthropic import (
    ServerToolTally,
    ServiceTierReport,
    UsageCounts,
    inference_geo_from_usage,
    service_tier_from_usage,
    usage_from_object,
)
from extproc.translators.anthropic_errors import client_error, stream_error
from extproc.translators.base import (
    CONTEXT_LENGTH_EXCEEDED,
    STREAM_ENDED_EARLY,
    StreamFailure,
    overflows_context,
)
from extproc.translators.foreign_errors import provider_error
from extproc.translators.openai_openai import show_billed_apart
from extproc.translators.sse import EventBuffer, event_too_large
from extproc.translators.token_counts import token_count
from extproc.translators.unreadable_answers import replaced_answer

DONE = b"data: [DONE]\n\n"
_EVENT_END = b"\n\n"
# The citation Claude's web search writes into a text block (the page it read).
WEB_CITATION = "web_search_result_location"

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # A server tool's loop paused; the text so far is an answer the client can show.
    # Continuing it takes a second call to Claude, and Envoy makes one upstream call per
    # request: the gateway only transforms that call's answer (docs/providers.md).
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


# Anthropic's service tiers in OpenAI's words (its chat.completion service_tier values);
# OpenAI clients that decode the field as an enum know no others. A failover chain prices
# a fallback at the tier it shows (``openai_openai`` reads it downstream), so a tier
# priced apart must be shown as the name it is priced under: fast mode as "fast".
_OPENAI_TIERS = {"standard": "default", "priority": "priority", "fast": "fast"}


def _shown_tier(service_tier: str | None) -> str | None:
    return _OPENAI_TIERS.get(service_tier) if service_tier is not None else None


def _finish_reason(stop_reason: Any) -> str:
    # Stop reasons added after this was written read as a plain stop.
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _openai_usage(usage: Usage, counts: dict[str, Any], bill_apart: bool) -> dict[str, Any]:
    cached = counts.get("cache_read_input_tokens")
    # A count as the usage reader takes one: a whole number of at least 0 (a negative or
    # `true` one is no count, billed as none, so none is shown either).
    details = {"cached_tokens": token_count(cached) or 0}
    shown = {**usage.as_dict(), "prompt_tokens_details": details}
    return show_billed_apart(shown, usage) if bill_apart else shown


def _invalid_upstream_response(message: str) -> GatewayError:
    return UpstreamError(message, code="invalid_upstream_response")


class CompletionTranslator:
    """A buffered Anthropic ``message`` turned into an OpenAI ``chat.completion``."""

    def __init__(self, *, request_id: str, created: int, bill_apart: bool = False) -> None:
        """``bill_apart``: the usage shows what OpenAI's counts leave out, for the failover
        route that bills it (``openai_openai.show_billed_apart``)."""
        self.usage: Usage | None = None
        self.response_model: str | None = None
        # The client's status once an answer could not be read as an Anthropic message
        # (unreadable_answers), and the request's error.
        self.status: int | None = None
        self.error: GatewayError | None = None
        # The tier Anthropic served the answer at (usage.service_tier).
        self.service_tier: str | None = None
        # Where Anthropic ran the request (usage.inference_geo).
        self.inference_geo: str | None = None
        self._id = f"chatcmpl-{request_id}"
        self._created = created
        self._bill_apart = bill_apart
        self._parts: list[bytes] = []
        # The OpenAI answer built, for response guards (so it is not parsed again).
        self.answer: dict[str, Any] | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if not end_of_stream:
            return b""
        body = b"".join(self._parts)
        self._parts = []
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            replaced = replaced_answer(message, "the provider's answer could not be read")
            self.error = replaced.recorded
            self.status = replaced.shown.status
            return replaced.shown.body()
        text: list[str] = []
        thinking: list[str] = []
        calls: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        written = 0  # characters of text so far: where the next block starts in content
        for block in message["content"]:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                end = written + len(block["text"])
                text.append(block["text"])
                annotations.extend(url_citations(block.get("citations"), written, end))
                written = end
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                thinking.append(block["thinking"])
            elif kind == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                function = {"name": block.get("name"), "arguments": arguments}
                calls.append({"id": block.get("id"), "type": "function", "function": function})
        reply: dict[str, Any] = {
            "role": "assistant",
            # OpenAI sends null content, not "", when the answer is only tool calls.
            "content": "".join(text) if text or not calls else None,
            "refusal": None,
        }
        if annotations:
            reply["annotations"] = annotations
        if thinking:
            reply["reasoning_content"] = "\n\n".join(thinking)
        if calls:
            reply["tool_calls"] = calls
        model = message.get("model")
        self.response_model = model if isinstance(model, str) else None
        raw_usage = message.get("usage")
        counts: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        self.usage = usage_from_object(counts)
        self.service_tier = service_tier_from_usage(counts)
        self.inference_geo = inference_geo_from_usage(counts)
        choice = {
            "index": 0,
            "message": reply,
            "logprobs": None,
            "finish_reason": _finish_reason(message.get("stop_reason")),
        }
        completion = {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self.response_model or "",
            "choices": [choice],
            "usage": (
                None if self.usage is None else _openai_usage(self.usage, counts, self._bill_apart)
            ),
            "system_fingerprint": None,
        }
        shown = _shown_tier(self.service_tier)
        if shown is not None:
            completion["service_tier"] = shown
        self.answer = completion
        return orjson.dumps(completion)


def url_citations(citations: Any, start: int, end: int) -> list[dict[str, Any]]:
    """OpenAI's ``url_citation`` annotations for a text block's web search citations
    (Claude's ``web_search_result_location``: the page's ``url`` and ``title``), over the
    block's text, characters ``start`` to ``end`` of the message's ``content``: where an
    OpenAI client of a search model reads the sources of what it was told. Citations of
    the client's own documents name no URL: they have no OpenAI counterpart. A whole
    answer and a stream both build them here, so both show the same sources."""
    found: list[dict[str, Any]] = []
    for citation in citations if isinstance(citations, list) else ():
        if not isinstance(citation, dict) or citation.get("type") != WEB_CITATION:
            continue
        url, title = citation.get("url"), citation.get("title")
        if not isinstance(url, str):
            continue
        cited = {
            "start_index": start,
            "end_index": end,
            "title": title if isinstance(title, str) else "",
            "url": url,
        }
        found.append({"type": "url_citation", "url_citation": cited})
    return found


def translate_error(status: int, body: bytes) -> tuple[int, bytes]:
    """An Anthropic error answer as (the status the client gets, an OpenAI error body)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    # Anthropic's shape is {"type": "error", "error": {"type", "message"}}; a proxy in front
    # of it may send {"error": {"message"}} or an HTML page, hence each step is checked.
    error = parsed.get("error") if isinstance(parsed, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        # A proxy's {"message"} or bare {"error": "..."} still says what failed.
        found = provider_error(body)
        message = found.message if found and found.message else None
    if not message:
        message = f"the provider answered with HTTP {status}"
    client_status, client = client_error(status, kind if isinstance(kind, str) else None, message)
    if client_status == 400 and overflows_context(message):
        # OpenAI names a prompt too long for the model's context window with this code, and
        # agents read it (not the words, which differ) to shorten the conversation and retry.
        client = BadRequestError(message, code=CONTEXT_LENGTH_EXCEEDED, param="messages")
    return client_status, client.body()


class StreamTranslator:
    """One streamed answer, Anthropic SSE in, OpenAI SSE out."""

    def __init__(
        self, *, include_usage: bool, request_id: str, created: int, bill_apart: bool = False
    ) -> None:
        """``bill_apart``: as ``CompletionTranslator``'s."""
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # a stream's headers have left
        # Set when Anthropic sent an error event mid-stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        # The tier Anthropic served the stream at (message_start's usage: service_tier,
        # speed), and its OpenAI name, which every chunk after it shows.
        self.service_tier: str | None = None
        self._shown_tier: str | None = None
        self._tier_report = ServiceTierReport()
        # Where Anthropic ran the request (message_start's usage: inference_geo).
        self.inference_geo: str | None = None
        self._include_usage = include_usage
        self._bill_apart = bill_apart
        self._id = f"chatcmpl-{request_id}"
        self._created = created
        # The start of an event whose blank line has not arrived yet.
        self._events = EventBuffer()
        self._done = False
        self._finished = False
        # Whether Anthropic began the message (any event of it): an error before it is
        # a refusal, charged nothing (base.StreamFailure.began).
        self._began = False
        # Whether a thinking block came already (the next one is set apart).
        self._thought = False
        # Anthropic block index -> the tool call's index in OpenAI's tool_calls.
        self._tool_calls: dict[int, int] = {}
        # Tool calls whose arguments have not started yet (blocks by Anthropic index).
        self._no_arguments_yet: set[int] = set()
        # Characters of content sent so far, and where each open text block started in
        # it: a block's citations span its text as the whole answer's do (url_citations).
        self._written = 0
        self._text_starts: dict[int, int] = {}
        # The citations of open text blocks (citations_delta), and the url_citation
        # annotations of the closed ones, sent together before the finish.
        self._citations: dict[int, list[Any]] = {}
        self._annotations: list[dict[str, Any]] = []
        # Usage counts so far: message_start's, then each message_delta's cumulative ones
        # (numbers, the cache writes' split by TTL, ``cache_creation``, and the server
        # tools' requests, ``server_tool_use``).
        self._counts: dict[str, Any] = {}
        # The server tools' requests its blocks show, billed if the stream is cut before
        # Anthropic's count (anthropic_anthropic.ServerToolTally).
        self.server_tool_tally = ServerToolTally()

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        if self._done:
            return b""  # whatever follows message_stop or a failure is not shown
        complete = self._events.whole_events(chunk, end_of_stream)
        if not complete and not end_of_stream and not self._events.overflowed:
            return b""  # an event still arriving
        out: list[bytes] = []
        for event in complete.split(_EVENT_END):
            if self._done:
                break
            out.extend(self._translate(event))
        if self._events.overflowed and not self._done:
            # An event too long to hold cannot be translated: the stream fails as if
            # Anthropic had sent an error, charged with what it reported by then.
            out.append(self._provider_failed(event_too_large(self._events.max_event_bytes)))
        elif end_of_stream and not self._done:
            # Ended before message_stop: the client gets an error, and the request is a
            # failed stream charged what Anthropic had counted by then, as after its error
            # event (a message_delta's output count included).
            out.append(self._provider_failed(_invalid_upstream_response(STREAM_ENDED_EARLY)))
        return b"".join(out)

    def _translate(self, event: bytes) -> list[bytes]:
        # SSE lets one event's data span several lines, joined with newlines; lines without
        # data (the event name, comments) say nothing the JSON's "type" does not.
        lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            return []
        try:
            payload = orjson.loads(b"\n".join(lines))
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            # Charged as a stream the provider failed: the prompt was read, and what
            # Anthropic had counted by now (a message_delta's output too) stays reported.
            error = _invalid_upstream_response("the provider's stream is unreadable")
            return [self._provider_failed(error)]
        kind = payload.get("type")
        self._began = self._began or kind not in ("error", "ping")
        if kind == "content_block_delta":
            return self._block_delta(payload)
        if kind == "content_block_start":
            return self._block_start(payload)
        if kind == "content_block_stop":
            return self._block_stop(payload)
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                model = message.get("model")
                self.response_model = model if isinstance(model, str) else None
                self._take_counts(message.get("usage"))
                self._take_tier(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "message_delta":
            return self._message_delta(payload)
        if kind == "message_stop":
            self._done = True
            if self._include_usage and self.usage is not None:
                return [self._usage_chunk(), DONE]
            return [DONE]
        if kind == "error":
            return [self._provider_failed(stream_error(payload.get("error")))]
        # ping, and event types added after this was written.
        return []

    def _block_start(self, payload: dict[str, Any]) -> list[bytes]:
        block = payload.get("content_block")
        index = payload.get("index")
        if not isinstance(block, dict) or not isinstance(index, int):
            return []
        self.server_tool_tally.block_started(block)
        if block.get("type") == "text":
            self._text_starts[index] = self._written
            if isinstance(block.get("citations"), list):
                self._citations[index] = list(block["citations"])
            return self._content(block.get("text"))
        if block.get("type") == "thinking" and isinstance(block.get("thinking"), str):
            # Thoughts apart (interleaved thinking) are apart in the whole answer too.
            text = ("\n\n" if self._thought else "") + block["thinking"]
            self._thought = True
            return [self._chunk({"reasoning_content": text})] if text else []
        if block.get("type") != "tool_use":
            return []
        position = len(self._tool_calls)
        self._tool_calls[index] = position
        self._no_arguments_yet.add(index)
        function = {"name": block.get("name"), "arguments": ""}
        call = {"index": position, "id": block.get("id"), "type": "function", "function": function}
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, payload: dict[str, Any]) -> list[bytes]:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta":
            return self._content(delta.get("text"))
        if kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        index = payload.get("index")
        if kind == "citations_delta" and index in self._text_starts:
            self._citations.setdefault(index, []).append(delta.get("citation"))
            return []
        partial = delta.get("partial_json")
        if kind != "input_json_delta" or not partial or not isinstance(index, int):
            return []
        if index not in self._tool_calls:
            return []
        self._no_arguments_yet.discard(index)
        return [self._arguments(index, partial)]

    def _content(self, text: Any) -> list[bytes]:
        if not isinstance(text, str) or not text:
            return []
        self._written += len(text)
        return [self._chunk({"content": text})]

    def _block_stop(self, payload: dict[str, Any]) -> list[bytes]:
        index = payload.get("index")
        if isinstance(index, int) and index in self._text_starts:
            start = self._text_starts.pop(index)
            cited = self._citations.pop(index, None)
            self._annotations.extend(url_citations(cited, start, self._written))
            return []
        if not isinstance(index, int) or index not in self._no_arguments_yet:
            return []
        # A call without parameters may get no argument deltas at all; OpenAI clients parse
        # the arguments they assembled, and "" is not JSON.
        self._no_arguments_yet.discard(index)
        return [self._arguments(index, "{}")]

    def _message_delta(self, payload: dict[str, Any]) -> list[bytes]:
        usage = payload.get("usage")
        # message_start's output count is a placeholder; usage is known from here on, once
        # a count is readable (else message_start's would stand in for Anthropic's).
        if isinstance(usage, dict) and token_count(usage.get("output_tokens")) is not None:
            self._take_counts(usage)
            self._take_tier(usage)
            self.usage = usage_from_object(self._counts)
            self.server_tool_tally.reported(usage)
        delta = payload.get("delta")
        reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        # Server tools can make Anthropic send several message_delta events; one finish is shown.
        if reason is None or self._finished:
            return []
        self._finished = True
        finish = self._chunk({}, _finish_reason(reason))
        if not self._annotations:
            return [finish]
        # As OpenAI's search models stream their sources: all in one chunk after the text,
        # offsets into the whole content. One chunk, since the openai SDK's stream helper
        # cannot merge a second list of annotations into the first.
        return [self._chunk({"annotations": self._annotations}), finish]

    def _take_counts(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for key, value in usage.items():
            # A count that is no count (negative, `true`) keeps the one reported before
            # it, as the usage reader has it (anthropic_anthropic.UsageCounts).
            if token_count(value) is not None:
                self._counts[key] = value
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            # The 1-hour part of the cache writes is billed above the rest.
            self._counts["cache_creation"] = split
        tools = usage.get("server_tool_use")
        if isinstance(tools, dict):
            # Web searches are billed per request; each tool's count is cumulative.
            self._counts["server_tool_use"] = {**self._counts.get("server_tool_use", {}), **tools}

    def _take_tier(self, usage: Any) -> None:
        """What a usage object says of the tier and speed (message_start's does)."""
        self._tier_report.update(usage)
        self.service_tier = self._tier_report.tier
        self._shown_tier = _shown_tier(self.service_tier)
        self.inference_geo = inference_geo_from_usage(usage) or self.inference_geo

    def counts_so_far(self) -> StreamFailure:
        """What Anthropic had reported when the stream was cut (base.counts_so_far)."""
        completion = self.usage.completion_tokens if self.usage is not None else None
        return UsageCounts.of(self._counts).failure(None, completion)

    def _provider_failed(self, error: GatewayError) -> bytes:
        # The prompt was read and part of the answer sent: what Anthropic reported by now
        # is kept for the charge (message_start's input side; the output of a
        # message_delta, if one came), the gateway estimates the rest.
        completion = self.usage.completion_tokens if self.usage is not None else None
        self.failure = UsageCounts.of(self._counts).failure(error, completion, self._began)
        return self._fail(error)

    def _fail(self, error: GatewayError) -> bytes:
        self._done = True
        self.usage = None
        return b"data: " + error.body() + _EVENT_END + DONE

    def _arguments(self, index: int, arguments: str) -> bytes:
        call = {"index": self._tool_calls[index], "function": {"arguments": arguments}}
        return self._chunk({"tool_calls": [call]})

    def _chunk(self, delta: dict[str, Any], reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return self._event([choice], None)

    def _usage_chunk(self) -> bytes:
        assert self.usage is not None
        return self._event([], _openai_usage(self.usage, self._counts, self._bill_apart))

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.response_model or "",
            "system_fingerprint": None,
            "choices": choices,
        }
        if self._shown_tier is not None:
            chunk["service_tier"] = self._shown_tier
        if self._include_usage:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + _EVENT_END
