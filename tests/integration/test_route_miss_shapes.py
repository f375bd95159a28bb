"""A call no route serves gets Envoy's 404 in its own API's error shape.

Envoy answers a path the gateway does not route with its catch-all 404. It was OpenAI's
shape for every client: the anthropic SDK calling Message Batches
(``/v1/messages/batches``, which the gateway does not serve) read no Anthropic error,
boto3 calling ApplyGuardrail raised ``ClientError`` "(404) ...: " with no exception
name and no message, and google-genai on a gateway without a Gemini route got no
``error.status``. Each SDK names itself in a header OpenAI's never send, and gets its
API's shape; an OpenAI client (or curl) keeps OpenAI's.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import boto3
import httpx
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError
from google import genai
from google.genai import errors, types
from openai import NotFoundError, OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import mock_requests

KEY = "team1-key"
MISS = "no route for this path"


@pytest.fixture
def boto(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[BaseClient]:
    """boto3's Bedrock Runtime client pointed at the gateway, no retries. Signed with
    made-up AWS keys: its bearer token (the gateway key) wants HTTPS, and a path no
    route serves is refused before anyone reads a credential."""
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDROUTEMISS")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "route-miss-secret")
    yield boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=stack.base_url,
        config=Config(retries={"total_max_attempts": 1}),
    )


def test_an_anthropic_sdk_call_the_gateway_does_not_serve_is_an_anthropic_404(
    stack: LocalStack,
) -> None:
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=KEY, max_retries=0)
    # The same client's Messages call is served as ever.
    message = client.messages.create(
        model="claude-3-5-haiku-latest",
        max_tokens=16,
        messages=[{"role": "user", "content": "hi"}],
    )
    assert message.type == "message"
    sent = len(mock_requests(stack))
    with pytest.raises(anthropic.NotFoundError) as refused:
        client.messages.batches.create(
            requests=[
                {
                    "custom_id": "one",
                    "params": {
                        "model": "claude-3-5-haiku-latest",
                        "max_tokens": 16,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                }
            ]
        )
    assert refused.value.response.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": MISS},
    }
    assert refused.value.response.headers["content-type"] == "application/json"
    assert len(mock_requests(stack)) == sent


def test_an_aws_sdk_call_the_gateway_does_not_serve_raises_its_exception(
    stack: LocalStack, boto: BaseClient
) -> None:
    sent = len(mock_requests(stack))
    with pytest.raises(ClientError) as refused:
        boto.apply_guardrail(  # type: ignore[attr-defined]
            guardrailIdentifier="g-1",
            guardrailVersion="1",
            source="INPUT",
            content=[{"text": {"text": "hi"}}],
        )
    error = refused.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("ResourceNotFoundException", MISS)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert len(mock_requests(stack)) == sent


def test_a_gemini_sdk_on_a_gateway_without_a_gemini_route_gets_googles_404(
    stack: LocalStack,
) -> None:
    # The Gemini API's own version path: the default config serves no Gemini route.
    options = types.HttpOptions(base_url=stack.base_url, api_version="v1beta", timeout=30_000)
    client = genai.Client(api_key=KEY, http_options=options)
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (refused.value.code, refused.value.status) == (404, "NOT_FOUND")
    assert refused.value.message == MISS


def test_google_genai_without_api_version_gets_googles_404_not_the_model_lists_405(
    stack: LocalStack,
) -> None:
    """google-genai 3 calls ``/v1/models/{model}:generateContent`` by default: the OpenAI
    model list's ``/v1/models/{model}`` on the default config. It got OpenAI's 405 (no
    ``error.status``); it gets Google's 404 saying no Gemini route is served."""
    options = types.HttpOptions(base_url=stack.base_url, timeout=30_000)
    client = genai.Client(api_key=KEY, http_options=options)
    sent = len(mock_requests(stack))
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (refused.value.code, refused.value.status) == (404, "NOT_FOUND")
    assert refused.value.message == (
        "POST /v1/models/gemini-2.5-flash:generateContent is a Gemini API call on /v1/models,"
        " OpenAI's model list here; this gateway serves no Gemini API route"
    )
    assert len(mock_requests(stack)) == sent


def test_openai_clients_and_curl_keep_openais_404(stack: LocalStack, http: httpx.Client) -> None:
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(NotFoundError) as refused:
        client.batches.create(
            completion_window="24h", endpoint="/v1/chat/completions", input_file_id="file-1"
        )
    openai_shape = {
        "error": {
            "message": MISS,
            "type": "not_found_error",
            "param": None,
            "code": "route_not_found",
        }
    }
    assert refused.value.response.json() == openai_shape
    assert http.post("/v1/messages/batches", json={}).json() == openai_shape
