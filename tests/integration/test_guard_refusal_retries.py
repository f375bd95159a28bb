"""A guardrail webhook refusing a prompt with a status SDKs retry, through the real Envoy
with the official SDKs at their default retries.

kgateway's RejectAction picks the status: a webhook answering 503 or 429 gets it to the
client as given. The SDKs used to retry it twice on their own, so the webhook was asked
three times about the same text, gave the same refusal each time, and the caller waited
for it; now the refusal says ``x-should-retry: false`` and the webhook is asked once.

A webhook that refuses the prompt itself with HTTP 413 (too large for it) was a 503
``guardrail_unavailable`` the SDKs retried twice for the same refusal; it is now a 400
``guardrail_input_refused``, as a moderation service's refusal is, asked once. A response
webhook refusing to read the answer so is a 502 ``guardrail_answer_refused``, asked once;
to boto3, which retries every 502 whatever it is told, Bedrock's ``ModelErrorException``
(424), asked once too.

The webhook is a stand-in written here; the provider is the mock.
"""

from __future__ import annotations

import http.server
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anthropic
import boto3
import openai
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.certificates import Authority
from tests.integration.conftest import default_config, running_stack_calling

KEY = "team1-key"


class Refusing(http.server.BaseHTTPRequestHandler):
    """A kgateway-style webhook refusing every prompt with the status its path names
    (``/s503/request``: a RejectAction with 503; ``/h413/request``: an HTTP 413 of its
    own, its body quoting the prompt); it counts the calls by status."""

    calls: ClassVar[dict[int, int]] = {}

    def do_POST(self) -> None:
        sent = self.rfile.read(int(self.headers.get("content-length", "0")))
        status = int(self.path.split("/")[1][1:])
        Refusing.calls[status] = Refusing.calls.get(status, 0) + 1
        body = orjson.dumps({"action": {"body": "Not this topic.", "status_code": status}})
        if self.path.startswith("/h"):
            body = b"too large: " + sent
            self.send_response(status)
        else:
            self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def refusing_config(port: int) -> dict[str, Any]:
    raw = default_config()
    hooks = [
        {"name": f"s{s}", "host": "127.0.0.1", "port": port, "request_path": f"/s{s}/request"}
        for s in (503, 429)
    ] + [{"name": "h413", "host": "127.0.0.1", "port": port, "request_path": "/h413/request"}]
    # A response webhook refusing to read every answer with its own 413.
    answers = {"name": "h413r", "host": "127.0.0.1", "port": port, "response_path": "/h413/r"}
    raw["guardrails"] = {
        "webhooks": [*hooks, answers],
        "policies": [
            {"name": h["name"], "request": [{"name": "topic", "webhook": h["name"]}]} for h in hooks
        ]
        + [{"name": "h413r", "response": [{"name": "answers", "webhook": "h413r"}]}],
    }
    raw["routes"] += [
        {"name": f"refuse-{h['name']}", "path_prefix": f"/{h['name']}", "guardrails": h["name"]}
        for h in [*hooks, answers]
    ] + [
        {
            "name": "refuse-anthropic",
            "path_prefix": "/claude-s503",
            "api": "anthropic_messages",
            "guardrails": "s503",
        },
    ]
    return raw


@pytest.fixture(scope="module")
def refusing_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("webhook-refusal-retries")
    with running_stack_calling(Refusing, workdir, refusing_config) as running:
        yield running


@pytest.mark.parametrize(
    ("status", "error"), [(503, openai.InternalServerError), (429, openai.RateLimitError)]
)
def test_an_openai_client_gets_the_webhook_refusal_once(
    refusing_stack: LocalStack, status: int, error: type[openai.APIStatusError]
) -> None:
    Refusing.calls.clear()
    client = openai.OpenAI(base_url=f"{refusing_stack.base_url}/s{status}/v1", api_key=KEY)
    assert client.max_retries == 2  # the SDK's default: the case users meet
    with pytest.raises(error) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
    assert refused.value.status_code == status
    assert refused.value.body["message"] == "Not this topic."  # type: ignore[index]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert Refusing.calls == {status: 1}


