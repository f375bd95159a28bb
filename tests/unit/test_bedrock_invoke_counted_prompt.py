"""An InvokeModel answer whose output is unknown is still billed Bedrock's prompt count.

Bedrock counts the prompt in ``X-Amzn-Bedrock-Input-Token-Count`` (and its cache's reads
and writes in counts of their own) before the answer's body. An answer with that count
but no output count (a proxy that dropped the other header), whose body counts nothing
(Mistral) or carries nothing readable, was charged the quota's prompt ESTIMATE (about four
characters a token) beside its estimated output, though Bedrock had said what it bills for
the prompt; so was a text answer its client left before its body came, and an
InvokeModel stream cut (or broken) before its last chunk whose answer headers held the
count. Now the prompt side is Bedrock's count wherever it came, and only what is unknown
(the output) is estimated: the request is still marked ``usage_estimated``, not
``usage_reported``, since part of its bill is the gateway's estimate.

Each test plays the exchange through the processor with real protobuf messages and reads
the bill from the request's log line.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.aws_eventstream import encode_exception
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    run_stream_reset,
)
from tests.unit.test_bedrock_invoke_body_counts import (
    MISTRAL,
    MISTRAL_BODY,
    MISTRAL_CHUNKS,
    NO_COUNTS,
    answered,
    counts,
    frames,
)
from tests.unit.test_bedrock_invoke_output_count_missing import INPUT_ONLY
from tests.unit.test_converse_review import AUTH, HAIKU
from tests.unit.test_stream_ended_early_bedrock import (
    CLAUDE_BODY,
    CONVERSE_BEGUN,
    CONVERSE_BODY,
    CONVERSE_STOP,
    CONVERSE_STREAM,
    EVENT_STREAM,
    LLAMA,
    LLAMA_BEGUN,
    LLAMA_BODY,
    invoke_path,
    log_line,
    signing_processor,
    streamed,
)

__all__ = ["signing_processor"]

# Bedrock's prompt count with its cache's reads and writes, and no output count.
INPUT_AND_CACHE = {
    **INPUT_ONLY,
    "x-amzn-bedrock-cache-read-input-token-count": "10",
    "x-amzn-bedrock-cache-write-input-token-count": "4",
}
# An InvokeModel stream's answer headers with Bedrock's prompt count (a Bedrock-compatible
# server's; Bedrock puts its counts in the last chunk).
STREAM_WITH_INPUT = {**EVENT_STREAM, "x-amzn-bedrock-input-token-count": "30"}
MODEL_FAILED = encode_exception("modelStreamErrorException", b'{"message": "the model failed"}')
# The quota estimate of CONVERSE_BODY (its "Hello" and its turn).
CONVERSE_PROMPT_ESTIMATE = 5
MISTRAL_TEXT = {"outputs": [{"text": "Once upon a time.", "stop_reason": "stop"}]}


def billed(services: Services) -> tuple[tuple[int, int], bool, bool]:
    line = log_line(services)
    return counts(line), line["usage_reported"], line["usage_estimated"]


def json_path(model: str) -> str:
    return invoke_path(model).removesuffix("-with-response-stream")


async def test_a_mistral_answer_with_the_input_count_alone_is_billed_bedrocks_prompt(
    signing_processor: Processor, services: Services
) -> None:
    await answered(signing_processor, MISTRAL, MISTRAL_BODY, MISTRAL_TEXT, INPUT_ONLY)

    # Bedrock's 30 prompt tokens (the estimate of the body's text is 8), and "Once upon a
    # time." at four characters a token: only the output is the gateway's estimate.
    assert billed(services) == ((30, 5), False, True)


async def test_the_prompt_keeps_bedrocks_cache_counts(
    signing_processor: Processor, services: Services
) -> None:
    await answered(signing_processor, MISTRAL, MISTRAL_BODY, MISTRAL_TEXT, INPUT_AND_CACHE)

    line = log_line(services)
    # The cache's reads and writes are part of the prompt, billed at their own prices.
    assert (counts(line), line["cached_tokens"], line["cache_write_tokens"]) == ((44, 5), 10, 4)


@pytest.mark.parametrize(
    ("model", "body"), [(MISTRAL, MISTRAL_BODY), (HAIKU, CLAUDE_BODY)], ids=["mistral", "claude"]
)
async def test_an_unreadable_answer_with_the_input_count_alone_is_billed_bedrocks_prompt(
    signing_processor: Processor, services: Services, model: str, body: dict[str, Any]
) -> None:
    await run_stream(
        signing_processor,
        [
            request_headers(json_path(model), headers=AUTH),
            request_body(orjson.dumps(body)),
            response_headers(200, INPUT_ONLY),
            response_body(b"<html>not JSON</html>"),
        ],
    )

    assert billed(services) == ((30, 0), False, True)


@pytest.mark.parametrize("reset", [False, True], ids=["stream-closed", "stream-cancelled"])
@pytest.mark.parametrize(
    ("model", "body", "allowance"),
    [
        (HAIKU, CLAUDE_BODY, CLAUDE_BODY["max_tokens"]),
        (LLAMA, LLAMA_BODY, LLAMA_BODY["max_gen_len"]),
        (MISTRAL, MISTRAL_BODY, MISTRAL_BODY["max_tokens"]),
    ],
    ids=["claude", "llama", "mistral"],
)
async def test_an_answer_cut_after_the_input_count_alone_is_charged_bedrocks_prompt(
    signing_processor: Processor,
    services: Services,
    model: str,
    body: dict[str, Any],
    allowance: int,
    reset: bool,
) -> None:
    """The client left while Envoy buffered the body: what the model generated is
    unknown (its allowance is charged), what it read is Bedrock's count."""
    play = run_stream_reset if reset else run_stream
    await play(
        signing_processor,
        [
            request_headers(json_path(model), headers=AUTH),
            request_body(orjson.dumps(body)),
            response_headers(200, INPUT_ONLY),
        ],
    )

    assert billed(services) == ((30, allowance), False, True)
    assert log_line(services)["outcome"] == "aborted"


