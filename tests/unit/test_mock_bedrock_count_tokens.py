"""The mock's Bedrock CountTokens (``POST .../model/{modelId}/count-tokens``), over real
sockets: boto3's ``count_tokens`` gets the count Claude's InvokeModel (or Converse) would
report for the same body, and bodies Bedrock refuses are refused in AWS's words."""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from botocore.exceptions import ClientError

from extproc.mock_llm.faults import FAULT_HEADER
from tests.unit.test_mock_bedrock_anthropic import BODY, INPUT_TOKENS, MODEL_ID, invoke
from tests.unit.test_mock_llm_bedrock import MESSAGES as CONVERSE_MESSAGES
from tests.unit.test_mock_llm_bedrock import absolute, bedrock, converse, sign

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def invoke_model_input(doc: Any) -> dict[str, Any]:
    return {"invokeModel": {"body": orjson.dumps(doc)}}


async def count(client: Any, count_input: dict[str, Any], model_id: str = MODEL_ID) -> int:
    """boto3's ``count_tokens``: the answer's ``inputTokens``."""

    def call() -> int:
        answer = client.count_tokens(modelId=model_id, input=count_input)
        tokens: int = answer["inputTokens"]
        return tokens

    return await asyncio.to_thread(call)


async def refusal(client: Any, count_input: dict[str, Any], model_id: str = MODEL_ID) -> Any:
    """The error boto3 raises for a count Bedrock refuses."""
    with pytest.raises(ClientError) as caught:
        await count(client, count_input, model_id)
    return caught.value.response


