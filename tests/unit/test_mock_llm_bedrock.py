"""The mock's Bedrock Converse API, driven over real sockets by the official boto3 client.

boto3 is synchronous, so its calls run in a worker thread while the mock serves on the test loop.
Raw-wire checks sign their requests with botocore's SigV4Auth and send them with httpx.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any
from unittest import mock
from urllib.parse import quote

import boto3
import botocore.config
import httpx
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer, EventStreamMessage
from botocore.exceptions import ClientError

from extproc.aws_eventstream import encode_event
from extproc.mock_llm import MockOptions, count_tokens
from extproc.testing import serve_mock
from tests.unit.mock_helpers import http, mock_url

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ACCESS_KEY = "AKIDMOCK"
SECRET_KEY = "mock-secret-key"
REGION = "us-east-1"
PROMPT = "Say hello, mock!"
REPLY = "Mock reply to: Say hello, mock!"
# Say hello , mock ! -> 5 tokens, + 4 per message, + 2 per request (as on the OpenAI side).
INPUT_TOKENS = 11
# Mock reply to : Say hello , mock !
OUTPUT_TOKENS = 9
USAGE = {
    "inputTokens": INPUT_TOKENS,
    "outputTokens": OUTPUT_TOKENS,
    "totalTokens": INPUT_TOKENS + OUTPUT_TOKENS,
}
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": [{"text": PROMPT}]}]
EVENT_HEADERS = {":content-type": "application/json", ":message-type": "event"}

# conftest.py gives every unit test these fixtures; they stay importable from here for the
# modules that import them with the Converse helpers.
__all__ = ["http", "mock_url"]


def bedrock(url: str, *, headers: dict[str, str] | None = None, **overrides: Any) -> Any:
    """A boto3 bedrock-runtime client for the mock; ``headers`` are added to every request."""
    settings: dict[str, Any] = {
        "region_name": REGION,
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        **overrides,
    }
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=url,
        config=botocore.config.Config(retries={"max_attempts": 0}),
        **settings,
    )
    if headers:

        def add_headers(request: AWSRequest, **_: Any) -> None:
            for name, value in headers.items():
                request.headers[name] = value

        client.meta.events.register("before-sign.bedrock-runtime", add_headers)
    return client


@pytest.fixture
def client(mock_url: str) -> Any:
    return bedrock(mock_url)


async def converse(client: Any, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("modelId", MODEL)
    kwargs.setdefault("messages", MESSAGES)
    result: dict[str, Any] = await asyncio.to_thread(client.converse, **kwargs)
    return result


async def converse_stream(client: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """The stream's events as boto3 parses them, read to the end in the worker thread."""
    kwargs.setdefault("modelId", MODEL)
    kwargs.setdefault("messages", MESSAGES)

    def read() -> list[dict[str, Any]]:
        return list(client.converse_stream(**kwargs)["stream"])

    return await asyncio.to_thread(read)


def stream_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
    )


