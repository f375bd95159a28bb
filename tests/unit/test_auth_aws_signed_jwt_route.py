"""An AWS-signed request on a route that takes only JWTs is told what the route takes.

An AWS SDK with AWS credentials of its own signs its request (SigV4, ``Authorization:
AWS4-HMAC-SHA256 ...``). On a route that accepts only JWT bearer tokens it was told "no
API key found: ... send the gateway API key as a bearer token": a key the route refuses
(401 "invalid token: not a JWT") once the caller followed the advice. Now it is told, as
any other credential on such a route is, that the route accepts only JWT bearer tokens,
and how its SDK sends one (``AWS_BEARER_TOKEN_BEDROCK``). A route that takes keys and
tokens names both; a key-only route's message is unchanged.
"""

from __future__ import annotations

import orjson
import pytest

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.testing import processor_for, request_headers, run_stream
from tests.unit.test_auth_where_keys_go import CONVERSE, botocore_reads, refused

SIGNED = {
    "authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261206/us-east-1/bedrock/"
    "aws4_request, SignedHeaders=host;x-amz-date, Signature=0123456789abcdef",
    "x-amz-date": "20261206T091500Z",
}
PROVIDER = (
    "  jwt_providers:\n    - name: dev\n      issuer: https://dev.example.com\n"
    "      shared_secret: a-shared-secret-that-is-long-enough-000\n      algorithms: [HS256]\n"
)


def gateway(methods: str) -> Processor:
    """The default config with a JWT provider and every route taking ``methods``."""
    text = DEFAULT_CONFIG.read_text().replace(
        "\nauth:\n", f"\nauth:\n  default: {{methods: {methods}}}\n{PROVIDER}", 1
    )
    return processor_for(parse_config(text, "gateway.yaml", {}))


async def test_a_sigv4_request_on_a_jwt_only_route_is_told_it_takes_jwt_bearer_tokens() -> None:
    status, (sent, body) = await refused(gateway("[jwt]"), CONVERSE, SIGNED)

    error = botocore_reads(status, sent, body)
    assert (status, error["Code"]) == (401, "AccessDeniedException")
    message = error["Message"]
    assert message.startswith("no bearer token found: this request is signed with AWS")
    assert "this route accepts only JWT bearer tokens, not API keys" in message
    assert "AWS_BEARER_TOKEN_BEDROCK" in message
    assert "API key as" not in message and "no API key found" not in message
    assert b"0123456789abcdef" not in body and b"AKIDEXAMPLE" not in body


async def test_on_an_openai_route_the_code_stays_a_tokens() -> None:
    [answer] = await run_stream(
        gateway("[jwt]"), [request_headers("/v1/chat/completions", headers=SIGNED)]
    )

    error = orjson.loads(answer.immediate_response.body)["error"]
    assert answer.immediate_response.status.code == 401
    assert error["code"] == "invalid_token"
    assert "this route accepts only JWT bearer tokens" in error["message"]


async def test_a_route_taking_keys_and_tokens_names_both() -> None:
    status, (sent, body) = await refused(gateway("[api_key, jwt]"), CONVERSE, SIGNED)

    message = botocore_reads(status, sent, body)["Message"]
    assert message.startswith("no credentials found: this request is signed with AWS")
    assert "the gateway API key or a JWT" in message
    assert "AWS_BEARER_TOKEN_BEDROCK" in message


@pytest.mark.parametrize("methods", ["[api_key]"])
async def test_a_key_only_route_says_what_it_said(methods: str) -> None:
    status, (sent, body) = await refused(gateway(methods), CONVERSE, SIGNED)

    message = botocore_reads(status, sent, body)["Message"]
    assert message == (
        "no API key found: this request is signed with AWS credentials (SigV4), which the "
        "gateway does not take; send the gateway API key as a bearer token instead (AWS SDKs: "
        "set AWS_BEARER_TOKEN_BEDROCK to it, over HTTPS)"
    )
