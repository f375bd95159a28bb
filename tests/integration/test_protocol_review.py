"""The ext_proc protocol through the real Envoy: requests whose shape changes what Envoy sends."""

from __future__ import annotations

import httpx
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog

AUTH = {"authorization": "Bearer team1-key"}


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        # `curl -X POST` with no data: no content-length, no body.
        ("/v1/chat/completions", {}),
        # An SDK posting an empty body says so.
        ("/v1/embeddings", {"content-length": "0", "content-type": "application/json"}),
    ],
)
def test_a_post_without_a_body_is_a_400_saying_so(
    stack: LocalStack, gateway_log: GatewayLog, path: str, extra: dict[str, str]
) -> None:
    # Envoy sends the gateway no body message for such a request: before the fix the
    # body phase never ran, nothing picked a provider, and the client got Envoy's
    # catch-all "no route for this path" 404 on the very path the gateway serves.
    with httpx.Client(base_url=stack.base_url, timeout=30.0) as client:
        answer = client.post(path, headers={**AUTH, **extra})
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "request body is empty; expected a JSON object"
    [line] = gateway_log.for_request(answer.headers["x-request-id"])
    assert line["http_status_code"] == 400
    assert line["upstream_status_code"] is None


def test_an_anthropic_post_without_a_body_is_told_in_anthropics_shape(stack: LocalStack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30.0) as client:
        answer = client.post("/v1/messages", headers={"x-api-key": "team1-key"})
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
