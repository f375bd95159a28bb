"""A tool call cut by the token limit, through the real Envoy, gateway and mock, read and
sent back by the openai client.

Claude (on Anthropic's API, on Bedrock) stops at ``max_tokens`` while writing its second
call: the client's stream ends with ``finish_reason: "length"`` and the call's arguments
are the start of a JSON object. The agent answers every call (the cut one with an error)
and goes on. Before, the gateway refused that history with a 400 on every later turn;
now Claude gets the cut call's text under ``unparsed_arguments`` and answers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import mock_requests
from tests.integration.tool_script import QUESTION, TIME, WEATHER

KEY = "team1-key"
WHOLE, CUT = ['{"city": "Pa', 'ris"}'], ['{"city": "Ly', "o"]
SCRIPT = {
    "x-mock-tool-calls": json.dumps(
        [
            {"name": "get_weather", "arguments": WHOLE},
            {"name": "get_time", "arguments": CUT, "cut": True},
        ]
    )
}
# The routes of the default config: OpenAI's chat translated to Anthropic, and to Converse.
CLAUDE = [
    pytest.param("/anthropic", "claude-3-5-haiku-latest", id="anthropic"),
    pytest.param("/bedrock/haiku", "haiku", id="bedrock"),
]


def streamed_calls(client: OpenAI, model: str) -> tuple[list[dict[str, Any]], str | None]:
    """The calls of the scripted answer as an OpenAI client joins them, and how it ended."""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    stream = client.chat.completions.create(
        model=model, messages=[QUESTION], tools=[WEATHER, TIME], stream=True, extra_headers=SCRIPT
    )
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                function = delta.function
                call["id"] = delta.id or call["id"]
                if function is not None:
                    call["name"] = function.name or call["name"]
                    call["arguments"] += function.arguments or ""
    return [calls[k] for k in sorted(calls)], finish


@pytest.mark.parametrize(("prefix", "model"), CLAUDE)
def test_an_agent_goes_on_after_a_call_cut_by_the_token_limit(
    stack: LocalStack, prefix: str, model: str
) -> None:
    client = OpenAI(base_url=f"{stack.base_url}{prefix}", api_key=KEY, max_retries=0)
    calls, finish = streamed_calls(client, model)
    assert finish == "length"
    assert [(c["name"], c["arguments"]) for c in calls] == [
        ("get_weather", '{"city": "Paris"}'),
        ("get_time", '{"city": "Lyo'),
    ]

    made = [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for c in calls
    ]
    history: list[Any] = [
        QUESTION,
        {"role": "assistant", "content": None, "tool_calls": made},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "error: arguments cut"},
    ]
    answer = client.chat.completions.create(model=model, messages=history, tools=[WEATHER, TIME])

    assert answer.choices[0].message.content
    sent = json.dumps(mock_requests(stack)[-1]["json"])
    assert '"unparsed_arguments"' in sent and json.dumps('{"city": "Lyo') in sent
