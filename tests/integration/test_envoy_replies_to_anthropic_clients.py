"""Envoy's own replies reach Anthropic's SDKs in Anthropic's error shape.

A body over Envoy's buffer is refused by Envoy itself, before the gateway sees it: the
anthropic SDK (or Claude Code) got OpenAI's error body for it, while every error the
gateway gives on ``/v1/messages`` is Anthropic's.
"""

from __future__ import annotations

import anthropic
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import mock_requests

KEY = "team1-key"
# Over the default config's 1 MiB body limit and Envoy's 64 KiB of slack above it.
TOO_LARGE = "x" * (1_300_000)


def test_a_body_over_envoys_buffer_is_an_anthropic_413(stack: LocalStack) -> None:
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=KEY, max_retries=0)
    message = client.messages.create(
        model="claude-3-5-haiku-latest",
        max_tokens=16,
        messages=[{"role": "user", "content": "hi"}],
    )
    assert message.type == "message"  # the route serves this client
    sent = len(mock_requests(stack))
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=16,
            messages=[{"role": "user", "content": TOO_LARGE}],
        )
    assert refused.value.status_code == 413
    assert refused.value.response.json() == {
        "type": "error",
        "error": {"type": "request_too_large", "message": "the request body is too large"},
    }
    assert len(mock_requests(stack)) == sent
