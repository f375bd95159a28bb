"""Bedrock's own Converse API through the gateway: boto3's ``bedrock-runtime`` client
with the gateway as its endpoint and the gateway key as its bearer token, real Envoy
(serving HTTPS: the SDK sends a bearer token over TLS only), the gateway, embedded
Valkey and the mock Bedrock, which checks the gateway's SigV4 signature over the
request as Envoy delivers it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import httpx
import orjson
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from extproc.devstack import LocalStack
from tests.integration.certificates import Authority
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.test_openai_flow import usage_report

CLIENT_KEY = "team1-key"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ROUTE = "bedrock-converse"
MESSAGES = [{"role": "user", "content": [{"text": "Say hello to the gateway, please."}]}]
# The haiku's prices in the default config, USD per million tokens.
INPUT_PRICE, OUTPUT_PRICE = 0.25, 1.25


# The hard-capped hourly budget of requests sent with x-budget: nova-capped: far below
# quotas.default_max_tokens (1024), which a call naming no allowance reserves.
NOVA_BUDGET = 200

# Addresses masked both ways on the guarded route (/guarded/model/...).
PII_GUARDS: dict[str, Any] = {
    "name": "pii",
    "request": [{"name": "pii-in", "builtins": ["EMAIL"], "action": "mask"}],
    "response": [{"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"}],
}


class TlsStack:
    """A stack whose Envoy listener serves HTTPS, with the CA that signed it."""

    def __init__(self, stack: LocalStack, ca: Path) -> None:
        self.stack = stack
        self.ca = ca
        self.url = stack.base_url.replace("http://", "https://", 1)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    """The default config, HTTPS on the listener, and a hard-capped token budget for
    team2 (team1 has no limit), and another for requests sent with
    ``x-budget: nova-capped`` (``NOVA_BUDGET``), which no other test sends."""
    workdir: Path = tmp_path_factory.mktemp("converse")
    authority = Authority(workdir, "listener-ca")
    issued = authority.issue("gateway", ips=("127.0.0.1",))
    raw = default_config()
    raw["envoy"]["listener_tls"] = {"cert_file": str(issued.cert), "key_file": str(issued.key)}
    raw["guardrails"] = {"policies": [PII_GUARDS]}
    raw["routes"].insert(
        0,
        {"name": "guarded-converse", "path_prefix": "/guarded", "api": "bedrock_converse",
         "provider": "mock-bedrock", "guardrails": PII_GUARDS["name"]},
    )  # fmt: skip
    raw["quotas"] = {
        "rules": [{"name": "team2-budget", "subject": "api_key", "match": "team2",
                   "tokens_per_hour": 120, "hard_cap": True},
                  {"name": "nova-budget", "subject": "header:x-budget", "match": "nova-capped",
                   "tokens_per_hour": NOVA_BUDGET, "hard_cap": True}],
    }  # fmt: skip
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield TlsStack(running, authority.cert)


@pytest.fixture
def stack(tls: TlsStack) -> LocalStack:
    return tls.stack


@pytest.fixture
def https(tls: TlsStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tls.url, verify=str(tls.ca), timeout=30.0) as client:
        yield client


def bedrock_client(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch, key: str = CLIENT_KEY, prefix: str = ""
) -> BaseClient:
    """boto3's Bedrock Runtime client as an AWS SDK user would point it at the gateway:
    the gateway key as its bearer token, no AWS credentials, no retries (a test must
    see the first answer)."""
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=tls.url + prefix,
        verify=str(tls.ca),
        config=Config(retries={"total_max_attempts": 1}),
    )


def with_headers(client: BaseClient, headers: dict[str, str]) -> BaseClient:
    """``client``, sending ``headers`` with each request (the mock's fault switches)."""

    def add(request: Any, **_: Any) -> None:
        for name, value in headers.items():
            request.headers[name] = value

    client.meta.events.register("before-send.bedrock-runtime.*", add)
    return client


def converse_requests(stack: LocalStack) -> list[dict[str, Any]]:
    return [r for r in mock_requests(stack) if "/converse" in r["path"]]


def tokens(samples: dict[Any, float], kind: str) -> float:
    return metric(samples, "tokens_consumed_total", model=MODEL, token_type=kind)


def test_converse_is_answered_signed_by_the_gateway_and_billed(
    tls: TlsStack, stack: LocalStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = scrape(stack.metrics_url)
    report_before = usage_report(stack).get((ROUTE, MODEL), {})

    answer = bedrock_client(tls, monkeypatch).converse(
        modelId=MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 200}
    )

    [text] = [block["text"] for block in answer["output"]["message"]["content"]]
    assert text and answer["stopReason"] == "end_turn"
    usage = answer["usage"]
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0

    upstream = converse_requests(stack)[-1]
    # The provider's id for the model, and the gateway's own signature (the mock
    # verified it): the client's key went nowhere.
    assert unquote(upstream["path"]) == f"/model/{MODEL}/converse"
    assert upstream["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    assert CLIENT_KEY not in orjson.dumps(upstream).decode()

    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    [line] = gateway_log.for_request(request_id)
    assert (line["route"], line["provider"], line["model"]) == (ROUTE, "mock-bedrock", MODEL)
    assert line["http_status_code"] == 200 and line["outcome"] == "completed"
    assert line["stream"] is False and line["usage_reported"] is True
    assert line["finish_reasons"] == ["end_turn"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage["inputTokens"],
        usage["outputTokens"],
    )
    assert (line["api_key_id"], line["user_id"]) == ("team1", "alice")
    expected_cost = (
        usage["inputTokens"] * INPUT_PRICE + usage["outputTokens"] * OUTPUT_PRICE
    ) / 1e6
    assert line["cost_usd"] == pytest.approx(expected_cost)

    after = scrape(stack.metrics_url)
    assert tokens(after, "prompt") - tokens(before, "prompt") == usage["inputTokens"]
    assert tokens(after, "completion") - tokens(before, "completion") == usage["outputTokens"]
    # The rollup is written off the request path: wait for its row to count this call.
    row = wait_for(
        lambda: (
            found
            if (found := usage_report(stack).get((ROUTE, MODEL), {})).get("requests", 0)
            > report_before.get("requests", 0)
            else None
        )
    )
    assert row["requests"] - report_before.get("requests", 0) == 1
    assert row["prompt_tokens"] - report_before.get("prompt_tokens", 0) == usage["inputTokens"]


def test_a_large_converse_call_is_signed_by_the_gateway_and_answered(
    tls: TlsStack, stack: LocalStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 600 KB prompt (a report pasted in): its body is hashed for the signature off the
    gateway's event loop, and the mock Bedrock, which checks the signature over the body
    as Envoy delivers it, answers."""
    report = "Quarterly revenue grew in every region. " * 15_000
    answer = bedrock_client(tls, monkeypatch).converse(
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": report}]}],
        inferenceConfig={"maxTokens": 50},
    )
    assert answer["output"]["message"]["content"][0]["text"]
    upstream = converse_requests(stack)[-1]
    assert upstream["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    [line] = gateway_log.for_request(request_id)
    assert (line["http_status_code"], line["outcome"]) == (200, "completed")


def test_converse_stream_events_reach_the_client_and_its_usage_is_billed(
    tls: TlsStack, stack: LocalStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = bedrock_client(tls, monkeypatch).converse_stream(modelId="haiku", messages=MESSAGES)

    events = list(answer["stream"])
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "messageStart" and kinds[-1] == "metadata"
    assert "contentBlockDelta" in kinds and "messageStop" in kinds
    text = "".join(
        e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e
    )
    assert text
    usage = events[-1]["metadata"]["usage"]

    assert unquote(converse_requests(stack)[-1]["path"]) == f"/model/{MODEL}/converse-stream"
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    [line] = gateway_log.for_request(request_id)
    # Asked for by its alias, billed as the model.
    assert (line["route"], line["model"], line["stream"]) == (ROUTE, "haiku", True)
    assert line["outcome"] == "completed" and line["usage_reported"] is True
    assert line["finish_reasons"] == ["end_turn"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage["inputTokens"],
        usage["outputTokens"],
    )


def test_refusals_reach_the_sdk_as_bedrock_exceptions(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ClientError) as refused:
        bedrock_client(tls, monkeypatch, key="not-a-key").converse(modelId=MODEL, messages=MESSAGES)
    error = refused.value.response
    assert error["Error"]["Code"] == "AccessDeniedException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert "not-a-key" not in error["Error"]["Message"]

    # An SDK that signs with AWS credentials instead is told what to send.
    signed = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=tls.url,
        verify=str(tls.ca),
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="not-a-real-secret",
        config=Config(retries={"total_max_attempts": 1}, auth_scheme_preference="sigv4"),
    )
    with pytest.raises(ClientError) as unsigned:
        signed.converse(modelId=MODEL, messages=MESSAGES)
    assert unsigned.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "AWS_BEARER_TOKEN_BEDROCK" in unsigned.value.response["Error"]["Message"]

    # A model this route's provider does not serve: the gateway's 404, in Bedrock's shape.
    with pytest.raises(ClientError) as unknown:
        bedrock_client(tls, monkeypatch).converse(modelId="gpt-4o-mini", messages=MESSAGES)
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_requests_the_route_does_not_serve_are_refused_in_bedrock_shape(
    https: httpx.Client,
) -> None:
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    duplex = https.post(
        f"/model/{MODEL}/invoke-with-bidirectional-stream", json={"x": 1}, headers=auth
    )
    assert duplex.status_code == 404
    assert duplex.headers["x-amzn-errortype"] == "ResourceNotFoundException"
    assert "Converse" in duplex.json()["message"]

    blank = https.post(f"/model/{MODEL}/converse", json={"messages": []}, headers=auth)
    assert blank.status_code == 400
    assert blank.headers["x-amzn-errortype"] == "ValidationException"
    assert "messages" in blank.json()["message"]


def test_a_stream_the_provider_breaks_off_is_charged_and_the_sdk_sees_bedrocks_error(
    tls: TlsStack, stack: LocalStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = with_headers(bedrock_client(tls, monkeypatch), {"x-mock-fault": "error_after=2"})
    answer = client.converse_stream(modelId=MODEL, messages=MESSAGES)
    with pytest.raises(EventStreamError) as broken:
        list(answer["stream"])
    assert broken.value.response["Error"]["Code"] == "modelStreamErrorException"

    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    [line] = gateway_log.for_request(request_id)
    # Bedrock reports usage last: the prompt is the quota's estimate, the output what
    # was generated before the error.
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
    assert line["error_code"] == "ModelStreamErrorException"
    assert "injected by x-mock-fault" in line["error_message"]


def assert_spent_budget_refusal(refused: ClientError) -> None:
    """A spent hourly budget's refusal as boto3 raises it: for the rest of the hour,
    Bedrock's ServiceQuotaExceededException (400), which boto3 does not retry; in the
    hour's last minute (or while running requests hold it), a ThrottlingException it
    retries after ``x-amz-retry-after``."""
    error = refused.response
    status = error["ResponseMetadata"]["HTTPStatusCode"]
    if error["ResponseMetadata"]["HTTPHeaders"].get("x-should-retry") == "false":
        assert (error["Error"]["Code"], status) == ("ServiceQuotaExceededException", 400)
    else:
        assert (error["Error"]["Code"], status) == ("ThrottlingException", 429)


def test_a_hard_cap_lowers_max_tokens_then_refuses(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock_client(tls, monkeypatch, key="team2-key")
    first = client.converse(modelId=MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 4000})
    sent = orjson.loads(converse_requests(tls.stack)[-1]["body"])
    # The budget left room for far fewer than the 4,000 tokens asked.
    assert 0 < sent["inferenceConfig"]["maxTokens"] < 120
    assert first["usage"]["outputTokens"] <= sent["inferenceConfig"]["maxTokens"]

    with pytest.raises(ClientError) as throttled:
        for _ in range(20):
            client.converse(modelId=MODEL, messages=MESSAGES)
    assert_spent_budget_refusal(throttled.value)


def test_a_guarded_route_masks_the_prompt_and_the_answer_streamed_or_not(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock_client(tls, monkeypatch, prefix="/guarded")
    reply = ["Write to ", "bob@example.com", " today."]
    scripted = with_headers(client, {"x-mock-reply": orjson.dumps(reply).decode()})
    prompt = [{"role": "user", "content": [{"text": "I am jane@example.com, hi"}]}]

    answer = scripted.converse(
        modelId=MODEL, messages=prompt, system=[{"text": "Reply to jane@example.com"}]
    )

    sent = orjson.loads(converse_requests(tls.stack)[-1]["body"])
    assert "jane@example.com" not in orjson.dumps(sent).decode()
    assert sent["messages"][0]["content"][0]["text"].startswith("I am ")
    [text] = [block["text"] for block in answer["output"]["message"]["content"]]
    assert text.startswith("Write to ") and "bob@example.com" not in text
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    [line] = gateway_log.for_request(request_id)
    assert {(d["guard"], d["action"]) for d in line["guardrails"]} >= {
        ("pii-in", "mask"),
        ("pii-out", "mask"),
    }

    # Streamed, the address is masked inside Bedrock's frames (boto3 checks their CRCs).
    streamed = scripted.converse_stream(modelId=MODEL, messages=prompt)
    events = list(streamed["stream"])
    text = "".join(
        e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e
    )
    assert text.startswith("Write to ") and text.endswith(" today.")
    assert "bob@example.com" not in text
    assert "metadata" in events[-1]
    request_id = streamed["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    [line] = gateway_log.for_request(request_id)
    assert ("pii-out", "mask") in {(d["guard"], d["action"]) for d in line["guardrails"]}
    assert line["usage_reported"] is True
    assert line["completion_tokens"] == events[-1]["metadata"]["usage"]["outputTokens"]


def test_envoys_own_refusals_reach_the_sdk_as_bedrock_exceptions(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over the listener's buffer: Envoy answers before the gateway sees the body.
    huge = [{"role": "user", "content": [{"text": "x" * 2_000_000}]}]
    with pytest.raises(ClientError) as refused:
        bedrock_client(tls, monkeypatch).converse(modelId=MODEL, messages=huge)
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert error["Error"]["Code"] == "ValidationException"
    assert error["Error"]["Message"] == "the request body is too large"
