"""A Gemini client to Gemini's native API: Google's answer passed on unchanged, usage read.

The client speaks Gemini's own API (``google-genai``, Gemini CLI, ADK; ``extproc.gemini_api``),
and Vertex AI answers Google's models in the same shape, so every byte reaches the client as
Google sent it. The gateway only reads, to bill the request and to log a failure:

- A generateContent answer (``GenerateContentReader``): ``usageMetadata``, ``modelVersion``
  and each candidate's ``finishReason``; the parsed answer is kept for response guards.
- A streamGenerateContent stream (``StreamReader``, ``?alt=sse``): events of the same
  shape, cut anywhere by the body chunks, their lines ended by CRLF as Google writes them.
  Only events that may carry a usage report, a finish reason or an error are parsed; each
  event's generated text (its parts' ``text``, thoughts included) is counted as it passes
  (``generated_chars``), the bill of a stream cut short.

Usage is read as Google bills it: the input is ``promptTokenCount`` (which includes the
``cachedContentTokenCount`` read from a cache, billed at the cached price) plus
``toolUsePromptTokenCount`` (what a tool such as search added to the prompt); the output
is ``candidatesTokenCount`` plus ``thoughtsTokenCount`` (thinking is billed as output).
A count that is not a non-negative integer makes the report unreadable (None) rather
than a guessed 0; so does an answer that is an error object. Gemini bills audio input
above text, image and video: the prompt's audio tokens are read from
``promptTokensDetails`` (the ``AUDIO`` entry; the list covers the whole prompt, cache
hits included) and those of the cache hits from ``cacheTokensDetails``, each never more
than the count it is a part of. A malformed entry counts no audio. The output's audio (a
TTS model's speech, which Gemini bills at its audio output price) is read from
``candidatesTokensDetails``' ``AUDIO`` entry the same way, part of ``candidatesTokenCount``,
and so are its images (an image model's picture, which Gemini bills at its image output
price, about 12x text), from the ``IMAGE`` entry, within what the audio leaves.

Vertex names in ``usageMetadata.trafficType`` the capacity that served the request, which
sets its price (Priority PayGo, Flex PayGo, Provisioned Throughput): it is read as the
service tier (``traffic_tier``, ``vertex_traffic``). Gemini's own API names none.

A stream's counts are cumulative: each report replaces the one before, and the last is
the bill. Gemini reports as it goes (Vertex's first events may count only the prompt), so
a running report with an output count is the usage of a stream cut there, as for Gemini's
OpenAI-compatible endpoint (``openai_openai.ChunkStreamReader``); a stream cut before any
output count reports its prompt through ``counts_so_far``. A stream that ends (Envoy's end
of stream) before Gemini's last event with text after its last output count is read as
one cut there: that count does not cover what was generated. An ``{"error": {...}}`` event,
how Google fails a stream whose 200 has left, reaches the client as it came and is
recorded as ``failure`` (``base.StreamFailure``) with the counts reported by then; the
gateway charges the request and names Google's error in its log line. One before any
other data event came before the answer began (``began`` False): the streamed form of
Google's error status (its 429, its 503), charged nothing as that status is.

An event too long to hold (``sse.EventBuffer``) is dropped from what is read, not from
what is sent: the bytes are the client's, and the events after it are still read, the
last report among them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import orjson

from extproc.context import Usage
from extproc.errors import google_error_body, without_secrets
from extproc.quota.estimate import json_chars, string_chars
from extproc.translators import vertex_traffic
from extproc.translators.base import (
    MAX_PROVIDER_MESSAGE,
    STREAM_ENDED_EARLY,
    BufferedBodyReader,
    ProviderStreamError,
    StreamFailure,
)
from extproc.translators.generated_text import generated_chars
from extproc.translators.google_statuses import google_error_type
from extproc.translators.sse import EVENT_END, EventBuffer, WholeEventBytes, event_data
from extproc.translators.token_counts import token_count

# The events worth parsing: those that carry a usage report, a finish reason, an error
# or a search's grounding. Each is matched as a key, quotes and colon included, so
# generated text that merely names one (its quotes escaped) is not parsed.
_WORTH_PARSING = re.compile(rb'"(?:usageMetadata|finishReason|error|groundingMetadata)"\s*:')
# Grounding with Google Search, as Google bills it: per grounded prompt (Gemini 2.5 and
# before) or per search query the model ran (Gemini 3). Both are counted, as server tool
# requests under these names; the price table prices each model by the one it bills.
GROUNDED_PROMPT = "grounded_prompt"
SEARCH_QUERY = "google_search"
# A function call's arguments are a JSON object, whose text ``generated_chars`` (string
# values of known fields) does not see: an event carrying one is counted from its parse.
_FUNCTION_CALL = re.compile(rb'"functionCall"\s*:')
# What ends an event in Google's streams.
_BLANK_LINE = b"\r\n\r\n"
# A name of one of Google's enums: an error's status (RESOURCE_EXHAUSTED), which the log
# line shows as its code, or a finish reason (MAX_TOKENS). Anything else a proxy sends
# cannot grow the log line.
_ENUM_NAME = re.compile(r"[A-Z][A-Z_]{0,63}")
_STREAM_FAILED = "the provider's stream failed"


def _index(value: Any) -> int | None:
    """A candidate's ``index``: an integer >= 0 (JSON's ``true`` is none)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass(frozen=True, slots=True)
