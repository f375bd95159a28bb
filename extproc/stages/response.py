"""Response phases: pick how to read the body, read usage, hide the gateway's usage chunk.

A streamed answer (SSE, or Bedrock's event stream) switches the response body
to STREAMED (Envoy ``mode_override``) so chunks reach the client as they come;
anything else stays buffered. ``backends`` decides how each answer is read or
rewritten: usage read as is, translated to the client's API, or an error body
replaced by one the client can parse.

A provider's error event inside a stream (its 200 had left) ends the answer: the
client reads that error last, in its own API's shape (the translator sees to it),
and the request records it as its error; ``partial_usage`` then charges what the
provider reported and estimates the rest, and it is priced after that, not here.
A JSON answer that ends without the provider's count is charged an estimate from its
text (``cut_answer``), before it is priced; unless it is the provider's error in a 200
(``translators.answer_errors``): then it is the request's error, and charged nothing.
So is the error a translator replaced an answer it could not read with
(``translators.unreadable_answers``): the provider's error in its 200, or the gateway's
``invalid_upstream_response``.
"""

from __future__ import annotations

import re
import time

from extproc import headers
from extproc.answer_encoding import DecompressedAnswer
from extproc.answer_status import no_answer
from extproc.attempt_report import decode
from extproc.backends import (
    bedrock_tier_asked,
    plan_response,
    provider_secrets,
    scrub_answer_error,
    without_provider_credentials,
)
from extproc.chargeback.pricing import request_cost
from extproc.config.model import ProviderType, RouteApi
from extproc.context import ModeOverride, PhaseOutput, RequestContext
from extproc.credential_cleaner import hide_in_error
from extproc.envoy_messages import status_code
from extproc.errors import GatewayError, without_secrets
from extproc.stages.cut_answer import charge_answer_too_large, charge_whole_answer
from extproc.translators.answer_errors import ProviderAnswerError, answer_error
from extproc.translators.base import (
    INVALID_UPSTREAM_RESPONSE,
    STREAM_ENDED_EARLY,
    ProviderStreamError,
    ResponseTranslator,
    failure_unreadable,
    stream_failure,
)
from extproc.translators.unreadable_answers import UnreadableAnswerError, replaced_error


def served_by_member(
    ctx: RequestContext, provider: str, model: str | None, upstream_model: str | None
) -> None:
    """Record that the member of the request's failover chain on ``provider`` (its config
    name ``model``, its provider's ``upstream_model``) served the request: its provider
    is the one counted, its model's price the one charged."""
    ctx.provider = provider
    # The fallback may speak another API than the primary (span, metrics).
    ctx.provider_type = next(
        (p.type for p in ctx.runtime.config.providers if p.name == provider),
        ctx.provider_type,
    )
    if ctx.provider_type is ProviderType.BEDROCK and ctx.route is not None:
        # Bedrock names its tier last (a stream's metadata, a JSON answer's body), and the
        # attempt shows it only then: an answer cut before it, or dropped for its size, is
        # priced at the tier asked, as without failover (backends.bedrock_tier_asked).
        ctx.tier_asked = bedrock_tier_asked(ctx.route.api, ctx.body, ctx.request_headers)
    ctx.answered_model = model
    ctx.upstream_model = upstream_model


