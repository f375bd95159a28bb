"""Tool calls an OpenAI client asks Claude for: what the translator refuses, and the mock
answering the calls a test scripts (``x-mock-tool-calls``) the way Anthropic sends them.

The mock's answers are read with the official anthropic client, so a scripted answer is one
Anthropic's own SDK assembles: text, then ``tool_use`` blocks whose streamed
``input_json_delta`` fragments join into the input.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from anthropic import AsyncAnthropic

from extproc.errors import BadRequestError
from extproc.testing import serve_mock
from extproc.translators.openai_anthropic import translate_request

MODEL = "claude-sonnet-4-5"
USER: Any = {"role": "user", "content": "Weather in Paris?"}
TOOL: Any = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
SAID = ["I'll", " look", "."]
PIECES = ['{"ci', 'ty": "Par', 'is"}']
SCRIPT = {
    "x-mock-reply": json.dumps(SAID),
    "x-mock-tool-calls": json.dumps(
        [{"name": "get_weather", "arguments": PIECES}, {"name": "get_time"}]
    ),
}


@pytest.mark.parametrize(
    "legacy",
    [{"functions": [TOOL["function"]]}, {"function_call": "auto"}],
    ids=["functions", "function_call"],
)
def test_the_deprecated_functions_api_is_refused_naming_it(legacy: dict[str, Any]) -> None:
    body = {"model": MODEL, "messages": [USER], **legacy}
    with pytest.raises(BadRequestError) as refused:
        translate_request(body, MODEL, stream=False)
    assert refused.value.status == 400
    assert refused.value.param == "functions"


@pytest.fixture(scope="module")
async def mock_url() -> AsyncIterator[str]:
    async with serve_mock() as url:
        yield url


@pytest.fixture
async def client(mock_url: str) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(
        base_url=mock_url, api_key="sk-ant-test", max_retries=0, default_headers=SCRIPT
    ) as c:
        yield c


def anthropic_request(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 100, "messages": [USER], **fields}


async def test_a_scripted_answer_says_its_text_then_calls_the_tools(
    client: AsyncAnthropic,
) -> None:
    message = await client.messages.create(**anthropic_request())

    assert message.stop_reason == "tool_use"
    blocks = [block.model_dump(exclude_none=True) for block in message.content]
    assert blocks[0] == {"type": "text", "text": "I'll look."}
    assert [(b["type"], b["name"], b["input"]) for b in blocks[1:]] == [
        ("tool_use", "get_weather", {"city": "Paris"}),
        ("tool_use", "get_time", {}),
    ]
    assert blocks[1]["id"] != blocks[2]["id"]
    # The text pieces, then each call's input pieces ("{}" is one piece per token: 2).
    assert message.usage.output_tokens == len(SAID) + len(PIECES) + 2


async def test_a_scripted_stream_sends_the_chosen_input_fragments(
    client: AsyncAnthropic,
) -> None:
    async with client.messages.stream(**anthropic_request()) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()

    fragments = [
        (event.index, event.delta.partial_json)
        for event in events
        if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
    ]
    # As Anthropic does, each input opens with an empty fragment.
    assert fragments == [(1, ""), *((1, piece) for piece in PIECES), (2, ""), (2, "{"), (2, "}")]
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


async def test_tool_calls_alone_answer_no_text(mock_url: str) -> None:
    async with httpx.AsyncClient(base_url=mock_url) as http:
        response = await http.post(
            "/v1/messages",
            json=anthropic_request(),
            headers={
                "x-api-key": "sk-ant-test",
                "anthropic-version": "2023-06-01",
                "x-mock-tool-calls": SCRIPT["x-mock-tool-calls"],
            },
        )
    assert [block["type"] for block in response.json()["content"]] == ["tool_use", "tool_use"]


@pytest.mark.parametrize(
    ("script", "named"),
    [
        ("not json", "x-mock-tool-calls must be a non-empty JSON array"),
        ("[]", "x-mock-tool-calls must be a non-empty JSON array"),
        ('[{"arguments": "{}"}]', "x-mock-tool-calls[0] needs a 'name'"),
        ('[{"name": "f", "arguments": {"a": 1}}]', "x-mock-tool-calls[0].arguments must be"),
        ('[{"name": "f", "arguments": ["[1", "]"]}]', "must join into a JSON object"),
    ],
    ids=["not-json", "empty", "no-name", "arguments-object", "not-an-object"],
)
async def test_a_malformed_script_is_a_400_naming_the_header(
    mock_url: str, script: str, named: str
) -> None:
    async with httpx.AsyncClient(base_url=mock_url) as http:
        response = await http.post(
            "/v1/messages",
            json=anthropic_request(),
            headers={
                "x-api-key": "sk-ant-test",
                "anthropic-version": "2023-06-01",
                "x-mock-tool-calls": script,
            },
        )
    assert response.status_code == 400
    assert named in response.json()["error"]["message"]
