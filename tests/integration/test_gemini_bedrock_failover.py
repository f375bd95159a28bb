"""Failover for Gemini's and Bedrock's own clients: Google's ``google-genai`` SDK and boto3's
``bedrock-runtime`` through real Envoy (HTTPS: boto3 sends its bearer token over TLS
only), a primary in one region or account that throttles every request (a mock of its
own: Vertex's 429 ``RESOURCE_EXHAUSTED``, Bedrock's 429 ``ThrottlingException``) and the
stack's mock as the same model in another. What the SDK got, what each provider got (its
path, token or signature region, body), and what the log line, the metrics and the quota
count."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import orjson
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError
from google import genai
from google.genai import errors, types

from extproc.devstack import LocalStack
from extproc.mock_llm.vertex_auth import write_service_account
from extproc.store.embedded import free_port
from tests.integration.certificates import Authority
from tests.integration.conftest import (
    default_config,
    metric,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.failover_support import (
    FaultyMock,
    failover_budget,
    log_line,
    quota_used,
    start_faulty_mock,
)
from tests.integration.mock_vertex import LOCATION, vertex_provider

GEMINI = "gemini-2.5-flash"
LLAMA = "meta.llama3-8b-instruct-v1:0"  # on mock-bedrock
MISTRAL_7B = "mistral.mistral-7b-instruct-v0:2"
MISTRAL_LARGE = "mistral.mistral-large-2402-v1:0"  # a prompt body or messages
MISTRAL_LARGE_2 = "mistral.mistral-large-2407-v1:0"  # messages alone
BEDROCK_CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
PROMPT = "fail over please"
GEMINI_CONTENTS = [{"role": "user", "parts": [{"text": PROMPT}]}]
CONVERSE_MESSAGES = [{"role": "user", "content": [{"text": PROMPT}]}]
LLAMA_BODY = {"prompt": PROMPT, "max_gen_len": 100}
# The throttled primaries' regions and Bedrock account, and the region of the one that is down.
TIRED_VERTEX_REGION, DOWN_VERTEX_REGION = "us-central1", "us-west1"
TIRED_AWS = {"region": "eu-west-1", "access_key_id": "AKIDEUROPE", "secret_access_key": "eu-key"}
DOWN_AWS = {"region": "us-west-2", "access_key_id": "AKIDOREGON", "secret_access_key": "or-key"}
KEYS = {
    name: f"{name}-client-secret"
    for name in ("gjson", "gstream", "cjson", "cstream", "invoke", "gdoomed", "cdoomed", "mistral")
}
# USD per million input and output tokens: the primaries are priced dear, so a request
# billed at their price rather than the answering fallback's shows.
PRIMARY_PRICE = {"input_per_million": 50, "output_per_million": 100}
FLASH_PRICE = (Decimal("0.30"), Decimal("2.50"))
CLAUDE_B_PRICE = (Decimal("0.25"), Decimal("1.25"))
LLAMA_PRICE = (Decimal("0.30"), Decimal("0.60"))  # the default config's


def start_mock(
    workdir: Path, name: str, fault: str, gcp_region: str, aws: dict[str, str]
) -> FaultyMock:
    """The mock as Vertex in ``gcp_region`` (trusting a key of its own, written to
    ``<name>-key.json``) and as Bedrock for the account ``aws``, with ``fault``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key_file = workdir / f"{name}-key.json"
    write_service_account(key_file, token_uri=f"{url}/token")
    options = (
        f"default_fault={fault!r}, gcp_region={gcp_region!r}, "
        f"gcp_service_account={str(key_file)!r}, aws_region={aws['region']!r}, "
        f"aws_access_key_id={aws['access_key_id']!r}, "
        f"aws_secret_access_key={aws['secret_access_key']!r}"
    )
    script = (
        "from extproc.mock_llm import MockOptions, run\n"
        f"run('127.0.0.1', {port}, MockOptions({options}))\n"
    )
    return start_faulty_mock(port, [sys.executable, "-c", script])


@dataclass
class Stack:
    gateway: LocalStack
    ca: Path
    tired: FaultyMock  # 429 as Vertex in us-central1 and as Bedrock in eu-west-1
    down: FaultyMock  # 503 as Vertex in us-west1 and as Bedrock in us-west-2

    @property
    def url(self) -> str:
        return self.gateway.base_url.replace("http://", "https://", 1)


