"""`make run` with OPENAI_API_KEY set: the OpenAI models go to OpenAI, the rest still works.

The mock provider must keep serving what no real provider takes: the Claude models
(no ANTHROPIC_API_KEY) and the Bedrock aliases, the `/bedrock/haiku` example that
`make run` itself prints among them. The OpenAI key here is a made-up one and no
request is sent to OpenAI (there is no network in the tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from extproc.devstack import LocalStack, Ports

HAIKU_PATH = "/bedrock/haiku/chat/completions"
CHAT = {"messages": [{"role": "user", "content": "Hi"}]}
KEY = {"authorization": "Bearer team1-key"}


@pytest.fixture(scope="module")
def openai_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # As devstack.main() builds it when OPENAI_API_KEY is set.
    running = LocalStack(
        workdir=Path(tmp_path_factory.mktemp("openai-stack")),
        ports=Ports.free(),
        real_provider="openai",
        extra_env={"OPENAI_API_KEY": "sk-made-up-for-the-test"},
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()


def test_bedrock_and_claude_still_answer_from_the_mock(openai_stack: LocalStack) -> None:
    with httpx.Client(base_url=openai_stack.base_url, timeout=30.0, headers=KEY) as client:
        bedrock = client.post(HAIKU_PATH, json=CHAT)
        claude = client.post(
            "/v1/chat/completions", json={**CHAT, "model": "claude-3-5-haiku-latest"}
        )
    # Before: 503 upstream_unavailable, no mock provider was running.
    assert bedrock.status_code == 200, bedrock.text
    assert bedrock.json()["usage"]["total_tokens"] > 0
    assert claude.status_code == 200, claude.text
    assert claude.json()["choices"][0]["message"]["content"]
