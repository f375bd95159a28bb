"""A provider's error in another API's shape reaches each client in its own API's shape.

Where the gateway passes a provider's error on (an OpenAI client on an ``openai``
provider, an Anthropic client on an ``anthropic`` one, an AWS SDK on Bedrock), what
answers may be a proxy or an OpenAI-compatible endpoint that writes its errors in
another API's shape: Anthropic's ``{"type": "error", ...}`` with its 529, OpenAI's
``{"error": {...}}``, Kong's ``{"message": ...}``. Before, such a body reached the
client as it came: an OpenAI client read an Anthropic error, an Anthropic client read
OpenAI's ``requests`` where it looks for Anthropic's type, and botocore raised an
exception named by the bare status, with an empty message. An empty error body reached
Anthropic and Bedrock clients empty. Each test plays the call through the processor
(real ext_proc messages) and hands what the client receives to its real SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import botocore.session
import httpx
import httpx2
import openai
import orjson
import pytest
from botocore.parsers import create_parser

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.sse_play import only_line
from tests.unit.test_gemini_error_pages import genai_raises, what_the_client_gets
from tests.unit.test_gemini_review import vertex

__all__ = ["vertex"]

OPENAI_KEY = {"authorization": "Bearer team1-key"}
ANTHROPIC_KEY = {"x-api-key": "team1-key", "anthropic-version": "2023-06-01"}
USER = [{"role": "user", "content": "hi"}]
CHAT = ("/v1/chat/completions", OPENAI_KEY, {"model": "gpt-4o-mini", "messages": USER})
MESSAGES = (
    "/v1/messages",
    ANTHROPIC_KEY,
    {"model": "claude-3-5-haiku-latest", "max_tokens": 16, "messages": USER},
)
CONVERSE = (
    "/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
    OPENAI_KEY,
    {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
)
CHAT_ON_CLAUDE = (
    "/v1/chat/completions",
    OPENAI_KEY,
    {"model": "claude-3-5-haiku-latest", "messages": USER},
)
CHAT_ON_BEDROCK = (
    "/v1/chat/completions",
    OPENAI_KEY,
    {"model": "anthropic.claude-3-haiku-20240307-v1:0", "messages": USER},
)
MESSAGES_ON_BEDROCK = (
    "/v1/messages",
    ANTHROPIC_KEY,
    {"model": "anthropic.claude-3-haiku-20240307-v1:0", "max_tokens": 16, "messages": USER},
)
JSON = {"content-type": "application/json"}
ANTHROPIC_OVERLOADED = orjson.dumps(
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
)
OPENAI_RATE_LIMITED = orjson.dumps(
    {
        "error": {
            "message": "Rate limit reached for requests",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
)
KONG_RATE_LIMITED = b'{"message": "API rate limit exceeded"}'
MALFORMED = b'{"message": "Malformed input request"}'


@pytest.fixture
async def processor(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    """A processor whose runtime has loaded its AWS credentials, as the server's does."""
    runtime = Runtime(config, services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


async def client_gets(
    processor: Processor,
    call: tuple[str, dict[str, str], dict[str, Any]],
    status: int,
    headers: dict[str, str],
    body: bytes,
) -> httpx.Response:
    """What the client of ``call`` receives when its provider answers ``status`` with
    ``headers`` and ``body``."""
    path, key, request = call
    sent = {**headers, "x-envoy-upstream-service-time": "3"}
    answers = await run_stream(
        processor,
        [
            request_headers(path, headers=key),
            request_body(orjson.dumps(request)),
            response_headers(status, sent),
            response_body(body),
        ],
    )
    mutation = answers[2].response_headers.response.header_mutation
    received = {":status": str(status), **sent}
    for removed in mutation.remove_headers:
        received.pop(removed, None)
    received.update({h.header.key: h.header.raw_value.decode() for h in mutation.set_headers})
    return httpx.Response(
        int(received.pop(":status")), headers=received, content=client_body([body], answers)
    )


def openai_raises(answer: httpx.Response) -> openai.APIStatusError:
    client = openai.OpenAI(
        api_key="team1-key",
        base_url="http://gateway/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(lambda _: answer)),
    )
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    return raised.value


def anthropic_raises(answer: httpx.Response) -> anthropic.APIStatusError:
    # Anthropic's SDK speaks through httpx2: the same answer, in its types.
    same = httpx2.Response(answer.status_code, headers=dict(answer.headers), content=answer.content)
    client = anthropic.Anthropic(
        api_key="team1-key",
        base_url="http://gateway",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(lambda _: same)),
    )
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(model="claude-3-5-haiku-latest", max_tokens=16, messages=USER)  # type: ignore[list-item]
    return raised.value


