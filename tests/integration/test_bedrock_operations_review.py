"""A review of CountTokens on the Bedrock Runtime route, as AWS SDK users meet it: real
Envoy (HTTPS), the gateway, embedded Valkey and the mock Bedrock. The stack is the
Converse tests' (a guarded route under /guarded that masks e-mail addresses), its
fixtures imported: their names as test parameters read to ruff as redefinitions."""

# ruff: noqa: F401, F811

from __future__ import annotations

import base64
import json

import httpx
import orjson
import pytest
from botocore.exceptions import ClientError

from extproc.devstack import LocalStack
from tests.integration.conftest import mock_requests
from tests.integration.test_bedrock_converse import (
    CLIENT_KEY,
    MODEL,
    TlsStack,
    bedrock_client,
    https,
    stack,
    tls,
)


def test_a_count_whose_body_is_not_base64_text_is_a_400_not_a_500(https: httpx.Client) -> None:
    # A hand-written client's typo (an accented letter in the blob) is the client's error.
    answer = https.post(
        f"/model/{MODEL}/count-tokens",
        content=b'{"input": {"invokeModel": {"body": "\xc3\xa9t\xc3\xa9"}}}',
        headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.headers["x-amzn-errortype"] == "ValidationException"
    assert "input.invokeModel.body" in answer.json()["message"]


def test_a_guarded_count_sends_no_text_its_guards_did_not_read(
    tls: TlsStack, stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Claude's model with a body that is no Messages call (Claude 2's text completion):
    # invoke_model refuses it, so count_tokens must too rather than send it unmasked.
    client = bedrock_client(tls, monkeypatch, prefix="/guarded")
    legacy = json.dumps({"prompt": "\n\nHuman: I am jane@example.com\n\nAssistant:"})
    with pytest.raises(ClientError) as refused:
        client.count_tokens(modelId=MODEL, input={"invokeModel": {"body": legacy}})
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "jane@example.com" not in "".join(counted_texts(stack))


def counted_texts(stack: LocalStack) -> list[str]:
    """The InvokeModel bodies the mock Bedrock was asked to count, decoded."""
    texts = []
    for sent in mock_requests(stack):
        if sent["path"].endswith("/count-tokens"):
            member = orjson.loads(sent["body"])["input"].get("invokeModel") or {}
            texts.append(base64.b64decode(member.get("body", "")).decode())
    return texts
