"""A review of Bedrock's Converse API through the gateway, as an AWS SDK sees it.

Each test plays one request through the processor (real ext_proc messages, the default
config's ``bedrock-converse`` route and mock Bedrock provider, SigV4 credentials loaded)
and reads the answer the way botocore reads it: the exception's name from
``x-amzn-errortype`` (else the body's ``code``, else the status), its message from the
body's ``message``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import quote

import botocore.session
import orjson
import pytest
from botocore.parsers import create_parser
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.config import GatewayConfig
from extproc.converse_api import check_converse_body, is_prompt
from extproc.errors import BadRequestError
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.quota_helpers import capped_runtime

AUTH = {"authorization": "Bearer team1-key"}
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "Hello"}]}]
# What Envoy's router adds to an answer that came from the provider.
FROM_PROVIDER = {"x-envoy-upstream-service-time": "4"}
# A made-up session token of temporary AWS credentials (a role's, an IRSA pod's).
SESSION_TOKEN = "FwoGZXIvYXdzEFAKEtokenFORtests0123456789abcdefGHIJKLmnopQRSTuvwx+yz/AB=="


def converse_path(model: str = HAIKU) -> str:
    """The path boto3's converse calls: the model id URL-encoded into one segment."""
    return f"/model/{quote(model, safe='')}/converse"


