"""What an OpenAI client gets from Claude and Bedrock, translated, for fields today's
clients send (a third review), through the real Envoy, gateway and mock providers.

- An agent's closing turn (a summary, a compaction) sends its tool history without
  ``tools``: Anthropic takes tool blocks only in a request that defines tools, so the
  gateway declares the tools the history called and forbids calling them.
- ``logprobs``: neither Anthropic nor Converse has them; the client is refused with a 400
  naming the field, before anything reaches the provider.
"""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import mock_requests

KEY = "team1-key"
ON_ANTHROPIC = "claude-3-5-haiku-latest"
ON_BEDROCK = "haiku"
QUESTION = {"role": "user", "content": "Weather in Paris and the time in Lyon?"}
CALLS = {
    "role": "assistant",
    "content": "Let me check.",
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"city": "Lyon"}'},
        },
    ],
}
HISTORY: Any = [
    QUESTION,
    CALLS,
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18C"}]},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
    {"role": "user", "content": "Sum that up in one line."},
]


def client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0, timeout=30.0)


def sent_body(stack: LocalStack) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(mock_requests(stack)[-1]["body"])
    return body


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_closing_summary_over_a_tool_history_without_tools_is_answered_by_claude(
    stack: LocalStack, streamed: bool
) -> None:
    # OpenAI takes this; Anthropic answers a request with tool blocks and no tools with
    # a 400 ("... must define tools"), which the client cannot make sense of.
    openai_client = client(stack)
    if streamed:
        chunks = list(
            openai_client.chat.completions.create(model=ON_ANTHROPIC, messages=HISTORY, stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
        assert not calls
        assert reasons[-1] == "stop"
    else:
        answer = openai_client.chat.completions.create(model=ON_ANTHROPIC, messages=HISTORY)
        text = answer.choices[0].message.content or ""
        assert answer.choices[0].finish_reason == "stop"
        assert answer.choices[0].message.tool_calls is None
    assert text.startswith("Mock reply to:")

    sent = sent_body(stack)
    # The history went as tool blocks, with the tools it called declared and forbidden.
    kinds = [block["type"] for turn in sent["messages"] for block in turn["content"]]
    assert kinds.count("tool_use") == 2 and kinds.count("tool_result") == 2
    assert [tool["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tool_choice"] == {"type": "none"}


@pytest.mark.parametrize(
    "model", [pytest.param(ON_ANTHROPIC, id="anthropic"), pytest.param(ON_BEDROCK, id="bedrock")]
)
def test_asking_claude_for_log_probabilities_is_refused_naming_logprobs(
    stack: LocalStack, model: str
) -> None:
    # Answered, the client would read choices[0].logprobs as null where it asked for them.
    before = len(mock_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        client(stack).chat.completions.create(
            model=model, messages=[QUESTION], logprobs=True, top_logprobs=3
        )

    assert refused.value.status_code == 400
    assert refused.value.param == "logprobs"
    assert "log probabilities" in refused.value.message
    assert len(mock_requests(stack)) == before, "nothing reaches the provider"


@pytest.mark.parametrize(
    "model", [pytest.param(ON_ANTHROPIC, id="anthropic"), pytest.param(ON_BEDROCK, id="bedrock")]
)
def test_logprobs_false_is_answered(stack: LocalStack, model: str) -> None:
    answer = client(stack).chat.completions.create(model=model, messages=[QUESTION], logprobs=False)

    assert answer.choices[0].message.content == f"Mock reply to: {QUESTION['content']}"
    assert answer.choices[0].logprobs is None
