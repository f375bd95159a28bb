"""Meta Llama, Mistral and Amazon Titan Text on the mock's Bedrock InvokeModel and
InvokeModelWithResponseStream, over real sockets.

Read by boto3 (``invoke_model``, ``invoke_model_with_response_stream``), and raw, decoded
with botocore's EventStreamBuffer where the wire itself is the point. The three families
answer one prompt alike (the mock's deterministic reply), each in its own body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from botocore.exceptions import ClientError

from extproc.mock_llm.faults import FAULT_HEADER
from tests.unit.test_mock_bedrock_anthropic import (
    STREAM,
    chunk_events,
    invoke,
    invoke_stream,
    signed_post,
)
from tests.unit.test_mock_llm_bedrock import REGION, bedrock, decode

PROMPT = "Say hello, mock!"
REPLY = "Mock reply to: Say hello, mock!"
# Say hello , mock ! : the prompt alone, no message overhead.
INPUT_TOKENS = 5
# Mock reply to : Say hello , mock ! : one piece each.
PIECES = ["Mock", " reply", " to", ":", " Say", " hello", ",", " mock", "!"]
OUTPUT_TOKENS = len(PIECES)
METRICS = "amazon-bedrock-invocationMetrics"


@dataclass(frozen=True)
class Family:
    """How one model family is asked, and where its answer and chunks keep what it says."""

    model_id: str
    body: Callable[[str, int | None], dict[str, Any]]
    answer: Callable[[str, int, str], dict[str, Any]]  # text, output tokens, stop reason
    chunk: Callable[[str, int, int, str | None], dict[str, Any]]  # piece, position, count, stop
    finished: str  # the stop reason of a reply that ended by itself
    cut: str  # ... and of one the allowance cut short


def llama_body(prompt: str, allowance: int | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"prompt": prompt, "temperature": 0.5, "top_p": 0.9}
    return doc if allowance is None else {**doc, "max_gen_len": allowance}


def mistral_body(prompt: str, allowance: int | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"prompt": prompt, "temperature": 0.5, "top_p": 0.9, "top_k": 50}
    return doc if allowance is None else {**doc, "max_tokens": allowance}


def titan_body(prompt: str, allowance: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {"temperature": 0.5, "topP": 0.9, "stopSequences": ["User:"]}
    if allowance is not None:
        config["maxTokenCount"] = allowance
    return {"inputText": prompt, "textGenerationConfig": config}


LLAMA = Family(
    "meta.llama3-8b-instruct-v1:0",
    llama_body,
    lambda text, tokens, stop: {
        "generation": text,
        "prompt_token_count": INPUT_TOKENS,
        "generation_token_count": tokens,
        "stop_reason": stop,
    },
    lambda piece, at, count, stop: {
        "generation": piece,
        "prompt_token_count": INPUT_TOKENS if at == 0 else None,
        "generation_token_count": count,
        "stop_reason": stop,
    },
    "stop",
    "length",
)
MISTRAL = Family(
    "mistral.mistral-7b-instruct-v0:2",
    mistral_body,
    lambda text, tokens, stop: {"outputs": [{"text": text, "stop_reason": stop}]},
    lambda piece, at, count, stop: {"outputs": [{"text": piece, "stop_reason": stop}]},
    "stop",
    "length",
)
TITAN = Family(
    "amazon.titan-text-express-v1",
    titan_body,
    lambda text, tokens, stop: {
        "inputTextTokenCount": INPUT_TOKENS,
        "results": [{"tokenCount": tokens, "outputText": text, "completionReason": stop}],
    },
    lambda piece, at, count, stop: {
        "outputText": piece,
        "index": 0,
        "totalOutputTextTokenCount": count,
        "completionReason": stop,
        "inputTextTokenCount": INPUT_TOKENS if at == 0 else None,
    },
    "FINISH",
    "LENGTH",
)
FAMILIES = pytest.mark.parametrize(
    "family", [LLAMA, MISTRAL, TITAN], ids=["llama", "mistral", "titan"]
)


def expected_chunks(family: Family, pieces: list[str], stop: str) -> list[dict[str, Any]]:
    last = len(pieces) - 1
    return [
        family.chunk(piece, at, at + 1, stop if at == last else None)
        for at, piece in enumerate(pieces)
    ]


def without_metrics(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chunks as the model sends them, and the invocation metrics Bedrock adds to the last."""
    *head, last = chunks
    last = dict(last)
    metrics = last.pop(METRICS)
    assert all(METRICS not in chunk for chunk in head)
    return [*head, last], metrics