@pytest.fixture
async def signing_processor(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    """A processor whose runtime has loaded its AWS credentials, as the server's does."""
    runtime = Runtime(config, services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


def mutations(answer: ext.ProcessingResponse) -> tuple[dict[str, str], list[str], bytes | None]:
    """The headers an answer sets and removes, and the body it puts in place (if any)."""
    common = getattr(answer, answer.WhichOneof("response")).response
    set_headers = {
        h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers
    }
    body_mutation = common.body_mutation
    body = body_mutation.body if body_mutation.WhichOneof("mutation") == "body" else None
    return set_headers, list(common.header_mutation.remove_headers), body


def what_the_client_gets(
    answers: Iterable[ext.ProcessingResponse], status: int, sent: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body the client receives of a provider's (or Envoy's)
    answer of one body chunk, after the gateway's answers to its two messages."""
    [at_headers] = [a for a in answers if a.WhichOneof("response") == "response_headers"]
    [at_body] = [a for a in answers if a.WhichOneof("response") == "response_body"]
    set_headers, removed, _ = mutations(at_headers)
    received = {k: v for k, v in sent.items() if k not in removed}
    received.update(set_headers)
    _, _, replaced = mutations(at_body)
    status = int(received.pop(":status", status))
    return status, received, replaced if replaced is not None else body


def sdk_error(status: int, received: dict[str, str], body: bytes) -> dict[str, Any]:
    """The error botocore raises for this answer to a Converse call (ClientError.response)."""
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("Converse").output_shape
    parsed = create_parser("rest-json").parse(
        {"status_code": status, "headers": received, "body": body}, shape
    )
    error: dict[str, Any] = parsed["Error"]
    return error


async def answered(
    processor: Processor,
    status: int,
    sent: dict[str, str],
    body: bytes,
    request: bytes | None = None,
) -> dict[str, Any]:
    """The error an SDK reads when a Converse call is answered ``status`` with ``body``."""
    content = request or orjson.dumps({"messages": MESSAGES})
    answers = await run_stream(
        processor,
        [
            request_headers(converse_path(), headers=AUTH),
            request_body(content),
            response_headers(status, sent),
            response_body(body),
        ],
    )
    return sdk_error(*what_the_client_gets(answers, status, sent, body))


# --- a refusal of the gateway's AWS credentials keeps its session token to itself ------------


def bedrock_signature_refusal(token: str) -> bytes:
    """Bedrock's 403 to a signature it could not match: the message quotes the canonical
    request it expected, signed headers and all, the session token among them."""
    message = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. Consult the service "
        "documentation for details.\n\nThe Canonical String for this request should have "
        f"been\n'POST\n/model/{quote(quote(HAIKU, safe=''), safe='')}/converse\n\n"
        "content-type:application/json\nhost:bedrock-runtime.us-east-1.amazonaws.com\n"
        f"x-amz-date:20260102T030405Z\nx-amz-security-token:{token}\n\n"
        "content-type;host;x-amz-date;x-amz-security-token\n"
        "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0'\n\n"
        "The String-to-Sign should have been\n'AWS4-HMAC-SHA256\n20260102T030405Z\n"
        "20260102/us-east-1/bedrock/aws4_request\n"
        "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90'\n"
    )
    return orjson.dumps({"message": message})


async def test_a_signature_refusal_does_not_show_the_client_the_gateways_session_token(
    signing_processor: Processor,
) -> None:
    sent = {
        "content-type": "application/json",
        "x-amzn-errortype": "InvalidSignatureException:http://internal.amazon.com/coral/",
        **FROM_PROVIDER,
    }
    error = await answered(signing_processor, 403, sent, bedrock_signature_refusal(SESSION_TOKEN))

    # The operator's problem, said as such...
    assert "not a problem with your API key" in error["Message"]
    assert "signature we calculated does not match" in error["Message"]
    # ...without the token, nor a piece of it long enough to matter.
    assert SESSION_TOKEN[:8] not in error["Message"]
    assert SESSION_TOKEN[-8:] not in error["Message"]


# --- Prompt management: a prompt's ARN and its variables, no messages ------------------------

PROMPT = "arn:aws:bedrock:us-east-1:123456789012:prompt/PROMPT12345:1"
VARIABLES = {"promptVariables": {"topic": {"text": "tides"}}}


async def test_a_prompt_from_prompt_management_is_sent_on_without_messages(
    signing_processor: Processor,
) -> None:
    # boto3's converse(modelId=<prompt ARN>, promptVariables=...): Bedrock fills in the
    # prompt's messages itself (messages are optional in Converse, modelId alone is not).
    answers = await run_stream(
        signing_processor,
        [
            request_headers(converse_path(PROMPT), headers=AUTH),
            request_body(orjson.dumps(VARIABLES)),
        ],
    )

    assert answers[-1].WhichOneof("response") == "request_body"
    set_headers, _, _ = mutations(answers[-1])
    assert set_headers[headers.CLUSTER] == "provider_mock_bedrock"
    # Signed for Bedrock, for the path the client called (the prompt's ARN).
    assert set_headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert set_headers.get(":path", converse_path(PROMPT)) == converse_path(PROMPT)


def test_messages_sent_with_a_prompt_are_still_checked() -> None:
    with pytest.raises(BadRequestError) as refused:
        check_converse_body({**VARIABLES, "messages": [{"role": "user", "content": "hi"}]}, 100)
    assert refused.value.param == "messages[0].content"


# --- Envoy's own replies and a provider's non-JSON errors, as Bedrock exceptions -------------

# Envoy's reply when the provider did not answer in time (envoy_bootstrap's local reply).
ENVOY_TIMEOUT = orjson.dumps(
    {
        "error": {
            "message": "the upstream provider did not respond in time",
            "type": "timeout",
            "param": None,
            "code": "upstream_timeout",
        }
    }
)


async def test_envoys_timeout_reaches_the_sdk_as_a_bedrock_exception_with_its_message(
    signing_processor: Processor,
) -> None:
    error = await answered(
        signing_processor, 504, {"content-type": "application/json"}, ENVOY_TIMEOUT
    )

    assert error["Code"] == "ModelTimeoutException"
    assert error["Message"] == "the upstream provider did not respond in time"


async def test_a_providers_error_page_reaches_the_sdk_as_a_bedrock_exception(
    signing_processor: Processor,
) -> None:
    # A proxy in front of Bedrock answering with its own page.
    sent = {"content-type": "text/html", **FROM_PROVIDER}
    error = await answered(signing_processor, 502, sent, b"<html>502 Bad Gateway</html>")

    assert error["Code"] == "InternalServerException"
    assert "502" in error["Message"]


# --- a hard cap on a prompt of Prompt management ---------------------------------------------


def test_a_prompts_arn_is_told_from_a_models() -> None:
    assert is_prompt(PROMPT)
    assert is_prompt("arn:aws:bedrock:eu-west-1:123456789012:prompt/PROMPT12345")
    assert not is_prompt(HAIKU)
    assert not is_prompt("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x")
    assert not is_prompt("arn:aws:bedrock:us-east-1::foundation-model/anthropic.prompt/x")


async def capped_converse(
    quota_store: QuotaStore, budget: int, model: str, body: dict[str, Any]
) -> list[ext.ProcessingResponse]:
    """A Converse call of key team1, whose hard-capped daily budget is ``budget`` tokens."""
    runtime, _ = capped_runtime(quota_store, budget)
    await runtime.start()
    try:
        answers = await run_stream(
            Processor(lambda: runtime, default_stages()),
            [
                request_headers(converse_path(model), headers=AUTH),
                request_body(orjson.dumps(body)),
            ],
        )
    finally:
        await runtime.close()
    return answers


async def test_a_hard_cap_still_lowers_a_models_max_tokens(quota_store: QuotaStore) -> None:
    body = {"messages": MESSAGES, "inferenceConfig": {"maxTokens": 800}}
    answers = await capped_converse(quota_store, 300, HAIKU, body)

    _, _, sent = mutations(answers[-1])
    assert sent is not None
    assert 0 < orjson.loads(sent)["inferenceConfig"]["maxTokens"] < 300


async def test_a_hard_cap_never_raises_the_allowance_above_what_was_reserved(
    quota_store: QuotaStore,
) -> None:
    # No maxTokens: the quota reserved the default allowance (1,000 in quota_helpers). A
    # maxTokens of the budget's remainder (~100,000) is Bedrock's ValidationException
    # ("exceeds the model limit of 4096") on every call, and what a cut answer is charged.
    answers = await capped_converse(quota_store, 100_000, HAIKU, {"messages": MESSAGES})

    _, _, sent = mutations(answers[-1])
    assert sent is not None
    assert orjson.loads(sent)["inferenceConfig"]["maxTokens"] <= 1000


async def test_a_hard_cap_writes_no_max_tokens_into_a_prompt_call(
    quota_store: QuotaStore,
) -> None:
    # Plenty of budget: the call goes as it came, or Bedrock refuses its inferenceConfig.
    answers = await capped_converse(quota_store, 100_000, PROMPT, VARIABLES)

    assert answers[-1].WhichOneof("response") == "request_body"
    _, _, sent = mutations(answers[-1])
    assert sent is None or "inferenceConfig" not in orjson.loads(sent)


async def test_a_hard_cap_without_room_for_the_default_allowance_refuses_a_prompt_call(
    quota_store: QuotaStore,
) -> None:
    # 1,000 tokens is the default allowance (quota_helpers): a prompt's answer cannot be
    # bounded below it, so a budget with less room left refuses it, not an overrun; for
    # good (no retry-after), so not as a throttle boto3 would retry.
    answers = await capped_converse(quota_store, 500, PROMPT, VARIABLES)

    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    received = {h.header.key: h.header.raw_value.decode() for h in refusal.headers.set_headers}
    assert received["x-amzn-errortype"] == "ServiceQuotaExceededException"