class UsageReport:
    """What one ``usageMetadata`` counts, as billed: the input (cache hits included), the
    cache hits, and the output; None while Gemini has counted no output."""

    prompt: int
    cached: int
    output: int | None
    # Of the prompt and of its cache hits, the audio tokens (billed at the audio price).
    audio: int = 0
    cached_audio: int = 0
    # Of the output, the audio tokens (a TTS model's speech; billed at the audio output
    # price).
    audio_output: int = 0
    # Of the output, the image tokens (an image model's pictures; billed at the image
    # output price).
    image_output: int = 0

    def usage(self) -> Usage:
        output = self.output or 0
        return Usage(
            self.prompt,
            output,
            self.prompt + output,
            self.cached,
            audio_tokens=self.audio,
            cached_audio_tokens=self.cached_audio,
            audio_output_tokens=self.audio_output,
            image_output_tokens=self.image_output,
        )

    def after(self, earlier: UsageReport | None) -> UsageReport:
        """This report, taking the output count from ``earlier`` when it has none."""
        if self.output is not None or earlier is None:
            return self
        return replace(
            self,
            output=earlier.output,
            audio_output=earlier.audio_output,
            image_output=earlier.image_output,
        )


# The modalities of a ModalityTokenCount that Gemini bills at the audio and image prices.
_AUDIO = "AUDIO"
_IMAGE = "IMAGE"


def modality_tokens(details: Any, modality: str) -> int:
    """The tokens a ``promptTokensDetails`` (or ``cacheTokensDetails``) list gives one
    modality; 0 when absent or malformed."""
    if not isinstance(details, list):
        return 0
    return sum(
        token_count(entry.get("tokenCount")) or 0
        for entry in details
        if isinstance(entry, dict) and entry.get("modality") == modality
    )


def traffic_tier(usage_metadata: Any) -> str | None:
    """The service tier a ``usageMetadata``'s ``trafficType`` names (Vertex), or None."""
    if not isinstance(usage_metadata, dict):
        return None
    return vertex_traffic.traffic_tier(usage_metadata.get("trafficType"))


def usage_report(value: Any) -> UsageReport | None:
    """A ``usageMetadata`` object; None when absent, without ``promptTokenCount``, or when a
    count in it is no token count (``token_counts``)."""
    if not isinstance(value, dict):
        return None
    counts = {
        name: value.get(name)
        for name in (
            "promptTokenCount",
            "toolUsePromptTokenCount",
            "cachedContentTokenCount",
            "candidatesTokenCount",
            "thoughtsTokenCount",
        )
    }
    if not all(count is None or token_count(count) is not None for count in counts.values()):
        return None
    prompt = counts["promptTokenCount"]
    if prompt is None:
        return None
    prompt += counts["toolUsePromptTokenCount"] or 0
    candidates, thoughts = counts["candidatesTokenCount"], counts["thoughtsTokenCount"]
    output = None
    if candidates is not None or thoughts is not None:
        output = (candidates or 0) + (thoughts or 0)
    # The cache hits are part of the prompt, never more than it; each audio count is part
    # of the count it details.
    cached = min(counts["cachedContentTokenCount"] or 0, prompt)
    audio = min(modality_tokens(value.get("promptTokensDetails"), _AUDIO), prompt)
    cached_audio = min(modality_tokens(value.get("cacheTokensDetails"), _AUDIO), cached, audio)
    # The candidates' audio (a TTS model's speech), part of candidatesTokenCount: thinking
    # is text.
    details = value.get("candidatesTokensDetails")
    audio_output = min(modality_tokens(details, _AUDIO), candidates or 0)
    # Its images (an image model's picture), within what the audio leaves of it.
    image_output = min(modality_tokens(details, _IMAGE), (candidates or 0) - audio_output)
    return UsageReport(prompt, cached, output, audio, cached_audio, audio_output, image_output)


