"""The Cohere Embed translator alone: which Bedrock model ids are Cohere's, the body an
OpenAI request becomes, and the OpenAI answer a Cohere answer becomes."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from extproc.errors import BadRequestError
from extproc.translators.bedrock_cohere_embeddings import (
    EmbeddingTranslator,
    input_token_count,
    is_cohere_model,
    texts_sent,
    translate_request,
)

V3 = "cohere.embed-english-v3"
V4 = "cohere.embed-v4:0"
VECTORS = [[0.5, -0.25, 1.0], [0.125, 0.75, -1.0]]


@pytest.mark.parametrize(
    ("model_id", "cohere"),
    [
        ("cohere.embed-english-v3", True),
        ("cohere.embed-multilingual-v3", True),
        ("cohere.embed-v4:0", True),
        ("us.cohere.embed-v4:0", True),
        ("eu.cohere.embed-v4:0", True),
        ("apac.cohere.embed-v4:0", True),
        ("global.cohere.embed-v4:0", True),
        ("arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-english-v3", True),
        ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.cohere.embed-v4:0", True),
        ("amazon.titan-embed-text-v2:0", False),
        ("cohere.command-r-v1:0", False),
        # An application inference profile's ARN does not name its model.
        ("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2", False),
    ],
)
def test_is_cohere_model_reads_the_model_part_of_an_id(model_id: str, cohere: bool) -> None:
    assert is_cohere_model(model_id) is cohere


@pytest.mark.parametrize(
    ("body", "model_id", "expected"),
    [
        (
            {"input": "one text"},
            V3,
            {"texts": ["one text"], "input_type": "search_document", "embedding_types": ["float"]},
        ),
        (
            {"input": ["a", "b"], "input_type": "clustering", "encoding_format": "base64"},
            V3,
            {"texts": ["a", "b"], "input_type": "clustering", "embedding_types": ["float"]},
        ),
        (
            {"input": ["a"], "dimensions": 512, "user": "someone"},
            "us.cohere.embed-v4:0",
            {
                "texts": ["a"],
                "input_type": "search_document",
                "embedding_types": ["float"],
                "output_dimension": 512,
            },
        ),
        # v4 takes long texts (128K tokens): the 2,048-character limit is v3's.
        (
            {"input": "x" * 5000},
            V4,
            {"texts": ["x" * 5000], "input_type": "search_document", "embedding_types": ["float"]},
        ),
    ],
)
def test_translate_request_writes_cohere_body(
    body: dict[str, Any], model_id: str, expected: dict[str, Any]
) -> None:
    assert translate_request({"model": "m", **body}, model_id) == expected


@pytest.mark.parametrize(
    ("body", "model_id", "param"),
    [
        ({"input": ["t"] * 97}, V4, "input"),
        ({"input": [1, 2, 3]}, V3, "input"),
        ({"input": [[1, 2], [3]]}, V3, "input"),
        ({"input": "x" * 2049}, V3, "input"),
        ({"input": ["ok", "x" * 2049]}, "cohere.embed-multilingual-v3", "input[1]"),
        ({"input": "a", "input_type": "image"}, V3, "input_type"),
        ({"input": "a", "input_type": 3}, V3, "input_type"),
        ({"input": "a", "dimensions": 1024}, V3, "dimensions"),
    ],
)
def test_translate_request_refuses_what_cohere_cannot_take(
    body: dict[str, Any], model_id: str, param: str
) -> None:
    with pytest.raises(BadRequestError) as refused:
        translate_request(body, model_id)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("headers", "count"),
    [
        ({"x-amzn-bedrock-input-token-count": "12"}, 12),
        ({"x-amzn-bedrock-input-token-count": "0"}, 0),
        ({"x-amzn-bedrock-input-token-count": "-3"}, None),
        ({"x-amzn-bedrock-input-token-count": "12.5"}, None),
        ({"x-amzn-bedrock-input-token-count": "١٢"}, None),  # digits, but not ASCII ones
        ({}, None),
    ],
)
def test_input_token_count_is_a_whole_number_or_none(
    headers: dict[str, str], count: int | None
) -> None:
    assert input_token_count(headers) == count


def test_texts_sent_counts_the_clients_inputs() -> None:
    assert texts_sent({"input": "one"}) == 1
    assert texts_sent({"input": ["a", "b", "c"]}) == 3


def by_type(vectors: list[list[float]]) -> bytes:
    return orjson.dumps(
        {
            "id": "0b2c",
            "embeddings": {"float": vectors},
            "response_type": "embeddings_by_type",
            "texts": ["a", "b"],
        }
    )


def floats(vectors: list[list[float]]) -> bytes:
    return orjson.dumps(
        {
            "id": "0b2c",
            "embeddings": vectors,
            "response_type": "embeddings_floats",
            "texts": ["a", "b"],
        }
    )


@pytest.mark.parametrize("answer", [by_type(VECTORS), floats(VECTORS)], ids=["by_type", "floats"])
def test_an_answer_of_either_shape_becomes_openais_list(answer: bytes) -> None:
    translator = EmbeddingTranslator(
        model="my-alias", base64_vectors=False, texts=2, input_tokens=5
    )
    # Buffered: nothing goes out before the end.
    assert translator.feed(answer[:10], False) == b""
    out = orjson.loads(translator.feed(answer[10:], True) or b"")
    assert out == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": VECTORS[0]},
            {"object": "embedding", "index": 1, "embedding": VECTORS[1]},
        ],
        "model": "my-alias",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
    assert translator.usage is not None
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (5, 0)
    assert translator.status is None


def test_base64_is_little_endian_float32_per_vector() -> None:
    translator = EmbeddingTranslator(model="m", base64_vectors=True, texts=2, input_tokens=5)
    out = orjson.loads(translator.feed(by_type(VECTORS), True) or b"")
    decoded = [struct.unpack("<3f", base64.b64decode(d["embedding"])) for d in out["data"]]
    assert decoded == [tuple(v) for v in VECTORS]


def test_without_the_header_the_count_cohere_bills_in_its_answer_is_read() -> None:
    # Cohere's own API reports meta.billed_units; an answer passing it on is counted by it.
    answer = orjson.loads(by_type(VECTORS))
    answer["meta"] = {"api_version": {"version": "1"}, "billed_units": {"input_tokens": 7}}
    translator = EmbeddingTranslator(model="m", base64_vectors=False, texts=2, input_tokens=None)
    out = orjson.loads(translator.feed(orjson.dumps(answer), True) or b"")
    assert out["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    # The header, when Bedrock sends it, is the count.
    translator = EmbeddingTranslator(model="m", base64_vectors=False, texts=2, input_tokens=5)
    out = orjson.loads(translator.feed(orjson.dumps(answer), True) or b"")
    assert out["usage"]["prompt_tokens"] == 5


def test_without_a_token_count_the_answer_has_no_usage() -> None:
    translator = EmbeddingTranslator(model="m", base64_vectors=False, texts=2, input_tokens=None)
    out = orjson.loads(translator.feed(by_type(VECTORS), True) or b"")
    assert "usage" not in out and len(out["data"]) == 2
    assert translator.usage is None and translator.status is None


@pytest.mark.parametrize(
    "answer",
    [
        b"not json",
        b"[]",
        b'{"embeddings": {"int8": [[1, 2, 3]]}}',
        b'{"embeddings": [[0.5, "x"]]}',
        b'{"embeddings": [[true, 0.5]]}',
        b'{"embedding": [0.5, 0.25]}',
        by_type(VECTORS[:1]),
        by_type([*VECTORS, VECTORS[0]]),
    ],
    ids=[
        "not json",
        "not an object",
        "no float vectors",
        "a string in a vector",
        "a boolean in a vector",
        "titans shape",
        "fewer vectors than texts",
        "more vectors than texts",
    ],
)
def test_an_answer_that_is_not_cohere_is_a_502_and_no_usage(answer: bytes) -> None:
    translator = EmbeddingTranslator(model="m", base64_vectors=False, texts=2, input_tokens=5)
    out = orjson.loads(translator.feed(answer, True) or b"")
    assert translator.status == 502
    assert out["error"]["type"] == "upstream_error"
    assert translator.usage is None
