"""Claude on the mock's Bedrock surface: InvokeModel and InvokeModelWithResponseStream with
Anthropic's Messages body, over real sockets.

Read by boto3 (``invoke_model``, ``invoke_model_with_response_stream``), by the anthropic
SDK's Bedrock client (what Claude Code and the gateway's Anthropic users run), and raw,
decoded with botocore's EventStreamBuffer where the wire itself is the point.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from anthropic import AsyncAnthropic, AsyncAnthropicBedrock
from anthropic.types import MessageParam
from botocore.eventstream import EventStreamMessage
from botocore.exceptions import ClientError, EventStreamError

from extproc.mock_llm.faults import FAULT_HEADER
from tests.unit.test_mock_llm_bedrock import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    absolute,
    bedrock,
    decode,
    sign,
)

MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
MODEL_NAME = "claude-3-haiku-20240307"
PROMPT = "Say hello, mock!"
REPLY = "Mock reply to: Say hello, mock!"
# Say hello , mock ! -> 5 tokens, + 4 for the message, + 2 for the request.
INPUT_TOKENS = 11
# Mock reply to : Say hello , mock !
OUTPUT_TOKENS = 9
MESSAGES: list[MessageParam] = [{"role": "user", "content": PROMPT}]
BODY: dict[str, Any] = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 50,
    "messages": MESSAGES,
}
STREAM = "invoke-with-response-stream"


def invoke_path(model_id: str = MODEL_ID, operation: str = "invoke") -> str:
    return f"/model/{quote(model_id, safe='')}/{operation}"


async def signed_post(
    http: httpx.AsyncClient,
    doc: Any = BODY,
    *,
    operation: str = "invoke",
    model_id: str = MODEL_ID,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    path = invoke_path(model_id, operation)
    body = orjson.dumps(doc)
    return await http.post(
        path, content=body, headers=sign(absolute(http, path), body, headers=headers)
    )


def chunk_events(messages: list[EventStreamMessage]) -> list[dict[str, Any]]:
    """The Anthropic events the ``chunk`` messages carry, checking Bedrock's framing."""
    events = []
    for message in messages:
        assert message.headers == {
            ":event-type": "chunk",
            ":content-type": "application/json",
            ":message-type": "event",
        }
        payload = orjson.loads(message.payload)
        assert list(payload) == ["bytes"]
        events.append(orjson.loads(base64.b64decode(payload["bytes"])))
    return events


async def invoke(client: Any, doc: Any = BODY, model_id: str = MODEL_ID) -> dict[str, Any]:
    """boto3's ``invoke_model``: the answer's JSON, with its HTTP headers under "headers"."""

    def call() -> dict[str, Any]:
        response = client.invoke_model(modelId=model_id, body=orjson.dumps(doc))
        answer: dict[str, Any] = orjson.loads(response["body"].read())
        answer["headers"] = response["ResponseMetadata"]["HTTPHeaders"]
        return answer

    return await asyncio.to_thread(call)


async def invoke_stream(
    client: Any, doc: Any = BODY, model_id: str = MODEL_ID
) -> list[dict[str, Any]]:
    """boto3's ``invoke_model_with_response_stream``: the Anthropic events of its chunks."""

    def read() -> list[dict[str, Any]]:
        response = client.invoke_model_with_response_stream(
            modelId=model_id, body=orjson.dumps(doc)
        )
        assert response["contentType"] == "application/json"
        return [orjson.loads(event["chunk"]["bytes"]) for event in response["body"]]

    return await asyncio.to_thread(read)


def streamed_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        event["delta"].get("text", "") for event in events if event["type"] == "content_block_delta"
    )


# --- Answers -------------------------------------------------------------------------------------


async def test_invoke_model_answers_anthropics_message_as_bedrock_relays_it(
    mock_url: str,
) -> None:
    answer = await invoke(bedrock(mock_url))

    headers = answer.pop("headers")
    assert answer["id"].startswith("msg_bdrk_")
    assert answer == {
        "id": answer["id"],
        "type": "message",
        "role": "assistant",
        "model": MODEL_NAME,
        "content": [{"type": "text", "text": REPLY}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": OUTPUT_TOKENS,
        },
    }
    assert headers["content-type"] == "application/json"
    assert headers["x-amzn-bedrock-input-token-count"] == str(INPUT_TOKENS)
    assert headers["x-amzn-bedrock-output-token-count"] == str(OUTPUT_TOKENS)
    assert int(headers["x-amzn-bedrock-invocation-latency"]) >= 0


