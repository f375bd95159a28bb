"""A provider that fails a stream before its answer began, through the real stack.

The mock's ``error_first`` fault makes the provider answer a streamed request with a
``200`` whose first event is its own error: OpenAI's ``data: {"error": ...}`` before any
chunk, the Responses API's ``error`` event before ``response.created``, Bedrock's
``throttlingException`` or ``serviceUnavailableException`` frame before ``messageStart``.
That is the streamed form of a 429 or 503: nothing was generated and the provider bills
nothing, so the client gets the provider's error and nothing is charged anywhere an
operator looks: the log line (0 tokens, ``outcome`` ``upstream_error``),
``tokens_consumed_total``, the token quota's counter and the usage rollup.

The control beside each: the same stream failing after its answer began (``error_after``)
is still charged, its estimate alike in all four places.

One stack serves every test: Envoy's listener on HTTPS, as boto3 sends its bearer token
over TLS only; each client and case has a key of its own, so each test reads its own
counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import openai
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import EventStreamError

from extproc.devstack import LocalStack
from tests.integration.certificates import Authority
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
    write_config,
)
from tests.integration.test_midstream_errors import tokens_used

PROMPT = "Tell me a long story"
CONVERSE_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
# The faults: the provider's error as the stream's first event, or after two pieces.
FIRST = {"chat": "error_first=429", "responses": "error_first=429",
         "bedrock chat": "error_first=503", "converse": "error_first=429"}  # fmt: skip
AFTER = "error_after=2"
# The code each client is shown, and the log line names, for each fault. OpenAI's chat
# error event after the answer began names no code.
FIRST_CODES = {
    "chat": ("rate_limit_exceeded", "rate_limit_exceeded"),
    "responses": ("rate_limit_exceeded", "rate_limit_exceeded"),
    "bedrock chat": ("ServiceUnavailableException", "ServiceUnavailableException"),
    "converse": ("throttlingException", "ThrottlingException"),
}
AFTER_CODES = {
    "chat": (None, None),
    "responses": ("server_error", "server_error"),
    "bedrock chat": ("ModelStreamErrorException", "ModelStreamErrorException"),
    "converse": ("modelStreamErrorException", "ModelStreamErrorException"),
}
CLIENTS = list(FIRST_CODES)
CASES = ("first", "after")


def key_id(client: str, case: str) -> str:
    return f"{client.replace(' ', '-')}-{case}"


# One key per client and case: {id: secret}.
KEYS = {key_id(client, case): f"{key_id(client, case)}-key-5e1f" for client in CLIENTS
        for case in CASES}  # fmt: skip


class TlsStack:
    """The stack, its HTTPS base URL and the CA its listener's certificate chains to."""

    def __init__(self, stack: LocalStack, ca: Path) -> None:
        self.stack = stack
        self.ca = ca
        self.url = stack.base_url.replace("http://", "https://", 1)


@contextmanager
def tls_stack(
    workdir: Path, keys: dict[str, str], quotas: dict[str, Any] | None = None
) -> Iterator[TlsStack]:
    """The default stack behind a TLS listener (so the SDKs and boto3 speak HTTPS), with
    ``keys`` added and, if given, these ``quotas``."""
    authority = Authority(workdir, "listener-ca")
    issued = authority.issue("gateway", ips=("127.0.0.1",))
    raw = default_config()
    raw["envoy"]["listener_tls"] = {"cert_file": str(issued.cert), "key_file": str(issued.key)}
    raw["auth"]["api_keys"] += [{"id": name, "key": secret} for name, secret in keys.items()]
    if quotas is not None:
        raw["quotas"] = quotas
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield TlsStack(running, authority.cert)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    quotas = {
        "rules": [{"name": "stream-tokens", "subject": "api_key", "match": list(KEYS),
                   "tokens_per_day": 100_000_000}],
    }  # fmt: skip
    with tls_stack(tmp_path_factory.mktemp("failed-before-answer"), KEYS, quotas) as running:
        yield running


@dataclass(frozen=True, slots=True)
class Failed:
    """What a client saw of a stream that failed: the request's id, the text it read
    before the error, and the code the error named."""

    request_id: str
    text: str
    code: str | None


def openai_client(tls: TlsStack, key: str, prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{tls.url}{prefix}",
        api_key=KEYS[key],
        max_retries=0,
        http_client=httpx.Client(verify=str(tls.ca), timeout=30.0),
    )


def openai_code(error: openai.APIError) -> str | None:
    body = error.body if isinstance(error.body, dict) else {}
    code = body.get("code")
    return code if isinstance(code, str) else None


def stream_chat(client: openai.OpenAI, model: str, fault: str) -> Failed:
    """An OpenAI chat stream read until the SDK raises the provider's error."""
    text = ""
    with client.chat.completions.with_streaming_response.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers={"x-mock-fault": fault},
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError) as raised:
            for chunk in response.parse():
                text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    return Failed(request_id, text, openai_code(raised.value))


def chat(tls: TlsStack, key: str, fault: str) -> Failed:
    return stream_chat(openai_client(tls, key), "gpt-4o-mini", fault)


def bedrock_chat(tls: TlsStack, key: str, fault: str) -> Failed:
    """OpenAI chat translated for Bedrock's ConverseStream (/bedrock/haiku)."""
    return stream_chat(openai_client(tls, key, "/bedrock/haiku"), "ignored", fault)


def responses(tls: TlsStack, key: str, fault: str) -> Failed:
    """A Responses API stream read until the SDK raises the provider's error event."""
    text = ""
    with openai_client(tls, key).responses.with_streaming_response.create(
        model="gpt-4o-mini", input=PROMPT, stream=True, extra_headers={"x-mock-fault": fault}
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError) as raised:
            for event in response.parse():
                text += event.delta if event.type == "response.output_text.delta" else ""
    return Failed(request_id, text, openai_code(raised.value))


