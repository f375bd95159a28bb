"""What the log line and the span need beyond the other stages' work: times, finish
reasons, the trace id, the text (when enabled), and the metadata Envoy tags spans with.

Runs after every stage that shapes the response (translation, response guardrails),
so it sees the bytes the client gets. Per response chunk it costs one regular
expression scan for finish reasons; the text is kept only when an operator turned
content logging or capture on (``extproc.telemetry.content``).

The span is one of the ledgers users reconcile, so its usage is the log line's
(``span_usage``). A stream's span can be closed at any chunk (the client hangs up,
the provider resets): Envoy then reads no later answer of the gateway's. So the
answers of a running stream carry the usage that stream would be charged were it
cut there (``partial_usage.usage_if_ended_now``), at most every
``RUNNING_USAGE_INTERVAL_S``; the first one also names the caller, the route and
the model.
"""

from __future__ import annotations

import re
import time

from extproc.answer_encoding import DecompressedAnswer
from extproc.bedrock_invoke_bodies import reads_as_claude
from extproc.config.model import GEMINI_APIS, MESSAGES_BODY_APIS, RouteApi
from extproc.context import PhaseOutput, RequestContext, Usage
from extproc.responses_api import RESPONSES_REQUESTS
from extproc.stages.model_credentials import hide_own_key_in_path
from extproc.stages.partial_usage import usage_if_ended_now
from extproc.telemetry.content import ContentCapture
from extproc.telemetry.span_attributes import request_metadata, running_usage_metadata
from extproc.telemetry.trace_context import parse_traceparent
from extproc.translators.base import stream_failure

# A finish reason as the client sees it: OpenAI's `finish_reason` in a choice, or
# Anthropic's `stop_reason`. Only string values match (null ones are skipped), and
# text inside JSON strings cannot match, because there its quotes are escaped.
_OPENAI_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z0-9_.-]{1,64})"')
_ANTHROPIC_FINISH = re.compile(rb'"stop_reason"\s*:\s*"([A-Za-z0-9_.-]{1,64})"')
# Bedrock's own APIs: Converse's stopReason; InvokeModel's, by model family (Claude's,
# Llama's and Mistral's stop_reason, Titan's completionReason, Nova's stopReason,
# Cohere's finish_reason).
_CONVERSE_FINISH = re.compile(rb'"stopReason"\s*:\s*"([A-Za-z0-9_.-]{1,64})"')
_INVOKE_FINISH = re.compile(
    rb'"(?:stop_reason|stopReason|completionReason|finish_reason)"\s*:\s*"([A-Za-z0-9_.-]{1,64})"'
)
# Gemini's finishReason, each candidate's.
_GEMINI_FINISH = re.compile(rb'"finishReason"\s*:\s*"([A-Za-z0-9_.-]{1,64})"')
# The pattern of each API whose finish reason is not OpenAI's ``finish_reason``.
_FINISH_PATTERNS = {
    RouteApi.ANTHROPIC_MESSAGES: _ANTHROPIC_FINISH,
    RouteApi.BEDROCK_CONVERSE: _CONVERSE_FINISH,
    RouteApi.BEDROCK_INVOKE: _INVOKE_FINISH,
    RouteApi.GEMINI_GENERATE_CONTENT: _GEMINI_FINISH,
}
# Longest match, so a reason split across two body chunks is still found.
_CARRY = 96
# A running stream's span counts are refreshed at most this often: each refresh is a
# metadata Struct in the answer and a merge in Envoy, per chunk of a fast stream
# otherwise. A span cut in between misses at most this much of the output (the log
# line, the ledger, has all of it).
RUNNING_USAGE_INTERVAL_S = 0.1


