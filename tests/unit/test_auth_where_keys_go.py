"""A request without a key is told where its own SDK sends one.

The 401 said "send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'" on every
route. A google-genai user has no setting for either (the SDK sends ``x-goog-api-key``),
nor has an AWS SDK user, whose SDK sends the gateway key as a bearer token when
``AWS_BEARER_TOKEN_BEDROCK`` holds it. Each test sends the request through the processor
and hands the answer to the real SDK (google-genai; botocore's parser for Bedrock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import botocore.session
import httpx
import orjson
import pytest
from botocore.parsers import create_parser
from google import genai
from google.genai import errors, types

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.testing import processor_for, request_headers, run_stream
from tests.unit.test_gemini_review import PREFIX, memory_services, play, vertex

__all__ = ["vertex"]

CONVERSE = "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
BASIC = "Basic dGVhbTE6dGVhbTEta2V5"  # team1:team1-key


async def refused(processor: Processor, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    [answer] = await run_stream(processor, [request_headers(path, headers=headers)])
    immediate = answer.immediate_response
    sent = {h.header.key: h.header.raw_value.decode() for h in immediate.headers.set_headers}
    return immediate.status.code, (sent, immediate.body)


def genai_raises(status: int, body: bytes) -> errors.APIError:
    """What google-genai raises for a generateContent call answered ``status``, ``body``."""

    def reply(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"content-type": "application/json"}, content=body)

    http = httpx.Client(transport=httpx.MockTransport(reply))
    options = types.HttpOptions(base_url="http://gateway", api_version="v1beta", httpx_client=http)
    client = genai.Client(api_key="unused", http_options=options)
    with pytest.raises(errors.APIError) as raised:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    return raised.value


def botocore_reads(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The error botocore raises for this answer to a Converse call (ClientError.response)."""
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("Converse").output_shape
    parsed = create_parser("rest-json").parse(
        {"status_code": status, "headers": headers, "body": body}, shape
    )
    error: dict[str, Any] = parsed["Error"]
    return error


@pytest.mark.parametrize("headers", [{}, {"authorization": BASIC}], ids=["none", "basic"])
async def test_a_gemini_client_without_a_key_is_told_of_x_goog_api_key(
    vertex: tuple[str, Path], headers: dict[str, str]
) -> None:
    answers = await play(
        vertex, [request_headers(f"{PREFIX}:generateContent", headers=headers)], memory_services()
    )
    immediate = answers[-1].immediate_response

    error = genai_raises(immediate.status.code, immediate.body)
    assert (error.code, error.status) == (401, "UNAUTHENTICATED")
    assert error.message is not None and error.message.startswith("no API key found")
    assert "'x-goog-api-key: <key>'" in error.message
    assert "x-api-key" not in error.message.replace("x-goog-api-key", "")


@pytest.mark.parametrize("headers", [{}, {"authorization": BASIC}], ids=["none", "basic"])
async def test_an_aws_sdk_without_a_key_is_told_of_its_bearer_token(
    processor: Processor, headers: dict[str, str]
) -> None:
    status, (sent, body) = await refused(processor, CONVERSE, headers)

    error = botocore_reads(status, sent, body)
    assert (status, error["Code"]) == (401, "AccessDeniedException")
    assert error["Message"].startswith("no API key found")
    assert "AWS_BEARER_TOKEN_BEDROCK" in error["Message"]
    assert "'Authorization: Bearer <key>'" in error["Message"]
    assert "x-api-key" not in error["Message"]
    assert b"dGVhbTE6dGVhbTEta2V5" not in body


async def test_an_anthropic_client_is_told_of_x_api_key_first(processor: Processor) -> None:
    status, (_, body) = await refused(
        processor, "/v1/messages", {"anthropic-version": "2023-06-01"}
    )
    assert status == 401
    assert orjson.loads(body)["error"]["message"] == (
        "no API key found: send it as 'x-api-key: <key>' or 'Authorization: Bearer <key>'"
    )


async def test_an_openai_client_is_told_as_before(processor: Processor) -> None:
    status, (_, body) = await refused(processor, "/v1/chat/completions", {})
    assert status == 401
    assert orjson.loads(body)["error"]["message"] == (
        "no API key found: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
    )


async def test_a_route_that_names_its_key_header_names_it() -> None:
    partner = """
  - name: partner
    path_prefix: /partner
    auth: {methods: [api_key], api_key_header: x-partner-key}
"""
    text = DEFAULT_CONFIG.read_text().replace("\nroutes:\n", "\nroutes:" + partner, 1)
    processor = processor_for(parse_config(text, "gateway.yaml", {}), memory_services())

    status, (_, body) = await refused(processor, "/partner/v1/chat/completions", {})
    assert status == 401
    assert orjson.loads(body)["error"]["message"] == (
        "no API key found: send it as 'x-partner-key: <key>' or 'Authorization: Bearer <key>'"
    )
