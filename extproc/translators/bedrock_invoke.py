"""An InvokeModel client to Bedrock: Bedrock's answer passed on unchanged, usage read.

The client speaks Bedrock's own API (boto3's ``invoke_model`` and
``invoke_model_with_response_stream``, ``extproc.converse_api``), so the answer is already
in its shape: every byte reaches it as Bedrock sent it, and its SDK checks the frames' CRCs
as it would from AWS. The gateway only reads, to bill the request. Claude's answers:

- The JSON answer is Claude's Message, read as on Anthropic's own API
  (``anthropic_bedrock.MessageReader``).
- The stream (``InvokeStreamReader``) is AWS's binary event stream, one ``chunk`` frame per
  Anthropic event, base64-encoded. The reader unwraps each event as the Anthropic client's
  translator does (``anthropic_bedrock.StreamTranslator``, which it extends) and reads it
  for usage, server tools, failures and the generated text of a cut stream, but sends the
  client the frames, not the SSE it unwrapped. Claude's ``message_stop`` ends the answer
  (``terminal_event_read``). An exception frame is recorded as the stream's failure,
  named as the Converse pass-through names it (``ModelStreamErrorException``: the name the
  client's SDK raises, not the Anthropic error type it maps to), and passed on. A stream
  that ends before ``message_stop`` is charged as a cut one, from the prompt Claude
  reported (else the estimate) and the text it carried.

Any other model family's answer has its own shape, but Bedrock reports its token counts
alike for every model, and the gateway bills by those; without them (a Bedrock-compatible
server, a proxy that drops headers), by the counts the family wrote in its body
(``invoke_body_counts``), else by its estimate:

- The JSON answer (``TokenHeaderReader``): the ``X-Amzn-Bedrock-Input-Token-Count`` and
  ``-Output-Token-Count`` headers of InvokeModel's answer, and the tier of its
  ``X-Amzn-Bedrock-Service-Tier`` header. The body is parsed, once, only when the counts
  are missing: for the family's own counts (Llama's ``prompt_token_count``, Titan's
  ``inputTextTokenCount``...), else for the estimate of what it generated
  (``stages.cut_answer``). The headers win: the body is not read beside them. The
  input count alone is a whole report only for an embeddings model; a text answer
  with it alone reads its output from the body (``TokenHeaderReader``), and whatever
  is then estimated (a body that counts nothing, an answer cut before its body) is
  estimated beside that prompt count (``header_prompt``), not in its place.
- The stream (``ModelStreamReader``): each ``chunk`` frame's base64 JSON, whose last one
  carries ``amazon-bedrock-invocationMetrics`` (``inputTokenCount``,
  ``outputTokenCount``), which win, and the family's stop reason (Llama's
  ``stop_reason``, Titan's ``completionReason``...), which ends the answer whole with or
  without them: billed then by the counts the chunks carried (Llama's and Titan's prompt
  on the first chunk, output so far on each; Nova's ``metadata``), else estimated, and
  never taken for a stream cut short. Only the chunks that may hold counts, metrics or a
  stop reason are parsed; the others are scanned for their generated text
  (``generated_text``: Llama's ``generation``, Titan's ``outputText``, Mistral's
  ``text``...), the bill of a stream cut before its end, beside the prompt count of
  the answer's headers when they had one (``header_prompt``: a compatible server's),
  else the chunks'. Exception frames are the stream's failure, named as on Converse.
  What telemetry reads of the chunks (``unwrapped``: finish reasons, captured text)
  leaves out the whole answer Cohere's last chunk repeats under ``response``: read, it
  logged two finish reasons and the text twice for one answer; so does the count of
  generated text, which estimated such a stream without counts at twice its output.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from botocore.eventstream import EventStreamMessage

from extproc.aws_eventstream import WholeMessages
from extproc.context import Usage
from extproc.translators.anthropic_bedrock import (
    StreamTranslator,
    served_tier,
    unwrapped_chunk,
)
from extproc.translators.base import ProviderStreamError, StreamFailure, service_tier_of
from extproc.translators.bedrock_bedrock import (
    ENDED_EARLY_FRAME,
    ConverseStreamReader,
    ended_early_error,
)
from extproc.translators.generated_text import generated_chars
from extproc.translators.invoke_body_counts import (
    MAY_END,
    answer_usage,
    bedrock_usage,
    chunk_usage,
    ends_answer,
    stop_reason,
)
from extproc.translators.openai_bedrock_stream import frame_error, stream_exception
from extproc.translators.token_counts import header_token_count, token_count

# InvokeModel's answer headers with the token counts, for every model.
INPUT_TOKENS_HEADER = "x-amzn-bedrock-input-token-count"
OUTPUT_TOKENS_HEADER = "x-amzn-bedrock-output-token-count"
# The prompt tokens read from and written to the model's prompt cache (Nova's, at a
# cachePoint), which the input count leaves out as Converse's inputTokens does.
CACHE_READ_HEADER = "x-amzn-bedrock-cache-read-input-token-count"
CACHE_WRITE_HEADER = "x-amzn-bedrock-cache-write-input-token-count"
# The running counts some families put in their chunks, (prompt, output so far) by family:
# Llama's, Titan Text's.
_RUNNING_COUNTS = (
    ("prompt_token_count", "generation_token_count"),
    ("inputTextTokenCount", "totalOutputTextTokenCount"),
)
# What every chunk holding one of them has (a plain search spares the parse).
_RUNNING_COUNT = b'ount"'
# What Bedrock adds to the last chunk of every model's stream.
_METRICS = b"amazon-bedrock-invocationMetrics"
# Where Cohere's last chunk (Command's, Command R's) repeats the whole answer, its text
# and finish reason again, beside the stream's own finish reason.
_REPEATED_ANSWER = "response"


class InvokeStreamReader(StreamTranslator):
    """InvokeModelWithResponseStream's frames, passed through; read as the Anthropic
    client's translator reads them."""

    def __init__(self, served_tier: str | None = None, counted_prompt: Usage | None = None) -> None:
        super().__init__(served_tier)
        # The prompt the answer's headers counted (``header_prompt``; Bedrock sends its
        # counts in the stream, a compatible server may in its headers): a stream cut
        # before message_start, which counts it too, is charged it (stages.partial_usage).
        self.counted_prompt = counted_prompt
        # The exception frame that ended the stream, as the client's SDK names it.
        self._raised: ProviderStreamError | None = None
        # The Anthropic events (as SSE) unwrapped from the last chunk's frames: what the
        # client's SDK reads in them, for telemetry's finish reasons and captured text,
        # which the frames' base64 hides.
        self.unwrapped = b""
        # The frames the client may have: whole ones (a partial one is held, and dropped
        # if the body ends inside it, as ConverseStream's reader does).
        self._whole = WholeMessages()

    @property
    def terminal_event_read(self) -> bool:
        """Claude's ``message_stop`` was read: the answer is whole even if the client
        hangs up before Envoy's end of stream."""
        return self._stopped

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        closed = self._closed
        self.unwrapped = super().feed(chunk, end_of_stream) or b""
        whole = self._whole.take(chunk)
        if self._raised is not None and self.failure is not None:
            # The counts Claude had reported stay; the error is the frame's own.
            self.failure = replace(self.failure, error=self._raised)
        if self.ended_early and self.failure is not None:
            # The body ended before message_stop: boto3 took the chunks so far for the
            # whole answer. It raises the exception frame after them instead, which
            # names the request's error (Claude's counts so far stay). A frame the body
            # ended inside of is dropped: botocore read the exception frame as its rest.
            self.failure = replace(self.failure, error=ended_early_error())
            return whole + ENDED_EARLY_FRAME
        if self._closed and not closed:
            # An exception frame, or a frame that broke: from here on the bytes pass as
            # they came, for the client's SDK to raise or reject.
            whole += self._whole.release()
        # The client reads Bedrock's frames, not the SSE read from them.
        return None if whole is chunk else whole

    def _exception(self, name: str, message: str, out: list[bytes]) -> None:
        self._raised = stream_exception(name, message)
        super()._exception(name, message, out)


