"""A gateway started while its Bedrock provider's STS is down (a Kubernetes service
account's web identity, STS refusing connections): it starts and serves the other
providers; the Bedrock model answers 503 ``provider_credentials_unavailable``, which the
SDKs retry, until STS answers, and then serves without a restart. Before, the gateway
refused its config and never started.

All real: Envoy, the gateway, the mock provider (which checks SigV4 against the one secret
it knows), botocore's web identity provider against an STS stand-in in this process, and
the official openai client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, mock_requests, running_stack, wait_for
from tests.sts_stand_in import DownSts, answering, sts_answer

KEY = "team1-key"
SESSION_TOKEN = "pending-then-fetched-session-token"
PROVIDERS = """
  - {name: dead, base_url: "http://127.0.0.1:1/v1", api_key: dead-key-123}
  - name: bedrock-irsa
    type: bedrock
    base_url: http://${MOCK_LLM_ADDRESS}
    aws: {region: us-east-1}
"""
MODELS = """
  - {name: anthropic.claude-3-5-haiku-20241022-v1:0, provider: bedrock-irsa, aliases: [irsa-haiku]}
  - name: amazon.nova-micro-v1:0
    provider: bedrock-irsa
    aliases: [irsa-nova]
    fallbacks: [gpt-4o-mini]
  - name: o4-mini
    provider: dead
    fallbacks: [anthropic.claude-3-5-haiku-20241022-v1:0, claude-3-5-haiku-latest]
"""
# The mock knows one key pair; the STS stand-in hands it out, with a session token.
Sts = answering(sts_answer("AKIDMOCK", "mock-secret-key", SESSION_TOKEN))


@pytest.fixture(scope="module")
def sts() -> Iterator[DownSts]:
    down = DownSts()
    yield down
    down.close()


@pytest.fixture(scope="module")
def pending_stack(tmp_path_factory: pytest.TempPathFactory, sts: DownSts) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("credentials-pending")
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:" + PROVIDERS, 1)
    text = text.replace("\nmodels:\n", "\nmodels:" + MODELS, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    token = workdir / "web-identity-token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb2QifQ.c2lnbmF0dXJl")
    env = {
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/gateway",
        "AWS_ENDPOINT_URL_STS": sts.url,
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-credentials"),
        "AWS_CONFIG_FILE": str(workdir / "no-config"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # Whatever the machine running the tests has: not part of the chain here.
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SESSION_TOKEN": "",
    }
    with running_stack(workdir, config, extra_env=env) as running:
        yield running


def ask(stack: LocalStack, model: str) -> str:
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "are you there?"}]
    )
    return reply.choices[0].message.content or ""


def test_the_other_providers_serve_while_sts_is_down(pending_stack: LocalStack) -> None:
    assert ask(pending_stack, "gpt-4o-mini") == "Mock reply to: are you there?"

    with pytest.raises(openai.InternalServerError) as refused:
        ask(pending_stack, "irsa-haiku")
    assert refused.value.status_code == 503
    body: Any = refused.value.body
    assert body["code"] == "provider_credentials_unavailable"
    # Nothing went to the provider unsigned.
    assert not [r for r in mock_requests(pending_stack) if "/model/" in r["path"]]

    request_id = refused.value.response.headers["x-request-id"]
    [line] = GatewayLog(pending_stack.gateway_log).for_request(request_id)
    assert line["http_status_code"] == 503
    assert not line["total_tokens"]


def answered(stack: LocalStack, model: str) -> tuple[int, str, dict[str, Any]]:
    """The status and content a chat request for ``model`` got, and its log line."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "are you there?"}]
    )
    content = raw.parse().choices[0].message.content or ""
    line = GatewayLog(stack.gateway_log).for_request(raw.headers["x-request-id"])[-1]
    return raw.http_response.status_code, content, line


def test_a_failover_chain_skips_a_pending_fallback(pending_stack: LocalStack) -> None:
    status, content, line = answered(pending_stack, "o4-mini")
    # The primary refuses connections; the Bedrock fallback has no credentials yet; the
    # Anthropic one answers (before, the Bedrock attempt's 503 was the client's answer).
    assert (status, content) == (200, "Mock reply to: are you there?")
    assert line["provider"] == "mock-anthropic"


def test_a_pending_primary_is_skipped_for_its_fallback(pending_stack: LocalStack) -> None:
    status, content, line = answered(pending_stack, "irsa-nova")
    # Before, the primary's attempt ended in the gateway's 503, the client's answer.
    assert (status, content) == (200, "Mock reply to: are you there?")
    assert (line["model"], line["provider"]) == ("irsa-nova", "mock")
    assert line["total_tokens"] > 0


def test_the_provider_serves_once_sts_answers_without_a_restart(
    pending_stack: LocalStack, sts: DownSts
) -> None:
    sts.come_up(Sts)

    def served() -> str | None:
        try:
            return ask(pending_stack, "irsa-haiku")
        except openai.InternalServerError:
            return None

    # The gateway asks STS again after 1 s, 2 s, 4 s... then every 30 s.
    answer = wait_for(served, timeout_s=90.0)
    assert answer == "Mock reply to: are you there?"
    signed = [r for r in mock_requests(pending_stack) if "/model/" in r["path"]][-1]
    assert signed["headers"]["x-amz-security-token"] == SESSION_TOKEN


def test_no_credential_reaches_the_gateways_logs(pending_stack: LocalStack) -> None:
    workdir: Path = pending_stack.workdir
    readable = "\n".join(
        path.read_text(errors="replace")
        for path in (pending_stack.gateway_log, workdir / "gateway.err")
        if path.exists()
    )
    assert "provider_credentials_unavailable" in readable  # the control: the warning
    for secret in (SESSION_TOKEN, "mock-secret-key", "eyJhbGciOiJSUzI1NiJ9"):
        assert secret not in readable
