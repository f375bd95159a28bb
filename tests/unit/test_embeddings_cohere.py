"""OpenAI embeddings for Cohere Embed on Bedrock, through the processor: the signed
InvokeModel call with Cohere's body, what is refused before the quota, the answer the
client gets and what the log line charges."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_embeddings import AUTH, EMBEDDINGS, error_of, set_headers

MODEL = "cohere-embed"  # the default config's alias of cohere.embed-english-v3 on mock-bedrock
# $0.10 per million input tokens in the default config (Bedrock's list price).
PRICE_PER_TOKEN = 0.10 / 1_000_000
TOKEN_HEADER = {"x-amzn-bedrock-input-token-count": "7"}


def embeddings(**fields: Any) -> bytes:
    return orjson.dumps({"model": MODEL, "input": ["first text", "second text"], **fields})


def cohere_answer(vectors: list[list[float]], *, by_type: bool = True) -> bytes:
    if by_type:
        return orjson.dumps(
            {
                "id": "5d7b0c1e",
                "embeddings": {"float": vectors},
                "response_type": "embeddings_by_type",
                "texts": ["first text", "second text"],
            }
        )
    return orjson.dumps(
        {
            "id": "5d7b0c1e",
            "embeddings": vectors,
            "response_type": "embeddings_floats",
            "texts": ["first text", "second text"],
        }
    )


TWO_VECTORS = [[0.5, -0.25, 1.0], [0.125, 0.75, -1.0]]


@pytest.fixture
async def signing(config: GatewayConfig, services: Services) -> Processor:
    """The default config's processor, its Bedrock credentials loaded (as serving does)."""
    runtime = Runtime(config, services)
    for signer in runtime.signers.values():
        await signer.start()
    return Processor(lambda: runtime, default_stages())


async def call(
    processor: Processor, body: bytes, reply: bytes, answer_headers: dict[str, str] | None = None
) -> list[ext.ProcessingResponse]:
    return await run_stream(
        processor,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(body),
            response_headers(200, answer_headers),
            response_body(reply),
        ],
    )


def log_line(services: Services) -> dict[str, Any]:
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line


def client_body(answers: list[ext.ProcessingResponse]) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    return found


async def test_a_batch_for_cohere_gets_one_signed_invoke_model_call_with_cohere_body(
    signing: Processor,
) -> None:
    answers = await run_stream(
        signing, [request_headers(EMBEDDINGS, headers=AUTH), request_body(embeddings())]
    )
    mutated = set_headers(answers[1], "request_body")
    assert mutated[":path"] == "/model/cohere.embed-english-v3/invoke"
    assert mutated["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    sent = orjson.loads(answers[1].request_body.response.body_mutation.body)
    assert sent == {
        "texts": ["first text", "second text"],
        "input_type": "search_document",
        "embedding_types": ["float"],
    }


async def test_the_clients_input_type_is_sent_as_given(signing: Processor) -> None:
    answers = await run_stream(
        signing,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings(input="what is a gateway?", input_type="search_query")),
        ],
    )
    sent = orjson.loads(answers[1].request_body.response.body_mutation.body)
    assert sent["texts"] == ["what is a gateway?"]
    assert sent["input_type"] == "search_query"


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"input": ["text"] * 97}, "input", "unsupported_input"),
        ({"input": [101, 2023, 2003]}, "input", "unsupported_input"),
        ({"input": [[101, 2023], [7]]}, "input", "unsupported_input"),
        ({"input": ["short", "x" * 2049]}, "input[1]", "unsupported_input"),
        ({"input_type": "query"}, "input_type", "invalid_value"),
        ({"input_type": ["search_query"]}, "input_type", "invalid_value"),
        ({"dimensions": 256}, "dimensions", "unsupported_parameter"),
    ],
)
async def test_what_cohere_cannot_take_is_a_400_before_the_quota(
    processor: Processor, services: Services, fields: dict[str, Any], param: str, code: str
) -> None:
    answers = await run_stream(
        processor, [request_headers(EMBEDDINGS, headers=AUTH), request_body(embeddings(**fields))]
    )
    # The refusal is the answer to the request body, before any translation or signing.
    status, error = error_of(answers[1])
    assert status == 400 and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    line = log_line(services)
    assert line["http_status_code"] == 400 and line["total_tokens"] == 0
    assert line["quota_decision"] is None