def header_usage(headers: dict[str, str], generates: bool = True) -> Usage | None:
    """The usage InvokeModel's answer headers report; None when the input count is
    missing, or either count is there but no count (``token_counts``: the report is then
    unreadable, not read as 0 output). An embeddings model's answer (``generates``
    False) has no output count: it generated no tokens. A model that generates text
    without its output count is no whole report either: what it generated is in its
    body (``TokenHeaderReader``), or, for an answer cut before it, unknown."""
    prompt = header_token_count(headers.get(INPUT_TOKENS_HEADER))
    output = headers.get(OUTPUT_TOKENS_HEADER)
    if output is None and generates:
        return None
    completion = 0 if output is None else header_token_count(output)
    if prompt is None or completion is None:
        return None
    cache_read = header_token_count(headers.get(CACHE_READ_HEADER))
    return bedrock_usage(
        prompt, completion, cache_read, header_token_count(headers.get(CACHE_WRITE_HEADER))
    )


def header_prompt(headers: dict[str, str]) -> Usage | None:
    """The prompt InvokeModel's answer headers count (the input count with the cache's
    reads and writes), when the output count is missing (left out on the way) or is one;
    None without the input count, or beside an output header that holds no count, which
    makes the headers' report unreadable as a whole (``header_usage``). What Bedrock bills
    for the prompt of an answer whose output is unknown (no output count and a body that
    counts nothing, an answer cut before its body or its last chunk): the gateway
    estimates that output alone (``base.counted_prompt``)."""
    prompt = header_token_count(headers.get(INPUT_TOKENS_HEADER))
    output = headers.get(OUTPUT_TOKENS_HEADER)
    if prompt is None or (output is not None and header_token_count(output) is None):
        return None
    cache_read = header_token_count(headers.get(CACHE_READ_HEADER))
    return bedrock_usage(prompt, 0, cache_read, header_token_count(headers.get(CACHE_WRITE_HEADER)))


