"""Quota refusals as boto3 acts on them, through real Envoy (HTTPS, as the SDK sends a
bearer token over TLS only), the gateway and its Valkey.

botocore retries a ``ThrottlingException`` whatever the answer's headers say: twice in
its default ``standard`` mode, four times in ``legacy`` mode, and its ``adaptive`` mode
slows every later call of the client down on it. A refusal that no retry within a
minute can pass (a prompt larger than the whole budget, a lifetime quota spent) is
Bedrock's ``ServiceQuotaExceededException`` (400), which no mode retries; one that a
short wait cures stays a ``ThrottlingException`` with ``x-amz-retry-after``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.integration.certificates import Authority
from tests.integration.conftest import default_config, metric, running_stack, scrape, write_config
from tests.integration.test_bedrock_converse import TlsStack

CLIENT_KEY = "team1-key"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
# Far more than the hard-capped budget of 60 tokens a minute can ever take.
LONG_PROMPT = "word " * 400


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    """HTTPS on the listener; limits by the ``x-team`` header, one subject per test."""
    workdir: Path = tmp_path_factory.mktemp("aws-sdk-refusals")
    authority = Authority(workdir, "listener-ca")
    issued = authority.issue("gateway", ips=("127.0.0.1",))
    raw = default_config()
    raw["envoy"]["listener_tls"] = {"cert_file": str(issued.cert), "key_file": str(issued.key)}
    raw["quotas"] = {
        "rules": [
            {"name": "capped-minute", "subject": "header:x-team", "match": "capped",
             "tokens_per_minute": 60, "hard_cap": True},
            {"name": "lifetime", "subject": "header:x-team", "match": "lifetime",
             "token_quota": {"limit": 10, "period": "lifetime"}},
            {"name": "one-a-minute", "subject": "header:x-team", "match": "minute",
             "requests_per_minute": 1},
        ]
    }  # fmt: skip
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield TlsStack(running, authority.cert)


def bedrock(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch, team: str, **retries: Any
) -> BaseClient:
    """boto3's Bedrock Runtime client with the gateway key as its bearer token, sending
    ``x-team: team``, with its default retries unless ``retries`` says otherwise."""
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", CLIENT_KEY)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=tls.url,
        verify=str(tls.ca),
        config=Config(retries=retries) if retries else None,
    )

    def add(request: Any, **_: Any) -> None:
        request.headers["x-team"] = team

    client.meta.events.register("before-send.bedrock-runtime.*", add)
    return client


def converse(client: BaseClient, prompt: str) -> dict[str, Any]:
    answer: dict[str, Any] = client.converse(
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": prompt}]}],
        inferenceConfig={"maxTokens": 5},
    )
    return answer


def converse_stream(client: BaseClient, prompt: str) -> dict[str, Any]:
    answer: dict[str, Any] = client.converse_stream(
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": prompt}]}],
        inferenceConfig={"maxTokens": 5},
    )
    return answer


def refusals(tls: TlsStack, rule: str) -> float:
    return metric(scrape(tls.stack.metrics_url), "aigw_rate_limited_total", rule=rule)


@pytest.mark.parametrize("mode", ["standard", "legacy", "adaptive"])
@pytest.mark.parametrize("call", [converse, converse_stream], ids=["converse", "stream"])
def test_a_prompt_larger_than_the_whole_budget_is_not_retried_by_boto3(
    tls: TlsStack,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    call: Callable[[BaseClient, str], dict[str, Any]],
) -> None:
    """Before, a ThrottlingException that boto3 sent two to four more times, each refused."""
    client = bedrock(tls, monkeypatch, "capped", mode=mode)
    before = refusals(tls, "capped-minute")

    with pytest.raises(ClientError) as refused:
        call(client, LONG_PROMPT)

    error = refused.value.response
    assert error["Error"]["Code"] == "ServiceQuotaExceededException"
    assert "Prompt too large for the token budget" in error["Error"]["Message"]
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["ResponseMetadata"]["RetryAttempts"] == 0
    assert refusals(tls, "capped-minute") == before + 1


def test_a_spent_lifetime_quota_is_not_retried_by_boto3(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock(tls, monkeypatch, "lifetime")
    converse(client, "spend it")  # the mock's answer is over the 10 tokens

    with pytest.raises(ClientError) as refused:
        converse(client, "once more")

    error = refused.value.response
    assert error["Error"]["Code"] == "ServiceQuotaExceededException"
    assert "it does not reset" in error["Error"]["Message"]
    assert error["ResponseMetadata"]["RetryAttempts"] == 0


def test_a_minutes_rate_limit_is_still_a_throttle_boto3_waits_out(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal a short wait cures: ThrottlingException with the wait in milliseconds."""
    client = bedrock(tls, monkeypatch, "minute", total_max_attempts=1)
    converse(client, "the one request of this minute")

    with pytest.raises(ClientError) as refused:
        converse(client, "a second one")

    error = refused.value.response
    assert error["Error"]["Code"] == "ThrottlingException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    headers = error["ResponseMetadata"]["HTTPHeaders"]
    assert "x-should-retry" not in headers
    assert int(headers["x-amz-retry-after"]) == 1000 * int(headers["retry-after"])
    assert 1 <= int(headers["retry-after"]) <= 60