def botocore_reads(answer: httpx.Response) -> dict[str, Any]:
    """The error botocore raises for this answer to a Converse call (ClientError.response)."""
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("Converse").output_shape
    parsed = create_parser("rest-json").parse(
        {"status_code": answer.status_code, "headers": answer.headers, "body": answer.content},
        shape,
    )
    error: dict[str, Any] = parsed["Error"]
    return error


# --- OpenAI clients --------------------------------------------------------------------


async def test_anthropics_overload_from_an_openai_compatible_endpoint_reads_as_openais_error(
    processor: Processor, services: Services
) -> None:
    answer = await client_gets(processor, CHAT, 529, JSON, ANTHROPIC_OVERLOADED)

    raised = openai_raises(answer)
    assert raised.status_code == 529  # the provider's: on the lean path it has left already
    assert isinstance(raised, openai.InternalServerError)  # retried, as an overload should be
    assert raised.body == {
        "message": "Overloaded",
        "type": "server_error",
        "param": None,
        "code": "overloaded_error",
    }
    assert (raised.type, raised.code) == ("server_error", "overloaded_error")
    line = only_line(services)
    assert (line["http_status_code"], line["upstream_status_code"]) == (529, 529)
    assert line["outcome"] == "upstream_error"


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps(
            {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}
        ),
        b'{"message": "Slow down"}',
        b'{"error": "Slow down"}',
    ],
    ids=["anthropic", "kong", "bare"],
)
async def test_a_rate_limit_in_another_shape_reads_as_openais_with_its_retry_after(
    processor: Processor, body: bytes
) -> None:
    answer = await client_gets(processor, CHAT, 429, {**JSON, "retry-after": "7"}, body)

    raised = openai_raises(answer)
    assert isinstance(raised, openai.RateLimitError)
    assert isinstance(raised.body, dict)
    assert (raised.body["message"], raised.type) == ("Slow down", "rate_limit_error")
    assert answer.headers["retry-after"] == "7"


async def test_openais_own_error_passes_to_an_openai_client_as_it_came(
    processor: Processor,
) -> None:
    answer = await client_gets(processor, CHAT, 429, JSON, OPENAI_RATE_LIMITED)

    assert answer.content == OPENAI_RATE_LIMITED


# --- Anthropic clients -----------------------------------------------------------------


async def test_openais_rate_limit_from_a_proxy_reads_as_anthropics_rate_limit_error(
    processor: Processor, services: Services
) -> None:
    answer = await client_gets(processor, MESSAGES, 429, JSON, OPENAI_RATE_LIMITED)

    raised = anthropic_raises(answer)
    assert isinstance(raised, anthropic.RateLimitError)
    assert raised.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached for requests"},
    }
    assert only_line(services)["http_status_code"] == 429


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (400, MALFORMED, "invalid_request_error", "Malformed input request"),
        (503, b"", "overloaded_error", "the provider answered with HTTP 503"),
        (500, b'{"error": "model crashed"}', "api_error", "model crashed"),
    ],
    ids=["bedrock-shaped", "empty", "bare"],
)  # fmt: skip
async def test_an_error_anthropics_sdk_cannot_read_reaches_it_in_anthropics_shape(
    processor: Processor, status: int, body: bytes, kind: str, message: str
) -> None:
    answer = await client_gets(processor, MESSAGES, status, JSON, body)

    raised = anthropic_raises(answer)
    assert raised.status_code == status
    assert raised.body == {"type": "error", "error": {"type": kind, "message": message}}


