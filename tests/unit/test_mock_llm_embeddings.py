"""The mock's embeddings: OpenAI's ``/v1/embeddings`` read with the official openai client,
and Titan text embeddings on Bedrock's InvokeModel read with boto3.

Vectors are deterministic and of unit length, so a test can predict their size and compare
them; usage follows ``tokens.count_tokens`` (one per word or punctuation mark of each text,
one per id of a token array), which is what the gateway bills.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI

from extproc.mock_llm import count_tokens
from tests.unit.test_mock_llm_bedrock import (
    REGION,
    absolute,
    bedrock,
    client_error,
    sign,
    signed_post,
)

AUTH = {"Authorization": "Bearer sk-test"}
TEXT = "Say hello, mock!"
# Say hello , mock ! -> 5 tokens; an embedding input has no per-request overhead.
TEXT_TOKENS = 5
TITAN_V2 = "amazon.titan-embed-text-v2:0"
TITAN_V1 = "amazon.titan-embed-text-v1"


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def float32_le(encoded: str) -> list[float]:
    """A base64 embedding decoded as OpenAI documents it: little-endian float32."""
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


async def post_embeddings(http: httpx.AsyncClient, doc: Any, **headers: str) -> httpx.Response:
    return await http.post("/v1/embeddings", json=doc, headers={**AUTH, **headers})


# --- OpenAI: the official client --------------------------------------------------------------


async def test_client_default_asks_base64_and_decodes_unit_vectors(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    await http.delete("/_mock/requests")
    answer = await openai_client.embeddings.create(
        model="text-embedding-3-small", input=[TEXT, "second one"]
    )

    # The client asked for base64 (its default) and decoded it back to floats.
    (entry,) = (await http.get("/_mock/requests")).json()
    assert entry["json"]["encoding_format"] == "base64"
    assert answer.model == "text-embedding-3-small"
    assert [d.index for d in answer.data] == [0, 1]
    assert all(len(d.embedding) == 1536 for d in answer.data)
    assert all(norm(d.embedding) == pytest.approx(1.0, abs=1e-5) for d in answer.data)
    assert answer.data[0].embedding != answer.data[1].embedding
    assert answer.usage.prompt_tokens == TEXT_TOKENS + count_tokens("second one")
    assert answer.usage.total_tokens == answer.usage.prompt_tokens


async def test_float_and_base64_carry_the_same_vector(openai_client: AsyncOpenAI) -> None:
    as_floats = await openai_client.embeddings.create(
        model="text-embedding-3-small", input=TEXT, encoding_format="float"
    )
    as_base64 = await openai_client.embeddings.create(
        model="text-embedding-3-small", input=TEXT, encoding_format="base64"
    )
    again = await openai_client.embeddings.create(model="text-embedding-3-small", input=TEXT)

    # Asked for explicitly, base64 is left as the string OpenAI sent.
    encoded: Any = as_base64.data[0].embedding
    assert isinstance(encoded, str)
    assert float32_le(encoded) == as_floats.data[0].embedding
    assert again.data[0].embedding == as_floats.data[0].embedding
    assert as_floats.usage.prompt_tokens == as_base64.usage.prompt_tokens == TEXT_TOKENS


async def test_model_sets_the_default_size_and_dimensions_shortens_it(
    openai_client: AsyncOpenAI,
) -> None:
    large = await openai_client.embeddings.create(model="text-embedding-3-large", input=TEXT)
    ada = await openai_client.embeddings.create(model="text-embedding-ada-002", input=TEXT)
    short = await openai_client.embeddings.create(
        model="text-embedding-3-large", input=TEXT, dimensions=256
    )

    assert len(large.data[0].embedding) == 3072
    assert len(ada.data[0].embedding) == 1536
    vector = short.data[0].embedding
    assert len(vector) == 256
    assert norm(vector) == pytest.approx(1.0, abs=1e-5)
    # As text-embedding-3 shortens: the full vector's head, scaled back to unit length.
    head = large.data[0].embedding[:256]
    assert vector == pytest.approx([x / norm(head) for x in head], abs=1e-6)


async def test_token_arrays_count_one_token_per_id(openai_client: AsyncOpenAI) -> None:
    one = await openai_client.embeddings.create(model="text-embedding-3-small", input=[11, 22, 33])
    two = await openai_client.embeddings.create(
        model="text-embedding-3-small", input=[[11, 22], [33, 44, 55]]
    )

    assert len(one.data) == 1
    assert one.usage.prompt_tokens == 3
    assert len(two.data) == 2
    assert two.usage.prompt_tokens == 5
    assert two.data[0].embedding != two.data[1].embedding


async def test_unknown_model_is_served_like_the_chat_endpoint_serves_one(
    openai_client: AsyncOpenAI,
) -> None:
    answer = await openai_client.embeddings.create(model="acme-embed", input=TEXT, dimensions=64)
    plain = await openai_client.embeddings.create(model="acme-embed", input=TEXT)

    assert answer.model == "acme-embed"
    assert len(answer.data[0].embedding) == 64
    assert len(plain.data[0].embedding) == 1536


async def test_a_batch_of_2048_inputs_is_answered_in_full(openai_client: AsyncOpenAI) -> None:
    texts = [f"document number {i}" for i in range(2048)]
    answer = await openai_client.embeddings.create(model="text-embedding-3-small", input=texts)

    assert [d.index for d in answer.data] == list(range(2048))
    assert all(len(d.embedding) == 1536 for d in answer.data)
    # document number N -> 3 tokens each.
    assert answer.usage.prompt_tokens == 3 * 2048


async def test_gateway_route_prefix_reaches_embeddings(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/openai/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": TEXT, "encoding_format": "float"},
        headers=AUTH,
    )

    assert response.status_code == 200
    doc = response.json()
    assert doc["object"] == "list"
    assert doc["data"][0]["object"] == "embedding"
    # The gateway reads usage from the answer's tail: it comes last, as OpenAI sends it.
    assert list(doc) == ["object", "data", "model", "usage"]
    assert doc["usage"] == {"prompt_tokens": TEXT_TOKENS, "total_tokens": TEXT_TOKENS}


async def test_without_api_key_is_401_and_get_is_405(http: httpx.AsyncClient) -> None:
    anonymous = await http.post("/v1/embeddings", json={"model": "m", "input": TEXT})
    get = await http.get("/v1/embeddings", headers=AUTH)

    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    assert get.status_code == 405


@pytest.mark.parametrize(
    ("doc", "param"),
    [
        ({"input": TEXT}, "model"),
        ({"model": "text-embedding-3-small"}, "input"),
        ({"model": "text-embedding-3-small", "input": ""}, "input"),
        ({"model": "text-embedding-3-small", "input": []}, "input"),
        ({"model": "text-embedding-3-small", "input": ["a", ""]}, "input"),
        ({"model": "text-embedding-3-small", "input": ["a", 1]}, "input"),
        ({"model": "text-embedding-3-small", "input": [[1], []]}, "input"),
        ({"model": "text-embedding-3-small", "input": [1, -2]}, "input"),
        ({"model": "text-embedding-3-small", "input": [True]}, "input"),
        ({"model": "text-embedding-3-small", "input": {"text": "a"}}, "input"),
        ({"model": "text-embedding-3-small", "input": ["a"] * 2049}, "input"),
        (
            {"model": "text-embedding-3-small", "input": "a", "encoding_format": "hex"},
            "encoding_format",
        ),
        ({"model": "text-embedding-3-small", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "a", "dimensions": True}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "a", "dimensions": 256.0}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": [1.0, 2.0]}, "input"),
        ({"model": "text-embedding-3-small", "input": "a", "dimensions": 1537}, "dimensions"),
        ({"model": "text-embedding-ada-002", "input": "a", "dimensions": 256}, "dimensions"),
    ],
    ids=[
        "no-model",
        "no-input",
        "empty-string",
        "empty-array",
        "empty-string-in-array",
        "mixed-array",
        "empty-token-array",
        "negative-token",
        "bool-token",
        "object-input",
        "2049-inputs",
        "unknown-encoding",
        "zero-dimensions",
        "bool-dimensions",
        "float-dimensions",
        "float-tokens",
        "dimensions-above-the-model",
        "dimensions-on-ada",
    ],
)
async def test_invalid_body_is_a_400_in_openai_shape(
    http: httpx.AsyncClient, doc: dict[str, Any], param: str
) -> None:
    response = await post_embeddings(http, doc)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def test_a_body_that_is_not_json_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/embeddings", content=b"{nope", headers=AUTH)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- OpenAI: faults ----------------------------------------------------------------------------


async def test_fault_status_raises_the_clients_typed_errors(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        await openai_client.embeddings.create(
            model="text-embedding-3-small",
            input=TEXT,
            extra_headers={"x-mock-fault": "status=429"},
        )
    with pytest.raises(openai.InternalServerError):
        await openai_client.embeddings.create(
            model="text-embedding-3-small",
            input=TEXT,
            extra_headers={"x-mock-fault": "status=500"},
        )
    assert limited.value.response.headers["retry-after"] == "1"


async def test_fault_garbage_and_reset(http: httpx.AsyncClient) -> None:
    doc = {"model": "text-embedding-3-small", "input": TEXT}
    garbage = await post_embeddings(http, doc, **{"x-mock-fault": "garbage=1"})

    assert garbage.status_code == 200
    with pytest.raises(ValueError):
        garbage.json()
    with pytest.raises(httpx.TransportError):
        await post_embeddings(http, doc, **{"x-mock-fault": "reset_after=0"})


async def test_fault_no_usage_answers_vectors_without_usage(http: httpx.AsyncClient) -> None:
    doc = {"model": "text-embedding-3-small", "input": TEXT, "encoding_format": "float"}
    response = await post_embeddings(http, doc, **{"x-mock-fault": "no_usage=1"})

    assert response.status_code == 200
    answer = response.json()
    assert "usage" not in answer
    assert len(answer["data"][0]["embedding"]) == 1536


async def test_bad_fault_header_is_a_400_naming_it(http: httpx.AsyncClient) -> None:
    doc = {"model": "text-embedding-3-small", "input": TEXT}
    response = await post_embeddings(http, doc, **{"x-mock-fault": "explode=1"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-mock-fault"


# --- Bedrock: Titan text embeddings through InvokeModel ---------------------------------------


async def invoke(client: Any, doc: Any, model_id: str = TITAN_V2) -> dict[str, Any]:
    """``invoke_model`` in a worker thread; the answer's JSON and its HTTP headers."""

    def call() -> dict[str, Any]:
        response = client.invoke_model(
            modelId=model_id,
            body=orjson.dumps(doc),
            contentType="application/json",
            accept="application/json",
        )
        answer: dict[str, Any] = orjson.loads(response["body"].read())
        answer["headers"] = response["ResponseMetadata"]["HTTPHeaders"]
        return answer

    return await asyncio.to_thread(call)