def search_queries(answer: dict[str, Any]) -> dict[int, int]:
    """By candidate index, the Google Search queries its ``groundingMetadata`` lists
    (``webSearchQueries``) for the candidates that name any."""
    candidates = answer.get("candidates")
    found: dict[int, int] = {}
    for place, candidate in enumerate(candidates if isinstance(candidates, list) else ()):
        grounding = candidate.get("groundingMetadata") if isinstance(candidate, dict) else None
        queries = grounding.get("webSearchQueries") if isinstance(grounding, dict) else None
        if isinstance(queries, list) and queries:
            index = _index(candidate.get("index"))
            found[place if index is None else index] = sum(isinstance(q, str) for q in queries)
    return found


def search_requests(queries: dict[int, int]) -> dict[str, int]:
    """The searches to bill for the queries each candidate ran: the prompt, grounded
    once however many candidates searched, and every query."""
    total = sum(queries.values())
    return {GROUNDED_PROMPT: 1, SEARCH_QUERY: total} if total else {}


def _model_version(answer: dict[str, Any]) -> str | None:
    model = answer.get("modelVersion")
    return model if isinstance(model, str) else None


def _finish_reasons(answer: dict[str, Any]) -> list[tuple[int, str]]:
    """Each candidate's finish reason, by the candidate's index (its place when it names
    none)."""
    candidates = answer.get("candidates")
    if not isinstance(candidates, list):
        return []
    found: list[tuple[int, str]] = []
    for place, candidate in enumerate(candidates):
        if not isinstance(candidate, dict):
            continue
        reason, index = candidate.get("finishReason"), _index(candidate.get("index"))
        if isinstance(reason, str) and _ENUM_NAME.fullmatch(reason):
            found.append((place if index is None else index, reason))
    return found


def stream_error(error: dict[str, Any]) -> ProviderStreamError:
    """The error of a Google ``{"error": {"code", "message", "status"}}`` event, named by
    its status (``resource_exhausted``) as Vertex's errors are (``vertex_errors``); the
    provider's words lose anything that looks like a key."""
    message, status = error.get("message"), error.get("status")
    text = without_secrets(message[:MAX_PROVIDER_MESSAGE]) if isinstance(message, str) else ""
    name = status if isinstance(status, str) and _ENUM_NAME.fullmatch(status) else None
    return ProviderStreamError(
        text or _STREAM_FAILED,
        error_type=google_error_type(name, error.get("code")),
        code=name.lower() if name else None,
    )


def _blocked(answer: dict[str, Any]) -> bool:
    """Whether Google blocked the prompt (``promptFeedback.blockReason``): no candidate
    follows."""
    feedback = answer.get("promptFeedback")
    return isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str)


def _event_chars(event: bytes) -> int:
    """The generated characters of an event that carries function calls: its parts' text,
    and each call's name and arguments as JSON."""
    try:
        parsed = orjson.loads(event_data(event))
    except orjson.JSONDecodeError:
        return generated_chars(event)
    candidates = parsed.get("candidates") if isinstance(parsed, dict) else None
    chars = 0
    for candidate in candidates if isinstance(candidates, list) else []:
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            call = part.get("functionCall")
            if isinstance(call, dict):
                chars += string_chars(call.get("name")) + json_chars(call.get("args"))
            chars += string_chars(part.get("text"))
    return chars


