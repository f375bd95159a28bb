"""Text Google's models read that the prompt estimate skipped, so the quota reserved next to
nothing for it and a hard cap let it through: the structured output's schema of a Gemini
request (Google counts it toward the prompt), and Vertex's ``title`` of an embeddings
request, which goes with every text embedded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.embeddings import estimate_input_tokens
from extproc.gemini_api import estimate_prompt_tokens
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.conftest import MemoryLog
from tests.unit.test_gemini_edges import COUNT, TOKENS, body, refused, send, vertex
from tests.unit.test_vertex_embeddings import (
    VECTORS,
    access_log,
    prediction,
    processor,
    vertex_answer,
)
from tests.unit.test_vertex_review import JSON, OPENAI_KEY, answered

# The fixtures of the Gemini and Vertex embeddings tests.
__all__ = ["access_log", "processor", "vertex"]

DESCRIPTION = "word " * 8_000  # 40,000 characters: about 10,000 tokens
SCHEMA = {"type": "OBJECT", "properties": {"summary": {"type": "STRING"}}}
LONG_SCHEMA = {"type": "OBJECT", "description": DESCRIPTION, "properties": SCHEMA["properties"]}
CAP = {"rules": [{"name": "cap", "subject": "api_key", "tokens_per_day": 1_000, "hard_cap": True}]}


# --- Gemini: generationConfig.responseSchema / responseJsonSchema -------------------------


@pytest.mark.parametrize(
    "field", ["responseSchema", "response_schema", "responseJsonSchema", "response_json_schema"]
)
def test_the_structured_outputs_schema_counts_in_the_prompt_estimate(field: str) -> None:
    bare = estimate_prompt_tokens(body({"text": "Summarise."}, responseMimeType="application/json"))
    schema = {"responseMimeType": "application/json", field: LONG_SCHEMA}
    assert estimate_prompt_tokens(body({"text": "Summarise."}, **schema)) >= bare + 40_000 // 4


def test_a_count_tokens_body_counts_the_schema_of_the_request_it_wraps() -> None:
    wrapped = {"generateContentRequest": body({"text": "Hi"}, responseSchema=LONG_SCHEMA)}
    assert estimate_prompt_tokens(wrapped) >= 40_000 // 4


async def test_a_hard_cap_counts_the_response_schema(
    vertex: tuple[str, Path], quota_store: QuotaStore
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    large = body({"text": "Summarise."}, responseMimeType="application/json",
                 responseSchema=LONG_SCHEMA)  # fmt: skip

    [answers] = await send(vertex, services, large, quotas=CAP)

    found = refused(answers)
    assert found is not None, "a schema of about 10,000 tokens went past a 1,000-token cap"
    # Larger than the whole cap: refused for good, FAILED_PRECONDITION (400) to a Gemini
    # client, not a 429 it would retry.
    assert found[0] == 400


@pytest.mark.parametrize("path", [None, COUNT])
async def test_a_schema_given_in_both_spellings_is_a_400_that_reserves_nothing(
    vertex: tuple[str, Path], quota_store: QuotaStore, path: str | None
) -> None:
    # The estimate reads the camelCase one: a small schema there and a large one in
    # snake_case, were Google to read that one, would pass the cap.
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    both = body({"text": "Hi"}, responseSchema=SCHEMA, response_schema=LONG_SCHEMA)
    where = {} if path is None else {"path": path}

    first, second = await send(vertex, services, both, body({"text": "Hi"}), quotas=TOKENS, **where)

    found = refused(first)
    assert found is not None
    status, error = found
    assert (status, error["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert "generationConfig.responseSchema" in error["error"]["message"]
    assert refused(second) is None


# --- Vertex text embeddings: the title goes with every text -------------------------------

TITLE = "Release notes of the gateway, version 2"  # 39 characters: 9 tokens
DOCUMENTS: dict[str, Any] = {
    "model": "vertex-embed",
    "input": ["first text", "second text"],  # 2 tokens each
    "task_type": "RETRIEVAL_DOCUMENT",
    "title": TITLE,
}


def test_the_title_counts_once_per_text_in_the_embeddings_estimate() -> None:
    untitled = {key: value for key, value in DOCUMENTS.items() if key != "title"}
    assert estimate_input_tokens(untitled) == 4
    assert estimate_input_tokens(DOCUMENTS) == 4 + 2 * 9
    assert estimate_input_tokens({**DOCUMENTS, "input": "first text"}) == 2 + 9


async def test_an_answer_without_counts_is_charged_the_titles_too(
    processor: Processor, access_log: MemoryLog
) -> None:
    # Vertex sent each text with its title: the model read both. Charged the estimate
    # of the texts alone, the request billed 4 tokens for 22 read.
    reply = vertex_answer(prediction(VECTORS[0]), prediction(VECTORS[1]))
    call = ("/v1/embeddings", OPENAI_KEY, DOCUMENTS)

    status, _, received = await answered(processor, call, 200, JSON, [reply])

    assert status == 200 and "usage" not in orjson.loads(received)
    [line] = access_log.lines()
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (4 + 2 * 9, 0)
