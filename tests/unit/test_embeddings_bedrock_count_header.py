"""OpenAI embeddings on Bedrock are billed by Bedrock's input count header, cut or whole.

Bedrock's InvokeModel answer to an embeddings model counts its input in
``X-Amzn-Bedrock-Input-Token-Count``, before the body: that is its whole bill (vectors
are no output). An answer the client left while its body (up to 96 vectors of Cohere's,
each a thousand floats) was in flight was charged the input's ESTIMATE (one token per
four characters) though Bedrock had counted it; so was a whole Titan answer without
Titan's own ``inputTextTokenCount``. Now Bedrock's count is the bill of both, reported
as exact; Titan's body count still bills a whole answer that has it (its client reads
it as ``usage.prompt_tokens``), and without any count the estimate stays.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

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
from tests.unit.test_embeddings import AUTH, EMBEDDINGS
from tests.unit.test_embeddings_cohere import TOKEN_HEADER, embeddings, log_line, signing

__all__ = ["signing"]

TITAN = {"model": "titan-embed", "input": ["one text"]}
COHERE = {"model": "cohere-embed", "input": ["first text", "second text"]}


def billed(services: Services) -> tuple[int, int, bool, bool]:
    line = log_line(services)
    return (
        line["prompt_tokens"],
        line["completion_tokens"],
        line["usage_reported"],
        line["usage_estimated"],
    )


@pytest.mark.parametrize("reset", [False, True], ids=["stream-closed", "stream-cancelled"])
@pytest.mark.parametrize("body", [TITAN, COHERE], ids=["titan", "cohere"])
async def test_an_answer_cut_before_its_body_is_billed_bedrocks_count(
    signing: Processor, services: Services, body: dict[str, Any], reset: bool
) -> None:
    play = run_stream_reset if reset else run_stream
    await play(
        signing,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings(**body)),
            response_headers(200, TOKEN_HEADER),
        ],
    )

    assert billed(services) == (7, 0, True, False)
    assert log_line(services)["outcome"] == "aborted"


@pytest.mark.parametrize(
    ("answer", "headers", "prompt"),
    [
        # Titan's body count, which its client reads as usage.prompt_tokens, bills it.
        ({"embedding": [0.5], "inputTextTokenCount": 3}, TOKEN_HEADER, 3),
        ({"embedding": [0.5], "inputTextTokenCount": 3}, {}, 3),
        # Without it, Bedrock's header: before, the estimate.
        ({"embedding": [0.5]}, TOKEN_HEADER, 7),
    ],
    ids=["both", "body-alone", "header-alone"],
)
async def test_a_whole_titan_answer_is_billed_the_count_it_came_with(
    signing: Processor,
    services: Services,
    answer: dict[str, Any],
    headers: dict[str, str],
    prompt: int,
) -> None:
    await run_stream(
        signing,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings(**TITAN)),
            response_headers(200, headers),
            response_body(orjson.dumps(answer)),
        ],
    )

    assert billed(services) == (prompt, 0, True, False)


@pytest.mark.parametrize("count", ["-1", "nope", "18446744073709551616"])
async def test_a_header_that_is_no_count_leaves_the_estimate(
    signing: Processor, services: Services, count: str
) -> None:
    await run_stream(
        signing,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings(**TITAN)),
            response_headers(200, {"x-amzn-bedrock-input-token-count": count}),
        ],
    )

    prompt, completion, reported, estimated = billed(services)
    assert (completion, reported, estimated) == (0, False, True)
    assert prompt > 0


async def test_an_answer_that_is_no_embedding_is_still_charged_nothing(
    signing: Processor, services: Services
) -> None:
    """Its 502 replaced it: the docs' rule (an error is charged nothing) stands, Bedrock's
    count aside."""
    await run_stream(
        signing,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings(**TITAN)),
            response_headers(200, TOKEN_HEADER),
            response_body(b'{"not": "titan"}'),
        ],
    )

    line = log_line(services)
    assert (line["http_status_code"], line["total_tokens"]) == (502, 0)
