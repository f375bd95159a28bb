"""Envoy's own replies under a Gateway API controller, in the client's error shape.

A controller's Envoy (Envoy Gateway, kgateway) has none of the bootstrap's local reply
mappers: a provider it cannot reach or that times out gets the client Envoy's plain
text ("no healthy upstream", "upstream request timeout"), with which the OpenAI and
Anthropic SDKs raise. Each test plays the request through the processor with real
ext_proc messages, the reply as such an Envoy sends it (``text/plain``; Envoy Gateway's
router adds no ``x-envoy-upstream-service-time``; Envoy's details as an attribute where
the rendered policy asks for them, none under kgateway), and hands what the client gets
to the official SDK, as its HTTP transport.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from google.protobuf import struct_pb2

from extproc.config import load_config
from extproc.config.model import GatewayConfig
from extproc.gateway_api import render_attachments
from extproc.processor import ATTRIBUTES_KEY
from extproc.testing import (
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

OPENAI_KEY = {"authorization": "Bearer team1-key"}
ANTHROPIC_KEY = {"x-api-key": "team1-key", "anthropic-version": "2023-06-01"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
PLAIN = {"content-type": "text/plain"}
RESET = b"upstream connect error or disconnect/reset before headers. reset reason: "


def controller_config() -> GatewayConfig:
    """The config as the gateway runs beside a controller (components/extension)."""
    config = load_config("config/gateway.yaml", environ={})
    envoy = config.envoy.model_copy(update={"lean_responses": False})
    return config.model_copy(update={"envoy": envoy})


def envoy_headers(
    status: int, details: str | None, headers: dict[str, str] | None = None
) -> ext.ProcessingRequest:
    message = response_headers(status, {**PLAIN, **(headers or {})})
    if details is not None:
        attributes = struct_pb2.Struct()
        attributes.update({"response.code_details": details})
        message.attributes[ATTRIBUTES_KEY].CopyFrom(attributes)
    return message


async def client_gets(
    path: str,
    key: dict[str, str],
    body: dict[str, Any],
    status: int,
    details: str | None,
    text: bytes,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """What the client receives when Envoy answers ``status`` with ``text`` itself."""
    answers = await run_stream(
        processor_for(controller_config()),
        [
            request_headers(path, headers=key),
            request_body(orjson.dumps(body)),
            envoy_headers(status, details, headers),
            response_body(text),
        ],
    )
    assert [a.WhichOneof("response") for a in answers] == [
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
    ]
    mutation = answers[2].response_headers.response.header_mutation
    sent = {":status": str(status), **PLAIN, **(headers or {})}
    for removed in mutation.remove_headers:
        sent.pop(removed, None)
    sent.update({h.header.key: h.header.raw_value.decode() for h in mutation.set_headers})
    return httpx.Response(
        int(sent.pop(":status")), headers=sent, content=client_body([text], answers[3:])
    )


def openai_raises(answer: httpx.Response) -> openai.APIStatusError:
    client = openai.OpenAI(
        api_key="team1-key",
        base_url="http://gateway/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(lambda _: answer)),
    )
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**CHAT)
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
        client.messages.create(**MESSAGES)
    return raised.value


@pytest.mark.parametrize(
    ("status", "details", "text", "code", "message"),
    [
        # Envoy Gateway: the details come as the attribute its policy asks for.
        (
            503,
            "upstream_reset_before_response_started{remote_connection_failure}",
            RESET + b"remote connection failure",
            "upstream_unavailable",
            "the upstream provider is unavailable",
        ),
        (503, "no_healthy_upstream", b"no healthy upstream", "upstream_unavailable", None),
        (504, "upstream_response_timeout", b"upstream request timeout", "upstream_timeout", None),
        # kgateway asks for no attributes: Envoy's text names the reset reason.
        (503, None, RESET + b"overflow", "gateway_overloaded", None),
        (503, None, b"no healthy upstream", "upstream_unavailable", None),
        (413, None, b"Payload Too Large", "request_too_large", None),
    ],
)
async def test_an_openai_client_reads_envoys_reply_as_openais_error(
    status: int, details: str | None, text: bytes, code: str, message: str | None
) -> None:
    answer = await client_gets(
        "/v1/chat/completions", OPENAI_KEY, CHAT, status, details, text, {"retry-after": "5"}
    )
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["retry-after"] == "5"  # Envoy's (or a filter's) advice is kept
    raised = openai_raises(answer)
    assert raised.status_code == status
    assert raised.code == code
    assert text.decode() not in str(raised)
    if message is not None:
        assert raised.message.endswith(message)


async def test_an_overflow_the_details_name_is_the_gateways_503() -> None:
    # A full circuit breaker on the gateway's side answered 500 by some Envoy builds:
    # the gateway at its limit, the 503 the bootstrap renders for it.
    answer = await client_gets(
        "/v1/chat/completions",
        OPENAI_KEY,
        CHAT,
        500,
        "upstream_reset_before_response_started{overflow}",
        RESET + b"overflow",
    )
    assert answer.status_code == 503
    assert openai_raises(answer).code == "gateway_overloaded"


@pytest.mark.parametrize(
    ("status", "details", "text", "sdk_error", "error_type"),
    [
        (503, "no_healthy_upstream", b"no healthy upstream", anthropic.InternalServerError, None),
        (
            503,
            None,
            RESET + b"connection timeout",
            anthropic.InternalServerError,
            "overloaded_error",
        ),
        (
            504,
            "upstream_response_timeout",
            b"upstream request timeout",
            anthropic.InternalServerError,
            "timeout_error",
        ),
    ],
)
async def test_an_anthropic_client_reads_envoys_reply_as_anthropics_error(
    status: int,
    details: str | None,
    text: bytes,
    sdk_error: type[anthropic.APIStatusError],
    error_type: str | None,
) -> None:
    answer = await client_gets("/v1/messages", ANTHROPIC_KEY, MESSAGES, status, details, text)
    assert answer.status_code == status
    body = answer.json()
    assert body["type"] == "error"
    if error_type is not None:
        assert body["error"]["type"] == error_type
    raised = anthropic_raises(answer)
    assert isinstance(raised, sdk_error)
    assert "upstream provider" in raised.message
    assert text.decode() not in raised.message


async def test_a_reply_the_bootstraps_mappers_already_shaped_is_left_alone() -> None:
    # The gateway's own bootstrap: Envoy's mapper rewrote the reply into JSON before the
    # gateway sees it; shaping it again would lose nothing but must change nothing.
    shaped = orjson.dumps(
        {
            "error": {
                "message": "the upstream provider is unavailable",
                "type": "service_unavailable",
                "param": None,
                "code": "upstream_unavailable",
            }
        }
    )
    answers = await run_stream(
        processor_for(load_config("config/gateway.yaml", environ={})),
        [
            request_headers("/v1/chat/completions", headers=OPENAI_KEY),
            request_body(orjson.dumps(CHAT)),
            response_headers(503, {"content-type": "application/json"}),
            response_body(shaped),
        ],
    )
    assert client_body([shaped], answers[3:]) == shaped
    assert not answers[2].response_headers.response.header_mutation.set_headers


async def test_a_providers_error_under_envoy_gateway_is_still_translated() -> None:
    # Envoy Gateway's router suppresses x-envoy-upstream-service-time: Envoy's details
    # say the answer came from the provider, whose error an OpenAI client reads in
    # OpenAI's shape (here Anthropic's 529 for Claude, an OpenAI client's 503).
    overloaded = orjson.dumps(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    chat_claude = {**CHAT, "model": "claude-3-5-haiku-latest"}
    message = response_headers(529)
    attributes = struct_pb2.Struct()
    attributes.update({"response.code_details": "via_upstream"})
    message.attributes[ATTRIBUTES_KEY].CopyFrom(attributes)
    answers = await run_stream(
        processor_for(controller_config()),
        [
            request_headers("/v1/chat/completions", headers=OPENAI_KEY),
            request_body(orjson.dumps(chat_claude)),
            message,
            response_body(overloaded),
        ],
    )
    mutation = answers[2].response_headers.response.header_mutation
    assert {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}[
        ":status"
    ] == "503"
    error = orjson.loads(client_body([overloaded], answers[3:]))["error"]
    assert error["message"] == "Overloaded"


def test_envoy_gateways_policy_asks_for_envoys_response_details() -> None:
    [policy] = [
        doc
        for doc in render_attachments(controller_config(), "envoy-gateway")
        if doc["kind"] == "EnvoyExtensionPolicy"
    ]
    response = policy["spec"]["extProc"][0]["processingMode"]["response"]
    assert response["attributes"] == ["response.code_details"]