# The client APIs whose answers carry no text: embeddings' vectors, the Images API's
# pictures (megabytes of base64 no finish reason or content capture reads).
# A transcript is text, but in no chat shape the capture reads (and text/srt/vtt are no
# JSON at all): an audio request is captured by neither. A moderation answers with
# categories and scores, no text.
_NO_TEXT_ANSWERS = frozenset(
    {
        RouteApi.OPENAI_EMBEDDINGS,
        RouteApi.OPENAI_IMAGES,
        RouteApi.OPENAI_AUDIO,
        RouteApi.OPENAI_MODERATIONS,
        RouteApi.RERANK,
    }
)


class TelemetryStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
        if ctx.trace_id is None:
            # No tracer in Envoy: a client's own trace context passes through.
            sent = ctx.request_headers.get("traceparent")
            if sent:
                ctx.trace_id = parse_traceparent(sent)

    def request_body(self, ctx: RequestContext, out: PhaseOutput, body: bytes) -> None:
        if ctx.upstream is None or not ctx.accounted:
            return
        ctx.upstream_sent_at = time.monotonic()
        # Before Envoy is first told the path as recorded (its access log and span).
        hide_own_key_in_path(ctx)
        # Envoy's access log and span name the request from here on: a client that gives
        # up before the answer starts (its timeout on a slow first token) ends it before
        # any answer to the response, which would leave them naming nobody.
        out.metadata = {**(out.metadata or {}), **request_metadata(ctx)}
        telemetry = ctx.runtime.config.telemetry
        if ctx.route is not None and ctx.route.api in _NO_TEXT_ANSWERS:
            # No messages in, vectors or pictures out: no text to capture, no finish
            # reasons.
            return
        if telemetry.log.include_content or (
            telemetry.tracing.enabled and telemetry.tracing.capture_content
        ):
            route = ctx.route
            other_family = (
                route is not None
                and route.api is RouteApi.BEDROCK_INVOKE
                and not reads_as_claude(ctx.upstream_model or "", ctx.body or {})
            )
            ctx.content = ContentCapture(
                anthropic=route is not None
                and route.api in MESSAGES_BODY_APIS
                and not other_family,
                max_chars=telemetry.log.max_content_chars,
                responses=route is not None and route.api in RESPONSES_REQUESTS,
                completions=route is not None and route.api is RouteApi.OPENAI_COMPLETIONS,
                converse=route is not None and route.api is RouteApi.BEDROCK_CONVERSE,
                gemini=route is not None and route.api in GEMINI_APIS,
                invoke_family=other_family,
            )

    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> None:
        if ctx.route is None:
            return
        now = time.monotonic()
        first_chunk = ctx.first_token_at is None and bool(chunk)
        if first_chunk:
            ctx.first_token_at = now
        sent = out.body if out.body is not None else chunk
        api = ctx.route.api
        responses = api in RESPONSES_REQUESTS
        if ctx.accounted and responses and ctx.completed:
            # Read once the answer ended, which may be an empty last chunk.
            _read_outcome(ctx)
        if ctx.accounted and sent and api not in _NO_TEXT_ANSWERS:
            read = _readable(ctx, out, sent)
            if not responses:
                self._scan_finish_reasons(ctx, read)
            if ctx.content is not None:
                ctx.content.add_response_chunk(read, streamed=ctx.stream)
        if end_of_stream:
            out.metadata = request_metadata(ctx, span_usage(ctx))
        elif ctx.stream and not ctx.usage_in_metadata:
            out.metadata = self._stream_metadata(ctx, first_chunk, now)
        elif ctx.stream and ctx.cost is not None and not ctx.priced_in_metadata:
            # The usage report came in a chunk of its own, before the terminal event
            # that ends (and prices) the answer: the cost goes with that event's answer,
            # which Envoy applies even when the client then hangs up.
            ctx.priced_in_metadata = True
            out.metadata = request_metadata(ctx, span_usage(ctx))

    @staticmethod
    def _stream_metadata(
        ctx: RequestContext, first_chunk: bool, now: float
    ) -> dict[str, str | float] | None:
        """What the answer to one chunk of a running stream tells Envoy's span.

        A stream's last message is often an empty end of stream that comes after
        the client has read everything; when the client then hangs up, Envoy drops
        the answer to it, metadata included. So the whole metadata also goes with
        the chunk that settles the usage: the provider's usage report, its error
        event (the client stops reading at it; the span is marked failed and
        carries the charge), a response guard's refusal (also read last), or the
        stream's terminal event. Envoy applies that answer before the client sees
        those bytes.
        """
        translator = ctx.translator
        if (
            ctx.completed
            or ctx.stream_refusal is not None
            or (
                translator is not None
                and (translator.usage is not None or stream_failure(translator) is not None)
            )
        ):
            ctx.usage_in_metadata = True
            ctx.priced_in_metadata = ctx.cost is not None
            return request_metadata(ctx, span_usage(ctx))
        if not first_chunk and now - ctx.span_usage_at < RUNNING_USAGE_INTERVAL_S:
            return None
        running = usage_if_ended_now(ctx)
        if first_chunk:
            ctx.span_usage_at = now
            return request_metadata(ctx, running)
        if running is None or ctx.first_token_at is None:
            return None  # nothing charged, or only empty chunks so far
        ctx.span_usage_at = now
        return running_usage_metadata(running)

    @staticmethod
    def _scan_finish_reasons(ctx: RequestContext, sent: bytes) -> None:
        route = ctx.route
        pattern = _FINISH_PATTERNS.get(route.api, _OPENAI_FINISH) if route else _OPENAI_FINISH
        carry = ctx.finish_carry
        data = carry + sent if carry else sent
        for match in pattern.finditer(data):
            # A match wholly inside the carried tail was counted with the last chunk.
            if match.end() > len(carry):
                ctx.finish_reasons.append(match.group(1).decode())
        ctx.finish_carry = data[-_CARRY:]