async def test_96_texts_are_one_call(signing: Processor) -> None:
    answers = await run_stream(
        signing,
        [request_headers(EMBEDDINGS, headers=AUTH), request_body(embeddings(input=["t"] * 96))],
    )
    sent = orjson.loads(answers[1].request_body.response.body_mutation.body)
    assert len(sent["texts"]) == 96


@pytest.mark.parametrize("by_type", [True, False], ids=["embeddings_by_type", "embeddings_floats"])
async def test_a_cohere_answer_becomes_openais_list_billed_by_bedrocks_count(
    signing: Processor, services: Services, by_type: bool
) -> None:
    answers = await call(
        signing,
        embeddings(encoding_format="float"),
        cohere_answer(TWO_VECTORS, by_type=by_type),
        TOKEN_HEADER,
    )
    body = client_body(answers)
    assert body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": TWO_VECTORS[0]},
            {"object": "embedding", "index": 1, "embedding": TWO_VECTORS[1]},
        ],
        "model": MODEL,
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    line = log_line(services)
    assert (line["provider"], line["model"]) == ("mock-bedrock", MODEL)
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (7, 0, 7)
    assert line["usage_reported"] is True
    assert line["cost_usd"] == pytest.approx(7 * PRICE_PER_TOKEN)


async def test_base64_vectors_are_encoded_as_openai_encodes_them(signing: Processor) -> None:
    answers = await call(
        signing, embeddings(encoding_format="base64"), cohere_answer(TWO_VECTORS), TOKEN_HEADER
    )
    data = client_body(answers)["data"]
    decoded = [struct.unpack("<3f", base64.b64decode(item["embedding"])) for item in data]
    assert decoded == [tuple(vector) for vector in TWO_VECTORS]


async def test_an_answer_without_bedrocks_count_is_charged_its_estimate(
    signing: Processor, services: Services
) -> None:
    answers = await call(signing, embeddings(), cohere_answer(TWO_VECTORS))
    assert "usage" not in client_body(answers)
    line = log_line(services)
    assert line["http_status_code"] == 200
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # "first text" and "second text": 2 tokens each at four characters a token.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (4, 0)
    assert line["cost_usd"] == pytest.approx(4 * PRICE_PER_TOKEN)


@pytest.mark.parametrize(
    "reply",
    [
        b'{"embeddings": {"int8": [[1, 2]]}}',
        cohere_answer(TWO_VECTORS[:1]),
        b"this is not json",
    ],
    ids=["no float vectors", "one vector for two texts", "not json"],
)
async def test_an_answer_that_cannot_be_read_as_cohere_is_a_502_charged_nothing(
    signing: Processor, services: Services, reply: bytes
) -> None:
    answers = await call(signing, embeddings(), reply, TOKEN_HEADER)
    status = set_headers(answers[-1], "response_body")[":status"]
    assert status == "502"
    assert client_body(answers)["error"]["type"] == "upstream_error"
    line = log_line(services)
    assert line["http_status_code"] == 502 and line["total_tokens"] == 0


async def test_bedrocks_refusal_reaches_the_client_as_openais_400(signing: Processor) -> None:
    refusal = orjson.dumps({"message": "Malformed input request: #/output_dimension: 300"})
    answers = await run_stream(
        signing,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings()),
            # Envoy's router adds its service time to an answer that came from the provider.
            response_headers(
                400,
                {"x-amzn-errortype": "ValidationException:", "x-envoy-upstream-service-time": "5"},
            ),
            response_body(refusal),
        ],
    )
    body = client_body(answers)
    assert body["error"]["type"] == "invalid_request_error"
    assert "Malformed input request" in body["error"]["message"]
