"""An InvokeModel answer with Bedrock's input count but no output count is no whole report.

Bedrock sends ``X-Amzn-Bedrock-Input-Token-Count`` and ``-Output-Token-Count`` with every
JSON answer of a model that generates text; an embeddings model's answer has the input
count alone (it generated no tokens). The gateway read every answer without the output
count as an embeddings answer: a text answer whose output header a proxy or a
Bedrock-compatible server left out was billed 0 output tokens, reported as exact, though
its body counted what it generated (Llama's ``generation_token_count``) or carried the
text; and a Claude answer cut after such headers was billed its prompt and no output.
Now a text model's answer reads the rest from its body: the body's output count beside
Bedrock's prompt count, else (a family that counts nothing, Mistral) an estimate from its
text; a cut one is charged the allowance it reserved, as an answer cut without counts
is. An embeddings model's answer is still billed by the input count alone.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import request_body, request_headers, response_headers, run_stream
from tests.unit.test_bedrock_invoke_body_counts import (
    MISTRAL,
    MISTRAL_BODY,
    NO_COUNTS,
    TITAN_EMBED,
    answered,
    counts,
)
from tests.unit.test_converse_review import AUTH, HAIKU
from tests.unit.test_stream_ended_early_bedrock import (
    CLAUDE_BODY,
    LLAMA,
    LLAMA_BODY,
    invoke_path,
    log_line,
    signing_processor,
)

__all__ = ["signing_processor"]

# Bedrock's prompt count alone: the output count left out on the way.
INPUT_ONLY = {**NO_COUNTS, "x-amzn-bedrock-input-token-count": "30"}


def billed(services: Services) -> tuple[tuple[int, int], bool, bool]:
    line = log_line(services)
    return counts(line), line["usage_reported"], line["usage_estimated"]


async def test_a_text_answer_without_the_output_count_is_billed_by_its_bodys_count(
    signing_processor: Processor, services: Services
) -> None:
    answer = {"generation": "Once upon a time.", "prompt_token_count": 12,
              "generation_token_count": 40, "stop_reason": "stop"}  # fmt: skip
    await answered(signing_processor, LLAMA, LLAMA_BODY, answer, INPUT_ONLY)

    # Bedrock's prompt count (which it bills) wins over the body's; the output is the body's.
    assert billed(services) == ((30, 40), True, False)


async def test_a_text_answer_without_any_output_count_is_estimated_from_its_text(
    signing_processor: Processor, services: Services
) -> None:
    answer = {"outputs": [{"text": "Once upon a time.", "stop_reason": "stop"}]}
    await answered(signing_processor, MISTRAL, MISTRAL_BODY, answer, INPUT_ONLY)

    (_, completion), reported, estimated = billed(services)
    # "Once upon a time." at four characters a token, not 0 reported as exact.
    assert (completion, reported, estimated) == (5, False, True)


@pytest.mark.parametrize(
    "answer",
    [{"embedding": [0.1, 0.2], "inputTextTokenCount": 3}, {"embedding": [0.1, 0.2]}],
    ids=["body-counts-input", "body-counts-nothing"],
)
async def test_an_embeddings_answer_is_billed_by_its_input_count_alone(
    signing_processor: Processor, services: Services, answer: dict[str, Any]
) -> None:
    await answered(signing_processor, TITAN_EMBED, {"inputText": "embed me"}, answer, INPUT_ONLY)

    assert billed(services) == ((30, 0), True, False)


async def test_a_claude_answer_cut_after_an_input_count_alone_is_charged_its_allowance(
    signing_processor: Processor, services: Services
) -> None:
    """The client hung up while Envoy buffered Claude's body: what Claude generated is
    unknown, so the answer is charged as one cut without counts, its ``max_tokens``."""
    path = invoke_path(HAIKU).removesuffix("-with-response-stream")
    await run_stream(
        signing_processor,
        [
            request_headers(path, headers=AUTH),
            request_body(orjson.dumps(CLAUDE_BODY)),
            response_headers(200, INPUT_ONLY),
        ],
    )

    (_, completion), reported, estimated = billed(services)
    assert (completion, reported, estimated) == (CLAUDE_BODY["max_tokens"], False, True)
    assert log_line(services)["outcome"] == "aborted"
