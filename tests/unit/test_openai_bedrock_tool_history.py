"""OpenAI conversations with tool calls in their history, sent to Converse without tools.

An agent's last turn (a summary) sends its history of calls and results with no ``tools``,
or with ``tool_choice: "none"``. OpenAI takes it; Converse refuses ``toolUse`` and
``toolResult`` blocks without a ``toolConfig``, and a ``toolConfig`` would let the model call
a tool the client did not offer. The history goes as text instead: each call with its tool,
arguments and id, each result with the call it answers.
"""

from __future__ import annotations

from typing import Any

import pytest

from extproc.translators.openai_bedrock import translate_request

WEATHER: Any = {"type": "function", "function": {"name": "get_weather"}}
CALL: Any = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
HISTORY: Any = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 °C"},
    {"role": "user", "content": "Sum it up."},
]
AS_TEXT = [
    {"role": "user", "content": [{"text": "Weather in Paris?"}]},
    {
        "role": "assistant",
        "content": [
            {"text": '[called tool get_weather (call id call_1) with arguments {"city":"Paris"}]'}
        ],
    },
    {
        "role": "user",
        "content": [
            {"text": "[result of tool get_weather (call id call_1)]\n18 °C"},
            {"text": "Sum it up."},
        ],
    },
]


@pytest.mark.parametrize(
    "tools",
    [{}, {"tools": []}, {"tools": [WEATHER], "tool_choice": "none"}],
    ids=["no-tools", "empty-tools", "tool-choice-none"],
)
def test_a_history_sent_without_tools_goes_as_text(tools: dict[str, Any]) -> None:
    converse = translate_request({"messages": HISTORY, **tools})

    assert "toolConfig" not in converse
    assert converse["messages"] == AS_TEXT


def test_with_tools_offered_the_history_keeps_its_tool_blocks() -> None:
    converse = translate_request({"messages": HISTORY, "tools": [WEATHER]})

    assert converse["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}
    ]
    assert converse["messages"][2]["content"][0] == {
        "toolResult": {"toolUseId": "call_1", "content": [{"text": "18 °C"}]}
    }


def test_an_empty_result_and_a_result_without_its_call_still_say_which_call() -> None:
    messages: Any = [
        *HISTORY[:2],
        {"role": "tool", "tool_call_id": "call_1", "content": ""},
        {"role": "tool", "tool_call_id": "call_gone", "content": [{"type": "text", "text": "x"}]},
    ]

    turns = translate_request({"messages": messages})["messages"]

    # Converse refuses blank text: an empty result still says something.
    assert turns[2]["content"] == [
        {"text": "[result of tool get_weather (call id call_1)] (no output)"},
        {"text": "[result of call id call_gone]\nx"},
    ]


def test_a_model_without_system_prompts_reads_the_instructions_first() -> None:
    # Titan takes neither a system prompt nor tools: both go as text, in that order.
    body = {"messages": [{"role": "system", "content": "Be brief."}, *HISTORY]}

    converse = translate_request(body, model_id="amazon.titan-text-express-v1")

    assert "system" not in converse and "toolConfig" not in converse
    assert converse["messages"][0]["content"] == [{"text": "Be brief.\n\nWeather in Paris?"}]