async def test_claude_on_bedrock_answers_as_anthropics_own_api_does(
    mock_url: str, anthropic_client: AsyncAnthropic
) -> None:
    doc = {**BODY, "system": "Be brief.", "stop_sequences": ["mock"], "max_tokens": 20}
    on_bedrock = await invoke(bedrock(mock_url), doc)
    direct = await anthropic_client.messages.create(
        model=MODEL_NAME,
        max_tokens=20,
        system="Be brief.",
        stop_sequences=["mock"],
        messages=[{"role": "user", "content": PROMPT}],
    )

    assert on_bedrock["content"] == [
        block.model_dump(exclude_none=True) for block in direct.content
    ]
    assert (on_bedrock["stop_reason"], on_bedrock["stop_sequence"]) == ("stop_sequence", "mock")
    assert direct.stop_reason == "stop_sequence"
    assert on_bedrock["usage"]["input_tokens"] == direct.usage.input_tokens
    assert on_bedrock["usage"]["output_tokens"] == direct.usage.output_tokens
    # Anthropic's own API names its service tier; Bedrock's answer has none.
    assert "service_tier" not in on_bedrock["usage"]


async def test_stream_is_anthropics_events_in_bedrock_chunks(
    mock_url: str, http: httpx.AsyncClient
) -> None:
    whole = await invoke(bedrock(mock_url))
    response = await signed_post(http, operation=STREAM)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert response.headers["x-amzn-bedrock-content-type"] == "application/json"
    events = chunk_events(decode(response.content))
    assert [event["type"] for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * OUTPUT_TOKENS,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]["message"]
    assert (start["id"][:9], start["model"], start["content"]) == ("msg_bdrk_", MODEL_NAME, [])
    # The input side up front, as in the whole answer; the output count at the end.
    assert start["usage"] == {**whole["usage"], "output_tokens": 1}
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2]["usage"] == {"output_tokens": whole["usage"]["output_tokens"]}
    assert streamed_text(events) == whole["content"][0]["text"]


async def test_message_stop_carries_bedrocks_invocation_metrics(http: httpx.AsyncClient) -> None:
    response = await signed_post(http, operation=STREAM)

    message_stop = chunk_events(decode(response.content))[-1]
    metrics = message_stop.pop("amazon-bedrock-invocationMetrics")
    assert message_stop == {"type": "message_stop"}
    assert metrics["inputTokenCount"] == INPUT_TOKENS
    assert metrics["outputTokenCount"] == OUTPUT_TOKENS
    assert metrics["invocationLatency"] >= metrics["firstByteLatency"] >= 0


async def test_boto3_reads_both_operations_alike(mock_url: str) -> None:
    client = bedrock(mock_url)
    whole = await invoke(client)
    events = await invoke_stream(client)

    assert streamed_text(events) == whole["content"][0]["text"] == REPLY
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == OUTPUT_TOKENS


async def test_the_anthropic_sdks_bedrock_client_reads_both_operations(mock_url: str) -> None:
    # anthropic 2.15 sends its API version (2026-10-21) unless told Bedrock's.
    version = {"anthropic_version": BODY["anthropic_version"]}
    async with AsyncAnthropicBedrock(
        aws_access_key=ACCESS_KEY,
        aws_secret_key=SECRET_KEY,
        aws_region=REGION,
        base_url=mock_url,
        max_retries=0,
    ) as client:
        whole = await client.messages.create(
            model=MODEL_ID, max_tokens=50, messages=MESSAGES, extra_body=version
        )
        async with client.messages.stream(
            model=MODEL_ID, max_tokens=50, messages=MESSAGES, extra_body=version
        ) as stream:
            streamed = await stream.get_final_message()

    for message in (whole, streamed):
        assert message.model == MODEL_NAME
        assert message.content[0].type == "text" and message.content[0].text == REPLY
        assert (message.usage.input_tokens, message.usage.output_tokens) == (
            INPUT_TOKENS,
            OUTPUT_TOKENS,
        )


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        ("us.anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku-20240307"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929"),
        (f"arn:aws:bedrock:{REGION}::foundation-model/{MODEL_ID}", MODEL_NAME),
        (
            f"arn:aws:bedrock:{REGION}:123456789012:inference-profile/us.{MODEL_ID}",
            MODEL_NAME,
        ),
    ],
    ids=["profile", "claude-4.5-profile", "model-arn", "profile-arn"],
)
async def test_profiles_and_arns_name_the_anthropic_model(
    mock_url: str, model_id: str, name: str
) -> None:
    answer = await invoke(bedrock(mock_url), model_id=model_id)

    assert answer["model"] == name


