"""A guardrail's service at its rate limit, stood in for, and what a client and the log see.

The service (a webhook, a moderation endpoint) answers every call with a 429 and
``retry-after``; its guards fail closed. The client must get a 429
``guardrail_rate_limited`` carrying the same ``retry-after`` and naming the wait, and
the request's log line must show the 429.
"""

from __future__ import annotations

import http.server
from typing import Any

import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests

RETRY_AFTER = "17"


class AtItsRateLimit(http.server.BaseHTTPRequestHandler):
    """Answers every POST with a 429, ``retry-after`` and ``body``, the service's own
    JSON (a subclass sets it: the gateway must not depend on its shape)."""

    body = b"{}"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("retry-after", RETRY_AFTER)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def rate_limited(stack: LocalStack, client: OpenAI) -> tuple[openai.RateLimitError, dict[str, Any]]:
    """A user's "hello" on a guarded route: the 429 the client gets, and the request's
    log line."""
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
    response = limited.value.response
    assert response.status_code == 429
    assert response.headers["retry-after"] == RETRY_AFTER
    assert limited.value.code == "guardrail_rate_limited"
    assert f"try again in {RETRY_AFTER} seconds" in limited.value.message
    [line] = GatewayLog(stack.gateway_log).for_request(response.headers["x-request-id"])
    assert line["http_status_code"] == 429
    return limited.value, line


def refused_before_the_provider(
    stack: LocalStack, client: OpenAI
) -> tuple[openai.RateLimitError, dict[str, Any]]:
    """``rate_limited``, for a guard of the prompt: refused before the provider and the
    quota, so nothing reached the provider and nothing is charged."""
    provider_calls = len(mock_requests(stack))
    limited, line = rate_limited(stack, client)
    assert len(mock_requests(stack)) == provider_calls
    assert (line["prompt_tokens"], line["total_tokens"]) == (0, 0)
    return limited, line
