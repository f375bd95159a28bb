"""InvokeModel answers of other model families than Claude's, without Bedrock's counts.

Bedrock reports its token counts for every model outside the body: the JSON answer's
``X-Amzn-Bedrock-Input-Token-Count`` / ``-Output-Token-Count`` headers, the stream's
``amazon-bedrock-invocationMetrics`` in its last chunk. A Bedrock-compatible server, or a
proxy that drops them, sends the body alone, and most families count their tokens there
too. The gateway billed such a JSON answer its estimate although the body held exact
counts, and took such a stream, whole and with its stop reason, for one cut short: it
added an ``internalServerException`` frame, so boto3 raised on a complete answer, and the
request was logged as the provider's error. Now the body's counts are the bill (Bedrock's
win when both came), and the stop reason ends the stream.

Each test plays the exchange through the processor with real protobuf messages, the
chunks framed as AWS's event stream, and reads what boto3 makes of what the client got.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from botocore.exceptions import EventStreamError

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_converse_review import AUTH
from tests.unit.test_stream_ended_early_bedrock import (
    ENDED_EARLY,
    EVENT_STREAM,
    LLAMA,
    LLAMA_BODY,
    boto3_reads,
    chunk,
    invoke_path,
    log_line,
    signing_processor,
    streamed,
)

__all__ = ["signing_processor"]

TITAN = "amazon.titan-text-express-v1"
TITAN_BODY = {"inputText": "Tell me a story.", "textGenerationConfig": {"maxTokenCount": 64}}
MISTRAL = "mistral.mistral-7b-instruct-v0:2"
MISTRAL_BODY = {"prompt": "<s>[INST] Tell me a story. [/INST]", "max_tokens": 64}
NOVA = "amazon.nova-lite-v1:0"
NOVA_BODY = {"messages": [{"role": "user", "content": [{"text": "Tell me a story."}]}],
             "inferenceConfig": {"maxTokens": 64}}  # fmt: skip
COHERE = "cohere.command-r-v1:0"
COHERE_BODY = {"message": "Tell me a story.", "max_tokens": 64}
TITAN_EMBED = "amazon.titan-embed-text-v2:0"
GPT_OSS = "openai.gpt-oss-20b-1:0"
GPT_OSS_BODY = {"messages": [{"role": "user", "content": "Tell me a story."}],
                "max_completion_tokens": 64}  # fmt: skip
# A JSON answer as Envoy's router passes it on, without Bedrock's count headers.
NO_COUNTS = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
BEDROCK_COUNTS = {
    **NO_COUNTS,
    "x-amzn-bedrock-input-token-count": "30",
    "x-amzn-bedrock-output-token-count": "9",
}

LLAMA_CHUNKS = [
    {"generation": "Once", "prompt_token_count": 12, "generation_token_count": 1,
     "stop_reason": None},
    {"generation": " upon", "prompt_token_count": None, "generation_token_count": 2,
     "stop_reason": None},
    {"generation": " a time.", "prompt_token_count": None, "generation_token_count": 4,
     "stop_reason": "stop"},
]  # fmt: skip
TITAN_CHUNKS = [
    {"outputText": "Once", "index": 0, "totalOutputTextTokenCount": 1,
     "completionReason": None, "inputTextTokenCount": 9},
    {"outputText": " upon a time.", "index": 0, "totalOutputTextTokenCount": 5,
     "completionReason": "FINISH", "inputTextTokenCount": None},
]  # fmt: skip
MISTRAL_CHUNKS = [
    {"outputs": [{"text": "Once upon", "stop_reason": None}]},
    {"outputs": [{"text": " a time.", "stop_reason": "stop"}]},
]
NOVA_CHUNKS = [
    {"messageStart": {"role": "assistant"}},
    {"contentBlockDelta": {"delta": {"text": "Once upon a time."}, "contentBlockIndex": 0}},
    {"contentBlockStop": {"contentBlockIndex": 0}},
    {"messageStop": {"stopReason": "end_turn"}},
    {"metadata": {"usage": {"inputTokens": 6, "outputTokens": 5,
                            "cacheReadInputTokenCount": 10, "cacheWriteInputTokenCount": 0}}},
]  # fmt: skip

# Cohere's stream ends with stream-end, its response holding the billed units.
COHERE_CHUNKS = [
    {"is_finished": False, "event_type": "text-generation", "text": "Once upon a time."},
    {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE",
     "response": {"response_id": "r1", "text": "Once upon a time.", "meta": {
         "billed_units": {"input_tokens": 8, "output_tokens": 5}}}},
]  # fmt: skip


def frames(events: list[dict[str, Any]]) -> list[bytes]:
    return [chunk(event) for event in events]


def counts(line: dict[str, Any]) -> tuple[int, int]:
    return line["prompt_tokens"], line["completion_tokens"]


async def answered(
    processor: Processor, model: str, body: dict[str, Any], answer: Any, headers: dict[str, str]
) -> None:
    """Play an InvokeModel call answered ``answer`` (JSON) with ``headers``: the log line
    tells the bill."""
    path = invoke_path(model).removesuffix("-with-response-stream")
    await run_stream(
        processor,
        [
            request_headers(path, headers=AUTH),
            request_body(orjson.dumps(body)),
            response_headers(200, headers),
            response_body(orjson.dumps(answer)),
        ],
    )


@pytest.mark.parametrize(
    ("model", "body", "answer", "billed"),
    [
        (LLAMA, LLAMA_BODY, {"generation": "Once upon a time.", "prompt_token_count": 12,
                             "generation_token_count": 40, "stop_reason": "stop"}, (12, 40)),
        (TITAN, TITAN_BODY, {"inputTextTokenCount": 9, "results": [
            {"tokenCount": 33, "outputText": "Once upon a time.",
             "completionReason": "FINISH"}]}, (9, 33)),
        # Titan's embeddings count their input, and generate nothing.
        (TITAN_EMBED, {"inputText": "embed me"}, {"embedding": [0.1, 0.2],
                                                  "inputTextTokenCount": 3}, (3, 0)),
        # Nova's usage counts the uncached prompt: its cache reads are part of the prompt.
        (NOVA, NOVA_BODY, {"output": {"message": {"role": "assistant", "content": [
            {"text": "Once upon a time."}]}}, "stopReason": "end_turn", "usage": {
                "inputTokens": 6, "outputTokens": 21, "totalTokens": 27,
                "cacheReadInputTokenCount": 100, "cacheWriteInputTokenCount": 0}}, (106, 21)),
        (COHERE, COHERE_BODY, {"response_id": "r1", "text": "Once upon a time.",
                               "generation_id": "g1", "finish_reason": "COMPLETE", "meta": {
                                   "billed_units": {"input_tokens": 8, "output_tokens": 17}}},
         (8, 17)),
        (GPT_OSS, GPT_OSS_BODY, {"id": "chatcmpl-1", "object": "chat.completion",
                                 "choices": [{"index": 0, "message": {
                                     "role": "assistant", "content": "Once upon a time."},
                                     "finish_reason": "stop"}], "usage": {
                                     "prompt_tokens": 14, "completion_tokens": 6,
                                     "total_tokens": 20}}, (14, 6)),
    ],
    ids=["llama", "titan-text", "titan-embeddings", "nova", "cohere-command-r", "gpt-oss"],
)  # fmt: skip
async def test_a_json_answer_without_bedrocks_headers_is_billed_by_its_bodys_counts(
    signing_processor: Processor,
    services: Services,
    model: str,
    body: dict[str, Any],
    answer: dict[str, Any],
    billed: tuple[int, int],
) -> None:
    await answered(signing_processor, model, body, answer, NO_COUNTS)

    line = log_line(services)
    assert counts(line) == billed
    assert line["usage_reported"] is True and line["usage_estimated"] is False
    assert line["outcome"] == "completed"


async def test_bedrocks_headers_win_over_the_bodys_counts(
    signing_processor: Processor, services: Services
) -> None:
    # Bedrock bills what its headers say; the body is the model's own word.
    answer = {"generation": "Once.", "prompt_token_count": 12, "generation_token_count": 40}
    await answered(signing_processor, LLAMA, LLAMA_BODY, answer, BEDROCK_COUNTS)

    assert counts(log_line(services)) == (30, 9)


@pytest.mark.parametrize(
    "answer",
    [
        # Mistral's body counts nothing.
        {"outputs": [{"text": "Once upon a time.", "stop_reason": "stop"}]},
        # A count that is no count: the report is unreadable, not half read.
        {"generation": "Once upon a time.", "prompt_token_count": 12,
         "generation_token_count": -1},
        {"generation": "Once upon a time.", "prompt_token_count": True,
         "generation_token_count": 4},
        {"inputTextTokenCount": 9, "results": [{"outputText": "Once upon a time."}]},
        {"output": {"message": {"content": [{"text": "Once upon a time."}]}}, "usage": {
            "inputTokens": 6, "outputTokens": 5, "cacheReadInputTokenCount": -100}},
    ],
    ids=["mistral", "negative", "boolean", "titan-result-without-count", "nova-cache"],
)  # fmt: skip
async def test_a_json_answer_without_readable_counts_is_still_estimated(
    signing_processor: Processor, services: Services, answer: dict[str, Any]
) -> None:
    await answered(signing_processor, LLAMA, LLAMA_BODY, answer, NO_COUNTS)

    line = log_line(services)
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert line["completion_tokens"] == 5  # "Once upon a time." at four characters a token


@pytest.mark.parametrize(
    ("model", "body", "events", "billed"),
    [
        # Llama's first chunk counts the prompt, each the output so far.
        (LLAMA, LLAMA_BODY, LLAMA_CHUNKS, (12, 4)),
        (TITAN, TITAN_BODY, TITAN_CHUNKS, (9, 5)),
        # Nova counts in its metadata chunk, after messageStop.
        (NOVA, NOVA_BODY, NOVA_CHUNKS, (16, 5)),
        (COHERE, COHERE_BODY, COHERE_CHUNKS, (8, 5)),
    ],
    ids=["llama", "titan", "nova", "cohere-command-r"],
)
async def test_a_whole_stream_without_bedrocks_metrics_is_billed_by_its_chunks_counts(
    signing_processor: Processor,
    services: Services,
    model: str,
    body: dict[str, Any],
    events: list[dict[str, Any]],
    billed: tuple[int, int],
) -> None:
    sent = frames(events)
    received = await streamed(signing_processor, invoke_path(model), body, sent)

    # The client gets the frames as they came, and boto3 reads them to their end.
    assert received == b"".join(sent)
    assert boto3_reads("InvokeModelWithResponseStream", received) == ["chunk"] * len(sent)
    line = log_line(services)
    assert (line["outcome"], line["error_code"]) == ("completed", None)
    assert counts(line) == billed
    assert line["usage_reported"] is True and line["usage_estimated"] is False


@pytest.mark.parametrize(
    ("model", "body", "events"),
    [(MISTRAL, MISTRAL_BODY, MISTRAL_CHUNKS), (NOVA, NOVA_BODY, NOVA_CHUNKS[:-1])],
    ids=["mistral", "nova-without-metadata"],
)
async def test_a_whole_stream_without_any_count_is_complete_and_estimated(
    signing_processor: Processor,
    services: Services,
    model: str,
    body: dict[str, Any],
    events: list[dict[str, Any]],
) -> None:
    sent = frames(events)
    received = await streamed(signing_processor, invoke_path(model), body, sent)

    assert received == b"".join(sent)
    assert boto3_reads("InvokeModelWithResponseStream", received) == ["chunk"] * len(sent)
    line = log_line(services)
    assert (line["outcome"], line["error_code"]) == ("completed", None)
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert line["completion_tokens"] == 5  # "Once upon a time." at four characters a token


async def test_bedrocks_metrics_win_over_the_chunks_counts(
    signing_processor: Processor, services: Services
) -> None:
    metrics = {"inputTokenCount": 30, "outputTokenCount": 9}
    last = {**LLAMA_CHUNKS[-1], "amazon-bedrock-invocationMetrics": metrics}
    sent = frames([*LLAMA_CHUNKS[:-1], last])
    await streamed(signing_processor, invoke_path(LLAMA), LLAMA_BODY, sent)

    assert counts(log_line(services)) == (30, 9)


async def test_a_client_gone_right_after_the_last_chunk_had_the_whole_answer(
    signing_processor: Processor, services: Services
) -> None:
    # The stop chunk came; the client hung up before Envoy's end of stream. The answer was
    # whole: billed by its counts, not taken for a cut one.
    await run_stream(
        signing_processor,
        [
            request_headers(invoke_path(LLAMA), headers=AUTH),
            request_body(orjson.dumps(LLAMA_BODY)),
            response_headers(200, EVENT_STREAM),
            *(response_body(part, end_of_stream=False) for part in frames(LLAMA_CHUNKS)),
        ],
    )

    line = log_line(services)
    assert line["outcome"] == "completed"
    assert counts(line) == (12, 4) and line["usage_reported"] is True


@pytest.mark.parametrize(
    ("model", "body", "events"),
    [
        (LLAMA, LLAMA_BODY, LLAMA_CHUNKS[:-1]),
        (TITAN, TITAN_BODY, TITAN_CHUNKS[:-1]),
        (MISTRAL, MISTRAL_BODY, MISTRAL_CHUNKS[:-1]),
        # Nova's messageStop ends the answer: its metadata alone is not the stop.
        (NOVA, NOVA_BODY, NOVA_CHUNKS[:3]),
    ],
    ids=["llama", "titan", "mistral", "nova"],
)
async def test_a_stream_ended_before_its_stop_reason_is_still_raised_by_boto3(
    signing_processor: Processor,
    services: Services,
    model: str,
    body: dict[str, Any],
    events: list[dict[str, Any]],
) -> None:
    received = await streamed(signing_processor, invoke_path(model), body, frames(events))

    with pytest.raises(EventStreamError, match=ENDED_EARLY):
        boto3_reads("InvokeModelWithResponseStream", received)
    line = log_line(services)
    assert line["error_code"] == "invalid_upstream_response"
    assert line["usage_estimated"] is True


async def test_generated_text_that_spells_a_stop_reason_does_not_end_the_stream(
    signing_processor: Processor, services: Services
) -> None:
    # The model wrote JSON; JSON escapes its quotes, so it is text, not Llama's stop.
    text = {"generation": '{"stop_reason": "stop", "metadata": {}}', "prompt_token_count": 12,
            "generation_token_count": 9, "stop_reason": None}  # fmt: skip
    received = await streamed(signing_processor, invoke_path(LLAMA), LLAMA_BODY, [chunk(text)])

    with pytest.raises(EventStreamError, match=ENDED_EARLY):
        boto3_reads("InvokeModelWithResponseStream", received)


@pytest.mark.parametrize("output", ["-1", "18446744073709551615", "5.0", "nope", ""])
@pytest.mark.parametrize(
    ("answer", "billed", "reported"),
    [
        # Llama's body counts it: those are the bill.
        ({"generation": "Once upon a time.", "prompt_token_count": 12,
          "generation_token_count": 40}, (12, 40), True),
        # Nothing counts it: the estimate, its text at four characters a token.
        ({"generation": "Once upon a time."}, (4, 5), False),
    ],
    ids=["body-counts", "no-counts"],
)  # fmt: skip
async def test_an_output_header_that_is_no_count_is_no_report_not_zero_output(
    signing_processor: Processor,
    services: Services,
    output: str,
    answer: dict[str, Any],
    billed: tuple[int, int],
    reported: bool,
) -> None:
    # A wrapped-around or garbled output count billed the answer's output as 0 tokens,
    # reported as exact: the docs' rule reads such a report as none.
    headers = {**BEDROCK_COUNTS, "x-amzn-bedrock-output-token-count": output}
    await answered(signing_processor, LLAMA, LLAMA_BODY, answer, headers)

    line = log_line(services)
    assert counts(line) == billed
    assert line["usage_reported"] is reported and line["usage_estimated"] is not reported