async def test_scripted_tool_calls_use_bedrocks_tool_ids(mock_url: str) -> None:
    calls = '[{"name": "get_weather", "arguments": ["{\\"city\\": ", "\\"Paris\\"}"]}]'
    client = bedrock(mock_url, headers={"x-mock-reply": "Checking.", "x-mock-tool-calls": calls})
    whole = await invoke(client)
    events = await invoke_stream(client)

    text, call = whole["content"]
    assert text == {"type": "text", "text": "Checking."}
    assert call["id"].startswith("toolu_bdrk_")
    assert (call["name"], call["input"]) == ("get_weather", {"city": "Paris"})
    assert whole["stop_reason"] == "tool_use"
    partial_json = [
        event["delta"]["partial_json"]
        for event in events
        if event["type"] == "content_block_delta" and event["index"] == 1
    ]
    assert partial_json == ["", '{"city": ', '"Paris"}']


async def test_cache_reads_and_writes_leave_the_token_counts(mock_url: str) -> None:
    client = bedrock(mock_url, headers={FAULT_HEADER: "cached=2", "x-mock-cache-write": "5m=3"})
    whole = await invoke(client)
    events = await invoke_stream(client)

    uncached = INPUT_TOKENS - 2 - 3
    assert whole["usage"]["cache_read_input_tokens"] == 2
    assert whole["usage"]["cache_creation_input_tokens"] == 3
    assert whole["usage"]["input_tokens"] == uncached
    assert whole["headers"]["x-amzn-bedrock-input-token-count"] == str(uncached)
    assert events[0]["message"]["usage"]["cache_read_input_tokens"] == 2
    assert events[-1]["amazon-bedrock-invocationMetrics"]["inputTokenCount"] == uncached


# --- Refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["invoke", STREAM])
@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({**BODY, "anthropic_version": "bedrock-2023-06-01"}, "Invalid API version: bedrock-"),
        ({**BODY, "model": MODEL_NAME}, "#: extraneous key [model] is not permitted"),
        ({**BODY, "stream": True}, "#: extraneous key [stream] is not permitted"),
        (
            {"max_tokens": 50, "messages": MESSAGES},
            "#: required key [anthropic_version] not found",
        ),
        ({**BODY, "anthropic_beta": "tools"}, "#/anthropic_beta: expected type: JSONArray"),
        (
            {**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            "messages: text content blocks must be non-empty",
        ),
    ],
    ids=["version", "model", "stream", "no-version", "beta-string", "anthropic-check"],
)
async def test_bodies_bedrock_refuses_are_validation_exceptions(
    http: httpx.AsyncClient, operation: str, doc: dict[str, Any], message: str
) -> None:
    response = await signed_post(http, doc, operation=operation)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    assert message in response.json()["message"]