def _readable(ctx: RequestContext, out: PhaseOutput, sent: bytes) -> bytes:
    """What the client reads in the bytes it was sent: the events a translator unwrapped
    from frames that hide them (InvokeModel's stream: Claude's events, base64-encoded),
    the bytes of an answer its provider compressed decoded, else the bytes themselves."""
    translator = ctx.translator
    if isinstance(translator, DecompressedAnswer) and ctx.response_guard is None:
        # Unguarded, a compressed answer's body is its reader's: decoded on the full
        # path, compressed again (or as it came) on the lean one.
        unwrapped = translator.unwrapped
        return unwrapped if isinstance(unwrapped, bytes) else translator.decoded_sent
    if out.body is None:
        unwrapped = getattr(translator, "unwrapped", None)
    else:
        # Rewritten by a guard that framed them again: the events it released.
        unwrapped = getattr(ctx.response_guard, "unwrapped", None)
    if isinstance(unwrapped, bytes):
        return unwrapped
    return sent


def _read_outcome(ctx: RequestContext) -> None:
    """A Responses API answer's finish reason: its outcome, as the reader of its JSON or
    its terminal event found it (``translators.openai_responses.finish_reason``). Its
    bytes are not scanned: ``status`` also stands in every output item. A compaction or a
    token count has no outcome: none is read."""
    if ctx.finish_reasons:
        return
    reason = getattr(ctx.translator, "finish_reason", None)
    if isinstance(reason, str):
        ctx.finish_reasons.append(reason)


def span_usage(ctx: RequestContext) -> Usage | None:
    """The token counts the span carries: the log line's, or, while a stream runs, what
    its log line would say were it cut now. None: the request has none (refused)."""
    if ctx.usage_reported or ctx.usage_estimated:
        return ctx.usage
    translator = ctx.translator
    if translator is not None and translator.usage is not None and not stream_failure(translator):
        # Read from the stream, not settled yet: a stream cut now keeps it.
        return translator.usage
    return usage_if_ended_now(ctx)
