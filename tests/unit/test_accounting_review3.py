"""A third review of what the gateway bills for an answer that did not complete normally.

Each test plays one request through the processor (real ext_proc messages, a real Valkey
for the quota and the rollup) and reads the four ledgers an operator reconciles: the log
line, ``tokens_consumed_total``, the hourly rollup and the quota settlement
(``test_accounting_review_streams.ledgers``). They must agree, and hold what the provider
billed or the gateway's estimate of it, marked as one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import yaml

from extproc.store.connection import StoreClient
from tests.unit.mock_vertex import gemini_on_mock_vertex
from tests.unit.test_accounting_review_streams import Answer, ledgers, store

__all__ = ["store"]  # test_accounting_review_streams's fixture
# The default config, read once (not in the event loop of a test).
DEFAULT_CONFIG = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
KEY = {"x-goog-api-key": "team1-key"}
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
# 40 characters in one content: the quota's prompt estimate counts them and its overhead.
BODY = {"contents": [{"role": "user", "parts": [{"text": "x" * 40}]}]}
JSON = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
# Gemini's answer, 28 characters of text: 7 tokens at one per four characters.
REPLY = "Hello there friend, welcome!"
ANSWER = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": REPLY}]},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "modelVersion": "gemini-2.5-flash",
}


@pytest.fixture
async def gemini(tmp_path: Path) -> AsyncIterator[str]:
    """The default config with Gemini's API and Gemini on the mock's Vertex AI, as text
    (``ledgers`` adds the key's budget to it)."""
    async with gemini_on_mock_vertex(DEFAULT_CONFIG, tmp_path / "key.json") as config:
        yield config


# --- Gemini's generateContent: a JSON answer without Gemini's count ------------------------


@pytest.mark.parametrize("ended", [True, False], ids=["whole", "cut"])
async def test_a_gemini_answer_without_its_count_is_in_every_ledger(
    store: StoreClient, gemini: str, ended: bool
) -> None:
    """A generateContent answer that carries no ``usageMetadata`` (whole: a proxy that
    drops it), or whose body was cut in flight (the client hung up, the upstream reset,
    Envoy's timeout): Google billed it. As for every other client API (``cut_answer``),
    it is charged an estimate, marked so, in every ledger alike. It was charged nothing
    in the log line, the metric and the rollup, while the key's quota kept the whole
    reservation (the prompt estimate plus default_max_tokens): the budget ran out on
    tokens no report showed."""
    body = orjson.dumps(ANSWER)
    chunks = [body] if ended else [body[: len(body) // 2]]
    recorded = await ledgers(
        store, GENERATE, KEY, BODY, Answer(chunks, JSON, ended=ended), config=gemini
    )
    line = recorded.line
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert line["prompt_tokens"] > 0
    # The whole answer's text (one token per four characters); the cut one's allowance.
    assert line["completion_tokens"] == (7 if ended else 1000)
    recorded.agree()
