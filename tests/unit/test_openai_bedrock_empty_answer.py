"""An answer with no text, read through the OpenAI SDK from Claude on Bedrock and on
Anthropic's API alike.

Claude that spends its whole ``max_tokens`` thinking (``reasoning_effort`` with a small
``max_completion_tokens``) answers no text block. OpenAI answers such a turn with
``content: ""`` (and ``finish_reason: "length"``), and so did the gateway's Anthropic
translation; Bedrock's answered ``content: null``, and a client's
``message.content.strip()`` raised on it for one provider and not the other. ``null`` is
OpenAI's content only beside tool calls.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.translators import openai_anthropic, openai_bedrock

THOUGHT = "The user wants a long essay; I should plan its parts first."


def bedrock_message(content: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    translator = openai_bedrock.CompletionTranslator(model="claude", request_id="r1", created=1)
    body = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": {"inputTokens": 20, "outputTokens": 64, "totalTokens": 84},
    }
    choice: dict[str, Any] = orjson.loads(translator.feed(orjson.dumps(body), True) or b"")[
        "choices"
    ][0]
    return choice


def anthropic_message(content: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    translator = openai_anthropic.CompletionTranslator(request_id="r1", created=1)
    body = {
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 20, "output_tokens": 64},
    }
    choice: dict[str, Any] = orjson.loads(translator.feed(orjson.dumps(body), True) or b"")[
        "choices"
    ][0]
    return choice


def test_a_turn_spent_thinking_has_empty_content_on_bedrock_as_on_anthropic() -> None:
    bedrock = bedrock_message(
        [{"reasoningContent": {"reasoningText": {"text": THOUGHT, "signature": "s"}}}],
        "max_tokens",
    )
    anthropic = anthropic_message(
        [{"type": "thinking", "thinking": THOUGHT, "signature": "s"}], "max_tokens"
    )

    for choice in (bedrock, anthropic):
        assert choice["finish_reason"] == "length"
        assert choice["message"]["content"] == ""
        assert choice["message"]["reasoning_content"] == THOUGHT


@pytest.mark.parametrize("stop_reason", ["end_turn", "guardrail_intervened"])
def test_an_answer_with_no_block_has_empty_content(stop_reason: str) -> None:
    assert bedrock_message([], stop_reason)["message"]["content"] == ""


def test_content_is_null_beside_tool_calls_only() -> None:
    call = {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {}}}
    message = bedrock_message([call], "tool_use")["message"]
    assert message["content"] is None
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]
