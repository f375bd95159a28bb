"""OpenAI embeddings on Vertex AI, reviewed: Vertex's ``title`` (a document's title, with
``RETRIEVAL_DOCUMENT`` alone), what is refused before the quota counts a request (OpenAI's
own checks, a model that has no text embeddings), the guards masking the text (and the
title) before it is translated, Vertex's errors in OpenAI's shape, and failover to the
same model in another region, however it is named."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc import headers
from extproc.mock_llm import vertex_embeddings as mock_predict
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.vertex_gemini import InvalidArgumentError
from extproc.processor import Processor
from extproc.translators.vertex_embeddings import translate_request
from tests.unit.conftest import MemoryLog
from tests.unit.test_guard_flow import WORKSHOP
from tests.unit.test_vertex_embeddings import TEXT_EMBEDDING, with_embedding_models
from tests.unit.test_vertex_review import (
    JSON,
    OPENAI_KEY,
    answered,
    google_error,
    sent,
    upstream_body,
    upstream_headers,
    vertex_gateway,
)

EMBEDDINGS = "/v1/embeddings"
DOCUMENTS = {"input": ["first chunk", "second chunk"], "task_type": "RETRIEVAL_DOCUMENT"}


def with_more_vertex_models(raw: dict[str, Any]) -> None:
    """The embedding models of ``test_vertex_embeddings``, one named with Google's
    publisher, the multimodal one, and a route whose guards mask e-mail addresses."""
    with_embedding_models(raw)
    raw["models"] += [
        {
            "name": "prefixed-embed",
            "provider": "vertex",
            "upstream_model": "google/" + TEXT_EMBEDDING,
        },
        {"name": "multimodal", "provider": "vertex", "upstream_model": "multimodalembedding@001"},
    ]
    raw["guardrails"] = WORKSHOP
    for route in raw["routes"]:
        if route["name"] == "openai-embeddings":
            route["guardrails"] = ["workshop"]


@pytest.fixture
def access_log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
async def processor(tmp_path: Path, access_log: MemoryLog) -> AsyncIterator[Processor]:
    async with vertex_gateway(tmp_path, access_log, with_more_vertex_models) as running:
        yield running


async def refused_before_the_quota(
    processor: Processor, access_log: MemoryLog, body: dict[str, Any]
) -> dict[str, Any]:
    """The 400 the client gets for ``body``, checked to have counted nothing."""
    answers = await sent(processor, (EMBEDDINGS, OPENAI_KEY, body))
    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    [line] = access_log.lines()
    assert line["total_tokens"] == 0 and line["quota_decision"] is None
    error: dict[str, Any] = orjson.loads(refusal.body)["error"]
    assert error["type"] == "invalid_request_error"
    return error


# --- title ------------------------------------------------------------------------------------


def test_a_title_goes_with_every_document_to_retrieve() -> None:
    body = translate_request({**DOCUMENTS, "title": "Release notes"}, TEXT_EMBEDDING)
    assert body["instances"] == [
        {"content": "first chunk", "task_type": "RETRIEVAL_DOCUMENT", "title": "Release notes"},
        {"content": "second chunk", "task_type": "RETRIEVAL_DOCUMENT", "title": "Release notes"},
    ]


async def test_the_title_reaches_vertexs_predict_and_the_mock_takes_it(
    processor: Processor,
) -> None:
    body = {"model": "vertex-embed", **DOCUMENTS, "title": "Release notes"}
    answers = await sent(processor, (EMBEDDINGS, OPENAI_KEY, body))

    sent_body = upstream_body(answers)
    assert [instance["title"] for instance in sent_body["instances"]] == ["Release notes"] * 2
    answer = mock_predict.predict(TEXT_EMBEDDING, Body(orjson.dumps(sent_body), True, sent_body))
    assert len(answer["predictions"]) == 2


@pytest.mark.parametrize(
    "fields",
    [
        {"title": "Release notes"},
        {"title": "Release notes", "task_type": "RETRIEVAL_QUERY"},
        {"title": ["Release notes"], "task_type": "RETRIEVAL_DOCUMENT"},
    ],
    ids=["no-task-type", "a-query", "not-a-string"],
)
async def test_a_title_vertex_would_not_apply_is_a_400_before_the_quota(
    processor: Processor, access_log: MemoryLog, fields: dict[str, Any]
) -> None:
    body = {"model": "vertex-embed", "input": "first chunk", **fields}
    error = await refused_before_the_quota(processor, access_log, body)
    assert (error["param"], error["code"]) == ("title", "invalid_value")


def test_the_mock_refuses_a_title_that_is_not_a_string() -> None:
    doc = {"instances": [{"content": "a", "task_type": "RETRIEVAL_DOCUMENT", "title": 7}]}
    with pytest.raises(InvalidArgumentError, match=r"instances\[0\]\.title"):
        mock_predict.predict(TEXT_EMBEDDING, Body(orjson.dumps(doc), True, doc))


# --- Refused before the quota -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "dimensions": "256"}, "dimensions"),
        ({"input": "a", "dimensions": 1.5}, "dimensions"),
        ({"input": "a", "dimensions": True}, "dimensions"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ],
)
async def test_what_openai_refuses_is_refused_for_a_vertex_model_before_the_quota(
    processor: Processor, access_log: MemoryLog, fields: dict[str, Any], param: str
) -> None:
    error = await refused_before_the_quota(
        processor, access_log, {"model": "vertex-embed", **fields}
    )
    assert error["param"] == param


@pytest.mark.parametrize("model", ["sonnet-vertex", "gemini-flash"])
async def test_a_vertex_chat_model_on_embeddings_is_sent_to_chat_completions(
    processor: Processor, access_log: MemoryLog, model: str
) -> None:
    error = await refused_before_the_quota(processor, access_log, {"model": model, "input": "a"})
    assert (error["param"], error["code"]) == ("model", "unsupported_model_for_route")
    assert "/v1/chat/completions" in error["message"]


async def test_the_multimodal_embedding_model_is_refused_without_pointing_at_chat(
    processor: Processor, access_log: MemoryLog
) -> None:
    # It embeds, in another body: a chat endpoint would be no answer for it.
    body = {"model": "multimodal", "input": "a"}
    error = await refused_before_the_quota(processor, access_log, body)
    assert error["code"] == "unsupported_model_for_route"
    assert "multimodal" in error["message"] and "chat" not in error["message"]


# --- What reaches Vertex ----------------------------------------------------------------------


async def test_a_model_named_with_googles_publisher_is_called_without_it(
    processor: Processor,
) -> None:
    answers = await sent(
        processor, (EMBEDDINGS, OPENAI_KEY, {"model": "prefixed-embed", "input": "a"})
    )
    assert upstream_headers(OPENAI_KEY, answers)[":path"] == (
        "/v1/projects/mock-project/locations/us-east5/publishers/google/models/"
        f"{TEXT_EMBEDDING}:predict"
    )


async def test_the_guards_mask_the_text_before_it_becomes_vertexs_instances(
    processor: Processor,
) -> None:
    body = {"model": "vertex-embed", "input": ["mail jane@example.com", "plain"]}
    answers = await sent(processor, (EMBEDDINGS, OPENAI_KEY, body))
    assert upstream_body(answers)["instances"] == [
        {"content": "mail <EMAIL>"},
        {"content": "plain"},
    ]


@pytest.mark.parametrize(
    ("status", "name", "error_type"),
    [
        (429, "RESOURCE_EXHAUSTED", "rate_limit_error"),
        (500, "INTERNAL", "server_error"),
        (503, "UNAVAILABLE", "server_error"),
    ],
)
async def test_vertexs_errors_reach_an_openai_client_in_openais_shape(
    processor: Processor, status: int, name: str, error_type: str
) -> None:
    call = (EMBEDDINGS, OPENAI_KEY, {"model": "vertex-embed", "input": "a"})
    refusal = google_error(status, name, "Vertex says no.")
    client_status, _, received = await answered(processor, call, status, JSON, [refusal])

    assert client_status == status
    error = orjson.loads(received)["error"]
    assert (error["type"], error["code"], error["message"]) == (
        error_type,
        name.lower(),
        "Vertex says no.",
    )


async def test_the_guards_mask_a_title_before_it_reaches_vertex(
    processor: Processor,
) -> None:
    body = {"model": "vertex-embed", **DOCUMENTS, "title": "Notes for jane@example.com"}
    answers = await sent(processor, (EMBEDDINGS, OPENAI_KEY, body))
    titles = {instance["title"] for instance in upstream_body(answers)["instances"]}
    assert titles == {"Notes for <EMAIL>"}


# --- Failover ---------------------------------------------------------------------------------


async def test_embeddings_fail_over_to_the_same_model_named_with_or_without_its_publisher(
    tmp_path: Path,
) -> None:
    def two_regions(raw: dict[str, Any]) -> None:
        vertex = next(p for p in raw["providers"] if p["name"] == "vertex")
        raw["providers"].append(
            {
                **vertex,
                "name": "vertex-eu",
                "gcp": {**vertex["gcp"], "region": "europe-west4"},
            }
        )
        raw["models"] += [
            {"name": "embed-us", "provider": "vertex", "upstream_model": TEXT_EMBEDDING,
             "fallbacks": ["embed-eu"]},
            {"name": "embed-eu", "provider": "vertex-eu",
             "upstream_model": "google/" + TEXT_EMBEDDING},
        ]  # fmt: skip

    async with vertex_gateway(tmp_path, MemoryLog(), two_regions) as gateway:
        body = {"model": "embed-us", "input": "a"}
        answers = await sent(gateway, (EMBEDDINGS, OPENAI_KEY, body))
    chain = upstream_body(answers)[headers.FAILOVER_CHAIN_KEY]
    assert chain == [
        ["vertex", "embed-us", TEXT_EMBEDDING],
        ["vertex-eu", "embed-eu", "google/" + TEXT_EMBEDDING],
    ]
