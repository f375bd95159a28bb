"""What Bedrock's InvokeModel model families write in their own bodies about usage and
their end: the token counts a JSON answer or a stream's chunks carry, and the stop reason
that marks a stream's last chunk.

Bedrock reports its counts for every model outside the body (the JSON answer's
``X-Amzn-Bedrock-Input-Token-Count`` and ``-Output-Token-Count`` headers, the
``amazon-bedrock-invocationMetrics`` it adds to a stream's last chunk), and those are
what it bills, so they win whenever they came (``bedrock_invoke``). A Bedrock-compatible
server, or a proxy in front of Bedrock that drops headers, may send the body alone; most
families count their tokens there too, exactly, and the gateway bills those rather than
its estimate. The names, from AWS's model parameter pages:

- Meta Llama: ``prompt_token_count`` and ``generation_token_count`` in the answer; in a
  stream, the prompt on the first chunk and the output so far on each.
- Amazon Titan Text: ``inputTextTokenCount`` and each of ``results``' ``tokenCount`` in
  the answer; in a stream ``inputTextTokenCount`` on the first chunk and
  ``totalOutputTextTokenCount`` (so far) on each. Titan's embeddings answer
  ``inputTextTokenCount`` and no ``results``: they generated nothing.
- Amazon Nova: ``usage`` (``inputTokens``, the uncached part, ``outputTokens``,
  ``cacheReadInputTokenCount``, ``cacheWriteInputTokenCount``) in the answer and in its
  stream's ``metadata`` chunk, which follows ``messageStop``.
- Cohere Command R: ``meta.billed_units`` (``input_tokens``, ``output_tokens``), in its
  stream's last event's ``response``; Cohere's embeddings count their input alone there.
- OpenAI's gpt-oss: OpenAI's chat completion, ``usage.prompt_tokens`` and
  ``completion_tokens``.
- Mistral (``outputs``, ``choices``) and Cohere's older Command (``generations``) carry no
  counts: without Bedrock's, the gateway estimates.

A count that is no token count (``token_counts``) makes the whole report unreadable, so
the request is charged the estimate rather than a guessed part.

A stream's last chunk says how the answer ended: Llama's ``stop_reason``, Titan's
``completionReason``, Cohere's ``finish_reason``, Mistral's ``outputs[].stop_reason`` (or
``choices[]``'s, as DeepSeek and Mistral's chat body have it), Nova's
``messageStop.stopReason``; before it they are null or absent. The chunk is found with a
plain search first (``MAY_END``): JSON escapes the quotes of generated text, so text
cannot fake ``"stop_reason":"``; only a chunk the search finds is parsed.
"""

from __future__ import annotations

import re
from typing import Any

from extproc.context import Usage
from extproc.translators.token_counts import token_count

# A chunk that may end its stream: one of the stop reasons above with a string value, or
# Nova's metadata (the search is a filter; the parsed chunk decides).
MAY_END = re.compile(
    rb'"(?:stop_reason|completionReason|finish_reason|stopReason)"\s*:\s*"|"metadata"\s*:'
)
# Where a stop reason stands, at the top of a chunk, by family: Llama's, Titan's, Cohere's.
_TOP_REASONS = ("stop_reason", "completionReason", "finish_reason")
# Lists whose items carry one: Mistral's text body (outputs), its chat body and DeepSeek's
# (choices), Cohere's older Command (generations).
_LISTED_REASONS = ("outputs", "choices", "generations")
_ITEM_REASONS = ("stop_reason", "finish_reason")


def bedrock_usage(uncached: int, completion: int, read: int | None, written: int | None) -> Usage:
    """Bedrock's counts as usage: the prompt is everything the model read, the uncached
    part and the cache's reads and writes (billed at their own prices)."""
    cache_read = read or 0
    cache_write = written or 0
    prompt = uncached + cache_read + cache_write
    return Usage(prompt, completion, prompt + completion, cache_read, cache_write)


