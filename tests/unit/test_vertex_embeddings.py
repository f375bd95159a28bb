"""OpenAI embeddings for Google's text embedding models on Vertex AI: the translator alone
(the ``:predict`` body an OpenAI request becomes, the OpenAI answer Vertex's becomes), the
mock's ``:predict`` (what it refuses, what it answers), and one request through the
processor with real ext_proc messages: the call Vertex gets, what is refused before the
quota, what the client reads and what the log line charges."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.errors import BadRequestError
from extproc.mock_llm import vertex_embeddings as mock_predict
from extproc.mock_llm.embeddings_api import embedding_vector, text_key
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.tokens import count_tokens
from extproc.mock_llm.vertex_gemini import InvalidArgumentError
from extproc.processor import Processor
from extproc.translators.vertex_embeddings import (
    EmbeddingTranslator,
    check_request,
    translate_request,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_vertex_review import (
    JSON,
    OPENAI_KEY,
    Call,
    answered,
    google_error,
    sent,
    upstream_headers,
    vertex_gateway,
)

GEMINI_EMBEDDING = "gemini-embedding-001"
TEXT_EMBEDDING = "text-embedding-005"
VECTORS = [[0.5, -0.25, 1.0], [0.125, 0.75, -1.0]]
# USD per million input tokens, so the log line's cost says something.
PRICE = {"input_per_million": 0.15, "output_per_million": 0.0}


def prediction(vector: list[float], tokens: Any = None) -> dict[str, Any]:
    statistics: dict[str, Any] = {"truncated": False}
    if tokens is not None:
        statistics["token_count"] = tokens
    return {"embeddings": {"values": vector, "statistics": statistics}}


def vertex_answer(*predictions: dict[str, Any]) -> bytes:
    return orjson.dumps({"predictions": list(predictions), "metadata": {}})


def translated(reply: bytes, *, texts: int = 2, base64_vectors: bool = False) -> Any:
    translator = EmbeddingTranslator(
        model="vertex-embed", base64_vectors=base64_vectors, texts=texts
    )
    out = translator.feed(reply, True)
    assert out is not None
    return translator, orjson.loads(out)


# --- The request ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "model", "expected"),
    [
        (
            {"input": "one text", "user": "someone", "encoding_format": "base64"},
            GEMINI_EMBEDDING,
            {"instances": [{"content": "one text"}], "parameters": {"autoTruncate": False}},
        ),
        (
            {"input": ["one"]},
            f"google/{GEMINI_EMBEDDING}",
            {"instances": [{"content": "one"}], "parameters": {"autoTruncate": False}},
        ),
        (
            {"input": ["a", "b"], "dimensions": 256, "task_type": "RETRIEVAL_DOCUMENT"},
            TEXT_EMBEDDING,
            {
                "instances": [
                    {"content": "a", "task_type": "RETRIEVAL_DOCUMENT"},
                    {"content": "b", "task_type": "RETRIEVAL_DOCUMENT"},
                ],
                "parameters": {"autoTruncate": False, "outputDimensionality": 256},
            },
        ),
    ],
)
def test_translate_request_writes_one_instance_per_text(
    body: dict[str, Any], model: str, expected: dict[str, Any]
) -> None:
    assert translate_request(body, model) == expected


@pytest.mark.parametrize(
    ("body", "model", "param", "code"),
    [
        ({"input": [101, 2023]}, TEXT_EMBEDDING, "input", "unsupported_input"),
        ({"input": [[101], [7]]}, TEXT_EMBEDDING, "input", "unsupported_input"),
        ({"input": ["a", "b"]}, GEMINI_EMBEDDING, "input", "unsupported_input"),
        ({"input": ["t"] * 251}, TEXT_EMBEDDING, "input", "unsupported_input"),
        ({"input": "a", "task_type": "query"}, TEXT_EMBEDDING, "task_type", "invalid_value"),
        ({"input": "a", "task_type": ["CLUSTERING"]}, TEXT_EMBEDDING, "task_type", "invalid_value"),
    ],
)
def test_what_vertex_cannot_take_is_a_400_naming_the_field(
    body: dict[str, Any], model: str, param: str, code: str
) -> None:
    with pytest.raises(BadRequestError) as refused:
        check_request(body, model)
    assert (refused.value.param, refused.value.code) == (param, code)


def test_250_texts_are_one_call() -> None:
    assert len(translate_request({"input": ["t"] * 250}, TEXT_EMBEDDING)["instances"]) == 250


# --- The answer -------------------------------------------------------------------------------


def test_an_answer_becomes_openais_list_billed_by_the_sum_of_its_counts() -> None:
    translator, answer = translated(
        vertex_answer(prediction(VECTORS[0], 4), prediction(VECTORS[1], 3))
    )
    assert answer == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": VECTORS[0]},
            {"object": "embedding", "index": 1, "embedding": VECTORS[1]},
        ],
        "model": "vertex-embed",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (7, 0)


def test_a_count_written_as_a_float_or_in_camel_case_is_read() -> None:
    reply = orjson.dumps(
        {
            "predictions": [
                prediction(VECTORS[0], 4.0),
                {"embeddings": {"values": VECTORS[1], "statistics": {"tokenCount": 3}}},
            ]
        }
    )
    _, answer = translated(reply)
    assert answer["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


def test_base64_vectors_are_encoded_as_openai_encodes_them() -> None:
    _, answer = translated(
        vertex_answer(prediction(VECTORS[0], 4), prediction(VECTORS[1], 3)), base64_vectors=True
    )
    decoded = [struct.unpack("<3f", base64.b64decode(item["embedding"])) for item in answer["data"]]
    assert decoded == [tuple(vector) for vector in VECTORS]


@pytest.mark.parametrize("missing", [None, "many", -1, 2.5, True])
def test_an_answer_missing_a_count_reports_no_usage(missing: Any) -> None:
    # One text's count is not the request's: none is reported, and the estimate is charged.
    translator, answer = translated(
        vertex_answer(prediction(VECTORS[0], 4), prediction(VECTORS[1], missing))
    )
    assert "usage" not in answer and translator.usage is None
    assert len(answer["data"]) == 2


@pytest.mark.parametrize(
    "reply",
    [
        vertex_answer(prediction(VECTORS[0], 4)),  # one prediction for two texts
        orjson.dumps({"predictions": [{"embeddings": {"values": "x"}}] * 2}),
        orjson.dumps({"predictions": [{"values": VECTORS[0]}] * 2}),
        b"this is not json",
    ],
    ids=["too-few", "not-a-vector", "no-embeddings", "not-json"],
)
def test_an_answer_that_is_not_vertexs_is_a_502(reply: bytes) -> None:
    translator, answer = translated(reply)
    assert translator.status == 502 and translator.usage is None
    assert answer["error"]["type"] == "upstream_error"


# --- The mock's :predict ----------------------------------------------------------------------


def mock_body(doc: dict[str, Any]) -> Body:
    return Body(orjson.dumps(doc), True, doc)


def test_the_mock_answers_the_translated_body_in_vertexs_format() -> None:
    body = translate_request(
        {"input": ["hello world", "a second text"], "dimensions": 8}, TEXT_EMBEDDING
    )
    answer = mock_predict.predict(TEXT_EMBEDDING, mock_body(body))
    _, openai = translated(orjson.dumps(answer))
    expected = [embedding_vector(text_key(t), 8).tolist() for t in ("hello world", "a second text")]
    assert [item["embedding"] for item in openai["data"]] == expected
    tokens = count_tokens("hello world") + count_tokens("a second text")
    assert openai["usage"]["prompt_tokens"] == tokens


@pytest.mark.parametrize(
    ("model", "doc", "field"),
    [
        (GEMINI_EMBEDDING, {"instances": [{"content": "a"}, {"content": "b"}]}, "instances"),
        (TEXT_EMBEDDING, {"instances": [{"content": "a"}] * 251}, "instances"),
        (TEXT_EMBEDDING, {"instances": []}, "instances"),
        (TEXT_EMBEDDING, {"instances": [{"text": "a"}]}, "instances[0].content"),
        (
            TEXT_EMBEDDING,
            {"instances": [{"content": "a"}], "parameters": {"outputDimensionality": 769}},
            "parameters.outputDimensionality",
        ),
        (
            TEXT_EMBEDDING,
            {"instances": [{"content": "w " * 2049}], "parameters": {"autoTruncate": False}},
            "instances[0].content",
        ),
        (TEXT_EMBEDDING, {"instances": [{"content": "w " * 2000}] * 11}, "input token count"),
    ],
)
def test_the_mock_refuses_what_vertex_refuses(model: str, doc: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field.replace(".", r"\.").replace("[", r"\[")):
        mock_predict.predict(model, mock_body(doc))


def test_the_mock_cuts_a_long_text_when_asked_to() -> None:
    answer = mock_predict.predict(
        TEXT_EMBEDDING, mock_body({"instances": [{"content": "w " * 3000}]})
    )
    assert answer["predictions"][0]["embeddings"]["statistics"] == {
        "truncated": True,
        "token_count": 2048,
    }


# --- Through the processor --------------------------------------------------------------------

EMBED_BATCH: Call = (
    "/v1/embeddings",
    OPENAI_KEY,
    {"model": "vertex-embed", "input": ["first text", "second text"], "encoding_format": "float"},
)


def with_embedding_models(raw: dict[str, Any]) -> None:
    raw["models"] += [
        {
            "name": "vertex-embed",
            "provider": "vertex",
            "upstream_model": TEXT_EMBEDDING,
            "kind": "embeddings",
        },
        {"name": "gemini-embed", "provider": "vertex", "upstream_model": GEMINI_EMBEDDING},
    ]
    raw["pricing"]["models"]["vertex-embed"] = PRICE


@pytest.fixture
def access_log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
async def processor(tmp_path: Path, access_log: MemoryLog) -> AsyncIterator[Processor]:
    async with vertex_gateway(tmp_path, access_log, with_embedding_models) as running:
        yield running


async def test_a_batch_goes_to_predict_with_the_providers_access_token(
    processor: Processor,
) -> None:
    answers = await sent(processor, EMBED_BATCH)

    headers = upstream_headers(OPENAI_KEY, answers)
    assert headers[":path"] == (
        "/v1/projects/mock-project/locations/us-east5/publishers/google/models/"
        "text-embedding-005:predict"
    )
    assert headers["authorization"].startswith("Bearer ")
    assert headers["authorization"] != OPENAI_KEY["authorization"]
    assert orjson.loads(answers[1].request_body.response.body_mutation.body) == {
        "instances": [{"content": "first text"}, {"content": "second text"}],
        "parameters": {"autoTruncate": False},
    }


async def test_vertexs_answer_reaches_the_client_as_openais_and_is_billed_by_its_counts(
    processor: Processor, access_log: MemoryLog
) -> None:
    reply = vertex_answer(prediction(VECTORS[0], 4), prediction(VECTORS[1], 3))
    status, _, received = await answered(processor, EMBED_BATCH, 200, JSON, [reply])

    assert status == 200
    body = orjson.loads(received)
    assert [item["embedding"] for item in body["data"]] == VECTORS
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    [line] = access_log.lines()
    assert (line["provider"], line["model"]) == ("vertex", "vertex-embed")
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (7, 0, 7)
    assert line["usage_reported"] is True
    assert line["cost_usd"] == pytest.approx(7 * 0.15 / 1_000_000)


async def test_an_answer_without_vertexs_counts_is_charged_its_estimate(
    processor: Processor, access_log: MemoryLog
) -> None:
    reply = vertex_answer(prediction(VECTORS[0]), prediction(VECTORS[1]))
    status, _, received = await answered(processor, EMBED_BATCH, 200, JSON, [reply])

    assert status == 200 and "usage" not in orjson.loads(received)
    [line] = access_log.lines()
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # "first text" and "second text": 2 tokens each at four characters a token.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (4, 0)


async def test_a_batch_for_gemini_embedding_is_a_400_before_the_quota(
    processor: Processor, access_log: MemoryLog
) -> None:
    path, headers, body = EMBED_BATCH
    answers = await sent(processor, (path, headers, {**body, "model": "gemini-embed"}))

    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    error = orjson.loads(refusal.body)["error"]
    assert (error["param"], error["code"]) == ("input", "unsupported_input")
    [line] = access_log.lines()
    assert line["total_tokens"] == 0 and line["quota_decision"] is None


async def test_vertexs_refusal_reaches_an_openai_client_in_openais_shape(
    processor: Processor,
) -> None:
    refusal = google_error(400, "INVALID_ARGUMENT", "Unsupported outputDimensionality 4096.")
    status, _, received = await answered(processor, EMBED_BATCH, 400, JSON, [refusal])

    assert status == 400
    error = orjson.loads(received)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_argument"
    assert "outputDimensionality" in error["message"]