def failover_config(workdir: Path, tired: FaultyMock, down: FaultyMock) -> dict[str, Any]:
    raw = default_config()
    bedrock = next(p for p in raw["providers"] if p["name"] == "mock-bedrock")

    def vertex_at(name: str, mock: FaultyMock, region: str) -> dict[str, Any]:
        entry = vertex_provider(name, base_url=mock.url)
        entry["gcp"] = {
            **entry["gcp"],
            "region": region,
            "credentials_file": str(workdir / f"{name}-key.json"),
        }
        return entry

    raw["providers"] += [
        vertex_provider(),  # the stack's mock, in us-east5
        vertex_at("tired", tired, TIRED_VERTEX_REGION),
        vertex_at("down", down, DOWN_VERTEX_REGION),
        {**bedrock, "name": "bedrock-tired", "base_url": tired.url, "aws": TIRED_AWS},
        {**bedrock, "name": "bedrock-down", "base_url": down.url, "aws": DOWN_AWS},
        # Claude on the stack's mock, as an account of its own.
        {**bedrock, "name": "bedrock-claude"},
    ]
    raw["models"] += [
        # gpt-4.1-nano (OpenAI's API) cannot answer Gemini's API: skipped.
        {"name": "gemini-flash", "provider": "tired", "upstream_model": GEMINI,
         "fallbacks": ["gpt-4.1-nano", "gemini-east"]},
        {"name": "gemini-east", "provider": "vertex", "upstream_model": GEMINI},
        {"name": "gemini-doomed", "provider": "tired", "upstream_model": GEMINI,
         "fallbacks": ["gemini-down"]},
        {"name": "gemini-down", "provider": "down", "upstream_model": GEMINI},
        # Claude on Anthropic speaks no Bedrock API: skipped; Claude on Bedrock answers
        # Converse, and is skipped for Llama's InvokeModel body.
        {"name": "llama-eu", "provider": "bedrock-tired", "upstream_model": LLAMA,
         "fallbacks": ["claude-3-5-haiku-latest", "claude-b", LLAMA]},
        {"name": "claude-b", "provider": "bedrock-claude", "upstream_model": BEDROCK_CLAUDE},
        {"name": "llama-doomed", "provider": "bedrock-tired", "upstream_model": LLAMA,
         "fallbacks": ["llama-down"]},
        {"name": "llama-down", "provider": "bedrock-down", "upstream_model": LLAMA},
        # Mistral Large 2 takes no prompt body: skipped for Mistral 7B's InvokeModel call.
        {"name": "mistral-eu", "provider": "bedrock-tired", "upstream_model": MISTRAL_7B,
         "fallbacks": ["mistral-large-2", "mistral-large"]},
        {"name": "mistral-large-2", "provider": "bedrock-claude",
         "upstream_model": MISTRAL_LARGE_2},
        {"name": "mistral-large", "provider": "mock-bedrock", "upstream_model": MISTRAL_LARGE},
    ]  # fmt: skip
    for name in ("gemini-flash", "gemini-doomed", "llama-eu", "llama-doomed"):
        raw["pricing"]["models"][name] = PRIMARY_PRICE
    raw["pricing"]["models"]["gemini-east"] = {
        "input_per_million": float(FLASH_PRICE[0]),
        "output_per_million": float(FLASH_PRICE[1]),
    }
    raw["pricing"]["models"]["claude-b"] = {
        "input_per_million": float(CLAUDE_B_PRICE[0]),
        "output_per_million": float(CLAUDE_B_PRICE[1]),
    }
    raw["auth"]["api_keys"] += [{"id": name, "key": secret} for name, secret in KEYS.items()]
    raw["quotas"] = failover_budget()
    # Gemini's API at the SDK's own paths; Converse for every configured model.
    raw["routes"].insert(
        0, {"name": "gemini", "path_prefix": "/v1/models", "api": "gemini_generate_content"}
    )
    for route in raw["routes"]:
        if route["name"] == "bedrock-converse":
            del route["provider"]
    return raw


@pytest.fixture(scope="module")
def failover(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("gemini-bedrock-failover")
    tired = start_mock(workdir, "tired", "status=429", TIRED_VERTEX_REGION, TIRED_AWS)
    down = start_mock(workdir, "down", "status=503", DOWN_VERTEX_REGION, DOWN_AWS)
    try:
        authority = Authority(workdir, "listener-ca")
        issued = authority.issue("gateway", ips=("127.0.0.1",))
        raw = failover_config(workdir, tired, down)
        raw["envoy"]["listener_tls"] = {"cert_file": str(issued.cert), "key_file": str(issued.key)}
        with running_stack(workdir, write_config(workdir, raw)) as running:
            yield Stack(running, authority.cert, tired, down)
    finally:
        for mock in (tired, down):
            mock.stop()


# The SDK closes its connections when its Client is collected: keep the ones made.
CLIENTS: list[genai.Client] = []


def gemini(stack: Stack, key: str) -> genai.Client:
    options = types.HttpOptions(
        base_url=stack.url, timeout=30_000, client_args={"verify": str(stack.ca)}
    )
    made = genai.Client(api_key=KEYS[key], http_options=options)
    CLIENTS.append(made)
    return made


def bedrock(stack: Stack, key: str, monkeypatch: pytest.MonkeyPatch) -> BaseClient:
    """boto3's Bedrock Runtime client with the gateway key as its bearer token, no AWS
    credentials and no retries (the gateway's failover, not the SDK's, is under test)."""
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", KEYS[key])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=stack.url,
        verify=str(stack.ca),
        config=Config(retries={"total_max_attempts": 1}),
    )