def answer_usage(answer: Any) -> Usage | None:
    """The counts a family's whole JSON answer carries; None when it carries none, or a
    count that is no token count."""
    if not isinstance(answer, dict):
        return None
    if "prompt_token_count" in answer:
        return _pair(answer.get("prompt_token_count"), answer.get("generation_token_count"))
    if "inputTextTokenCount" in answer:
        return _titan_usage(answer)
    return chunk_usage(answer)


def chunk_usage(event: dict[str, Any]) -> Usage | None:
    """The counts of the whole answer a document carries itself, whole answer or a
    stream's last chunk: Nova's ``usage`` (in the stream, its ``metadata``'s), gpt-oss's
    OpenAI ``usage``, Cohere's ``meta.billed_units``. Llama's and Titan's stream chunks
    count as they go: their reader keeps the counts
    (``bedrock_invoke.ModelStreamReader``)."""
    metadata = event.get("metadata")
    usage = (metadata if isinstance(metadata, dict) else event).get("usage")
    if isinstance(usage, dict) and "prompt_tokens" in usage:
        # OpenAI's chat completion, which gpt-oss answers InvokeModel with.
        return _pair(usage.get("prompt_tokens"), usage.get("completion_tokens"))
    if isinstance(usage, dict):
        return _nova_usage(usage)
    # Cohere's own stream puts it in its last event's response, its answer at the top.
    response = event.get("response")
    meta = (response if isinstance(response, dict) else event).get("meta", event.get("meta"))
    billed = meta.get("billed_units") if isinstance(meta, dict) else None
    if isinstance(billed, dict):
        # Cohere's embeddings bill their input alone: no output count is none generated.
        return _pair(billed.get("input_tokens"), billed.get("output_tokens", 0))
    return None


def stop_reason(event: dict[str, Any]) -> str | None:
    """How the answer ended, as a family's last chunk says; None on every other chunk."""
    for key in _TOP_REASONS:
        reason = event.get(key)
        if isinstance(reason, str) and reason:
            return reason
    stop = event.get("messageStop")
    if isinstance(stop, dict) and isinstance(stop.get("stopReason"), str):
        return str(stop["stopReason"])
    for key in _LISTED_REASONS:
        items = event.get(key)
        for item in items if isinstance(items, list) else ():
            for item_key in _ITEM_REASONS:
                reason = item.get(item_key) if isinstance(item, dict) else None
                if isinstance(reason, str) and reason:
                    return reason
    return None


def ends_answer(event: dict[str, Any]) -> bool:
    """Whether this chunk is the stream's last: the one with the stop reason, except
    Nova's ``messageStop``, which its ``metadata`` chunk follows."""
    if isinstance(event.get("metadata"), dict):
        return True
    return "messageStop" not in event and stop_reason(event) is not None


def _pair(prompt: Any, completion: Any) -> Usage | None:
    read_prompt = token_count(prompt)
    read_completion = token_count(completion)
    if read_prompt is None or read_completion is None:
        return None
    return bedrock_usage(read_prompt, read_completion, None, None)


def _titan_usage(answer: dict[str, Any]) -> Usage | None:
    """Titan's prompt count and the sum of its results' counts (an embeddings answer has
    no results: it generated nothing)."""
    results = answer.get("results", [])
    if not isinstance(results, list):
        return None
    completion = 0
    for result in results:
        count = token_count(result.get("tokenCount")) if isinstance(result, dict) else None
        if count is None:
            return None
        completion += count
    return _pair(answer.get("inputTextTokenCount"), completion)


def _nova_usage(usage: dict[str, Any]) -> Usage | None:
    uncached = token_count(usage.get("inputTokens"))
    completion = token_count(usage.get("outputTokens"))
    read = _cache_count(usage.get("cacheReadInputTokenCount"))
    written = _cache_count(usage.get("cacheWriteInputTokenCount"))
    if uncached is None or completion is None or read is None or written is None:
        return None
    return bedrock_usage(uncached, completion, read, written)


def _cache_count(value: Any) -> int | None:
    """A cache count, left out (or null) when the request used no cache, as Converse's
    usage reads it."""
    return 0 if value is None else token_count(value)