class TokenHeaderReader:
    """Another family's JSON answer: billed by InvokeModel's token headers, else by the
    counts its body carries; passed through. ``generates``: False for an embeddings
    model, whose answer counts no output."""

    def __init__(self, headers: dict[str, str], generates: bool = True) -> None:
        self.usage = header_usage(headers, generates)
        # The prompt Bedrock counted, when its answer came without a readable output count:
        # the body tells the rest (its count, else its text); an answer cut before its body
        # is charged this prompt and its allowance (stages.cut_answer).
        self.counted_prompt = None if self.usage is not None else header_prompt(headers)
        self.response_model: str | None = None  # the family's body may name none
        self.status: int | None = None
        self.service_tier = service_tier_of(served_tier(headers))
        # Parsed only without the headers' counts, once: for the counts the family wrote
        # in it (invoke_body_counts), else for cut_answer's estimate from its text.
        self.answer: Any = None
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if self.usage is not None:
            return None
        self._parts.append(chunk)
        if end_of_stream:
            whole = b"".join(self._parts)
            self._parts = []
            try:
                self.answer = orjson.loads(whole)
            except orjson.JSONDecodeError:
                self.answer = None
            self.usage = self._usage(answer_usage(self.answer), whole)
        return None

    def _usage(self, counted: Usage | None, whole: bytes) -> Usage | None:
        """The bill of a whole answer read without both of Bedrock's counts: the body's
        counts (with Bedrock's prompt count, which wins, when it came), else Bedrock's
        prompt count and no output when the answer carries no generated text (vectors, an
        empty generation), else none: estimated from its text (``stages.cut_answer``),
        beside Bedrock's prompt count when it came (``counted_prompt``)."""
        prompt = self.counted_prompt
        if prompt is None:
            return counted
        if counted is not None:
            completion = counted.completion_tokens
            return replace(
                prompt,
                completion_tokens=completion,
                total_tokens=prompt.prompt_tokens + completion,
            )
        if self.answer is not None and not generated_chars(whole):
            return prompt
        return None  # charged Bedrock's prompt and the estimate of its text (cut_answer)