def invoke_path(model_id: str) -> str:
    return f"/model/{model_id.replace(':', '%3A').replace('/', '%2F')}/invoke"


async def test_titan_v2_answers_with_boto3(mock_url: str) -> None:
    answer = await invoke(bedrock(mock_url), {"inputText": TEXT})

    vector = answer["embedding"]
    assert len(vector) == 1024
    assert norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert answer["inputTextTokenCount"] == TEXT_TOKENS
    assert answer["embeddingsByType"] == {"float": vector}
    # InvokeModel also reports the count in a header, where gateways read it.
    assert answer["headers"]["x-amzn-bedrock-input-token-count"] == str(TEXT_TOKENS)
    assert answer["headers"]["content-type"] == "application/json"


async def test_titan_v2_dimensions_normalize_and_binary(mock_url: str) -> None:
    client = bedrock(mock_url)
    doc = {"inputText": TEXT, "dimensions": 256, "embeddingTypes": ["binary", "float"]}
    short = await invoke(client, doc)
    raw = await invoke(client, {"inputText": TEXT, "dimensions": 256, "normalize": False})

    vector = short["embeddingsByType"]["float"]
    assert len(vector) == 256
    assert short["embeddingsByType"]["binary"] == [1 if x > 0 else 0 for x in vector]
    # Not normalized: the same direction, another length.
    assert norm(raw["embedding"]) != pytest.approx(1.0, abs=1e-3)
    scale = norm(raw["embedding"])
    assert [x / scale for x in raw["embedding"]] == pytest.approx(vector, abs=1e-6)


