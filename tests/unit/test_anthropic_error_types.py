"""Errors in Anthropic's shape name the type Anthropic's API reference gives their status.

Anthropic's SDKs and Claude Code read ``error.type``; Anthropic names a 504
``timeout_error``, a 529 ``overloaded_error``, a 402 ``billing_error``. The gateway wrote
``api_error`` for every 5xx but its 503 (so a timeout read as a fault inside the API) and
``invalid_request_error`` for a 402, both in its own errors and in Envoy's replies to
Anthropic clients. Each test plays the call through the processor (or reads the rendered
Envoy reply) and hands what the client receives to the real SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from extproc.config import GatewayConfig
from extproc.envoy_bootstrap import render_bootstrap
from extproc.errors import anthropic_error_body, anthropic_error_status
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

KEY = {"x-api-key": "team1-key", "anthropic-version": "2023-06-01"}
FROM_PROVIDER = {"x-envoy-upstream-service-time": "3"}
HAIKU_ON_BEDROCK = "anthropic.claude-3-haiku-20240307-v1:0"


@pytest.fixture
async def signing_processor(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    """A processor whose runtime has loaded its AWS credentials, as the server's does."""
    runtime = Runtime(config, services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


def sdk_raises(status: int, body: bytes) -> anthropic.APIStatusError:
    """What the Anthropic SDK raises for a Messages call answered ``status`` with ``body``."""

    def reply(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers={"content-type": "application/json"}, content=body)

    http = httpx2.Client(transport=httpx2.MockTransport(reply))
    client = anthropic.Anthropic(
        base_url="http://gateway", api_key="team1-key", http_client=http, max_retries=0
    )
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
        )
    return raised.value


async def answered(
    processor: Processor, model: str, status: int, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    """The status and body an Anthropic client gets when the provider of ``model``
    answers its ``/v1/messages`` call ``status`` with ``body``."""
    request = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers=KEY),
            request_body(orjson.dumps(request)),
            response_headers(status, {**headers, **FROM_PROVIDER}),
            response_body(body),
        ],
    )
    mutation = answers[2].response_headers.response
    changed = {
        h.header.key: h.header.raw_value.decode() for h in mutation.header_mutation.set_headers
    }
    answered_status = int(changed.get(":status", status))
    return answered_status, client_body([body], answers)


async def test_bedrocks_model_timeout_reaches_an_anthropic_client_as_a_timeout_error(
    signing_processor: Processor,
) -> None:
    sent = {"content-type": "application/json", "x-amzn-errortype": "ModelTimeoutException"}
    status, body = await answered(
        signing_processor, HAIKU_ON_BEDROCK, 408, sent, b'{"message": "Model has timed out."}'
    )

    assert status == 504
    error = sdk_raises(status, body)
    assert isinstance(error, anthropic.GatewayTimeoutError)
    assert error.body == {
        "type": "error",
        "error": {"type": "timeout_error", "message": "Model has timed out."},
    }


@pytest.mark.parametrize(
    ("status", "error_type", "raised"),
    [
        (504, "timeout_error", anthropic.GatewayTimeoutError),
        (529, "overloaded_error", anthropic.OverloadedError),
        (500, "api_error", anthropic.InternalServerError),
    ],
)
async def test_a_providers_error_page_takes_anthropics_type_for_its_status(
    processor: Processor, status: int, error_type: str, raised: type[Exception]
) -> None:
    """A proxy in front of Anthropic answers with a page, not Anthropic's JSON."""
    page = b"<html><body>upstream request timeout</body></html>"
    answered_status, body = await answered(
        processor, "claude-3-5-haiku-latest", status, {"content-type": "text/html"}, page
    )

    error = sdk_raises(answered_status, body)
    assert isinstance(error, raised)
    assert isinstance(error.body, dict) and error.body["error"]["type"] == error_type
    assert b"<html>" not in body


def _anthropic_replies(config: GatewayConfig) -> dict[str, dict[str, Any]]:
    """Envoy's own replies to Anthropic clients, by their filter's expression."""
    listener = render_bootstrap(config)["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    mappers = manager["local_reply_config"]["mappers"]
    return {
        m["filter"]["extension_filter"]["typed_config"]["expression"]: m["body_format_override"][
            "json_format"
        ]
        for m in mappers
        if m["body_format_override"]["json_format"].get("type") == "error"
    }


def test_envoys_timeouts_reach_anthropic_clients_as_timeout_errors(config: GatewayConfig) -> None:
    """The provider too slow (Envoy's route timeout) or the gateway itself (ext_proc's
    message timeout): each is Envoy's 504, and Anthropic's ``timeout_error``."""
    replies = _anthropic_replies(config)
    timeouts = [body for where, body in replies.items() if "response.code == 504" in where]

    assert len(timeouts) == 2
    assert {body["error"]["type"] for body in timeouts} == {"timeout_error"}
    error = sdk_raises(504, orjson.dumps(timeouts[0]))
    assert isinstance(error, anthropic.GatewayTimeoutError)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        # As Anthropic's API reference lists them ("HTTP errors").
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "conflict_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        # Other 4xx (Anthropic: "may also be used for other 4XX status codes").
        (405, "invalid_request_error"),
        (415, "invalid_request_error"),
        # Not Anthropic's: the gateway's 502 is a fault on the way, its 503 no provider
        # reachable, which Anthropic's clients wait out as they do an overload.
        (502, "api_error"),
        (503, "overloaded_error"),
    ],
)
def test_each_status_takes_the_type_anthropic_documents(status: int, error_type: str) -> None:
    body = orjson.loads(anthropic_error_body("said", status))
    assert body == {"type": "error", "error": {"type": error_type, "message": "said"}}


def test_a_type_read_back_gives_the_status_it_stands_for() -> None:
    assert anthropic_error_status("timeout_error") == 504
    assert anthropic_error_status("overloaded_error") == 503  # the gateway's own
    assert anthropic_error_status("api_error") == 500
    assert anthropic_error_status("no_such_error") == 400