class ModelStreamReader(ConverseStreamReader):
    """Another family's InvokeModelWithResponseStream frames, passed through; billed by the
    last chunk's ``amazon-bedrock-invocationMetrics``, else by the counts the chunks
    carried. Read as ConverseStream's frames are (the reader it extends: failures, a
    broken frame, a stream ended before its stop reason), its chunks unwrapped."""

    def __init__(self, served_tier: str | None = None, counted_prompt: Usage | None = None) -> None:
        super().__init__()
        self.service_tier = service_tier_of(served_tier)
        # The prompt the answer's headers counted (``header_prompt``): Bedrock's count,
        # which wins over the one a family's chunks carry, as on a JSON answer.
        self.counted_prompt = counted_prompt
        # Characters of generated text in the chunks so far (partial_usage).
        self.generated_chars = 0
        # The JSON of the last body chunk's events, which the frames' base64 hides, for
        # telemetry's finish reasons.
        self.unwrapped = b""
        self._events: list[bytes] = []
        # The counts a family reports as it streams (Llama's, Titan's), for the bill of a
        # stream cut or broken before the metrics.
        self._prompt: int | None = None
        self._output: int | None = None

    def counts_so_far(self) -> StreamFailure:
        """What the model had reported when the stream was cut (base.counts_so_far): the
        headers' prompt count (with its cache's), else the chunks'."""
        counted = self.counted_prompt
        if counted is None:
            return StreamFailure(None, prompt_tokens=self._prompt, completion_tokens=self._output)
        return StreamFailure(
            None,
            prompt_tokens=counted.prompt_tokens,
            cached_tokens=counted.cached_tokens,
            completion_tokens=self._output,
            cache_write_tokens=counted.cache_write_tokens,
        )

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._events = []
        ended = super().feed(chunk, end_of_stream)  # the chunk and its end, if ended early
        self.unwrapped = b"\n".join(self._events)
        return ended

    def _read(self, frame: EventStreamMessage) -> None:
        error = frame_error(frame)
        if error is not None:
            self._failed(stream_exception(*error), began=self._began)
            return
        self._began = True
        if frame.headers.get(":event-type") == "chunk":
            event = unwrapped_chunk(frame.payload)
            self._events.append(event)
            chars = generated_chars(event)
            self.generated_chars += chars
            ending = MAY_END.search(event) is not None
            if not (ending or _METRICS in event or _RUNNING_COUNT in event):
                return  # most chunks of most families: text alone, not parsed
            parsed = orjson.loads(event)  # a ValueError, a bad frame, when it is not JSON
            if not isinstance(parsed, dict):
                return
            if ending and isinstance(parsed.get(_REPEATED_ANSWER), dict):
                # Cohere's last chunk repeats the whole answer: telemetry reads its finish
                # reason and text once, as the client's SDK does (its counts stay read).
                kept = orjson.dumps(
                    {key: value for key, value in parsed.items() if key != _REPEATED_ANSWER}
                )
                self._events[-1] = kept
                # And the estimate of a stream without counts reads its text once.
                self.generated_chars += generated_chars(kept) - chars
            self._read_running_counts(parsed)
            if _METRICS in event:
                self._read_metrics(parsed)
            if ending:
                self._read_end(parsed)

    def _read_end(self, parsed: dict[str, Any]) -> None:
        """A chunk with the family's stop reason: the answer is whole, however its stream
        then ends. The last one (``invoke_body_counts.ends_answer``) ends the answer, and
        without Bedrock's metrics it is billed by the counts the chunks carried."""
        if stop_reason(parsed) is not None:
            self._answered = True
        if not ends_answer(parsed):
            return
        self.terminal_event_read = True
        if self.usage is None:  # Bedrock's metrics, read from this chunk first, win
            carried = chunk_usage(parsed)
            carried = carried if carried is not None else self._running_usage()
            self.usage = self._with_counted_prompt(carried)

    def _with_counted_prompt(self, carried: Usage | None) -> Usage | None:
        """The chunks' counts with the headers' prompt count in place of theirs, as a
        JSON answer's body counts beside the input count header (``TokenHeaderReader``)."""
        counted = self.counted_prompt
        if carried is None or counted is None:
            return carried
        completion = carried.completion_tokens
        return replace(
            counted, completion_tokens=completion, total_tokens=counted.prompt_tokens + completion
        )

    def _running_usage(self) -> Usage | None:
        """The counts the chunks carried as they went (Llama's, Titan's): the last chunk's
        output count is the whole answer's."""
        if self._prompt is None or self._output is None:
            return None
        return bedrock_usage(self._prompt, self._output, None, None)

    def _read_running_counts(self, parsed: dict[str, Any]) -> None:
        """Llama's ``prompt_token_count`` / ``generation_token_count``, Titan's
        ``inputTextTokenCount`` / ``totalOutputTextTokenCount``: the prompt on the first
        chunk, the output so far on each."""
        for prompt_key, output_key in _RUNNING_COUNTS:
            prompt = token_count(parsed.get(prompt_key))
            output = token_count(parsed.get(output_key))
            self._prompt = prompt if prompt is not None else self._prompt
            self._output = output if output is not None else self._output

    def _failed(self, error: ProviderStreamError, *, began: bool = True) -> None:
        # The counts reported so far stay with the failure: its bill starts from them.
        super()._failed(error, began=began)
        self.failure = replace(self.counts_so_far(), error=error, began=began)

    def _read_metrics(self, parsed: dict[str, Any]) -> None:
        metrics = parsed.get(_METRICS.decode())
        if not isinstance(metrics, dict):
            return  # the key inside generated text, not Bedrock's metrics
        prompt = token_count(metrics.get("inputTokenCount"))
        completion = token_count(metrics.get("outputTokenCount"))
        if prompt is not None and completion is not None:
            read = token_count(metrics.get("cacheReadInputTokenCount"))
            written = token_count(metrics.get("cacheWriteInputTokenCount"))
            self.usage = bedrock_usage(prompt, completion, read, written)
        self.terminal_event_read = True
