"""Credentials and secrets, fed through the real processor: what is read, what is passed on.

A client's credential forms, a key in the query string, a provider refusing the
gateway's own key (OpenAI's 401 names a fragment of it), the scrubbing of a
provider's words, and a config error on a line that holds a secret.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from extproc.config import ConfigError, GatewayConfig, parse_config
from extproc.config.model import AwsConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.errors import without_secrets
from extproc.mock_llm.openai_api import masked_key
from extproc.processor import Processor
from extproc.providers.aws_signer import AwsSigner
from extproc.runtime import Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.anthropic_errors import client_error

PROVIDER_KEY = "Zq4vPROVIDERkey-openai-7d1c0e5aW9x3"
ENV = {"MOCK_LLM_API_KEY": PROVIDER_KEY}
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
MESSAGES = orjson.dumps(
    {"model": "claude-3-5-haiku-latest", "max_tokens": 9, "messages": [{"role": "user"}]}
)
JSON = "application/json"
# Envoy's router marks a provider's answer with this header.
FROM_PROVIDER = {"x-envoy-upstream-service-time": "3"}


def config() -> GatewayConfig:
    return parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", ENV)


def processor() -> Processor:
    return processor_for(config(), Services(GatewayMetrics(), AccessLog(stdout=False)))


async def first_answer(path: str, headers: dict[str, str], body: bytes = CHAT) -> Any:
    answers = await run_stream(
        processor(), [request_headers(path, headers=headers), request_body(body)]
    )
    return answers[-1]


def refusal(answer: Any) -> tuple[int, dict[str, Any]]:
    immediate = answer.immediate_response
    return immediate.status.code, orjson.loads(immediate.body)["error"]


# --- what a client presents -----------------------------------------------------------


async def test_an_empty_bearer_leaves_the_x_api_key_to_be_read() -> None:
    answer = await first_answer(
        "/v1/chat/completions", {"authorization": "Bearer", "x-api-key": "team1-key"}
    )
    assert not answer.HasField("immediate_response")


async def test_an_empty_bearer_alone_is_told_no_key_was_found() -> None:
    status, error = refusal(await first_answer("/v1/chat/completions", {"authorization": "Bearer"}))
    assert status == 401
    assert error["message"].startswith("no API key found")


@pytest.mark.parametrize(
    "query", ["api-key=team2-key", "API_KEY=team2-key", "key=", "api%2Dkey=x", "a=1&token=t"]
)
async def test_a_credential_in_the_query_string_is_refused_naming_the_parameter(
    query: str,
) -> None:
    answer = await first_answer(
        f"/v1/chat/completions?{query}", {"authorization": "Bearer team1-key"}
    )
    status, error = refusal(answer)
    assert status == 400
    assert error["code"] == "credential_in_query"
    assert "query string" in error["message"] and f"'{error['param']}'" in error["message"]
    assert b"team2-key" not in answer.immediate_response.body


async def test_other_query_parameters_and_the_routes_model_parameter_pass() -> None:
    answer = await first_answer(
        "/openai?model=gpt-4o-mini&api-version=2024-10-21", {"authorization": "Bearer team1-key"}
    )
    assert not answer.HasField("immediate_response")


async def test_cookies_are_removed_with_the_clients_credentials() -> None:
    [answer] = await run_stream(
        processor(),
        [
            request_headers(
                "/v1/chat/completions",
                headers={"authorization": "Bearer team1-key", "cookie": "sso=s3cret-session"},
            )
        ],
    )
    removed = answer.request_headers.response.header_mutation.remove_headers
    assert {"authorization", "cookie"} <= set(removed)


# --- what a provider says about the gateway's own key ---------------------------------

OPENAI_401 = orjson.dumps(
    {
        "error": {
            "message": f"Incorrect API key provided: {masked_key(PROVIDER_KEY)}. You can find "
            "your API key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
)


def delivered(answers: list[Any]) -> tuple[str | None, bytes]:
    """The status the gateway set on the answer (None: the provider's) and the body sent."""
    status = None
    for answer in answers:
        for phase in ("response_headers", "response_body"):
            if answer.HasField(phase):
                mutation = getattr(answer, phase).response.header_mutation
                for option in mutation.set_headers:
                    if option.header.key == ":status":
                        status = option.header.raw_value.decode()
    body = answers[-1].response_body.response.body_mutation.body
    return status, body


@pytest.mark.parametrize("status", [401, 403])
async def test_an_openai_providers_refusal_of_the_gateways_key_is_the_gateways_error(
    status: int,
) -> None:
    answers = await run_stream(
        processor(),
        [
            request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
            request_body(CHAT),
            response_headers(status, FROM_PROVIDER),
            response_body(OPENAI_401),
        ],
    )
    sent_status, body = delivered(answers)
    assert sent_status is None  # the provider's: the lean path could not change it
    error = orjson.loads(body)["error"]
    assert error["code"] == "upstream_credentials_refused"
    assert "invalid_api_key" in error["message"]
    assert "not a problem with your API key" in error["message"]
    text = body.decode()
    assert PROVIDER_KEY[:4] not in text and PROVIDER_KEY[-4:] not in text


async def test_an_anthropic_providers_refusal_is_the_gateways_error_in_anthropics_shape() -> None:
    said = orjson.dumps(
        {"type": "error", "error": {"type": "permission_error", "message": "no access"}}
    )
    answers = await run_stream(
        processor(),
        [
            request_headers("/v1/messages", headers={"x-api-key": "team1-key"}),
            request_body(MESSAGES),
            response_headers(403, FROM_PROVIDER),
            response_body(said),
        ],
    )
    sent_status, body = delivered(answers)
    assert sent_status is None
    document = orjson.loads(body)
    assert document["type"] == "error" and document["error"]["type"] == "api_error"
    assert "permission_error" in document["error"]["message"]
    assert "no access" in document["error"]["message"]


def test_a_translated_anthropic_refusal_keeps_no_fragment_of_the_key() -> None:
    status, error = client_error(
        401, "authentication_error", "invalid x-api-key sk-ant-api03-****************wxyz"
    )
    assert status == 502 and error.code == "upstream_credentials_refused"
    assert "invalid x-api-key" in error.message
    assert "wxyz" not in error.message and "sk-ant" not in error.message


@pytest.mark.parametrize(
    ("said", "kept"),
    [
        ("Incorrect API key provided: sk-proj-********abcd.", "Incorrect API key provided:"),
        ("key sk-ant-api03-Abc123 is invalid", "is invalid"),
        ("The security token AKIAIOSFODNN7EXAMPLE is invalid", "is invalid"),
        ("bad token eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl here", "here"),
        ("Your credit balance is too low", "Your credit balance is too low"),
    ],
)
def test_words_that_look_like_a_key_are_scrubbed_from_a_providers_message(
    said: str, kept: str
) -> None:
    scrubbed = without_secrets(said)
    assert kept in scrubbed
    for secret in ("abcd", "Abc123", "AKIAIOSFODNN7EXAMPLE", "c2lnbmF0dXJl"):
        assert secret not in scrubbed


def test_a_known_secret_is_scrubbed_whole_and_by_its_ends() -> None:
    text = f"key {PROVIDER_KEY}, or {PROVIDER_KEY[:4]}... ending {PROVIDER_KEY[-4:]}"
    scrubbed = without_secrets(text, [PROVIDER_KEY])
    assert PROVIDER_KEY[:4] not in scrubbed and PROVIDER_KEY[-4:] not in scrubbed


# --- config errors --------------------------------------------------------------------


@pytest.mark.parametrize("value", [f"!{PROVIDER_KEY}", f"*{PROVIDER_KEY}"])
def test_a_yaml_error_on_a_line_holding_a_secret_never_echoes_it(value: str) -> None:
    text = DEFAULT_CONFIG.read_text().replace("${MOCK_LLM_API_KEY:-mock-provider-key}", value, 1)
    with pytest.raises(ConfigError) as failed:
        parse_config(text, "gateway.yaml", {})
    shown = str(failed.value)
    assert "YAML syntax error at line" in shown
    assert PROVIDER_KEY[:8] not in shown and PROVIDER_KEY[-4:] not in shown


# --- the diagnostic log at DEBUG ------------------------------------------------------


async def test_an_aws_session_token_never_reaches_the_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "Fw9kSESSIONtoken-5a5a5a5aJd3q"
    aws = AwsConfig.model_validate(
        {
            "region": "us-east-1",
            "access_key_id": "AKIDMOCK",
            "secret_access_key": "mock-secret-key",
            "session_token": token,
        }
    )
    signer = AwsSigner(aws, "http://bedrock.test")
    await signer.start()
    with caplog.at_level(logging.DEBUG):
        signed = signer.sign("POST", "/model/m/converse", b"{}", {"content-type": JSON})
    assert signed["x-amz-security-token"] == token  # the control: it was used
    assert token not in caplog.text and "mock-secret-key" not in caplog.text