def bedrock_client(tls: TlsStack, key: str, fault: str) -> BaseClient:
    """boto3's Bedrock Runtime client pointed at the gateway, the gateway key as its bearer
    token (boto3 reads it from the environment, which the caller sets), sending the fault."""
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=tls.url,
        verify=str(tls.ca),
        config=Config(retries={"total_max_attempts": 1}),
    )

    def add_fault(request: Any, **_: Any) -> None:
        request.headers["x-mock-fault"] = fault

    client.meta.events.register("before-send.bedrock-runtime.*", add_fault)
    return client


def converse(tls: TlsStack, key: str, fault: str) -> Failed:
    """Bedrock's own ConverseStream, passed through, read until botocore raises."""
    answer = bedrock_client(tls, key, fault).converse_stream(
        modelId=CONVERSE_MODEL, messages=[{"role": "user", "content": [{"text": PROMPT}]}]
    )
    text = ""
    with pytest.raises(EventStreamError) as raised:
        for event in answer["stream"]:
            text += event.get("contentBlockDelta", {}).get("delta", {}).get("text", "")
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    return Failed(request_id, text, raised.value.response["Error"]["Code"])


STREAMS: dict[str, Callable[[TlsStack, str, str], Failed]] = {
    "chat": chat,
    "responses": responses,
    "bedrock chat": bedrock_chat,
    "converse": converse,
}


def bedrock_bearer_token(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """boto3 takes the gateway key from AWS_BEARER_TOKEN_BEDROCK, with no AWS credentials
    (the other clients are given it directly)."""
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", KEYS[key])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def marker(tls: TlsStack, key: str) -> dict[str, Any]:
    """One plain chat completion on ``key``, after the stream: once the rollup counts it,
    it counts whatever the stream wrote before it. Its log line."""
    reply = openai_client(tls, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    [line] = GatewayLog(tls.stack.gateway_log).for_request(reply.headers["x-request-id"])
    assert line["usage_reported"] is True
    return line


def tokens_counted(before: dict[Any, float], after: dict[Any, float], key: str) -> list[float]:
    """How much tokens_consumed_total grew for ``key``: prompt, completion."""
    return [
        metric(after, "tokens_consumed_total", api_key_id=key, token_type=token_type)
        - metric(before, "tokens_consumed_total", api_key_id=key, token_type=token_type)
        for token_type in ("prompt", "completion")
    ]


def stream_errors(samples: dict[Any, float]) -> float:
    return metric(samples, "aigw_upstream_errors_total", status_code="stream_error")


def rollup_with(stack: LocalStack, key: str, requests: int) -> dict[str, Any]:
    """The key's rollup row once it counts ``requests`` requests."""

    def counted() -> dict[str, Any] | None:
        row = usage_rows(stack, "api_key").get(key)
        return row if row is not None and row["requests"] == requests else None

    found: dict[str, Any] | None = wait_for(counted, 20)
    assert found, usage_rows(stack, "api_key").get(key)
    return found


@pytest.mark.parametrize("client", CLIENTS)
def test_a_stream_failed_before_its_answer_began_is_charged_nothing(
    tls: TlsStack, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, key = tls.stack, key_id(client, "first")
    bedrock_bearer_token(monkeypatch, key)
    before = scrape(stack.metrics_url)

    failed = STREAMS[client](tls, key, FIRST[client])

    # The client got the provider's error, and nothing of an answer.
    shown, logged = FIRST_CODES[client]
    assert (failed.text, failed.code) == ("", shown)
    [line] = GatewayLog(stack.gateway_log).for_request(failed.request_id)
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert line["error_code"] == logged
    assert "injected by x-mock-fault" in line["error_message"]
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (0, 0, 0)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, False)
    after = scrape(stack.metrics_url)
    assert tokens_counted(before, after, key) == [0, 0]
    # An operator's alert on provider errors still sees it.
    assert stream_errors(after) - stream_errors(before) == 1
    # The reservation was released: the quota counts nothing.
    assert wait_for(lambda: tokens_used(stack, key) == 0, 10), tokens_used(stack, key)
    # The rollup counts the stream as a request that reached its provider, as it counts
    # the same error answered with its status, at no tokens: its tokens are the plain
    # request's after it.
    plain = marker(tls, key)
    row = rollup_with(stack, key, 2)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        plain["prompt_tokens"],
        plain["completion_tokens"],
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_a_stream_failed_after_its_answer_began_is_still_charged(
    tls: TlsStack, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, key = tls.stack, key_id(client, "after")
    bedrock_bearer_token(monkeypatch, key)
    before = scrape(stack.metrics_url)

    failed = STREAMS[client](tls, key, AFTER)

    shown, logged = AFTER_CODES[client]
    assert (failed.text, failed.code) == ("Mock reply", shown)
    [line] = GatewayLog(stack.gateway_log).for_request(failed.request_id)
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert line["error_code"] == logged
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    prompt, completion = line["prompt_tokens"], line["completion_tokens"]
    assert prompt >= 1 and completion >= 1
    after = scrape(stack.metrics_url)
    assert tokens_counted(before, after, key) == [prompt, completion]
    assert stream_errors(after) - stream_errors(before) == 1
    # The reservation settled at the estimate the log line shows.
    settled = wait_for(lambda: tokens_used(stack, key) == prompt + completion, 10)
    assert settled, (tokens_used(stack, key), prompt + completion)
    plain = marker(tls, key)
    row = rollup_with(stack, key, 2)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        prompt + plain["prompt_tokens"],
        completion + plain["completion_tokens"],
    )
