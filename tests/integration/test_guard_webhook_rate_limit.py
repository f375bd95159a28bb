"""A guardrail webhook at its rate limit, through the real Envoy with the official SDKs.

The webhook answers 429 with ``retry-after``; its guards fail closed. The client gets
a 429 ``guardrail_rate_limited`` with the same ``retry-after`` (it got a 503
``guardrail_unavailable`` without one), for a prompt (nothing reaches the provider or
is charged) and for a buffered answer (the answer is withheld, its tokens charged).
A stream has sent its 200 already: it ends with an error event naming the wait.

The webhook is a stand-in written here; the provider is the mock.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, mock_requests, running_stack

KEY = "team1-key"
HOOK_TOKEN = "hook-s3cret-token"
RETRY_AFTER = "17"


class BusyWebhook(http.server.BaseHTTPRequestHandler):
    """A kgateway-style guardrail webhook at its rate limit, on both paths."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = b'{"detail": "Too many requests"}'
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("retry-after", RETRY_AFTER)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def busy_config(webhook_port: int) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["guardrails"] = {
        "webhooks": [{"name": "busy", "host": "127.0.0.1", "port": webhook_port,
                      "headers": {"x-webhook-token": HOOK_TOKEN}, "failure_mode": "fail_closed"}],
        "policies": [
            {"name": "busy-in", "request": [{"name": "civility", "webhook": "busy"}]},
            {"name": "busy-out", "response": [{"name": "civility-out", "webhook": "busy"}]},
        ],
    }  # fmt: skip
    raw["routes"] += [
        {"name": "busy-in", "path_prefix": "/busy-in", "guardrails": "busy-in"},
        {"name": "busy-out", "path_prefix": "/busy-out", "guardrails": "busy-out"},
    ]
    return raw


@pytest.fixture(scope="module")
def busy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BusyWebhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    workdir = tmp_path_factory.mktemp("webhook-rate-limit")
    config = Path(workdir) / "gateway.yaml"
    config.write_text(yaml.safe_dump(busy_config(server.server_address[1]), sort_keys=False))
    try:
        with running_stack(workdir, config) as running:
            yield running
    finally:
        server.shutdown()
        server.server_close()


def client(stack: LocalStack, prefix: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{prefix}/v1", api_key=KEY, max_retries=0, timeout=30)


def test_a_prompt_guarded_by_a_rate_limited_webhook_gets_a_429_with_retry_after(
    busy_stack: LocalStack,
) -> None:
    provider_calls = len(mock_requests(busy_stack))
    with pytest.raises(openai.RateLimitError) as limited:
        client(busy_stack, "/busy-in").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
    response = limited.value.response
    assert response.headers["retry-after"] == RETRY_AFTER
    assert limited.value.code == "guardrail_rate_limited"
    assert "rate limited by its webhook; try again in 17 seconds" in limited.value.message
    # Refused before the provider and the quota: nothing reached it, nothing is charged.
    assert len(mock_requests(busy_stack)) == provider_calls
    [line] = GatewayLog(busy_stack.gateway_log).for_request(response.headers["x-request-id"])
    assert line["http_status_code"] == 429
    assert (line["prompt_tokens"], line["total_tokens"]) == (0, 0)
    assert line["guardrails"] == [
        {"guard": "civility", "phase": "request", "action": "fail_closed"}
    ]
    assert HOOK_TOKEN not in orjson.dumps(line).decode()


def test_an_answer_guarded_by_a_rate_limited_webhook_gets_a_429_and_is_still_charged(
    busy_stack: LocalStack,
) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        client(busy_stack, "/busy-out").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
    response = limited.value.response
    assert response.headers["retry-after"] == RETRY_AFTER
    assert limited.value.code == "guardrail_rate_limited"
    assert "Mock reply" not in response.text
    [line] = GatewayLog(busy_stack.gateway_log).for_request(response.headers["x-request-id"])
    assert line["http_status_code"] == 429
    assert line["guardrails"] == [
        {"guard": "civility-out", "phase": "response", "action": "fail_closed"}
    ]
    # The provider wrote the answer: it is charged, as any withheld answer is.
    assert line["completion_tokens"] > 0


def test_a_stream_guarded_by_a_rate_limited_webhook_ends_with_an_error_naming_the_wait(
    busy_stack: LocalStack,
) -> None:
    stream = client(busy_stack, "/busy-out").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    text: list[str] = []
    with pytest.raises(openai.APIError) as ended:
        for chunk in stream:
            text.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "Mock reply" not in "".join(text)
    assert "rate limited by its webhook; try again in 17 seconds" in ended.value.message
