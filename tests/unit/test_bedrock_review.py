"""Bedrock review: what AWS checks that the gateway's signer, translator and mock must agree on.

- The signature covers the ``host`` Envoy sends (the rendered ``host_rewrite_literal``),
  checked with the mock's SigV4 verifier, which recomputes it from the request as received.
- The mock refuses what Bedrock refuses (turns that do not alternate, a conversation that
  does not start with the user) and serves what Bedrock serves (inference profile ARNs),
  driven by the official boto3 client; what the translator sends passes.
- Blank text, empty turns and a prefill's trailing whitespace, which OpenAI takes and
  Converse refuses, are not sent.
- Credentials: the documented config with and without a session token; botocore's default
  chain from a shared credentials profile and from a real container credentials endpoint,
  refreshed from it off the event loop.
- Titan and Llama refusals (system prompts, tools) reach the client as a 400."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import orjson
import pytest
from botocore.exceptions import ClientError
from multidict import CIMultiDict, CIMultiDictProxy

from extproc.config.loader import parse_config
from extproc.config.model import AwsConfig, GatewayConfig
from extproc.envoy_bootstrap import render_bootstrap
from extproc.errors import BadRequestError
from extproc.mock_llm.bedrock_api import SigV4Verifier
from extproc.providers.aws_signer import AwsSigner
from extproc.testing import serve_mock
from extproc.translators.openai_bedrock import request_path, translate_error, translate_request

ACCESS_KEY = "AKIDMOCK"
SECRET_KEY = "mock-secret-key"
REGION = "us-east-1"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
USER = {"role": "user", "content": [{"text": "hello"}]}
ASSISTANT = {"role": "assistant", "content": [{"text": "hi"}]}


# --- the signed host is the host Envoy sends -------------------------------------------------


def bedrock_config(base_url: str) -> GatewayConfig:
    aws = {"region": REGION, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}
    return GatewayConfig.model_validate(
        {
            "providers": [{"name": "aws", "type": "bedrock", "base_url": base_url, "aws": aws}],
            "models": [{"name": MODEL, "provider": "aws"}],
        }
    )


def host_envoy_sends(config: GatewayConfig) -> str:
    """The ``host`` Envoy rewrites a request to the provider to (its rendered route)."""
    routes = render_bootstrap(config)["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"
    ][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    [route] = [route for route in routes if route["name"] == "provider_aws"]
    host: str = route["route"]["host_rewrite_literal"]
    return host


@pytest.mark.parametrize(
    "base_url",
    [
        "https://bedrock-runtime.us-east-1.amazonaws.com",
        # The default port written out, and a host with capitals: Envoy sends them as
        # written, so AWS checks the signature against them as written.
        "https://bedrock-runtime.us-east-1.amazonaws.com:443",
        "http://Bedrock.Internal.Example:8089",
        "http://[::1]:9000",
    ],
)
async def test_the_signature_covers_the_host_envoy_sends(base_url: str) -> None:
    config = bedrock_config(base_url)
    provider = config.providers[0]
    assert provider.aws is not None
    signer = AwsSigner(provider.aws, provider.base_url)
    await signer.start()
    path = request_path(MODEL, stream=False)
    body = orjson.dumps(translate_request({"messages": [{"role": "user", "content": "hi"}]}))
    signed = signer.sign("POST", path, body, {"content-type": "application/json"})
    # The request as it leaves Envoy: its host, the gateway's headers, Envoy's own.
    received = CIMultiDict(
        {
            "host": host_envoy_sends(config),
            "content-type": "application/json",
            "x-forwarded-proto": "http",
            **signed,
        }
    )
    verifier = SigV4Verifier(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, region=REGION)
    verifier.verify(
        method="POST", target=path, scheme="https", headers=CIMultiDictProxy(received), body=body
    )


# --- the mock refuses and serves what Bedrock does -------------------------------------------


@pytest.fixture(scope="module")
async def mock_url() -> AsyncIterator[str]:
    async with serve_mock() as url:
        yield url


def bedrock(url: str) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(retries={"max_attempts": 0}),
    )


async def converse(url: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("modelId", MODEL)
    result: dict[str, Any] = await asyncio.to_thread(bedrock(url).converse, **kwargs)
    return result


async def refused(url: str, **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await converse(url, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    "messages",
    [
        [USER, USER],
        [USER, ASSISTANT, ASSISTANT, USER],
    ],
    ids=["two-user-turns", "two-assistant-turns"],
)
async def test_turns_that_do_not_alternate_are_refused_as_bedrock_does(
    mock_url: str, messages: list[dict[str, Any]]
) -> None:
    error = await refused(mock_url, messages=messages)

    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["Error"]["Message"].startswith(
        "A conversation must alternate between user and assistant roles."
    )


async def test_a_conversation_that_starts_with_the_assistant_is_refused(mock_url: str) -> None:
    error = await refused(mock_url, messages=[ASSISTANT, USER])

    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["Error"]["Message"].startswith(
        "A conversation must start with a user message."
    )


async def test_what_the_translator_sends_alternates_and_is_accepted(mock_url: str) -> None:
    # OpenAI allows consecutive messages of one role, developer messages mid-way and
    # several tool results in a row; Converse gets alternating turns.
    openai = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "user", "content": "second"},
            {"role": "developer", "content": "Use the tool."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{n}",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": "{}"},
                    }
                    for n in (1, 2)
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "one"},
            {"role": "tool", "tool_call_id": "call_2", "content": "two"},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup"}}],
    }
    converse_body = translate_request(openai)

    answer = await converse(mock_url, **converse_body)

    assert [turn["role"] for turn in converse_body["messages"]] == ["user", "assistant", "user"]
    assert answer["output"]["message"]["content"] == [{"text": "Mock reply to: thanks"}]


@pytest.mark.parametrize(
    "model_id",
    [
        f"arn:aws:bedrock:{REGION}:123456789012:inference-profile/us.{MODEL}",
        f"arn:aws:bedrock:{REGION}::foundation-model/{MODEL}",
    ],
    ids=["inference-profile", "foundation-model"],
)
async def test_model_arns_name_the_model_bedrock_serves(mock_url: str, model_id: str) -> None:
    answer = await converse(mock_url, modelId=model_id, messages=[USER])

    assert answer["output"]["message"]["content"] == [{"text": "Mock reply to: hello"}]


async def test_an_arn_of_an_unknown_model_is_not_found(mock_url: str) -> None:
    model_id = f"arn:aws:bedrock:{REGION}:123456789012:inference-profile/us.acme.unknown-v1:0"
    error = await refused(mock_url, modelId=model_id, messages=[USER])

    assert error.response["Error"]["Code"] == "ResourceNotFoundException"


# --- titan and llama: what Converse refuses reaches the client as a 400 --------------------


def test_a_model_without_system_prompts_gets_bedrocks_reason_as_a_400() -> None:
    # What Bedrock answers a system prompt sent to Titan (or Mistral 7B) on Converse.
    message = (
        "This model doesn't support system messages. Try again without a system message "
        "or use a model that supports system messages."
    )
    status, body = translate_error(
        400,
        orjson.dumps({"message": message}),
        "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
    )

    error = orjson.loads(body)["error"]
    assert status == 400
    assert (error["type"], error["code"], error["message"]) == (
        "invalid_request_error",
        "ValidationException",
        message,
    )


def test_n_above_one_is_refused_before_bedrock() -> None:
    with pytest.raises(BadRequestError) as caught:
        translate_request({"messages": [{"role": "user", "content": "hi"}], "n": 2})

    assert caught.value.status == 400
    assert caught.value.param == "n"


# --- ambient credentials: a container credentials endpoint, refreshed off the loop ---------


class ContainerCredentials(BaseHTTPRequestHandler):
    """The ECS / EKS Pod Identity credentials endpoint, serving the server's current keys."""

    server: CredentialServer

    def do_GET(self) -> None:
        server = self.server
        server.asked.set()
        server.release.wait(timeout=30)
        body = json.dumps(server.keys()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


class CredentialServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ContainerCredentials)
        self.generation = 0
        self.lifetime = datetime.timedelta(hours=1)
        self.asked = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def keys(self) -> dict[str, str]:
        self.generation += 1
        expiry = datetime.datetime.now(datetime.UTC) + self.lifetime
        return {
            "AccessKeyId": f"ASIACONTAINER{self.generation}",
            "SecretAccessKey": f"secret-{self.generation}",
            "Token": f"token-{self.generation}",
            "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


@pytest.fixture
def ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS settings from the machine running the tests: empty shared files, no IMDS."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        empty = tmp_path / name.lower()
        empty.write_text("")
        monkeypatch.setenv(name, str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


@pytest.fixture
def container_endpoint(
    ambient_aws: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CredentialServer]:
    server = CredentialServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{port}/creds")
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def chain_only() -> AwsConfig:
    """A provider's aws section without static keys: credentials from the default chain."""
    config = bedrock_config("https://bedrock-runtime.us-east-1.amazonaws.com").providers[0].aws
    assert config is not None
    return config.model_copy(update={"access_key_id": None, "secret_access_key": None})


async def test_a_profile_of_the_shared_credentials_file_is_used(
    ambient_aws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = ambient_aws / "aws_shared_credentials_file"
    shared.write_text(
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n"
        "[gateway]\naws_access_key_id = AKIDGATEWAY\naws_secret_access_key = s2\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "gateway")
    signer = AwsSigner(chain_only(), "https://bedrock-runtime.us-east-1.amazonaws.com")
    await signer.start()

    headers = signer.sign("POST", request_path(MODEL, stream=False), b"{}", {})
    assert signer.method == "shared-credentials-file"
    assert "Credential=AKIDGATEWAY/" in headers["authorization"]


async def test_container_credentials_are_used_and_refreshed_off_the_event_loop(
    container_endpoint: CredentialServer,
) -> None:
    # Temporary credentials close to their expiry: botocore wants them refreshed.
    container_endpoint.lifetime = datetime.timedelta(minutes=5)
    signer = AwsSigner(chain_only(), "https://bedrock-runtime.us-east-1.amazonaws.com")
    await signer.start()
    path = request_path(MODEL, stream=False)
    first = signer.sign("POST", path, b"{}", {})
    assert signer.method == "container-role"
    started_with = container_endpoint.generation
    assert f"Credential=ASIACONTAINER{started_with}/" in first["authorization"]
    assert first["x-amz-security-token"] == f"token-{started_with}"

    # The endpoint holds its answer: the loop must keep signing (with the current keys).
    container_endpoint.lifetime = datetime.timedelta(hours=1)
    container_endpoint.asked.clear()
    container_endpoint.release.clear()
    refresh = asyncio.create_task(signer.refresh_if_needed())
    assert await asyncio.to_thread(container_endpoint.asked.wait, 30)
    during = signer.sign("POST", path, b"{}", {})
    container_endpoint.release.set()
    await refresh
    after = signer.sign("POST", path, b"{}", {})

    assert f"Credential=ASIACONTAINER{started_with}/" in during["authorization"]
    assert f"Credential=ASIACONTAINER{started_with + 1}/" in after["authorization"]
    assert after["x-amz-security-token"] == f"token-{started_with + 1}"


# --- blank text: Converse refuses it, OpenAI clients send it -------------------------------


def test_blank_text_is_left_out_as_empty_text_is() -> None:
    # Models often answer "\n\n" before their tool calls; clients send it back as history.
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    converse = translate_request(
        {
            "messages": [
                {"role": "system", "content": "  "},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                                             {"type": "text", "text": " \n"}]},
                {"role": "assistant", "content": "\n\n", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "found"},
            ],
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
        }
    )  # fmt: skip

    assert "system" not in converse
    assert converse["messages"][0]["content"] == [{"text": "look"}]
    assert converse["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": "call_1", "name": "lookup", "input": {}}}
    ]


