"""A stream without a usage report still produced tokens: estimate them, so they are
charged and recorded.

When a client hangs up mid-stream (or the upstream resets), the provider never
sends its usage report, yet it generated, and bills, what the client already
got. This stage counts the characters of generated text in the provider's
stream as it passes (the string values of ``content``, ``text`` (a text completion
carries its answer in ``choices[].text``), the tool-call
fields ``arguments``, ``partial_json`` and ``input``, a spoken answer's ``transcript``,
and the reasoning fields
``thinking``, ``reasoning_content`` and ``reasoning``, reasoning being billed as
output: where OpenAI's SSE, the SSE of OpenAI-compatible providers, Anthropic's
SSE and Bedrock's event-stream payloads carry text). When a
stream ends without a usage report (cut short, or whole from a provider that
sends none), the request's usage becomes an estimate: prompt tokens as the provider
reported them before the cut (Anthropic's ``message_start``, with its cache reads and
writes, which are billed at their own prices; ``base.counts_so_far``), else as the
quota estimate counts them, completion tokens at one per four characters. The quota
stage then settles the reservation with that estimate instead of holding the
whole reservation, and the log line, the token metrics and the usage rollup
record it, marked ``usage_estimated``. Its server tools' requests (Anthropic's web
searches, billed per request) are those the stream's ``server_tool_use`` blocks
showed (``anthropic_anthropic.ServerToolTally``): Anthropic counts them only near
the end, in ``message_delta``. A
stream cut after the provider's usage report was read (a client that did not ask
for usage has no reason to wait for it) keeps that report: it is the usage. So does
a stream cut after a running report (Gemini's OpenAI endpoint and vLLM repeat the
count so far on every chunk): the last one read is what the provider had counted. A
stream cut after its status and before any chunk is charged its prompt alone (no text
came); one cut before its status too (no answer at all) is ``cut_answer``'s, which charges
it the same prompt once the request had left for its provider.

A stream the provider itself ended with an error event (``base.StreamFailure``:
OpenAI's ``{"error": ...}``, Anthropic's ``event: error``, a Bedrock exception) is
charged the same way: the prompt was read and part of the answer delivered. What
the provider had reported by then is kept (Anthropic's ``message_start`` gives the
prompt tokens, cache reads and writes included, with the writes' 1-hour part; a
``message_delta`` the output and the server tools' requests so far, else its
blocks' count of them; an OpenAI-compatible provider's running report its prompt,
cache hits and output so far), the rest is estimated as above, and the request is marked
``usage_estimated``; its error (set by the response stage) names the provider's
error in the log line. A stream the gateway itself ended, because an event grew
too long to hold (``sse.event_too_large``), is charged the same way. One that failed
before the provider began its answer (Anthropic's error before ``message_start``, an
OpenAI-compatible error as the first data event, a Bedrock exception as the first frame:
``StreamFailure.began``) is charged nothing, as the same error's status is.

An OpenAI Responses API stream carries its generated text in the ``delta`` of its
delta events (``response.output_text.delta``, function-call arguments, refusals,
reasoning summaries), and again whole in the ``.done`` events and the terminal
response: there only the deltas are counted (``responses_delta_chars``), once each. Its
usage comes in its terminal event; a stream cut before it, or failed, is charged
as above: the prompt estimate and the deltas' characters, and the calls of its
built-in tools billed per call (web search, file search) that its output item events
showed (``openai_responses.ToolCallTally``; a call that failed is not billed).

It runs before the response stage, on the provider's own bytes, and only for
streams; its ``done`` runs before the quota stage's, which reads the result. It counts
them up to each chunk's last line end (``_whole_lines``), so a value Envoy's chunks cut
in two is counted whole. Where those bytes hide the text, or are no lines (Bedrock's
binary frames; its InvokeModel stream carries each Anthropic event base64-encoded), the
translator that reads the frames counts it instead, whole frame by frame
(``generated_chars``); so does the reader of a stream the provider compressed although
the gateway asked for none (``answer_encoding.DecompressedAnswer``), in the bytes it
decoded: the compressed ones show no text at all. Under a hard cap, the estimate is
never more than the allowance the gateway gave the provider
(``quota.reserved_completion``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from extproc.answer_status import no_answer
from extproc.config.model import RouteApi
from extproc.context import PhaseOutput, RequestContext, Usage
from extproc.quota.estimate import CHARS_PER_TOKEN
from extproc.stages.cut_answer import charged_prompt
from extproc.stages.quota import reserved_completion
from extproc.translators.anthropic_anthropic import server_tools_counted
from extproc.translators.base import StreamFailure, counts_so_far, stream_failure
from extproc.translators.generated_text import generated_chars, responses_delta_chars
from extproc.translators.openai_image_usage import with_image_generation
from extproc.translators.openai_responses import pictures_begun, server_tool_calls_counted
from extproc.translators.sse import MAX_EVENT_BYTES

_DELTA_APIS = frozenset({RouteApi.OPENAI_RESPONSES, RouteApi.OPENAI_AUDIO})


class PartialUsageStage:
    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> None:
        if ctx.stream and ctx.accounted and not no_answer(ctx.response_status):
            if _unwrapped_chars(ctx) is not None:
                return  # the provider's bytes hide the text: the translator counts it
            # The Responses API's and a transcription's text is in their events' deltas
            # (a done event repeats it whole, with the count that settles the stream).
            deltas = ctx.route is not None and ctx.route.api in _DELTA_APIS
            count = responses_delta_chars if deltas else generated_chars
            ctx.generated_chars += count(_whole_lines(ctx, chunk, end_of_stream))

    def done(self, ctx: RequestContext) -> None:
        if ctx.usage_reported or not ctx.stream or ctx.body is None:
            return
        failure = stream_failure(ctx.translator)
        if failure is not None:
            if _failed_before_answering(ctx, failure):
                return  # charged nothing, as the same error answered with its status
            ctx.usage = _failed_stream_usage(ctx, ctx.body, failure)
            ctx.usage_estimated = True
            return
        # A stream cut short, or one that ended without a report (a provider that
        # ignores include_usage, or garbage): estimated from what it carried, so the
        # bill, the metrics and the quota charge the same tokens.
        if _nothing_generated(ctx):
            return
        translator = ctx.translator
        if translator is not None and translator.usage is not None:
            ctx.usage = translator.usage
            ctx.usage_reported = True
            ctx.response_model = translator.response_model
            return
        if translator is not None and ctx.response_model is None:
            # The model the answer named before it was cut (Anthropic's message_start,
            # an OpenAI chunk's model): it answered, whoever the client asked for.
            ctx.response_model = translator.response_model
        ctx.usage = _cut_stream_usage(ctx, ctx.body)
        ctx.usage_estimated = True


def _whole_lines(ctx: RequestContext, chunk: bytes, end_of_stream: bool) -> bytes:
    """The stream's bytes not counted yet, up to the last line end in ``chunk`` (all of
    them at the stream's end); the rest waits for the next chunk.

    Envoy cuts the body anywhere, inside a text value too, and neither half alone reads
    as one; no value holds a raw line end (JSON escapes it). Only event streams come here
    (Bedrock's binary frames are counted whole by their readers). Bytes held past
    ``sse.MAX_EVENT_BYTES`` are a broken event's, which no reader reads: dropped, as its
    readers drop it."""
    if end_of_stream or chunk[-1:] in (b"\n", b"\r"):
        end = len(chunk)  # most chunks end an event
    else:
        end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
    held = ctx.generated_tail
    if held is None:
        if end < len(chunk):
            ctx.generated_tail = bytearray(chunk[end:])
        return chunk if end == len(chunk) else chunk[:end]
    if not end and not end_of_stream:
        # No line ends here. At the stream's end (often Envoy's empty last message) the
        # held line is counted: the provider ended its stream without ending that line.
        if len(held) + len(chunk) > MAX_EVENT_BYTES:
            held.clear()
        else:
            held += chunk
        return b""
    held += chunk[:end]
    ctx.generated_tail = bytearray(chunk[end:]) if end < len(chunk) else None
    return bytes(held)


def usage_if_ended_now(ctx: RequestContext) -> Usage | None:
    """What ``done`` charges a stream that has no usage report, were it to end now.

    The span's running count (``extproc.telemetry.span_attributes``): Envoy closes a
    span when the client hangs up, before any later answer of the gateway's, so the
    span can only carry what was sent while the stream ran. None: nothing is charged.
    """
    if not ctx.stream or ctx.body is None:
        return None
    failure = stream_failure(ctx.translator)
    if failure is not None:
        if _failed_before_answering(ctx, failure):
            return None
        return _failed_stream_usage(ctx, ctx.body, failure)
    if _nothing_generated(ctx):
        return None
    return _cut_stream_usage(ctx, ctx.body)


def _failed_before_answering(ctx: RequestContext, failure: StreamFailure) -> bool:
    """The provider failed the stream before it began its answer, and no text came:
    Anthropic's ``overloaded_error`` as the first event is its 529 in a stream (it had
    not started the message, whose ``message_start`` reports the input it read), an
    OpenAI-compatible error as the first data event or a Bedrock ``throttlingException``
    before ``messageStart`` its 429, and bills nothing, as the gateway charges nothing
    for an error status."""
    return not failure.began and not ctx.generated_chars and not _unwrapped_chars(ctx)


def _nothing_generated(ctx: RequestContext) -> bool:
    """No answer was generated: the request was refused, or the provider answered an error."""
    return ctx.first_byte_at is None or no_answer(ctx.response_status) or ctx.error is not None


def _cut_stream_usage(ctx: RequestContext, body: dict[str, Any]) -> Usage:
    """The prompt as the provider reported it before the cut (Anthropic's
    ``message_start``: its cache reads and writes are billed at their own prices), else as
    the quota estimate counts it; the completion from the text streamed; the server
    tools' requests from the blocks the stream showed."""
    reported = counts_so_far(ctx.translator)
    return _failed_stream_usage(ctx, body, reported or StreamFailure(None))