async def test_an_answer_cut_without_any_count_is_still_charged_the_estimate(
    signing_processor: Processor, services: Services
) -> None:
    """Nothing counted the prompt: the quota's estimate, as before."""
    await run_stream(
        signing_processor,
        [
            request_headers(json_path(MISTRAL), headers=AUTH),
            request_body(orjson.dumps(MISTRAL_BODY)),
            response_headers(200, NO_COUNTS),
        ],
    )

    (prompt, completion), reported, estimated = billed(services)
    assert (completion, reported, estimated) == (MISTRAL_BODY["max_tokens"], False, True)
    assert prompt not in (0, 30)


async def test_a_stream_cut_before_its_last_chunk_is_charged_the_headers_prompt(
    signing_processor: Processor, services: Services
) -> None:
    [first, _] = frames(MISTRAL_CHUNKS)
    await run_stream(
        signing_processor,
        [
            request_headers(invoke_path(MISTRAL), headers=AUTH),
            request_body(orjson.dumps(MISTRAL_BODY)),
            response_headers(200, STREAM_WITH_INPUT),
            response_body(first, end_of_stream=False),
        ],
    )

    # "Once upon" streamed, at four characters a token.
    assert billed(services) == ((30, 3), False, True)


async def test_the_headers_prompt_wins_over_the_count_a_cut_llama_stream_carried(
    signing_processor: Processor, services: Services
) -> None:
    """Llama counts its prompt in its first chunk (12); Bedrock's count is what it bills."""
    await run_stream(
        signing_processor,
        [
            request_headers(invoke_path(LLAMA), headers=AUTH),
            request_body(orjson.dumps(LLAMA_BODY)),
            response_headers(200, STREAM_WITH_INPUT),
            response_body(LLAMA_BEGUN, end_of_stream=False),
        ],
    )

    # The two output tokens Llama had counted (as many as its 9 characters' estimate).
    assert billed(services) == ((30, 3), False, True)


async def test_a_stream_broken_by_an_exception_is_charged_the_headers_prompt(
    signing_processor: Processor, services: Services
) -> None:
    [first, _] = frames(MISTRAL_CHUNKS)
    broken = first + MODEL_FAILED
    await streamed(
        signing_processor,
        invoke_path(MISTRAL),
        MISTRAL_BODY,
        [broken],
        kind=STREAM_WITH_INPUT,
    )

    line = log_line(services)
    assert billed(services) == ((30, 3), False, True)
    assert line["error_code"] == "ModelStreamErrorException"


async def test_a_whole_stream_without_metrics_is_billed_the_headers_prompt(
    signing_processor: Processor, services: Services
) -> None:
    """Mistral's stop reason ends the answer whole; no chunk counted anything."""
    await streamed(
        signing_processor, invoke_path(MISTRAL), MISTRAL_BODY, frames(MISTRAL_CHUNKS),
        kind=STREAM_WITH_INPUT,
    )  # fmt: skip

    # "Once upon a time." at four characters a token.
    assert billed(services) == ((30, 5), False, True)
    assert log_line(services)["outcome"] == "completed"


async def test_a_claude_stream_cut_before_message_start_is_charged_the_headers_prompt(
    signing_processor: Processor, services: Services
) -> None:
    """Claude counts its prompt in ``message_start``; before it, Bedrock's header is all
    that counted it."""
    await run_stream(
        signing_processor,
        [
            request_headers(invoke_path(HAIKU), headers=AUTH),
            request_body(orjson.dumps(CLAUDE_BODY)),
            response_headers(200, STREAM_WITH_INPUT),
            response_body(b"", end_of_stream=False),
        ],
    )

    assert billed(services) == ((30, 0), False, True)


@pytest.mark.parametrize(
    "sent", [CONVERSE_BEGUN, CONVERSE_BEGUN + CONVERSE_STOP], ids=["mid-answer", "after-stop"]
)
async def test_a_converse_stream_cut_before_its_metadata_has_only_the_estimate(
    signing_processor: Processor, services: Services, sent: bytes
) -> None:
    """ConverseStream counts nothing before its ``metadata`` event, and its answer has no
    count header: the quota's prompt estimate and the text streamed are all there is."""
    await run_stream(
        signing_processor,
        [
            request_headers(CONVERSE_STREAM, headers=AUTH),
            request_body(orjson.dumps(CONVERSE_BODY)),
            response_headers(200, EVENT_STREAM),
            response_body(sent, end_of_stream=False),
        ],
    )

    # "Once upon" at four characters a token, beside the prompt estimate.
    assert billed(services) == ((CONVERSE_PROMPT_ESTIMATE, 3), False, True)