def test_a_message_left_with_nothing_is_left_out() -> None:
    # Claude often answers nothing after a tool result; clients send that turn back.
    converse = translate_request(
        {
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": [{"type": "text", "text": " "}]},
                {"role": "user", "content": "second"},
            ]
        }
    )

    assert converse["messages"] == [
        {"role": "user", "content": [{"text": "first"}, {"text": "second"}]}
    ]


def test_a_conversation_with_nothing_in_it_is_refused() -> None:
    with pytest.raises(BadRequestError) as caught:
        translate_request(
            {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": " \n "}]}
        )  # fmt: skip

    assert caught.value.status == 400
    assert caught.value.param == "messages[1].content"


def test_a_final_assistant_prefill_loses_its_trailing_whitespace() -> None:
    # Claude on Converse refuses it: "final assistant content cannot end with trailing
    # whitespace".
    converse = translate_request(
        {
            "messages": [
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": [{"type": "text", "text": "Sure, "},
                                                  {"type": "text", "text": "it is \n"}]},
            ]
        }
    )  # fmt: skip

    assert converse["messages"][-1]["content"] == [{"text": "Sure, "}, {"text": "it is"}]


# --- the documented config --------------------------------------------------------------------


def documented_bedrock_config() -> str:
    """The YAML example of docs/providers.md's AWS Bedrock section."""
    page = (Path(__file__).parents[2] / "docs" / "providers.md").read_text()
    section = page.split("## AWS Bedrock", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


async def test_the_documented_config_starts_without_a_session_token() -> None:
    # Long-term keys come without a session token: ${AWS_SESSION_TOKEN:-} is then empty.
    config = parse_config(
        "version: 1\n" + documented_bedrock_config(),
        "providers.md",
        {"AWS_ACCESS_KEY_ID": "AKIDLONGTERM", "AWS_SECRET_ACCESS_KEY": "secret"},
    )
    provider = config.providers[0]
    assert provider.aws is not None
    signer = AwsSigner(provider.aws, provider.base_url)
    await signer.start()

    headers = signer.sign("POST", request_path(MODEL, stream=False), b"{}", {})
    assert "Credential=AKIDLONGTERM/" in headers["authorization"]
    assert "x-amz-security-token" not in headers


async def test_the_documented_config_sends_a_session_token_when_there_is_one() -> None:
    config = parse_config(
        "version: 1\n" + documented_bedrock_config(),
        "providers.md",
        {
            "AWS_ACCESS_KEY_ID": "ASIATEMPORARY",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_SESSION_TOKEN": "session-token",
        },
    )
    provider = config.providers[0]
    assert provider.aws is not None
    signer = AwsSigner(provider.aws, provider.base_url)
    await signer.start()

    headers = signer.sign("POST", request_path(MODEL, stream=False), b"{}", {})
    assert headers["x-amz-security-token"] == "session-token"