async def client_error(call: Callable[..., Any], **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await call(**kwargs)
    return caught.value


def sign(url: str, body: bytes, *, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers for a POST of ``body`` to ``url``, signed as botocore signs Bedrock requests."""
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "bedrock", REGION).add_auth(request)
    return dict(request.headers.items())


async def signed_post(
    http: httpx.AsyncClient, path: str, doc: Any = None, *, raw: bytes | None = None
) -> httpx.Response:
    body = raw if raw is not None else orjson.dumps(doc)
    url = absolute(http, path)
    return await http.post(path, content=body, headers=sign(url, body))


def absolute(http: httpx.AsyncClient, path: str) -> str:
    """The URL httpx requests for ``path``, which is the URL to sign."""
    return str(http.base_url).rstrip("/") + path


def converse_path(model_id: str = MODEL, operation: str = "converse") -> str:
    return f"/model/{quote(model_id, safe='')}/{operation}"


def decode(raw: bytes) -> list[EventStreamMessage]:
    """Every message of an event stream body; botocore checks both CRCs of each."""
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return list(buffer)


# --- Converse ------------------------------------------------------------------------------------


async def test_converse_replies_deterministically_with_usage(client: Any) -> None:
    response = await converse(client)

    assert response["output"] == {"message": {"role": "assistant", "content": [{"text": REPLY}]}}
    assert response["stopReason"] == "end_turn"
    assert response["usage"] == USAGE
    assert count_tokens(REPLY) == OUTPUT_TOKENS
    assert isinstance(response["metrics"]["latencyMs"], int)
    assert response["metrics"]["latencyMs"] >= 0
    assert response["ResponseMetadata"]["RequestId"]


async def test_system_blocks_count_as_one_more_message(client: Any) -> None:
    plain = await converse(client)
    one = await converse(client, system=[{"text": "Be brief."}])
    two = await converse(client, system=[{"text": "Be"}, {"text": "brief."}])

    # Be brief . -> 3 tokens, + 4 for the message.
    assert one["usage"]["inputTokens"] == plain["usage"]["inputTokens"] + 3 + 4
    assert two["usage"] == one["usage"]


async def test_reply_quotes_the_text_blocks_of_the_last_user_message(client: Any) -> None:
    response = await converse(
        client,
        messages=[
            {"role": "user", "content": [{"text": "first question"}]},
            {"role": "assistant", "content": [{"text": "first answer"}]},
            {
                "role": "user",
                "content": [
                    {"text": "describe"},
                    {"image": {"format": "png", "source": {"bytes": b"\x89PNG"}}},
                    {"text": "this"},
                ],
            },
        ],
    )

    assert response["output"]["message"]["content"] == [{"text": "Mock reply to: describe this"}]
    # Images count for nothing; text blocks are joined with a space.
    assert response["usage"]["inputTokens"] == (2 + 2 + 2) + 3 * 4 + 2


async def test_max_tokens_truncates_with_stop_reason_max_tokens(client: Any) -> None:
    response = await converse(client, inferenceConfig={"maxTokens": 3, "temperature": 0.5})
    events = await converse_stream(client, inferenceConfig={"maxTokens": 3})

    assert response["output"]["message"]["content"] == [{"text": "Mock reply to"}]
    assert response["stopReason"] == "max_tokens"
    assert response["usage"]["outputTokens"] == 3
    assert stream_text(events) == "Mock reply to"
    assert {"messageStop": {"stopReason": "max_tokens"}} in events
    assert events[-1]["metadata"]["usage"] == response["usage"]


@pytest.mark.parametrize(
    "model_id",
    [
        MODEL,
        "amazon.titan-text-express-v1",
        "meta.llama3-8b-instruct-v1:0",
        f"arn:aws:bedrock:{REGION}::foundation-model/{MODEL}",
    ],
    ids=["claude", "titan", "llama", "arn"],
)
async def test_model_ids_with_colons_and_slashes_are_accepted(
    client: Any, http: httpx.AsyncClient, model_id: str
) -> None:
    await http.delete("/_mock/requests")
    response = await converse(client, modelId=model_id)

    assert response["output"]["message"]["content"] == [{"text": REPLY}]
    # boto3 percent-encodes the id (":" as %3A) and signs that path; the mock checked it so.
    (entry,) = (await http.get("/_mock/requests")).json()
    assert entry["path"] == f"/model/{model_id}/converse"


async def test_unknown_model_is_404_resource_not_found(client: Any) -> None:
    error = await client_error(converse, client=client, modelId="acme.unknown-model-v1:0")

    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert error.response["Error"]["Code"] == "ResourceNotFoundException"
    assert "acme.unknown-model-v1:0" in error.response["Error"]["Message"]


async def test_an_empty_model_list_accepts_any_model_id() -> None:
    async with serve_mock(MockOptions(bedrock_models=())) as url:
        response = await converse(bedrock(url), modelId="acme.anything-v9:0")

    assert response["output"]["message"]["content"] == [{"text": REPLY}]


async def test_blank_text_is_a_validation_exception(client: Any) -> None:
    messages = [{"role": "user", "content": [{"text": " "}]}]
    error = await client_error(converse, client=client, messages=messages)

    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error.response["Error"]["Code"] == "ValidationException"
    assert "messages.0.content.0 is blank" in error.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (b"{not json", "JSON object"),
        ({"inferenceConfig": {"maxTokens": 5}}, "'messages'"),
        ({"messages": []}, "'messages'"),
        ({"messages": [{"role": "system", "content": [{"text": "x"}]}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": []}]}, "at messages.0 is empty"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
            "messages.0.content.0",
        ),
        ({"messages": MESSAGES, "system": [{"text": ""}]}, "system.0.text"),
        ({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 0}}, "maxTokens"),
        ({"messages": MESSAGES, "inferenceConfig": {"maxTokens": True}}, "maxTokens"),
        ({"messages": MESSAGES, "inferenceConfig": {"temperature": 2}}, "temperature"),
        ({"messages": MESSAGES, "inferenceConfig": {"stopSequences": [""]}}, "stopSequences"),
        ({"messages": MESSAGES, "toolConfig": {"tools": []}}, "toolConfig.tools"),
        (
            {
                "messages": [
                    *MESSAGES,
                    {
                        "role": "assistant",
                        "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}],
                    },
                ]
            },
            "toolConfig field must be defined",
        ),
    ],
    ids=[
        "invalid-json",
        "no-messages",
        "empty-messages",
        "bad-role",
        "string-content",
        "empty-content",
        "anthropic-style-block",
        "empty-system-text",
        "zero-max-tokens",
        "bool-max-tokens",
        "temperature-above-1",
        "empty-stop-sequence",
        "no-tools",
        "tool-use-without-tool-config",
    ],
)
async def test_invalid_request_is_a_400_validation_exception(
    http: httpx.AsyncClient, doc: Any, expected: str
) -> None:
    raw = doc if isinstance(doc, bytes) else None
    response = await signed_post(http, converse_path(), doc, raw=raw)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    assert expected in response.json()["message"]


async def test_tool_config_with_tool_blocks_is_accepted(client: Any) -> None:
    tools = {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]}
    messages = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}],
        },
        {
            "role": "user",
            "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "42"}]}}],
        },
    ]
    response = await converse(client, messages=messages, toolConfig=tools)

    # The last user message has no text blocks, so the reply quotes nothing.
    assert response["output"]["message"]["content"] == [{"text": "Mock reply to: "}]


async def test_gateway_route_prefix_reaches_converse(http: httpx.AsyncClient) -> None:
    response = await signed_post(http, "/bedrock" + converse_path(), {"messages": MESSAGES})

    assert response.status_code == 200
    assert response.json()["output"]["message"]["content"] == [{"text": REPLY}]


# --- ConverseStream ------------------------------------------------------------------------------


async def test_converse_stream_rebuilds_the_converse_reply(client: Any) -> None:
    plain = await converse(client)
    events = await converse_stream(client)

    assert [next(iter(event)) for event in events] == [
        "messageStart",
        *["contentBlockDelta"] * OUTPUT_TOKENS,
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[0] == {"messageStart": {"role": "assistant"}}
    # Content arrives token by token, and the pieces rebuild the plain reply exactly.
    assert stream_text(events) == REPLY
    assert all(e["contentBlockDelta"]["contentBlockIndex"] == 0 for e in events[1:-3])
    assert events[-3] == {"contentBlockStop": {"contentBlockIndex": 0}}
    assert events[-2] == {"messageStop": {"stopReason": "end_turn"}}
    assert events[-1]["metadata"]["usage"] == plain["usage"] == USAGE
    assert isinstance(events[-1]["metadata"]["metrics"]["latencyMs"], int)


async def test_event_stream_wire_format_decodes_with_botocore(http: httpx.AsyncClient) -> None:
    response = await signed_post(
        http, converse_path(operation="converse-stream"), {"messages": MESSAGES}
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    messages = decode(response.content)
    assert [m.headers for m in messages[:1]] == [{":event-type": "messageStart", **EVENT_HEADERS}]
    assert all(
        m.headers == {**EVENT_HEADERS, ":event-type": m.headers[":event-type"]} for m in messages
    )
    payloads = [(m.headers[":event-type"], orjson.loads(m.payload)) for m in messages]
    assert payloads[0] == ("messageStart", {"role": "assistant"})
    assert payloads[1] == ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Mock"}})
    assert payloads[-3:-1] == [
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "end_turn"}),
    ]
    assert payloads[-1][0] == "metadata"
    assert payloads[-1][1]["usage"] == USAGE
    # Each length field is what it claims: the messages tile the body exactly.
    assert sum(m.prelude.total_length for m in messages) == len(response.content)


def test_event_stream_crcs_are_checked_by_botocore() -> None:
    message = bytearray(encode_event("contentBlockStop", b'{"contentBlockIndex":0}'))
    (decoded,) = decode(bytes(message))
    assert decoded.payload == b'{"contentBlockIndex":0}'

    message[-6] ^= 0xFF  # one payload byte: the message CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        decode(bytes(message))
    message[-6] ^= 0xFF
    message[0] ^= 0x01  # the total length: the prelude CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        decode(bytes(message))


# --- SigV4 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["converse", "converse-stream"])
async def test_wrong_secret_is_refused_with_invalid_signature(mock_url: str, stream: bool) -> None:
    client = bedrock(mock_url, aws_secret_access_key="not-the-secret")
    error = await client_error(converse_stream if stream else converse, client=client)

    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error.response["Error"]["Code"] == "InvalidSignatureException"
    assert error.response["Error"]["Message"].startswith(
        "The request signature we calculated does not match the signature you provided."
    )


async def test_unknown_access_key_is_refused_as_unrecognized_client(mock_url: str) -> None:
    client = bedrock(mock_url, aws_access_key_id="AKIDSOMEONEELSE")
    error = await client_error(converse, client=client)

    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error.response["Error"]["Code"] == "UnrecognizedClientException"


async def test_credentials_scoped_to_another_region_are_refused(mock_url: str) -> None:
    client = bedrock(mock_url, region_name="eu-west-1")
    error = await client_error(converse, client=client)

    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error.response["Error"]["Code"] == "InvalidSignatureException"
    assert "eu-west-1" in error.response["Error"]["Message"]


async def test_signature_older_than_five_minutes_is_refused(client: Any) -> None:
    signed_at = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=6)
    with mock.patch("botocore.auth.get_current_datetime", return_value=signed_at):
        error = await client_error(converse, client=client)

    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error.response["Error"]["Code"] == "InvalidSignatureException"
    assert error.response["Error"]["Message"].startswith("Signature expired:")


async def test_request_without_authorization_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post(converse_path(), json={"messages": MESSAGES})

    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"] == "InvalidSignatureException:"
    assert "message" in response.json()


async def test_session_token_sent_without_one_configured_is_recorded(
    mock_url: str, http: httpx.AsyncClient
) -> None:
    await http.delete("/_mock/requests")
    await converse(bedrock(mock_url, aws_session_token="session-from-sts"))

    (entry,) = (await http.get("/_mock/requests")).json()
    assert entry["headers"]["x-amz-security-token"] == "session-from-sts"


async def test_configured_session_token_must_be_sent_and_signed() -> None:
    options = MockOptions(aws_session_token="session-from-sts")
    async with serve_mock(options) as url, httpx.AsyncClient(base_url=url) as http:
        response = await converse(bedrock(url, aws_session_token="session-from-sts"))
        wrong = await client_error(
            converse, client=bedrock(url, aws_session_token="stolen-or-stale")
        )
        missing = await client_error(converse, client=bedrock(url))
        recorded = (await http.get("/_mock/requests")).json()

    assert response["output"]["message"]["content"] == [{"text": REPLY}]
    assert recorded[0]["headers"]["x-amz-security-token"] == "session-from-sts"
    # botocore signs the token along with the request.
    assert "x-amz-security-token" in recorded[0]["headers"]["authorization"]
    for error in (wrong, missing):
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert error.response["Error"]["Code"] == "UnrecognizedClientException"


async def test_a_proxy_may_change_unsigned_headers_but_not_signed_ones(
    http: httpx.AsyncClient,
) -> None:
    path = converse_path()
    body = orjson.dumps({"messages": MESSAGES})
    headers = sign(absolute(http, path), body)
    # What Envoy does on the way: hop-by-hop and forwarding headers, a new user agent.
    proxied = {
        **headers,
        "User-Agent": "envoy",
        "Connection": "keep-alive",
        "X-Forwarded-For": "10.0.0.1",
        "X-Request-Id": "abc",
    }

    accepted = await http.post(path, content=body, headers=proxied)
    retyped = await http.post(
        path, content=body, headers={**proxied, "Content-Type": "application/json; charset=utf-8"}
    )
    rewritten = await http.post(path, content=body.replace(b"hello", b"HELLO"), headers=headers)
    with_tenant = sign(absolute(http, path), body, headers={"X-Tenant": "team-1"})
    dropped = await http.post(
        path, content=body, headers={k: v for k, v in with_tenant.items() if k != "X-Tenant"}
    )

    assert accepted.status_code == 200
    for refused in (retyped, rewritten, dropped):
        assert refused.status_code == 403
        assert refused.headers["x-amzn-errortype"] == "InvalidSignatureException:"
    assert "missing from the request: x-tenant" in dropped.json()["message"]
    # The refusal shows the canonical request the mock expected, body hash included.
    assert (
        hashlib.sha256(body.replace(b"hello", b"HELLO")).hexdigest() in rewritten.json()["message"]
    )


async def test_date_header_may_stand_in_for_x_amz_date(http: httpx.AsyncClient) -> None:
    path = converse_path()
    body = orjson.dumps({"messages": MESSAGES})
    # With a Date header on the request, botocore signs it instead of adding X-Amz-Date.
    headers = sign(absolute(http, path), body, headers={"Date": formatdate(usegmt=True)})
    assert "X-Amz-Date" not in headers

    response = await http.post(path, content=body, headers=headers)

    assert response.status_code == 200


# --- Faults and the recorder ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "ThrottlingException"),
        (500, "InternalServerException"),
        (503, "ServiceUnavailableException"),
        (424, "ModelErrorException"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["converse", "converse-stream"])
async def test_fault_status_raises_the_clients_matching_exception(
    mock_url: str, status: int, code: str, stream: bool
) -> None:
    client = bedrock(mock_url, headers={"x-mock-fault": f"status={status}"})
    error = await client_error(converse_stream if stream else converse, client=client)

    assert isinstance(error, getattr(client.exceptions, code))
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error.response["Error"]["Code"] == code


async def test_fault_reset_after_cuts_the_stream_short(mock_url: str) -> None:
    client = bedrock(mock_url, headers={"x-mock-fault": "reset_after=2"})
    received: list[dict[str, Any]] = []

    def read() -> None:
        for event in client.converse_stream(modelId=MODEL, messages=MESSAGES)["stream"]:
            received.append(event)

    # botocore does not wrap a reset mid-stream; urllib3's ProtocolError reaches the caller.
    with pytest.raises(Exception, match="ended prematurely"):
        await asyncio.to_thread(read)

    assert [next(iter(e)) for e in received] == ["messageStart", *["contentBlockDelta"] * 2]


async def test_fault_chunks_streams_exactly_that_many_deltas(mock_url: str) -> None:
    client = bedrock(mock_url, headers={"x-mock-fault": "chunks=50"})
    events = await converse_stream(client)

    assert sum("contentBlockDelta" in e for e in events) == 50
    assert stream_text(events).startswith(REPLY)
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 50


@pytest.mark.parametrize("operation", ["converse", "converse-stream"])
async def test_fault_garbage_answers_200_with_payloads_that_are_not_json(
    http: httpx.AsyncClient, operation: str
) -> None:
    path = converse_path(operation=operation)
    body = orjson.dumps({"messages": MESSAGES})
    headers = sign(absolute(http, path), body, headers={"x-mock-fault": "garbage=1"})
    response = await http.post(path, content=body, headers=headers)

    assert response.status_code == 200
    if operation == "converse":
        with pytest.raises(ValueError):
            response.json()
        return
    messages = decode(response.content)  # the framing stays valid
    assert messages[0].headers[":event-type"] == "messageStart"
    for message in messages:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(message.payload)


async def test_unknown_fault_key_is_a_validation_exception(mock_url: str) -> None:
    error = await client_error(
        converse, client=bedrock(mock_url, headers={"x-mock-fault": "boom=1"})
    )

    assert error.response["Error"]["Code"] == "ValidationException"
    assert "boom" in error.response["Error"]["Message"]


async def test_recorder_shows_the_signed_bedrock_request(
    client: Any, http: httpx.AsyncClient
) -> None:
    await http.delete("/_mock/requests")
    await converse(client, system=[{"text": "Be brief."}], inferenceConfig={"maxTokens": 50})

    (entry,) = (await http.get("/_mock/requests")).json()
    assert entry["method"] == "POST"
    assert entry["path"] == f"/model/{MODEL}/converse"
    assert entry["headers"]["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"
    )
    assert f"/{REGION}/bedrock/aws4_request" in entry["headers"]["authorization"]
    assert entry["json"] == {
        "messages": MESSAGES,
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 50},
    }
