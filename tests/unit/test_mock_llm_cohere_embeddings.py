"""The mock's Cohere Embed models on Bedrock's InvokeModel, driven by boto3 (SigV4
checked): Bedrock's answer shapes, the token-count header, deterministic vectors, and the
bodies Bedrock refuses."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from extproc.mock_llm import count_tokens
from tests.unit.test_mock_llm_bedrock import REGION, bedrock, client_error, signed_post
from tests.unit.test_mock_llm_embeddings import TEXT, invoke, invoke_path, norm

V3 = "cohere.embed-english-v3"
V4 = "cohere.embed-v4:0"
TEXTS = [TEXT, "A second, longer text to embed."]
TOKENS = sum(count_tokens(text) for text in TEXTS)


def cohere(**fields: Any) -> dict[str, Any]:
    return {"texts": TEXTS, "input_type": "search_document", **fields}


async def test_v3_answers_embeddings_by_type_with_the_token_count_header(mock_url: str) -> None:
    client = bedrock(mock_url)
    answer = await invoke(client, cohere(embedding_types=["float"]), V3)
    single = await invoke(client, {"texts": [TEXT], "input_type": "search_query"}, V3)

    assert answer["response_type"] == "embeddings_by_type"
    assert isinstance(answer["id"], str) and answer["id"]
    assert answer["texts"] == TEXTS
    vectors = answer["embeddings"]["float"]
    assert [len(v) for v in vectors] == [1024, 1024]
    assert all(norm(v) == pytest.approx(1.0, abs=1e-5) for v in vectors)
    assert vectors[0] != vectors[1]
    # Bedrock reports InvokeModel's input tokens in a header, not in Cohere's body.
    assert answer["headers"]["x-amzn-bedrock-input-token-count"] == str(TOKENS)
    # Without embedding_types: the float vectors alone, the same numbers for the same text.
    assert single["response_type"] == "embeddings_floats"
    assert single["embeddings"] == [vectors[0]]


async def test_multilingual_v3_and_v4_sizes(mock_url: str) -> None:
    client = bedrock(mock_url)
    multilingual = await invoke(client, cohere(), "cohere.embed-multilingual-v3")
    v4 = await invoke(client, cohere(embedding_types=["float"]), V4)
    short = await invoke(client, cohere(embedding_types=["float"], output_dimension=256), V4)

    assert [len(v) for v in multilingual["embeddings"]] == [1024, 1024]
    assert [len(v) for v in v4["embeddings"]["float"]] == [1536, 1536]
    assert [len(v) for v in short["embeddings"]["float"]] == [256, 256]


@pytest.mark.parametrize(
    "model_id",
    [
        "us.cohere.embed-v4:0",
        f"arn:aws:bedrock:{REGION}::foundation-model/{V3}",
        f"arn:aws:bedrock:{REGION}:123456789012:inference-profile/us.cohere.embed-v4:0",
    ],
)
async def test_a_profile_or_an_arn_reaches_cohere(mock_url: str, model_id: str) -> None:
    answer = await invoke(bedrock(mock_url), cohere(), model_id)
    assert len(answer["embeddings"]) == 2


async def test_other_embedding_types_are_answered_beside_float(mock_url: str) -> None:
    types = ["float", "int8", "uint8", "binary", "ubinary"]
    answer = await invoke(bedrock(mock_url), cohere(embedding_types=types), V3)

    by_type = answer["embeddings"]
    assert sorted(by_type) == sorted(types)
    assert [len(v) for v in by_type["int8"]] == [1024, 1024]
    assert all(-128 <= x <= 127 for v in by_type["int8"] for x in v)
    assert all(0 <= x <= 255 for v in by_type["uint8"] for x in v)
    # One bit per dimension, eight to a byte.
    assert [len(v) for v in by_type["ubinary"]] == [128, 128]
    assert all(0 <= x <= 255 for v in by_type["ubinary"] for x in v)
    assert [[x + 128 for x in v] for v in by_type["binary"]] == by_type["ubinary"]


async def test_no_usage_fault_drops_the_token_count_header(mock_url: str) -> None:
    silent = bedrock(mock_url, headers={"x-mock-fault": "no_usage=1"})
    answer = await invoke(silent, cohere(), V3)
    assert "x-amzn-bedrock-input-token-count" not in answer["headers"]
    assert len(answer["embeddings"]) == 2


@pytest.mark.parametrize(
    ("model_id", "doc", "expected"),
    [
        (V3, {"texts": ["a"]}, "#: required key [input_type] not found"),
        (V4, {"texts": ["a"]}, "#: required key [input_type] not found"),
        (V3, {"input_type": "search_query"}, "#: required key [texts] not found"),
        (V3, cohere(input_type="query"), "#/input_type: query is not a valid enum value"),
        (V3, cohere(texts=["t"] * 97), "#/texts: expected maximum item count: 96, found: 97"),
        (V3, cohere(texts=["a", "x" * 2049]), "#/texts/1: expected maxLength: 2048, actual: 2049"),
        (V3, cohere(texts=["a", 3]), "#/texts/1: expected type: String, found: Integer"),
        (V3, cohere(texts="a"), "#/texts: expected type: JSONArray, found: String"),
        (V3, cohere(truncate="LEFT"), "#/truncate: LEFT is not a valid enum value"),
        (V4, cohere(truncate="END"), "#/truncate: END is not a valid enum value"),
        (V3, cohere(embedding_types=["bits"]), "#/embedding_types/0: bits is not a valid enum"),
        (V3, cohere(output_dimension=256), "#: extraneous key [output_dimension] is not permitted"),
        (V4, cohere(output_dimension=300), "#/output_dimension: 300 is not a valid enum value"),
        (V3, {"inputText": "a", "input_type": "clustering"}, "extraneous key [inputText]"),
    ],
    ids=[
        "v3-no-input-type",
        "v4-no-input-type",
        "no-texts",
        "unknown-input-type",
        "97-texts",
        "v3-text-too-long",
        "number-text",
        "texts-not-array",
        "v3-truncate-of-v4",
        "v4-truncate-of-v3",
        "unknown-embedding-type",
        "v3-output-dimension",
        "v4-size-off-the-list",
        "titan-field",
    ],
)
async def test_a_body_bedrock_refuses_is_a_400_in_its_words(
    http: httpx.AsyncClient, model_id: str, doc: dict[str, Any], expected: str
) -> None:
    response = await signed_post(http, invoke_path(model_id), doc)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    message = response.json()["message"]
    assert message.startswith("Malformed input request: ")
    assert expected in message


async def test_v4_takes_long_texts(mock_url: str) -> None:
    answer = await invoke(bedrock(mock_url), cohere(texts=["x " * 3000]), V4)
    assert len(answer["embeddings"]) == 1


async def test_a_titan_body_on_cohere_is_refused_with_boto3(mock_url: str) -> None:
    error = await client_error(
        invoke, client=bedrock(mock_url), doc={"inputText": TEXT}, model_id=V3
    )
    assert error.response["Error"]["Code"] == "ValidationException"