class GenerateContentReader(BufferedBodyReader):
    """A generateContent JSON answer: reads usage, model and finish reasons, passes the
    bytes through."""

    def __init__(self) -> None:
        super().__init__()
        # Each candidate's finishReason, in the candidates' order.
        self.finish_reasons: list[str] = []

    @staticmethod
    def read_usage(value: Any) -> Usage | None:
        # Gemini names its report usageMetadata, read with the rest of the answer (feed).
        return None

    @staticmethod
    def read_service_tier(answer: dict[str, Any]) -> str | None:
        return traffic_tier(answer.get("usageMetadata"))

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        super().feed(chunk, end_of_stream)
        if end_of_stream:
            self._read(self.answer)
        return None

    def _read(self, answer: Any) -> None:
        self.response_model = None  # a "model" field is not Gemini's: modelVersion is
        if not isinstance(answer, dict) or "error" in answer:
            return
        self.response_model = _model_version(answer)
        self.finish_reasons = [reason for _, reason in sorted(_finish_reasons(answer))]
        report = usage_report(answer.get("usageMetadata"))
        self.usage = report.usage() if report is not None else None
        if self.usage is not None:
            self.usage.server_tool_requests = search_requests(search_queries(answer))


class StreamReader:
    """A streamGenerateContent SSE stream: passes every chunk unchanged, reads the usage
    reports, finish reasons and errors of its events as they complete.

    ``candidates``: how many the request asked for (``candidateCount``); the answer is
    whole once each has its finish reason, or at once when the prompt was blocked."""

    def __init__(self, candidates: int = 1) -> None:
        self._candidates = candidates
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # a stream's headers have left
        # The tier Vertex reported serving the stream at (traffic_tier), which prices it.
        self.service_tier: str | None = None
        # Set when Google sent an error event mid-stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        # Characters of generated text in the events so far (stages.partial_usage).
        self.generated_chars = 0
        # Set by the event that ends the answer: its finish reason and its counts came
        # (stages.response: the answer is whole even if Envoy's end never comes).
        self.terminal_event_read = False
        self._report: UsageReport | None = None
        # generated_chars when Gemini last counted the output: the text its count covers.
        self._counted_chars = 0
        self._finished: dict[int, str] = {}
        # By candidate, the search queries its latest grounding listed (one event may
        # repeat an earlier one's: the latest replaces it).
        self._queries: dict[int, int] = {}
        self._events = EventBuffer()
        # What the client gets: Google's bytes (CRLF line ends), in whole events.
        self._sent = WholeEventBytes()
        # Whether a data event other than an error came (Google began its answer): an
        # error event first is the streamed form of an error status (its 429
        # RESOURCE_EXHAUSTED, its 503 UNAVAILABLE), charged nothing as that status is
        # (base.StreamFailure.began).
        self._began = False

    @property
    def finish_reasons(self) -> list[str]:
        """Each candidate's finish reason, in the candidates' order."""
        return [self._finished[index] for index in sorted(self._finished)]

    def _usage(self, report: UsageReport) -> Usage:
        usage = report.usage()
        usage.server_tool_requests = search_requests(self._queries)
        return usage

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        complete = self._events.whole_events(chunk, end_of_stream)
        # Whole events only: a JSON string never spans two, so none is counted twice. The
        # events are read in order, so a running count covers the text up to its event.
        if _FUNCTION_CALL.search(complete) is None and _WORTH_PARSING.search(complete) is None:
            self.generated_chars += generated_chars(complete)
            self._began = self._began or b"data:" in complete
        else:
            for event in complete.split(EVENT_END):
                calls = _FUNCTION_CALL.search(event) is not None
                self.generated_chars += _event_chars(event) if calls else generated_chars(event)
                if _WORTH_PARSING.search(event):
                    self._read_event(event)
                elif b"data:" in event:
                    self._began = True
        sent = self._sent.take(chunk, end_of_stream)
        ended_early = b""
        if end_of_stream and self._events.unfinished:
            # An event the body ended inside of: dropped, but its text was generated.
            self.generated_chars += generated_chars(self._events.unfinished)
        if end_of_stream and self.failure is None and self._cut_short():
            ended_early = self._end_early()
        covered = self.terminal_event_read or self.generated_chars <= self._counted_chars
        if end_of_stream and self.failure is None and self._report is not None and covered:
            # The stream ended whole: its last report is the bill, output counted or not.
            # One that ended before Gemini's last event, with text after its last output
            # count (Google closed it short), is charged as one cut there: that count is
            # not what was generated (counts_so_far, stages.partial_usage).
            self.usage = self._usage(self._report)
        elif not self.terminal_event_read and self.generated_chars > self._counted_chars:
            # Text came after the last output count (Vertex counts only the prompt, or
            # nothing, until its last event): that count is no longer what was generated.
            # Cut here, the stream is charged its counts so far and the estimate of its
            # text, the larger output (counts_so_far, stages.partial_usage), as when
            # Google's error event fails it.
            self.usage = None
        if ended_early:
            return sent + ended_early
        # Whole events only: one the body ended inside of never reaches the client.
        return None if sent is chunk else sent

    def _cut_short(self) -> bool:
        """Whether the stream ended before its last event, where it is charged as one cut
        (below): no finish reason came (Google ends every answer with one), and text or a
        function call came after Google's last count, which so no longer covers what was
        generated. One whose last count covers all the text streamed stays the answer
        that count bills (fewer candidates than asked for, say)."""
        return not self._finished and self.generated_chars > self._counted_chars

    def _end_early(self) -> bytes:
        """The end of a stream whose provider closed it, cleanly, before its last event (a
        proxy, or an upstream whose body ends with its connection, ending a cut stream as
        if whole). As it came, google-genai yielded the chunks so far as the whole answer,
        without a finish reason, and the request was logged completed. Google's error
        event (the status of the gateway's 502, ``UNAVAILABLE``) ends it instead, which the
        SDK raises (``ServerError``) as it raises Google's own failure mid-stream, after
        the whole events (one the body ended inside of is dropped); charged as after that
        failure."""
        error = ProviderStreamError(
            STREAM_ENDED_EARLY, error_type="upstream_error", code="invalid_upstream_response"
        )
        self._provider_failed(error)
        return b"data: " + google_error_body(STREAM_ENDED_EARLY, 502) + _BLANK_LINE

    def counts_so_far(self) -> StreamFailure:
        """What Gemini had reported when the stream was cut (base.counts_so_far)."""
        return self._failure(None)

    def _read_event(self, event: bytes) -> None:
        try:
            parsed = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            self._began = True
            return
        if not isinstance(parsed, dict):
            self._began = True
            return
        error = parsed.get("error")
        if isinstance(error, dict):
            self._provider_failed(stream_error(error), began=self._began)
            return
        self._began = True
        self.response_model = _model_version(parsed) or self.response_model
        finished = _finish_reasons(parsed)
        for index, reason in finished:
            self._finished[index] = reason
        self._queries.update(search_queries(parsed))
        metadata = parsed.get("usageMetadata")
        self.service_tier = traffic_tier(metadata) or self.service_tier
        report = usage_report(metadata)
        if report is None or self.failure is not None:
            return
        self._report = report.after(self._report)
        if report.output is not None:
            # A running count: what Gemini had counted, should the stream be cut here.
            self.usage = self._usage(self._report)
            self._counted_chars = self.generated_chars
        # Gemini's last event carries the bill and says the answer ended: every candidate
        # has its finish reason, or the prompt was blocked (no candidate at all). Its
        # output count may be absent (a count of 0, which Google leaves out).
        if _blocked(parsed) or len(self._finished) >= self._candidates:
            self.usage = self._usage(self._report)
            self.terminal_event_read = True

    def _provider_failed(self, error: ProviderStreamError, *, began: bool = True) -> None:
        """Record the stream's first failure. ``began``: False for Google's error before
        any other data event (``base.StreamFailure.began``); the gateway's own failure
        always began."""
        if self.failure is not None:
            return
        # The counts so far are kept for the charge; an incomplete answer has no usage.
        self.failure = self._failure(error, began=began)
        self.usage = None

    def _failure(self, error: ProviderStreamError | None, *, began: bool = True) -> StreamFailure:
        report = self._report
        if report is None:
            searches = search_requests(self._queries)
            return StreamFailure(error, server_tool_requests=searches, began=began)
        # Its audio parts too: a prompt of speech is billed at the audio price.
        return StreamFailure.reported(
            error, self._usage(report), output_counted=report.output is not None
        )