async def test_titan_v1_has_1536_dimensions_and_no_options(mock_url: str) -> None:
    client = bedrock(mock_url)
    answer = await invoke(client, {"inputText": TEXT}, TITAN_V1)
    v1_error = await client_error(
        invoke, client=client, doc={"inputText": TEXT, "dimensions": 256}, model_id=TITAN_V1
    )

    assert len(answer["embedding"]) == 1536
    assert answer["inputTextTokenCount"] == TEXT_TOKENS
    assert "embeddingsByType" not in answer
    assert v1_error.response["Error"]["Code"] == "ValidationException"
    assert "extraneous key [dimensions]" in v1_error.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({}, "required key [inputText] not found"),
        ({"inputText": ""}, "#/inputText: expected minLength: 1, actual: 0"),
        ({"inputText": 42}, "#/inputText: expected type: String, found: Integer"),
        ({"inputText": "a", "dimensions": 300}, "#/dimensions: 300 is not a valid enum value"),
        ({"inputText": "a", "dimensions": 256.0}, "#/dimensions: 256.0 is not a valid enum"),
        ({"inputText": "a", "normalize": "yes"}, "#/normalize: expected type: Boolean"),
        ({"inputText": "a", "embeddingTypes": ["int8"]}, "#/embeddingTypes/0: int8 is not"),
        ({"inputText": "a", "embeddingTypes": []}, "#/embeddingTypes: expected minimum item"),
        ({"inputText": "a", "texts": ["a"]}, "extraneous key [texts] is not permitted"),
    ],
    ids=[
        "no-input-text",
        "empty-input-text",
        "number-input-text",
        "dimensions-off-the-list",
        "float-dimensions",
        "string-normalize",
        "unknown-type",
        "no-types",
        "cohere-field",
    ],
)
async def test_titan_v2_refuses_a_malformed_body(
    http: httpx.AsyncClient, doc: dict[str, Any], expected: str
) -> None:
    response = await signed_post(http, invoke_path(TITAN_V2), doc)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    message = response.json()["message"]
    assert message.startswith("Malformed input request: ")
    assert expected in message