def received(requests: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """The requests at ``path`` (decoded, without its query), oldest first."""
    return [r for r in requests if unquote(r["path"].partition("?")[0]) == path]


def credential(sent: dict[str, Any]) -> list[str]:
    """The SigV4 credential scope a request was signed with: key id, date, region, service."""
    authorization: str = sent["headers"]["authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=")
    return authorization.removeprefix("AWS4-HMAC-SHA256 Credential=").split(",")[0].split("/")[:4]


def assert_nothing_of_the_client(sent: dict[str, Any], key: str) -> None:
    text = orjson.dumps(sent).decode()
    assert KEYS[key] not in text
    assert "x-aigw" not in text and "x_aigw" not in text  # the gateway's own notes


def assert_counted(
    stack: Stack,
    before: dict[Any, float],
    key: str,
    line: dict[str, Any],
    usage: tuple[int, int],
    price: tuple[Decimal, Decimal],
) -> None:
    """The answer's usage, once, in the log line, tokens_consumed_total (under the
    client's model and the answering provider) and the quota, at ``price``."""
    prompt, completion = usage
    assert (line["prompt_tokens"], line["completion_tokens"]) == usage
    expected = (prompt * price[0] + completion * price[1]) / 10**6
    assert Decimal(str(line["cost_usd"])) == expected
    after = scrape(stack.gateway.metrics_url)
    for token_type, count in (("prompt", prompt), ("completion", completion)):
        labels = {"api_key_id": key, "token_type": token_type}
        total = metric(after, "tokens_consumed_total", **labels)
        assert total - metric(before, "tokens_consumed_total", **labels) == count
        answered = {"model": line["model"], "provider": line["provider"], **labels}
        assert metric(after, "tokens_consumed_total", **answered) == count
    assert wait_for(lambda: quota_used(stack.gateway, key) == prompt + completion, 5.0)


# --- Gemini's API ---------------------------------------------------------------------


def vertex_gemini_path(location: str, stream: bool) -> str:
    operation = "streamGenerateContent" if stream else "generateContent"
    return f"{location}/publishers/google/models/{GEMINI}:{operation}"


@pytest.mark.parametrize("stream", [False, True])
def test_a_429_on_the_first_vertex_is_answered_by_gemini_in_the_second(
    failover: Stack, stream: bool
) -> None:
    key = "gstream" if stream else "gjson"
    before = scrape(failover.gateway.metrics_url)
    chats_before = len(received(mock_requests(failover.gateway), "/v1/chat/completions"))
    client = gemini(failover, key)
    if stream:
        chunks = list(client.models.generate_content_stream(model="gemini-flash", contents=PROMPT))
        text = "".join(chunk.text or "" for chunk in chunks)
        final, headers = chunks[-1].usage_metadata, chunks[0].sdk_http_response.headers
    else:
        answer = client.models.generate_content(model="gemini-flash", contents=PROMPT)
        text, final, headers = (
            answer.text or "",
            answer.usage_metadata,
            answer.sdk_http_response.headers,
        )
    assert text == "Mock reply to: " + PROMPT
    assert final is not None and final.prompt_token_count and final.candidates_token_count
    assert headers["x-envoy-attempt-count"] == "2"
    assert "x-aigw-provider" not in headers
    # The primary, in us-central1, got the SDK's body with its own token, and answered 429.
    tired_location = f"/v1/projects/mock-project/locations/{TIRED_VERTEX_REGION}"
    [first] = received(failover.tired.requests(), vertex_gemini_path(tired_location, stream))[-1:]
    assert first["headers"]["authorization"].startswith("Bearer ya29.mock-")
    assert first["json"]["contents"] == GEMINI_CONTENTS
    assert_nothing_of_the_client(first, key)
    # The second, in us-east5, the same body, with its own token.
    [sent] = received(mock_requests(failover.gateway), vertex_gemini_path(LOCATION, stream))[-1:]
    assert sent["headers"]["authorization"].startswith("Bearer ya29.mock-")
    assert sent["headers"]["authorization"] != first["headers"]["authorization"]
    assert sent["json"] == first["json"]
    assert ("alt=sse" in sent["query_string"]) is stream
    assert_nothing_of_the_client(sent, key)
    # gpt-4.1-nano, between them in the chain, speaks no Gemini: never tried.
    assert len(received(mock_requests(failover.gateway), "/v1/chat/completions")) == chats_before
    line = log_line(failover.gateway, headers["x-request-id"])
    assert (line["model"], line["provider"], line["upstream_model"], line["stream"]) == (
        "gemini-flash",
        "vertex",
        GEMINI,
        stream,
    )
    usage = (final.prompt_token_count, final.candidates_token_count)
    assert_counted(failover, before, key, line, usage, FLASH_PRICE)
    after = scrape(failover.gateway.metrics_url)
    failovers = {"model": "gemini-flash", "to_model": "gemini-east"}
    grown = metric(after, "aigw_failovers_total", **failovers)
    assert grown - metric(before, "aigw_failovers_total", **failovers) == 1


def test_when_every_vertex_fails_the_sdk_gets_googles_error(failover: Stack) -> None:
    with pytest.raises(errors.ServerError) as raised:
        gemini(failover, "gdoomed").models.generate_content(model="gemini-doomed", contents=PROMPT)
    error = raised.value
    # The last attempt's 503, in Google's shape.
    assert (error.code, error.status) == (503, "UNAVAILABLE")
    down_location = f"/v1/projects/mock-project/locations/{DOWN_VERTEX_REGION}"
    [sent] = received(failover.down.requests(), vertex_gemini_path(down_location, False))[-1:]
    assert sent["json"]["contents"] == GEMINI_CONTENTS
    request_id = error.response.headers["x-request-id"]  # type: ignore[union-attr]
    line = log_line(failover.gateway, request_id)
    assert (line["model"], line["provider"], line["http_status_code"]) == (
        "gemini-doomed",
        "down",
        503,
    )
    assert (line["total_tokens"], line["cost_usd"]) == (0, 0)
    assert quota_used(failover.gateway, "gdoomed") == 0


# --- Bedrock's Converse and InvokeModel ------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_bedrock_throttle_is_answered_by_the_next_bedrock_account(
    failover: Stack, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "cstream" if stream else "cjson"
    before = scrape(failover.gateway.metrics_url)
    messages_before = len(received(mock_requests(failover.gateway), "/v1/messages"))
    client = bedrock(failover, key, monkeypatch)
    config = {"maxTokens": 100}
    if stream:
        answer = client.converse_stream(
            modelId="llama-eu", messages=CONVERSE_MESSAGES, inferenceConfig=config
        )
        events = list(answer["stream"])
        text = "".join(
            e["contentBlockDelta"]["delta"].get("text", "")
            for e in events
            if "contentBlockDelta" in e
        )
        usage = events[-1]["metadata"]["usage"]
    else:
        answer = client.converse(
            modelId="llama-eu", messages=CONVERSE_MESSAGES, inferenceConfig=config
        )
        [text] = [block["text"] for block in answer["output"]["message"]["content"]]
        usage = answer["usage"]
    assert text == "Mock reply to: " + PROMPT
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-envoy-attempt-count"] == "2"
    operation = "converse-stream" if stream else "converse"
    # The primary: Llama in eu-west-1, signed for that account and region: it throttled.
    [first] = received(failover.tired.requests(), f"/model/{LLAMA}/{operation}")[-1:]
    assert credential(first)[0:1] + credential(first)[2:] == ["AKIDEUROPE", "eu-west-1", "bedrock"]
    assert first["json"]["messages"] == CONVERSE_MESSAGES
    assert_nothing_of_the_client(first, key)
    # Claude on another account (Converse speaks every Bedrock model), in us-east-1.
    [sent] = received(mock_requests(failover.gateway), f"/model/{BEDROCK_CLAUDE}/{operation}")[-1:]
    assert credential(sent)[0:1] + credential(sent)[2:] == ["AKIDMOCK", "us-east-1", "bedrock"]
    assert sent["json"] == first["json"]
    assert_nothing_of_the_client(sent, key)
    # Claude on Anthropic, first in the chain, speaks no Bedrock API: never tried.
    assert len(received(mock_requests(failover.gateway), "/v1/messages")) == messages_before
    line = log_line(failover.gateway, headers["x-request-id"])
    assert (line["model"], line["provider"], line["upstream_model"], line["stream"]) == (
        "llama-eu",
        "bedrock-claude",
        BEDROCK_CLAUDE,
        stream,
    )
    counts = (usage["inputTokens"], usage["outputTokens"])
    assert_counted(failover, before, key, line, counts, CLAUDE_B_PRICE)


def test_invoke_model_fails_over_to_a_model_of_its_bodys_family(
    failover: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = scrape(failover.gateway.metrics_url)
    claude_before = len(
        received(mock_requests(failover.gateway), f"/model/{BEDROCK_CLAUDE}/invoke")
    )
    answer = bedrock(failover, "invoke", monkeypatch).invoke_model(
        modelId="llama-eu", body=orjson.dumps(LLAMA_BODY)
    )
    llama = orjson.loads(answer["body"].read())
    assert llama["generation"] == "Mock reply to: " + PROMPT
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-envoy-attempt-count"] == "2"
    [first] = received(failover.tired.requests(), f"/model/{LLAMA}/invoke")[-1:]
    assert credential(first)[2] == "eu-west-1"
    [sent] = received(mock_requests(failover.gateway), f"/model/{LLAMA}/invoke")[-1:]
    assert credential(sent)[0:1] + credential(sent)[2:] == ["AKIDMOCK", "us-east-1", "bedrock"]
    assert sent["json"] == first["json"] == LLAMA_BODY
    assert_nothing_of_the_client(sent, "invoke")
    # Claude on Bedrock takes Claude's body, not Llama's: skipped.
    claude_after = received(mock_requests(failover.gateway), f"/model/{BEDROCK_CLAUDE}/invoke")
    assert len(claude_after) == claude_before
    line = log_line(failover.gateway, headers["x-request-id"])
    assert (line["model"], line["provider"], line["upstream_model"]) == (
        "llama-eu",
        "mock-bedrock",
        LLAMA,
    )
    counts = (llama["prompt_token_count"], llama["generation_token_count"])
    assert_counted(failover, before, "invoke", line, counts, LLAMA_PRICE)


def test_a_mistral_prompt_body_fails_over_to_a_mistral_model_that_takes_a_prompt(
    failover: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mistral 7B's prompt body, throttled, skips Mistral Large 2 (messages alone) for
    Mistral Large 24.02. Before, every Mistral model was one body family: the second
    attempt went to Mistral Large 2, whose 400 (Bedrock's "required key [messages] not
    found") the SDK got in place of the answer the third member had for it."""
    body = {"prompt": f"<s>[INST] {PROMPT} [/INST]", "max_tokens": 40}
    large_2_path = f"/model/{MISTRAL_LARGE_2}/invoke"
    large_2_before = len(received(mock_requests(failover.gateway), large_2_path))

    answer = bedrock(failover, "mistral", monkeypatch).invoke_model(
        modelId="mistral-eu", body=orjson.dumps(body)
    )

    [output] = orjson.loads(answer["body"].read())["outputs"]
    assert output["text"].startswith("Mock reply to:")
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-envoy-attempt-count"] == "2"
    [first] = received(failover.tired.requests(), f"/model/{MISTRAL_7B}/invoke")[-1:]
    [sent] = received(mock_requests(failover.gateway), f"/model/{MISTRAL_LARGE}/invoke")[-1:]
    assert sent["json"] == first["json"] == body
    assert len(received(mock_requests(failover.gateway), large_2_path)) == large_2_before
    line = log_line(failover.gateway, headers["x-request-id"])
    assert (line["model"], line["provider"], line["upstream_model"]) == (
        "mistral-eu",
        "mock-bedrock",
        MISTRAL_LARGE,
    )
    assert line["http_status_code"] == 200


def test_when_every_bedrock_fails_the_sdk_gets_bedrocks_exception(
    failover: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ClientError) as raised:
        bedrock(failover, "cdoomed", monkeypatch).converse(
            modelId="llama-doomed", messages=CONVERSE_MESSAGES
        )
    error = raised.value.response
    # The last attempt's 503, as Bedrock's exception.
    assert error["Error"]["Code"] == "ServiceUnavailableException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    headers = error["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-envoy-attempt-count"] == "2"
    [sent] = received(failover.down.requests(), f"/model/{LLAMA}/converse")[-1:]
    assert credential(sent)[0:1] + credential(sent)[2:] == ["AKIDOREGON", "us-west-2", "bedrock"]
    line = log_line(failover.gateway, headers["x-request-id"])
    assert (line["model"], line["provider"], line["http_status_code"]) == (
        "llama-doomed",
        "bedrock-down",
        503,
    )
    assert (line["total_tokens"], line["cost_usd"]) == (0, 0)
    assert quota_used(failover.gateway, "cdoomed") == 0