async def test_anthropic_beta_list_is_taken(mock_url: str) -> None:
    answer = await invoke(bedrock(mock_url), {**BODY, "anthropic_beta": ["context-1m-2025-08-07"]})

    assert answer["content"] == [{"type": "text", "text": REPLY}]


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
async def test_a_bad_signature_is_refused(mock_url: str, stream: bool) -> None:
    client = bedrock(mock_url, aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as caught:
        await (invoke_stream(client) if stream else invoke(client))

    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"


@pytest.mark.parametrize(
    "model_id",
    [
        "amazon.titan-embed-text-v2:0",  # InvokeModel serves it, but not as a stream
        "anthropic.claude-3-opus-20240229-v1:0",  # a Claude model the mock does not list
    ],
    ids=["titan", "unlisted-claude"],
)
async def test_stream_of_a_model_it_does_not_serve_is_refused(
    http: httpx.AsyncClient, model_id: str
) -> None:
    response = await signed_post(http, operation=STREAM, model_id=model_id)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    assert response.json()["message"] == "The provided model identifier is invalid."


# --- Faults and the recorder ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
async def test_fault_status_is_bedrocks_exception(mock_url: str, stream: bool) -> None:
    client = bedrock(mock_url, headers={FAULT_HEADER: "status=429"})
    with pytest.raises(ClientError) as caught:
        await (invoke_stream(client) if stream else invoke(client))

    assert caught.value.response["Error"]["Code"] == "ThrottlingException"


async def test_error_after_ends_the_stream_with_a_model_stream_error(
    mock_url: str, http: httpx.AsyncClient
) -> None:
    client = bedrock(mock_url, headers={FAULT_HEADER: "error_after=2"})

    def read() -> tuple[list[str], EventStreamError]:
        received: list[str] = []
        response = client.invoke_model_with_response_stream(
            modelId=MODEL_ID, body=orjson.dumps(BODY)
        )
        try:
            for event in response["body"]:
                received.append(orjson.loads(event["chunk"]["bytes"])["type"])
        except EventStreamError as error:
            return received, error
        raise AssertionError("the stream did not fail")

    received, error = await asyncio.to_thread(read)
    raw = await signed_post(http, operation=STREAM, headers={FAULT_HEADER: "error_after=2"})

    assert received == ["message_start", "content_block_start", *["content_block_delta"] * 2]
    assert error.response["Error"]["Code"] == "modelStreamErrorException"
    last = decode(raw.content)[-1]
    assert last.headers[":message-type"] == "exception"
    assert last.headers[":exception-type"] == "modelStreamErrorException"
    assert "message" in orjson.loads(last.payload)


async def test_error_after_past_the_last_delta_still_fails_the_stream(
    http: httpx.AsyncClient,
) -> None:
    response = await signed_post(http, operation=STREAM, headers={FAULT_HEADER: "error_after=50"})

    *chunks, last = decode(response.content)
    events = chunk_events(chunks)
    assert streamed_text(events) == REPLY  # every delta went out...
    assert events[-1]["type"] == "content_block_delta"  # ...and nothing after them
    assert last.headers[":exception-type"] == "modelStreamErrorException"


async def test_reset_after_drops_the_connection_mid_stream(mock_url: str) -> None:
    client = bedrock(mock_url, headers={FAULT_HEADER: "reset_after=2"})
    received: list[str] = []

    def read() -> None:
        response = client.invoke_model_with_response_stream(
            modelId=MODEL_ID, body=orjson.dumps(BODY)
        )
        for event in response["body"]:
            received.append(orjson.loads(event["chunk"]["bytes"])["type"])

    # botocore does not wrap a reset mid-stream; urllib3's ProtocolError reaches the caller.
    with pytest.raises(Exception, match="ended prematurely"):
        await asyncio.to_thread(read)

    assert received == ["message_start", "content_block_start", *["content_block_delta"] * 2]


@pytest.mark.parametrize("operation", ["invoke", STREAM])
async def test_garbage_answers_200_with_events_that_are_not_json(
    http: httpx.AsyncClient, operation: str
) -> None:
    response = await signed_post(http, operation=operation, headers={FAULT_HEADER: "garbage=1"})

    assert response.status_code == 200
    if operation == "invoke":
        with pytest.raises(ValueError):
            response.json()
        return
    for message in decode(response.content):  # both framings stay valid
        chunk = base64.b64decode(orjson.loads(message.payload)["bytes"])
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(chunk)


async def test_recorder_shows_the_signed_stream_request(
    mock_url: str, http: httpx.AsyncClient
) -> None:
    await http.delete("/_mock/requests")
    await invoke_stream(bedrock(mock_url))

    (entry,) = (await http.get("/_mock/requests")).json()
    assert entry["path"] == f"/model/{MODEL_ID}/{STREAM}"
    assert entry["headers"]["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"
    )
    assert entry["json"] == BODY