async def raw(
    http: httpx.AsyncClient,
    family: Family,
    doc: Any = None,
    *,
    operation: str = "invoke",
    model_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await signed_post(
        http,
        family.body(PROMPT, None) if doc is None else doc,
        operation=operation,
        model_id=model_id or family.model_id,
        headers=headers,
    )


# --- Answers -------------------------------------------------------------------------------------


@FAMILIES
async def test_invoke_model_answers_in_the_familys_body_with_bedrocks_token_headers(
    mock_url: str, family: Family
) -> None:
    answer = await invoke(bedrock(mock_url), family.body(PROMPT, None), family.model_id)

    headers = answer.pop("headers")
    assert answer == family.answer(REPLY, OUTPUT_TOKENS, family.finished)
    assert headers["content-type"] == "application/json"
    assert headers["x-amzn-bedrock-input-token-count"] == str(INPUT_TOKENS)
    assert headers["x-amzn-bedrock-output-token-count"] == str(OUTPUT_TOKENS)
    assert int(headers["x-amzn-bedrock-invocation-latency"]) >= 0


@FAMILIES
async def test_stream_is_one_chunk_per_piece_the_last_with_bedrocks_metrics(
    mock_url: str, http: httpx.AsyncClient, family: Family
) -> None:
    chunks = await invoke_stream(bedrock(mock_url), family.body(PROMPT, None), family.model_id)
    response = await raw(http, family, operation=STREAM)

    sent, metrics = without_metrics(chunks)
    assert sent == expected_chunks(family, PIECES, family.finished)
    assert metrics["inputTokenCount"] == INPUT_TOKENS
    assert metrics["outputTokenCount"] == OUTPUT_TOKENS
    assert metrics["invocationLatency"] >= metrics["firstByteLatency"] >= 0
    # The wire: Bedrock's chunk frames, as for Claude.
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert response.headers["x-amzn-bedrock-content-type"] == "application/json"
    assert without_metrics(chunk_events(decode(response.content)))[0] == sent


@FAMILIES
async def test_the_allowance_cuts_the_reply_with_the_familys_length_reason(
    mock_url: str, family: Family
) -> None:
    client = bedrock(mock_url)
    doc = family.body(PROMPT, 3)
    answer = await invoke(client, doc, family.model_id)
    chunks = await invoke_stream(client, doc, family.model_id)

    headers = answer.pop("headers")
    assert answer == family.answer("Mock reply to", 3, family.cut)
    assert headers["x-amzn-bedrock-output-token-count"] == "3"
    sent, metrics = without_metrics(chunks)
    assert sent == expected_chunks(family, PIECES[:3], family.cut)
    assert metrics["outputTokenCount"] == 3


async def test_a_titan_allowance_of_zero_still_ends_its_stream(mock_url: str) -> None:
    client = bedrock(mock_url)
    doc = titan_body(PROMPT, 0)
    answer = await invoke(client, doc, TITAN.model_id)
    chunks = await invoke_stream(client, doc, TITAN.model_id)

    answer.pop("headers")
    assert answer == TITAN.answer("", 0, "LENGTH")
    sent, metrics = without_metrics(chunks)
    assert sent == [TITAN.chunk("", 0, 0, "LENGTH")]
    assert metrics["outputTokenCount"] == 0


@pytest.mark.parametrize(
    ("family", "model_id"),
    [
        (LLAMA, "meta.llama3-70b-instruct-v1:0"),
        (LLAMA, "us.meta.llama3-2-1b-instruct-v1:0"),
        (MISTRAL, "mistral.mixtral-8x7b-instruct-v0:1"),
        (MISTRAL, f"arn:aws:bedrock:{REGION}::foundation-model/mistral.mistral-large-2402-v1:0"),
        (TITAN, "amazon.titan-text-lite-v1"),
        (TITAN, "amazon.titan-text-premier-v1:0"),
    ],
    ids=["llama3-70b", "llama-profile", "mixtral", "mistral-large-arn", "titan-lite", "premier"],
)
async def test_every_model_of_a_family_answers_alike(
    mock_url: str, family: Family, model_id: str
) -> None:
    answer = await invoke(bedrock(mock_url), family.body(PROMPT, None), model_id)

    answer.pop("headers")
    assert answer == family.answer(REPLY, OUTPUT_TOKENS, family.finished)


@pytest.mark.parametrize(
    ("family", "doc", "reply", "stop"),
    [
        (MISTRAL, {"prompt": PROMPT, "stop": [" hello"]}, "Mock reply to: Say", "stop"),
        (
            TITAN,
            {"inputText": PROMPT, "textGenerationConfig": {"stopSequences": [" hello"]}},
            "Mock reply to: Say",
            "STOP_CRITERIA_MET",
        ),
    ],
    ids=["mistral", "titan"],
)
async def test_a_stop_sequence_ends_the_reply_before_it(
    mock_url: str, family: Family, doc: dict[str, Any], reply: str, stop: str
) -> None:
    answer = await invoke(bedrock(mock_url), doc, family.model_id)

    answer.pop("headers")
    assert answer == family.answer(reply, 5, stop)


@FAMILIES
async def test_a_scripted_reply_is_sent_as_those_pieces(mock_url: str, family: Family) -> None:
    client = bedrock(mock_url, headers={"x-mock-reply": '["Card ", "4111", "."]'})
    answer = await invoke(client, family.body(PROMPT, None), family.model_id)
    chunks = await invoke_stream(client, family.body(PROMPT, None), family.model_id)

    answer.pop("headers")
    assert answer == family.answer("Card 4111.", 3, family.finished)
    assert without_metrics(chunks)[0] == expected_chunks(
        family, ["Card ", "4111", "."], family.finished
    )


# --- Refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["invoke", STREAM])
@pytest.mark.parametrize(
    ("family", "doc", "violations"),
    [
        (
            LLAMA,
            {"messages": [{"role": "user", "content": PROMPT}]},
            "#: required key [prompt] not found#: extraneous key [messages] is not permitted",
        ),
        (
            LLAMA,
            {"prompt": 1, "max_gen_len": 1.5, "temperature": "hot", "top_p": True},
            "#/prompt: expected type: String, found: Integer"
            "#/temperature: expected type: Number, found: String"
            "#/top_p: expected type: Number, found: Boolean"
            "#/max_gen_len: expected type: Integer, found: BigDecimal",
        ),
        (
            LLAMA,
            {"prompt": PROMPT, "max_gen_len": 0},
            "#/max_gen_len: 0 is not greater or equal to 1",
        ),
        (
            MISTRAL,
            {"prompt": PROMPT, "stop": "END", "top_k": 0.5, "max_tokens": 0},
            "#/max_tokens: 0 is not greater or equal to 1"
            "#/stop: expected type: JSONArray, found: String"
            "#/top_k: expected type: Integer, found: BigDecimal",
        ),
        (
            MISTRAL,
            {"prompt": PROMPT, "stop": ["a", 1]},
            "#/stop/1: expected type: String, found: Integer",
        ),
        (
            TITAN,
            {"inputText": PROMPT, "textGenerationConfig": {"maxTokens": 5}},
            "#/textGenerationConfig: extraneous key [maxTokens] is not permitted",
        ),
        (
            TITAN,
            {"prompt": PROMPT, "textGenerationConfig": []},
            "#: required key [inputText] not found"
            "#/textGenerationConfig: expected type: JSONObject, found: JSONArray"
            "#: extraneous key [prompt] is not permitted",
        ),
        (
            TITAN,
            {"inputText": PROMPT, "textGenerationConfig": {"maxTokenCount": -1, "topP": "x"}},
            "#/textGenerationConfig/maxTokenCount: -1 is not greater or equal to 0"
            "#/textGenerationConfig/topP: expected type: Number, found: String",
        ),
    ],
    ids=[
        "llama-messages",
        "llama-types",
        "llama-allowance",
        "mistral-types",
        "mistral-stop-item",
        "titan-config-key",
        "titan-shape",
        "titan-config-types",
    ],
)
async def test_bodies_bedrock_refuses_are_validation_exceptions_in_its_words(
    http: httpx.AsyncClient, operation: str, family: Family, doc: dict[str, Any], violations: str
) -> None:
    response = await raw(http, family, doc, operation=operation)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    assert response.json()["message"] == (
        f"Malformed input request: {violations}, please reformat your input and try again."
    )


@FAMILIES
async def test_a_body_that_is_not_a_json_object_is_refused(
    http: httpx.AsyncClient, family: Family
) -> None:
    response = await raw(http, family, [PROMPT])

    assert response.status_code == 400
    assert "#: expected type: JSONObject, found: JSONArray" in response.json()["message"]


@pytest.mark.parametrize("operation", ["invoke", STREAM])
@pytest.mark.parametrize(
    "model_id", ["mistral.mistral-large-2407-v1:0", "us.mistral.mistral-large-2407-v1:0"]
)
async def test_mistral_large_2_refuses_a_prompt_body_as_bedrock_does(
    http: httpx.AsyncClient, operation: str, model_id: str
) -> None:
    """Mistral Large 2 takes the chat completion's messages alone: a failover test sending
    it Mistral 7B's prompt body must see Bedrock's 400, not a mock answer."""
    response = await raw(http, MISTRAL, operation=operation, model_id=model_id)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    assert response.json()["message"] == (
        "Malformed input request: #: required key [messages] not found#: extraneous key"
        " [prompt] is not permitted, please reformat your input and try again."
    )


@pytest.mark.parametrize("operation", ["invoke", STREAM])
@pytest.mark.parametrize("model_id", ["cohere.command-r-v1:0", "ai21.j2-ultra-v1"])
async def test_other_text_models_are_still_refused(
    http: httpx.AsyncClient, operation: str, model_id: str
) -> None:
    response = await raw(http, LLAMA, operation=operation, model_id=model_id)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    assert response.json()["message"] == "The provided model identifier is invalid."


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
async def test_a_bad_signature_is_refused(mock_url: str, stream: bool) -> None:
    client = bedrock(mock_url, aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as caught:
        call = invoke_stream if stream else invoke
        await call(client, llama_body(PROMPT, None), LLAMA.model_id)

    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"


# --- Faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
async def test_fault_status_is_bedrocks_exception(mock_url: str, stream: bool) -> None:
    client = bedrock(mock_url, headers={FAULT_HEADER: "status=429"})
    with pytest.raises(ClientError) as caught:
        call = invoke_stream if stream else invoke
        await call(client, mistral_body(PROMPT, None), MISTRAL.model_id)

    assert caught.value.response["Error"]["Code"] == "ThrottlingException"


@FAMILIES
async def test_no_usage_leaves_out_the_token_headers_and_the_metrics(
    mock_url: str, family: Family
) -> None:
    client = bedrock(mock_url, headers={FAULT_HEADER: "no_usage=1"})
    answer = await invoke(client, family.body(PROMPT, None), family.model_id)
    chunks = await invoke_stream(client, family.body(PROMPT, None), family.model_id)

    headers = answer.pop("headers")
    assert "x-amzn-bedrock-input-token-count" not in headers
    assert "x-amzn-bedrock-output-token-count" not in headers
    assert "x-amzn-bedrock-invocation-latency" in headers
    # The model's own body still says what it says.
    assert answer == family.answer(REPLY, OUTPUT_TOKENS, family.finished)
    assert chunks == expected_chunks(family, PIECES, family.finished)


@FAMILIES
async def test_error_after_ends_the_stream_with_a_model_stream_error(
    http: httpx.AsyncClient, family: Family
) -> None:
    response = await raw(http, family, operation=STREAM, headers={FAULT_HEADER: "error_after=2"})

    *chunks, last = decode(response.content)
    assert chunk_events(chunks) == expected_chunks(family, PIECES, family.finished)[:2]
    assert last.headers[":message-type"] == "exception"
    assert last.headers[":exception-type"] == "modelStreamErrorException"
    assert "message" in orjson.loads(last.payload)


async def test_error_after_past_the_last_piece_still_fails_the_stream(
    http: httpx.AsyncClient,
) -> None:
    response = await raw(http, TITAN, operation=STREAM, headers={FAULT_HEADER: "error_after=50"})

    *chunks, last = decode(response.content)
    # Everything but the chunk that would have ended the answer.
    assert chunk_events(chunks) == expected_chunks(TITAN, PIECES, "FINISH")[:-1]
    assert last.headers[":exception-type"] == "modelStreamErrorException"


async def test_reset_after_drops_the_connection_mid_stream(mock_url: str) -> None:
    client = bedrock(mock_url, headers={FAULT_HEADER: "reset_after=2"})
    received: list[str] = []

    def read() -> None:
        response = client.invoke_model_with_response_stream(
            modelId=LLAMA.model_id, body=orjson.dumps(llama_body(PROMPT, None))
        )
        for event in response["body"]:
            received.append(orjson.loads(event["chunk"]["bytes"])["generation"])

    # botocore does not wrap a reset mid-stream; urllib3's ProtocolError reaches the caller.
    with pytest.raises(Exception, match="ended prematurely"):
        await asyncio.to_thread(read)

    assert received == PIECES[:2]


async def test_reset_after_drops_a_plain_invocation(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.TransportError):
        await raw(http, MISTRAL, headers={FAULT_HEADER: "reset_after=0"})


async def test_chunks_streams_exactly_that_many_pieces(mock_url: str) -> None:
    client = bedrock(mock_url, headers={FAULT_HEADER: "chunks=20;interval=0"})
    chunks = await invoke_stream(client, llama_body(PROMPT, None), LLAMA.model_id)

    sent, metrics = without_metrics(chunks)
    assert len(sent) == 20
    assert "".join(chunk["generation"] for chunk in sent).startswith(REPLY)
    assert sent[-1]["generation_token_count"] == metrics["outputTokenCount"] == 20


@pytest.mark.parametrize("operation", ["invoke", STREAM])
async def test_garbage_answers_200_with_bodies_that_are_not_json(
    http: httpx.AsyncClient, operation: str
) -> None:
    response = await raw(http, TITAN, operation=operation, headers={FAULT_HEADER: "garbage=1"})

    assert response.status_code == 200
    if operation == "invoke":
        with pytest.raises(ValueError):
            response.json()
        return
    messages = decode(response.content)  # both framings stay valid
    assert len(messages) == OUTPUT_TOKENS
    with pytest.raises(orjson.JSONDecodeError):
        chunk_events(messages)