async def test_titan_by_arn_and_other_models_on_invoke(mock_url: str) -> None:
    client = bedrock(mock_url)
    arn = f"arn:aws:bedrock:{REGION}::foundation-model/{TITAN_V2}"
    answer = await invoke(client, {"inputText": TEXT}, arn)
    error = await client_error(
        invoke,
        client=client,
        doc={"inputText": TEXT},
        model_id="cohere.command-r-v1:0",
    )

    assert len(answer["embedding"]) == 1024
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error.response["Error"]["Code"] == "ValidationException"
    assert "model identifier is invalid" in error.response["Error"]["Message"]


async def test_invoke_checks_the_signature(mock_url: str) -> None:
    client = bedrock(mock_url, aws_secret_access_key="wrong-secret")
    error = await client_error(invoke, client=client, doc={"inputText": TEXT})

    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error.response["Error"]["Code"] == "InvalidSignatureException"


async def test_invoke_faults(mock_url: str) -> None:
    throttled = bedrock(mock_url, headers={"x-mock-fault": "status=429"})
    silent = bedrock(mock_url, headers={"x-mock-fault": "no_usage=1"})
    error = await client_error(invoke, client=throttled, doc={"inputText": TEXT})
    answer = await invoke(silent, {"inputText": TEXT})

    assert error.response["Error"]["Code"] == "ThrottlingException"
    assert "inputTextTokenCount" not in answer
    assert "x-amzn-bedrock-input-token-count" not in answer["headers"]
    assert len(answer["embedding"]) == 1024


async def test_invoke_fault_garbage(http: httpx.AsyncClient) -> None:
    body = orjson.dumps({"inputText": TEXT})
    url = absolute(http, invoke_path(TITAN_V2))
    headers = sign(url, body, headers={"x-mock-fault": "garbage=1"})
    response = await http.post(invoke_path(TITAN_V2), content=body, headers=headers)

    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