def _estimated_completion(ctx: RequestContext) -> int:
    """One token per four characters of generated text the stream carried, rounded up;
    never more than the allowance a hard cap gave the provider, which it answered within."""
    chars = _unwrapped_chars(ctx)
    estimate = -(-(ctx.generated_chars if chars is None else chars) // CHARS_PER_TOKEN)
    if ctx.quota_decision == "capped":
        return min(estimate, reserved_completion(ctx))
    return estimate


def _unwrapped_chars(ctx: RequestContext) -> int | None:
    """The generated characters a translator counted in what it unwrapped (the base64
    events of Bedrock's InvokeModel stream, ``anthropic_bedrock``), where the provider's
    own bytes show none; None from every other translator."""
    chars = getattr(ctx.translator, "generated_chars", None)
    return chars if isinstance(chars, int) else None


def _failed_stream_usage(
    ctx: RequestContext, body: dict[str, Any], failure: StreamFailure
) -> Usage:
    """The provider's counts where it gave them, the gateway's estimate for the rest,
    with the pictures a Responses stream's image generation tool had begun and never
    reported (``openai_responses.pictures_begun``), unless the provider's count is the
    whole answer's."""
    counted = _counted_usage(ctx, body, failure)
    if failure.whole:
        return counted
    return with_image_generation(counted, pictures_begun(ctx.translator))


def _counted_usage(ctx: RequestContext, body: dict[str, Any], failure: StreamFailure) -> Usage:
    """The provider's counts where it gave them, the gateway's estimate for the rest."""
    if failure.whole and failure.completion_tokens is not None:
        # The provider's count of the whole answer (a Responses API response.failed's
        # usage): what it bills, whatever the characters streamed suggest.
        completion = failure.completion_tokens
    else:
        # A reported output count covers the text up to its report, the characters all
        # of it: the larger is the closer to what was generated.
        completion = max(failure.completion_tokens or 0, _estimated_completion(ctx))
    # The server tools' requests reported by then were made, and are billed per request.
    tools = _server_tool_requests(ctx, failure.server_tool_requests)
    if failure.prompt_tokens is None:
        # Bedrock's input count header, when the answer came with one, else the estimate.
        counted = charged_prompt(ctx)
        return replace(
            counted,
            completion_tokens=completion,
            total_tokens=counted.prompt_tokens + completion,
            server_tool_requests=tools,
            # The pictures of an image stream cut while drawing (openai_images), charged
            # at the image price; the audio of a speech stream, at the audio output price.
            image_output_tokens=min(failure.image_output_tokens, completion),
            audio_output_tokens=min(failure.audio_output_tokens, completion),
        )
    else:
        # The prompt side as the provider reported it: its cache reads, its cache writes
        # with their 1-hour part, and its audio, which are billed at their own prices;
        # the output's audio and images as far as they were counted.
        prompt = failure.prompt_tokens
        return Usage(
            prompt,
            completion,
            prompt + completion,
            failure.cached_tokens,
            failure.cache_write_tokens,
            failure.cache_write_1h_tokens,
            tools,
            audio_tokens=failure.audio_tokens,
            cached_audio_tokens=failure.cached_audio_tokens,
            audio_output_tokens=failure.audio_output_tokens,
            image_output_tokens=failure.image_output_tokens,
            image_tokens=failure.image_tokens,
            # The image generation tool's pictures, when the count was the whole answer's
            # (a response.failed's): parts of the counts, billed at the image model's price.
            image_generation=failure.image_generation if failure.whole else None,
        )


def _server_tool_requests(ctx: RequestContext, reported: dict[str, int]) -> dict[str, int]:
    """The server tools' requests to bill a stream that ended without its final count:
    those it showed (Anthropic's ``server_tool_use`` blocks, a Responses stream's tool call
    items, counted by the translator), a tool's count reported by the provider taking its
    place."""
    shown = server_tools_counted(ctx.translator) or server_tool_calls_counted(ctx.translator)
    return {**shown, **reported}
