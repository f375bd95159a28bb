"""A guardrail webhook at its rate limit, through the real Envoy with the official SDKs.

The webhook answers 429 with ``retry-after``; its guards fail closed. The client gets
a 429 ``guardrail_rate_limited`` with the same ``retry-after`` (it got a 503
``guardrail_unavailable`` without one), for a prompt (nothing reaches the provider or
is charged) and for a buffered answer (the answer is withheld, its tokens charged).
A stream has sent its 200 already: it ends with an error event naming the wait.

The webhook is a stand-in written here; the provider is the mock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import default_config, running_stack_calling
from tests.integration.guard_rate_limit import (
    AtItsRateLimit,
    rate_limited,
    refused_before_the_provider,
)

KEY = "team1-key"
HOOK_TOKEN = "hook-s3cret-token"


class BusyWebhook(AtItsRateLimit):
    """A kgateway-style guardrail webhook at its rate limit, on both paths."""

    body = b'{"detail": "Too many requests"}'


def busy_config(webhook_port: int) -> dict[str, Any]:
    raw = default_config()
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
    workdir = tmp_path_factory.mktemp("webhook-rate-limit")
    with running_stack_calling(BusyWebhook, workdir, busy_config) as running:
        yield running


def client(stack: LocalStack, prefix: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{prefix}/v1", api_key=KEY, max_retries=0, timeout=30)


def test_a_prompt_guarded_by_a_rate_limited_webhook_gets_a_429_with_retry_after(
    busy_stack: LocalStack,
) -> None:
    limited, line = refused_before_the_provider(busy_stack, client(busy_stack, "/busy-in"))
    assert "rate limited by its webhook; try again in 17 seconds" in limited.message
    assert line["guardrails"] == [
        {"guard": "civility", "phase": "request", "action": "fail_closed"}
    ]
    assert HOOK_TOKEN not in orjson.dumps(line).decode()


def test_an_answer_guarded_by_a_rate_limited_webhook_gets_a_429_and_is_still_charged(
    busy_stack: LocalStack,
) -> None:
    limited, line = rate_limited(busy_stack, client(busy_stack, "/busy-out"))
    assert "Mock reply" not in limited.response.text
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