async def signed_count(
    http: httpx.AsyncClient,
    doc: Any,
    *,
    model_id: str = MODEL_ID,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A raw signed CountTokens call, for bodies boto3 would not send."""
    path = f"/model/{quote(model_id, safe='')}/count-tokens"
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return await http.post(
        path, content=body, headers=sign(absolute(http, path), body, headers=headers)
    )


def encoded(doc: Any) -> str:
    return base64.b64encode(orjson.dumps(doc)).decode()


# --- Counts --------------------------------------------------------------------------------------


async def test_the_count_is_the_input_tokens_invoke_model_reports(mock_url: str) -> None:
    client = bedrock(mock_url)
    for doc in (BODY, {**BODY, "system": "Be brief."}, {**BODY, "tools": [WEATHER]}):
        counted = await count(client, invoke_model_input(doc))
        invoked = await invoke(client, doc)
        assert counted == invoked["usage"]["input_tokens"] > 0
    assert await count(client, invoke_model_input(BODY)) == INPUT_TOKENS


async def test_tool_definitions_count_in_claudes_prompt(mock_url: str) -> None:
    client = bedrock(mock_url)
    plain = await count(client, invoke_model_input(BODY))
    with_tools = await count(client, invoke_model_input({**BODY, "tools": [WEATHER]}))
    assert with_tools > plain


async def test_the_converse_form_counts_as_converse_reports(mock_url: str) -> None:
    client = bedrock(mock_url)
    system = [{"text": "Be brief."}]
    counted = await count(client, {"converse": {"messages": CONVERSE_MESSAGES, "system": system}})
    answered = await converse(client, system=system)
    assert counted == answered["usage"]["inputTokens"] > 0


async def test_the_answer_is_exactly_bedrocks_shape(http: httpx.AsyncClient) -> None:
    answer = await signed_count(http, {"input": {"invokeModel": {"body": encoded(BODY)}}})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-amzn-requestid"]
    assert answer.json() == {"inputTokens": INPUT_TOKENS}


# --- Refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "Value at 'input' failed to satisfy constraint: Member must not be null"),
        (b"[1]", "Value at 'input' failed to satisfy constraint: Member must not be null"),
        ({"input": "text"}, "Member must be an object with exactly one of invokeModel, converse"),
        ({"input": {}}, "Member must be an object with exactly one of invokeModel, converse"),
        (
            {"input": {"invokeModel": {"body": encoded(BODY)}, "converse": {"messages": []}}},
            "Member must be an object with exactly one of invokeModel, converse",
        ),
        ({"input": {"invokeChat": {}}}, "exactly one of invokeModel, converse"),
        ({"input": {"invokeModel": {}}}, "Value at 'input.invokeModel.body'"),
        ({"input": {"invokeModel": {"body": 12}}}, "Value at 'input.invokeModel.body'"),
        ({"input": {"invokeModel": {"body": "not base64!"}}}, "base64"),
        (
            {"input": {"invokeModel": {"body": base64.b64encode(b"not json").decode()}}},
            "#: expected type: JSONObject",
        ),
        (
            {"input": {"invokeModel": {"body": encoded({**BODY, "max_tokens": None})}}},
            "max_tokens",
        ),
        (
            {"input": {"invokeModel": {"body": encoded({"anthropic_version": "bedrock-2023-05-31",
                                                        "messages": BODY["messages"]})}}},
            "#: required key [max_tokens] not found",
        ),
        (
            {"input": {"invokeModel": {"body": encoded({**BODY, "model": "claude"})}}},
            "#: extraneous key [model] is not permitted",
        ),
        (
            {"input": {"converse": {"messages": []}}},
            "Value at 'messages' failed to satisfy constraint",
        ),
    ],
    ids=["no-input", "not-an-object", "input-text", "no-member", "two-members", "unknown-member",
         "no-body", "body-number", "bad-base64", "body-not-json", "max-tokens-null",
         "no-max-tokens", "model-in-body", "converse-empty"],
)  # fmt: skip
async def test_bodies_bedrock_refuses_are_validation_exceptions(
    http: httpx.AsyncClient, doc: Any, message: str
) -> None:
    response = await signed_count(http, doc)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    assert message in response.json()["message"]


@pytest.mark.parametrize(
    "model_id", ["amazon.titan-text-express-v1", "meta.llama3-8b-instruct-v1:0"]
)
async def test_models_other_than_claude_cannot_be_counted(mock_url: str, model_id: str) -> None:
    error = await refusal(bedrock(mock_url), invoke_model_input(BODY), model_id)
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Code"] == "ValidationException"
    assert error["Error"]["Message"] == "The provided model doesn't support counting tokens."


async def test_a_claude_model_the_mock_does_not_list_is_an_invalid_identifier(
    mock_url: str,
) -> None:
    error = await refusal(
        bedrock(mock_url), invoke_model_input(BODY), "anthropic.claude-3-opus-20240229-v1:0"
    )
    assert error["Error"]["Code"] == "ValidationException"
    assert error["Error"]["Message"] == "The provided model identifier is invalid."


async def test_a_bad_signature_is_refused(mock_url: str) -> None:
    client = bedrock(mock_url, aws_secret_access_key="not-the-secret")
    error = await refusal(client, invoke_model_input(BODY))
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "InvalidSignatureException"


async def test_an_unsigned_count_is_refused(http: httpx.AsyncClient) -> None:
    path = f"/model/{quote(MODEL_ID, safe='')}/count-tokens"
    response = await http.post(path, json={"input": {"invokeModel": {"body": encoded(BODY)}}})
    assert response.status_code == 403


# --- Faults --------------------------------------------------------------------------------------


async def test_an_injected_status_is_bedrocks_exception(mock_url: str) -> None:
    client = bedrock(mock_url, headers={FAULT_HEADER: "status=429"})
    error = await refusal(client, invoke_model_input(BODY))
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert error["Error"]["Code"] == "ThrottlingException"


async def test_garbage_is_an_answer_that_is_not_json(http: httpx.AsyncClient) -> None:
    response = await signed_count(
        http,
        {"input": {"invokeModel": {"body": encoded(BODY)}}},
        headers={FAULT_HEADER: "garbage=1"},
    )
    assert response.status_code == 200
    with pytest.raises(ValueError):
        orjson.loads(response.content)