def test_an_anthropic_client_gets_the_webhook_refusal_once(refusing_stack: LocalStack) -> None:
    Refusing.calls.clear()
    client = anthropic.Anthropic(base_url=f"{refusing_stack.base_url}/claude-s503", api_key=KEY)
    with pytest.raises(anthropic.InternalServerError) as refused:
        client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=50,
            messages=[{"role": "user", "content": "hello"}],
        )
    assert refused.value.status_code == 503
    assert "Not this topic." in refused.value.message
    assert Refusing.calls == {503: 1}


def test_a_prompt_the_webhook_refuses_as_too_large_is_a_400_asked_once(
    refusing_stack: LocalStack,
) -> None:
    Refusing.calls.clear()
    client = openai.OpenAI(base_url=f"{refusing_stack.base_url}/h413/v1", api_key=KEY)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a secret plan"}]
        )
    assert refused.value.status_code == 400
    assert refused.value.code == "guardrail_input_refused"
    assert refused.value.body["message"] == (  # type: ignore[index]
        "Guardrail 'topic' cannot check this request: its webhook refused the input"
        " (HTTP 413), as it would again"
    )
    assert "secret plan" not in refused.value.response.text
    assert Refusing.calls == {413: 1}


def test_an_answer_the_webhook_refuses_to_read_is_a_502_asked_once(
    refusing_stack: LocalStack,
) -> None:
    """Not the client's fault (no 400), no outage (no 503, which the SDK retried twice,
    each retry an answer generated and charged for the same refusal)."""
    Refusing.calls.clear()
    client = openai.OpenAI(base_url=f"{refusing_stack.base_url}/h413r/v1", api_key=KEY)
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
    assert refused.value.status_code == 502
    assert refused.value.code == "guardrail_answer_refused"
    assert refused.value.body["message"] == (  # type: ignore[index]
        "Guardrail 'answers' cannot check the model's answer: its webhook refused to read it"
        " (HTTP 413); the answer is withheld"
    )
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert Refusing.calls == {413: 1}


def refusing_tls_config(port: int, authority: Authority) -> dict[str, Any]:
    """``refusing_config`` over HTTPS (an AWS SDK sends its bearer token only so), with a
    Converse route whose answers the response webhook refuses to read."""
    raw = refusing_config(port)
    issued = authority.issue("gateway", ips=("127.0.0.1",))
    raw["envoy"]["listener_tls"] = {"cert_file": str(issued.cert), "key_file": str(issued.key)}
    raw["routes"].insert(
        0,
        {"name": "refuse-converse", "path_prefix": "/aws-h413r", "api": "bedrock_converse",
         "provider": "mock-bedrock", "guardrails": "h413r"},
    )  # fmt: skip
    return raw


@pytest.fixture(scope="module")
def refusing_tls_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalStack, Path]]:
    """The stack over HTTPS, and the CA its listener's certificate is signed by."""
    workdir = tmp_path_factory.mktemp("webhook-refusal-retries-tls")
    authority = Authority(workdir, "listener-ca")
    with running_stack_calling(
        Refusing, workdir, lambda port: refusing_tls_config(port, authority)
    ) as running:
        yield running, authority.cert


def test_an_aws_sdk_client_gets_an_answer_the_webhook_refuses_to_read_once(
    refusing_tls_stack: tuple[LocalStack, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3 reads no x-should-retry and retried the 502 on its own (botocore retries
    every 502): each retry a Converse answer generated, charged and refused again. Now
    Bedrock's ModelErrorException (424), which it does not retry: asked once."""
    stack, ca = refusing_tls_stack
    Refusing.calls.clear()
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", KEY)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    client = boto3.client(  # the SDK's default retries: the case users meet
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=stack.base_url.replace("http://", "https://", 1) + "/aws-h413r",
        verify=str(ca),
    )
    with pytest.raises(client.exceptions.ModelErrorException) as refused:
        client.converse(
            modelId="anthropic.claude-3-haiku-20240307-v1:0",
            messages=[{"role": "user", "content": [{"text": "hello"}]}],
        )
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert refused.value.response["Error"]["Message"] == (
        "Guardrail 'answers' cannot check the model's answer: its webhook refused to read it"
        " (HTTP 413); the answer is withheld"
    )
    assert Refusing.calls == {413: 1}