async def test_a_credential_in_a_foreign_error_never_reaches_the_anthropic_client(
    processor: Processor,
) -> None:
    key = "sk-ant-api03-" + "Ab3" * 30
    said = {"error": {"message": f"bad header x-api-key: {key}", "type": "invalid_request"}}

    answer = await client_gets(processor, MESSAGES, 400, JSON, orjson.dumps(said))

    error = orjson.loads(answer.content)["error"]
    assert error["type"] == "invalid_request_error"
    assert key[:12] not in answer.text and key[-8:] not in answer.text
    assert error["message"].startswith("bad header x-api-key: ")


# --- AWS SDK clients (Bedrock's own API) -------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (529, ANTHROPIC_OVERLOADED, "InternalServerException", "Overloaded"),
        (429, OPENAI_RATE_LIMITED, "ThrottlingException", "Rate limit reached for requests"),
        (500, b"", "InternalServerException", "the provider answered with HTTP 500"),
    ],
    ids=["anthropic-shaped", "openai-shaped", "empty"],
)
async def test_an_error_without_bedrocks_shape_reaches_botocore_with_its_message_and_name(
    processor: Processor, status: int, body: bytes, code: str, message: str
) -> None:
    answer = await client_gets(processor, CONVERSE, status, JSON, body)

    assert botocore_reads(answer) == {"Code": code, "Message": message}


async def test_bedrocks_own_error_reaches_botocore_as_it_came(processor: Processor) -> None:
    sent = {**JSON, "x-amzn-errortype": "ValidationException:http://internal.amazon.com/"}
    answer = await client_gets(processor, CONVERSE, 400, sent, MALFORMED)

    assert answer.content == MALFORMED
    assert botocore_reads(answer) == {
        "Code": "ValidationException",
        "Message": "Malformed input request",
    }


# --- Gemini clients (Google's SDKs, Gemini CLI) -------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "google_status", "message"),
    [
        (429, KONG_RATE_LIMITED, "RESOURCE_EXHAUSTED", "API rate limit exceeded"),
        (503, OPENAI_RATE_LIMITED, "UNAVAILABLE", "Rate limit reached for requests"),
        (529, ANTHROPIC_OVERLOADED, "INTERNAL", "Overloaded"),
    ],
    ids=["kong", "openai-shaped", "anthropic-shaped"],
)  # fmt: skip
async def test_a_proxys_error_in_another_shape_reaches_google_genai_as_googles_error(
    vertex: tuple[str, Path], status: int, body: bytes, google_status: str, message: str
) -> None:
    answer = await what_the_client_gets(vertex, "generateContent", status, "application/json", body)

    raised = genai_raises(answer, "generateContent")
    assert (raised.code, raised.status, raised.message) == (status, google_status, message)


# --- Translated pairs: the provider's message is kept whatever the shape --------------


@pytest.mark.parametrize(
    ("call", "status", "body", "message"),
    [
        (CHAT_ON_CLAUDE, 400, MALFORMED, "Malformed input request"),
        (CHAT_ON_CLAUDE, 500, b'{"error": "model crashed"}', "model crashed"),
        (CHAT_ON_BEDROCK, 529, ANTHROPIC_OVERLOADED, "Overloaded"),
        (CHAT_ON_BEDROCK, 429, OPENAI_RATE_LIMITED, "Rate limit reached for requests"),
    ],
    ids=["claude-bedrock-shaped", "claude-bare", "bedrock-anthropic", "bedrock-openai"],
)  # fmt: skip
async def test_a_proxys_error_keeps_its_message_where_the_gateway_translates_the_answer(
    processor: Processor,
    call: tuple[str, dict[str, str], dict[str, Any]],
    status: int,
    body: bytes,
    message: str,
) -> None:
    answer = await client_gets(processor, call, status, JSON, body)

    assert openai_raises(answer).body["message"] == message  # type: ignore[index]


async def test_a_proxys_error_keeps_its_message_for_an_anthropic_client_of_bedrock(
    processor: Processor,
) -> None:
    answer = await client_gets(processor, MESSAGES_ON_BEDROCK, 529, JSON, ANTHROPIC_OVERLOADED)

    raised = anthropic_raises(answer)
    assert raised.body == {"type": "error", "error": {"type": "api_error", "message": "Overloaded"}}
