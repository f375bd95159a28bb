"""An OpenAI client asks Claude to reason (``reasoning_effort``), through Envoy.

On Anthropic's API and on Bedrock's Converse, the gateway turns the effort into Claude's
thinking in the mode the model takes (a fixed budget before Claude 4.6, adaptive after);
the mock refuses the wrong mode as Anthropic and AWS do. The client reads the thought as
``reasoning_content``, never its signature, and is billed what the provider counted.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.mock_llm.anthropic_api import THOUGHT, THOUGHT_SIGNATURE
from tests.integration.conftest import GatewayLog, mock_requests

KEY = "team1-key"
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
# (the client's base path, the model it names, the thinking the provider must be sent)
CLAUDES = [
    ("/v1", "claude-sonnet-4-5", "enabled"),
    ("/v1", "claude-opus-4-7", "adaptive"),
    ("/bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "enabled"),
    ("/bedrock", "us.anthropic.claude-opus-4-7", "adaptive"),
]
IDS = ["anthropic-budget", "anthropic-adaptive", "bedrock-budget", "bedrock-adaptive"]


def thinking_sent(upstream: dict[str, Any]) -> dict[str, Any]:
    body = upstream["json"]
    fields = body.get("additionalModelRequestFields", body)
    thinking: dict[str, Any] = fields["thinking"]
    return thinking


@pytest.mark.parametrize(("base", "model", "mode"), CLAUDES, ids=IDS)
def test_claude_reasons_and_the_client_reads_the_thought(
    stack: LocalStack, gateway_log: GatewayLog, base: str, model: str, mode: str
) -> None:
    client = OpenAI(base_url=f"{stack.base_url}{base}", api_key=KEY, max_retries=0)

    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=QUESTION, reasoning_effort="medium"
    )
    answer = raw.parse()

    assert thinking_sent(mock_requests(stack)[-1])["type"] == mode
    message = answer.choices[0].message
    assert message.content and "sky blue" in message.content
    assert (message.model_extra or {}).get("reasoning_content") == THOUGHT
    assert THOUGHT_SIGNATURE not in raw.http_response.text
    assert answer.usage is not None
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )


@pytest.mark.parametrize(("base", "model", "mode"), CLAUDES, ids=IDS)
def test_a_streamed_thought_comes_as_reasoning_deltas_before_the_answer(
    stack: LocalStack, base: str, model: str, mode: str
) -> None:
    client = OpenAI(base_url=f"{stack.base_url}{base}", api_key=KEY, max_retries=0)

    stream = client.chat.completions.create(
        model=model, messages=QUESTION, reasoning_effort="high", stream=True
    )
    reasoning, content, order = [], [], []
    for chunk in stream:
        for choice in chunk.choices:
            piece = (choice.delta.model_extra or {}).get("reasoning_content")
            if piece:
                reasoning.append(piece)
                order.append("reasoning")
            if choice.delta.content:
                content.append(choice.delta.content)
                order.append("content")

    assert thinking_sent(mock_requests(stack)[-1])["type"] == mode
    assert "".join(reasoning) == THOUGHT
    assert "sky blue" in "".join(content)
    assert order.index("content") > len(reasoning) - 1  # the thought first
