"""Google's error as the first event of a Gemini stream is charged nothing, as its status.

Google may answer ``streamGenerateContent?alt=sse`` with its ``200`` and then, before
any candidate, its error as the stream's first event (``RESOURCE_EXHAUSTED``: the
project's quota; ``UNAVAILABLE``: the model overloaded), as a proxy in front of it does
too. That is the streamed form of Google's ``429`` / ``503``: Google read no prompt and
billed nothing, and every other client API's stream failed so is charged nothing
(``base.StreamFailure.began``). A Gemini stream was charged its prompt estimate in every
ledger: a client retrying into Google's rate limit spent its own token quota on answers
it never got. An error after the answer began is still charged what was delivered.

Each test plays one request through the processor (real ext_proc messages, a real
Valkey for the quota and the rollup) and reads the four ledgers
(``test_accounting_review_streams.ledgers``).
"""

from __future__ import annotations

import pytest

from extproc.store.connection import StoreClient
from tests.unit.test_accounting_review_audio_cut import (
    GEMINI_BODY,
    GEMINI_KEY,
    GEMINI_STREAM,
    PROMPT,
    TRANSCRIPT,
    gemini_event,
    gemini_text,
)

# The fixtures, re-exported so pytest finds them here.
from tests.unit.test_accounting_review_audio_cut import gemini as gemini
from tests.unit.test_accounting_review_streams import SSE, Answer, ledgers
from tests.unit.test_accounting_review_streams import store as store


def google_error(code: int, status: str) -> bytes:
    return gemini_event({"error": {"code": code, "message": "try again later", "status": status}})


@pytest.mark.parametrize(("code", "status"), [(429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE")])
async def test_googles_error_before_any_candidate_is_charged_nothing(
    store: StoreClient, gemini: str, code: int, status: str
) -> None:
    recorded = await ledgers(
        store,
        GEMINI_STREAM,
        GEMINI_KEY,
        GEMINI_BODY,
        Answer([google_error(code, status)], SSE),
        config=gemini,
    )
    line = recorded.line
    assert (line["outcome"], line["error_code"]) == ("upstream_error", status.lower())
    assert (line["prompt_tokens"], line["completion_tokens"], line["cost_usd"]) == (0, 0, 0)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, False)
    assert recorded.quota == 0
    recorded.agree()


async def test_googles_error_after_the_answer_began_is_charged_what_was_delivered(
    store: StoreClient, gemini: str
) -> None:
    """Text first, Google's count of the prompt with it, then the error: the prompt as
    Google counted it and the text's estimate (``TRANSCRIPT``: 5 tokens)."""
    chunks = [gemini_text(TRANSCRIPT, PROMPT), google_error(503, "UNAVAILABLE")]
    recorded = await ledgers(
        store, GEMINI_STREAM, GEMINI_KEY, GEMINI_BODY, Answer(chunks, SSE), config=gemini
    )
    line = recorded.line
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1000, 5)
    assert line["usage_estimated"] is True
    recorded.agree()


async def test_googles_error_after_text_without_a_count_is_charged_the_estimate(
    store: StoreClient, gemini: str
) -> None:
    """A first event of text alone (no usageMetadata: nothing parsed in it) began the
    answer: the error after it is charged the prompt estimate and the text."""
    candidate = {"content": {"role": "model", "parts": [{"text": TRANSCRIPT}]}, "index": 0}
    chunks = [gemini_event({"candidates": [candidate]}), google_error(503, "UNAVAILABLE")]
    recorded = await ledgers(
        store, GEMINI_STREAM, GEMINI_KEY, GEMINI_BODY, Answer(chunks, SSE), config=gemini
    )
    line = recorded.line
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] == 5
    assert line["usage_estimated"] is True
    recorded.agree()