class ResponseStage:
    def response_headers(
        self, ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]
    ) -> None:
        ctx.response_status = ctx.upstream_status = status_code(response_headers.get(":status", ""))
        ctx.first_byte_at = time.monotonic()
        if not ctx.accounted:
            return
        if ctx.provider_api is None:
            return
        kind = ctx.provider_api
        if ctx.failover_model is not None:
            # The per-attempt filter already translated the answer to the client's API
            # (OpenAI's; Anthropic's, Gemini's and Bedrock's readers below go by the
            # route's API, and their errors by the answering provider's type).
            kind = ProviderType.OPENAI
            answered = response_headers.get(headers.ANSWERED_BY_PROVIDER)
            if answered:
                # The provider the request was sent to first: its primary's, or the one a
                # stored response pinned it to (stages.response_owner).
                meant = ctx.provider
                served_by_member(
                    ctx,
                    answered,
                    response_headers.get(headers.ANSWERED_BY_MODEL),
                    response_headers.get(headers.ANSWERED_UPSTREAM_MODEL),
                )
                if ctx.answered_model and ctx.answered_model != ctx.failover_model:
                    # Under the name the client asked for (its group or alias), as the
                    # request's other series (the fallback that answered is to_model).
                    ctx.runtime.services.metrics.failover(
                        ctx.asked_model or ctx.failover_model, ctx.answered_model
                    )
                if meant is not None and meant != answered:
                    # That provider failed (Envoy moved on; a connection it could not make
                    # reaches no attempt's answer): a model group passes its member there
                    # over for a while (extproc.model_groups).
                    ctx.runtime.services.balancer.provider_failed(meant)
            report = decode(response_headers.get(headers.ATTEMPT_UPSTREAM))
            if report is not None:
                # What the provider said, where the attempt translated it: recorded as
                # without failover (extproc.attempt_report). The client's status stays.
                ctx.upstream_status = report.status
                if report.error is not None:
                    ctx.error = report.error
            out.remove_headers.extend(
                (
                    headers.ANSWERED_BY_PROVIDER,
                    headers.ANSWERED_BY_MODEL,
                    headers.ANSWERED_UPSTREAM_MODEL,
                    headers.ATTEMPT_UPSTREAM,
                )
            )
        plan = plan_response(ctx, ctx.response_status, response_headers, kind)
        client_status = plan.set_headers.get(":status")
        if client_status is not None:
            # A translated error's status (Anthropic's 529 is an OpenAI client's 503):
            # the log line and aigw_requests_total record what the client got.
            ctx.response_status = int(client_status)
        ctx.translator = plan.translator
        if plan.streamed:
            out.mode_override = ModeOverride(response_body="STREAMED")
            if not ctx.stream:
                # Streamed although the client did not ask: charged from the stream's
                # usage, else its estimate, as the stream it is (partial_usage).
                ctx.stream = ctx.stream_unasked = True
        out.set_headers.update(plan.set_headers)
        out.remove_headers.extend(plan.remove_headers)

    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> None:
        if end_of_stream:
            # Before the response guards, which may refuse the answer: the provider's
            # share of the wait (upstream_latency_ms) ends with its last byte, whatever
            # the client then gets.
            ctx.response_ended_at = time.monotonic()
        translator = ctx.translator
        if translator is None:
            if end_of_stream:
                ctx.completed = True
            return
        replaced = translator.feed(chunk, end_of_stream)
        if replaced is not None:
            out.body = replaced
        if translator.status is not None:
            # An answer that could not be translated: the client gets the error body
            # with the error's status, not the provider's 200 (the answer is buffered,
            # so its headers have not left yet).
            ctx.response_status = translator.status
            out.set_headers[":status"] = str(translator.status)
            replacing = replaced_error(translator)
            if replacing is not None and ctx.error is None:
                _answer_replaced(ctx, out, replacing)
        if ctx.stream and _provider_failed(ctx, translator):
            if failure_unreadable(translator):
                # Its client reads no error in the body (raw audio): the response must
                # not end as a whole, short one would.
                out.reset = _client_error(ctx, translator)
                if translator.usage is not None and not ctx.usage_reported:
                    # The provider's count, read on to its done event after the audio
                    # broke (openai_speech): what it bills, not the estimate. Priced
                    # now, as a whole answer is.
                    ctx.usage = translator.usage
                    ctx.usage_reported = True
                    request_cost(ctx)
                if ctx.response_ended_at is None:
                    # The gateway reads no more of the provider's answer: it ends here
                    # (upstream_latency_ms), not never, as a cut one's would.
                    ctx.response_ended_at = time.monotonic()
            return
        if not end_of_stream and not (
            ctx.stream and _ends_stream(ctx, translator, _sent(translator, out, chunk))
        ):
            return
        # The end of the answer: Envoy's empty end of stream, or, for a stream, the
        # terminal event the client reads last. A client that hangs up right after
        # it makes Envoy drop the end of stream, and the request must not then be
        # taken for one cut short (its usage estimated) when it was answered whole.
        ctx.completed = True
        failed = answer_error(translator)
        if failed is not None:
            _provider_answered_error(ctx, out, chunk, failed)
        if translator.usage is not None:
            ctx.usage = translator.usage
            ctx.usage_reported = True
        elif failed is not None:
            pass  # the provider generated nothing and billed nothing: nothing is charged
        elif getattr(translator, "too_large", False):
            # A compressed answer larger, decoded, than the gateway buffers was generated
            # whole, and billed: charged as one over Envoy's buffer.
            charge_answer_too_large(ctx)
        elif not ctx.stream:
            # A whole JSON answer without the provider's count (an embeddings answer
            # without usage, garbage) was still generated, and billed: charged an
            # estimate from its text in every ledger (a stream is estimated from its
            # text at done: partial_usage).
            charge_whole_answer(ctx, getattr(translator, "answer", None))
        ctx.response_model = translator.response_model
        if ctx.usage_reported or not ctx.stream:
            # Priced now, so the metadata of this last answer carries the cost. A stream
            # without the provider's count is charged its estimate at done
            # (partial_usage), and priced after it: priced here, it would cost nothing.
            request_cost(ctx)


def _provider_answered_error(
    ctx: RequestContext, out: PhaseOutput, chunk: bytes, error: ProviderAnswerError
) -> None:
    """Record a success answer whose body is the provider's error as the request's error
    (``translators.answer_errors``): the log line's outcome and error fields, the
    upstream error counter. Its words lose the gateway's provider credentials, in the log
    line and, when the answer came in this one message (buffered, as nearly all do), in
    what the client reads, as a provider's error status's body does (``backends``)."""
    scrub_answer_error(ctx, error)
    if ctx.error is None:
        ctx.error = error
    if chunk and out.body is None:
        scrubbed = without_provider_credentials(ctx, chunk)
        if scrubbed is not chunk:
            out.body = scrubbed


