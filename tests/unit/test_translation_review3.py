"""A third review of the OpenAI chat-completions translation to Anthropic and Bedrock: what
today's OpenAI clients send, and what they must get back.

- An agent's last turn (a summary, a compaction) sends its tool calls and results back
  without ``tools``. OpenAI takes it; Anthropic answers "Requests which include
  `tool_use` or `tool_result` blocks must define tools." (400). The tools the history
  called are declared, and forbidden (``tool_choice: none``), so the model reads its
  history as it was and can only answer in text.
- ``logprobs``: neither Anthropic nor Converse returns token log probabilities. A client
  that asks for them is refused (400 naming ``logprobs``, as OpenAI refuses them for its
  models without them), not answered with ``logprobs: null`` it did not expect.
"""

from __future__ import annotations

from typing import Any

import pytest

from extproc.errors import BadRequestError
from extproc.translators import openai_anthropic, openai_bedrock

UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
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
RESULTS = [
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18C"}]},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
]
SUMMARY = {"role": "user", "content": "Sum that up in one line."}
HISTORY = [QUESTION, CALLS, *RESULTS, SUMMARY]
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def to_anthropic(body: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    return openai_anthropic.translate_request(body, UPSTREAM_MODEL, stream=stream)


def tool_blocks(request: dict[str, Any]) -> list[str]:
    return [
        block["type"]
        for turn in request["messages"]
        for block in turn["content"]
        if block["type"] in ("tool_use", "tool_result")
    ]


# --- a tool history without tools, to Claude -----------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="no-tools"),
        pytest.param({"tools": []}, id="empty-tools"),
        pytest.param({"parallel_tool_calls": False}, id="no-tools-no-parallel"),
    ],
)
def test_a_tool_history_sent_without_tools_declares_the_called_tools_forbidden(
    fields: dict[str, Any], stream: bool
) -> None:
    sent = to_anthropic({"messages": HISTORY, **fields}, stream=stream)

    # The history keeps its structure (Claude reads what it called and what came back)...
    assert tool_blocks(sent) == ["tool_use", "tool_use", "tool_result", "tool_result"]
    # ...and Anthropic takes it only with tools defined; none of them may be called.
    assert [tool["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]
    assert all(tool["input_schema"]["type"] == "object" for tool in sent["tools"])
    assert sent["tool_choice"] == {"type": "none"}


def test_a_tool_called_twice_in_the_history_is_declared_once() -> None:
    again = {**CALLS, "tool_calls": [{**CALLS["tool_calls"][0], "id": "call_3"}]}
    result = {"role": "tool", "tool_call_id": "call_3", "content": "17C"}
    sent = to_anthropic({"messages": [*HISTORY[:-1], again, result, SUMMARY]})

    assert [tool["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]


def test_the_clients_own_tools_are_sent_as_they_are() -> None:
    sent = to_anthropic({"messages": HISTORY, "tools": [WEATHER_TOOL], "tool_choice": "none"})

    assert sent["tools"] == [
        {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
    ]
    assert sent["tool_choice"] == {"type": "none"}


def test_a_conversation_without_tool_calls_gets_no_tools() -> None:
    sent = to_anthropic({"messages": [QUESTION]})

    assert "tools" not in sent and "tool_choice" not in sent


# --- logprobs ------------------------------------------------------------------------------


def to_bedrock(body: dict[str, Any]) -> dict[str, Any]:
    openai_bedrock.check_request(body)
    return openai_bedrock.translate_request(body, model_id="anthropic.claude-3-haiku-20240307-v1:0")


TRANSLATORS = [
    pytest.param(to_anthropic, id="anthropic"),
    pytest.param(to_bedrock, id="bedrock"),
]


@pytest.mark.parametrize("translate", TRANSLATORS)
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"logprobs": True}, "logprobs", id="logprobs"),
        pytest.param({"logprobs": True, "top_logprobs": 5}, "logprobs", id="top-logprobs"),
        pytest.param({"top_logprobs": 2}, "top_logprobs", id="top-logprobs-alone"),
    ],
)
def test_asking_for_log_probabilities_is_refused_naming_the_field(
    translate: Any, fields: dict[str, Any], param: str
) -> None:
    # Answered, the client would read logprobs: null where it asked for them.
    with pytest.raises(BadRequestError) as refused:
        translate({"messages": [QUESTION], **fields})

    assert refused.value.status == 400
    assert refused.value.param == param
    assert "log probabilities" in refused.value.message


@pytest.mark.parametrize("translate", TRANSLATORS)
@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"logprobs": False}, id="false"),
        pytest.param({"logprobs": None, "top_logprobs": None}, id="null"),
        pytest.param({"logprobs": False, "top_logprobs": 0}, id="zero"),
    ],
)
def test_not_asking_for_log_probabilities_is_answered(
    translate: Any, fields: dict[str, Any]
) -> None:
    # Frameworks send logprobs: false by default (LangChain.js): nothing is asked.
    assert translate({"messages": [QUESTION], **fields})["messages"]