def _answer_replaced(
    ctx: RequestContext, out: PhaseOutput, error: ProviderAnswerError | UnreadableAnswerError
) -> None:
    """Record the error a translator replaced a success answer with as the request's
    (``translators.unreadable_answers``), so the log line names it. The provider's words
    lose the gateway's provider credentials, in the log line and in the client's error,
    as when the same error passes through (``_provider_answered_error``)."""
    if isinstance(error, ProviderAnswerError):
        scrub_answer_error(ctx, error)
        if out.body:
            out.body = without_provider_credentials(ctx, out.body)
    ctx.error = error


def _provider_failed(ctx: RequestContext, translator: ResponseTranslator) -> bool:
    """Whether the provider failed inside this stream; the first time, record it."""
    failure = stream_failure(translator)
    if failure is None:
        return False
    if ctx.error is None:
        # The error is what the client reads last: the answer ended (not cut short), and
        # the log line names the provider's error. Usage and cost come at done, once the
        # estimate is made; priced now, the request would cost nothing.
        ctx.completed = True
        ctx.response_model = translator.response_model
        if ctx.stream_refusal is None:
            # Unless a response guard had refused the stream: the client read that
            # refusal last and nothing after it, so the line keeps naming the refusal
            # (the upstream error counter still counts the provider's failure).
            ctx.error = failure.error
    return True


def _client_error(ctx: RequestContext, translator: ResponseTranslator) -> GatewayError:
    """The provider's failure as the client is told it, when its response fails in its
    body phase (``PhaseOutput.reset``): without the gateway's credentials for the provider
    (the log line quotes the same error) or the client's own."""
    failure = stream_failure(translator)
    error = failure.error if failure is not None and failure.error is not None else ctx.error
    if error is None:
        error = ProviderStreamError(
            STREAM_ENDED_EARLY, error_type="upstream_error", code=INVALID_UPSTREAM_RESPONSE
        )
    error.message = without_secrets(error.message, provider_secrets(ctx.upstream))
    hide_in_error(ctx, error)
    return error


# What a stream's client reads last, by the API it speaks (the Responses API's stream
# ends with a terminal event instead, ``_ends_stream``), at the start of a line:
# generated text cannot fake it (JSON escapes line ends). SSE ends a line with CR, LF
# or CRLF and lets a field's value go without its leading space.
_ENDS = {
    "openai": (b"[DONE]", re.compile(rb"[\r\n]data: ?\[DONE\]")),
    "anthropic": (b"message_stop", re.compile(rb"[\r\n]event: ?message_stop")),
}
# The APIs whose streams end with an event their reader recognises, not a marker.
_TERMINAL_EVENT_APIS = frozenset(
    {
        RouteApi.OPENAI_RESPONSES,
        RouteApi.BEDROCK_CONVERSE,
        RouteApi.BEDROCK_INVOKE,
        RouteApi.GEMINI_GENERATE_CONTENT,
        RouteApi.OPENAI_IMAGES,
        # A transcription's stream ends with transcript.text.done.
        RouteApi.OPENAI_AUDIO,
    }
)
# What is kept of what was sent, so a marker split over two chunks counts: one byte
# short of the longest marker, which therefore never lies whole in it.
_CARRY = len(b"\nevent: message_stop") - 1


def _sent(translator: ResponseTranslator, out: PhaseOutput, chunk: bytes) -> bytes:
    """What the client is sent of this chunk, as it reads it: a compressed stream's
    decoded bytes (on the lean path the client gets them compressed, where its end
    marker, ``[DONE]`` or ``message_stop``, is not to be found), else the reader's
    bytes or the chunk as it came."""
    if isinstance(translator, DecompressedAnswer):
        return translator.decoded_sent
    return out.body if out.body is not None else chunk


def _ends_stream(ctx: RequestContext, translator: ResponseTranslator, sent: bytes) -> bool:
    if no_answer(ctx.response_status):
        return False
    if ctx.route is not None and ctx.route.api in _TERMINAL_EVENT_APIS:
        # No end marker: the terminal event (response.completed..., ConverseStream's
        # metadata) ends the stream, and the reader, which parses it whole for its
        # usage, knows when it has read one.
        return bool(sent) and getattr(translator, "terminal_event_read", False) is True
    if translator.usage is not None and getattr(translator, "terminal_event_read", False):
        # An OpenAI-compatible stream's usage-only chunk after its answer's end (hidden
        # from a client that did not ask for it): the answer and its bill are whole
        # before [DONE], which a client that has what it asked for may not wait for.
        return True
    if not sent:
        return False
    carry = ctx.stream_end_carry
    seen = carry + sent
    ctx.stream_end_carry = seen[-_CARRY:]
    word, marker = _ENDS[ctx.error_shape]
    if word not in seen:
        return False  # most chunks: a plain search, no regular expression
    # Only a marker that reaches into the new bytes: one inside the carry was seen before.
    return any(found.end() > len(carry) for found in marker.finditer(seen))
