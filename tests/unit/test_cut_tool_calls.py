"""A tool call cut by the token limit, sent back by an OpenAI client, keeps the conversation going.

Claude stopped by ``max_tokens`` while writing a call's input: an OpenAI client of a
stream gets ``finish_reason: "length"`` and, joined, the call's ``arguments`` as the
start of a JSON object (``{"city": "Par``). It keeps the call in its history and sends
it back with a ``tool`` message answering it, as OpenAI takes any string there. The
gateway's translation to Claude (Anthropic's API, Bedrock's Converse, Vertex AI) read
the arguments as JSON and answered 400, on that request and every later one of the
conversation. Now arguments that are no JSON object reach Claude under
``unparsed_arguments``: the model reads what it wrote, and that it was no whole call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import load_config
from extproc.mock_llm.anthropic_api import parse_messages_request
from extproc.mock_llm.bedrock_api import parse_converse_request
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.scripted import TOOL_CALLS_HEADER, ScriptError, cut_short, scripted_tool_calls
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream
from extproc.translators import anthropic_vertex
from extproc.translators.openai_anthropic import translate_request

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
OPENAI_AUTH = {"authorization": "Bearer team1-key"}
SONNET, BEDROCK_HAIKU = "claude-sonnet-4-0", "haiku"
HAIKU_ID = "anthropic.claude-3-haiku-20240307-v1:0"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CUT = '{"city": "Par'


def conversation(*arguments: str) -> list[dict[str, Any]]:
    """The user's question, Claude's calls with these arguments, a result for each, and
    the user's next turn: what an OpenAI client sends after a cut answer."""
    calls = [
        {"id": f"toolu_{k}", "type": "function",
         "function": {"name": "get_weather", "arguments": text}}
        for k, text in enumerate(arguments)
    ]  # fmt: skip
    results = [
        {"role": "tool", "tool_call_id": call["id"], "content": "error: arguments were cut"}
        for call in calls
    ]
    return [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *results,
        {"role": "user", "content": "Try again, shorter."},
    ]


@pytest.fixture
async def gateway(services: Services) -> AsyncIterator[Processor]:
    runtime = Runtime(load_config(DEFAULT_CONFIG, {}), services)
    await runtime.start()  # Bedrock's signer reads its credentials
    try:
        yield Processor(lambda: runtime, default_stages())
    finally:
        await runtime.close()


async def send(gateway: Processor, model: str, messages: list[dict[str, Any]]) -> bytes:
    """The body the gateway sends upstream for this chat request."""
    body = orjson.dumps({"model": model, "messages": messages, "tools": [WEATHER]})
    answers = await run_stream(
        gateway,
        [request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(body)],
    )
    answer: ext.ProcessingResponse = answers[-1]
    assert answer.WhichOneof("response") == "request_body", orjson.loads(
        answer.immediate_response.body
    )
    return answer.request_body.response.body_mutation.body


def anthropic_inputs(sent: bytes) -> list[dict[str, Any]]:
    parse_messages_request(Body.parse(sent))  # Anthropic takes it (the mock's checks)
    turns = orjson.loads(sent)["messages"]
    return [block["input"] for block in turns[1]["content"] if block["type"] == "tool_use"]


def converse_inputs(sent: bytes) -> list[dict[str, Any]]:
    parse_converse_request(HAIKU_ID, Body.parse(sent))  # Bedrock takes it
    turns = orjson.loads(sent)["messages"]
    return [block["toolUse"]["input"] for block in turns[1]["content"] if "toolUse" in block]


async def test_a_cut_call_goes_to_anthropic_with_its_text(gateway: Processor) -> None:
    sent = await send(gateway, SONNET, conversation(CUT))
    assert anthropic_inputs(sent) == [{"unparsed_arguments": CUT}]


async def test_a_cut_call_goes_to_bedrock_with_its_text(gateway: Processor) -> None:
    sent = await send(gateway, BEDROCK_HAIKU, conversation(CUT))
    assert converse_inputs(sent) == [{"unparsed_arguments": CUT}]


def test_a_cut_call_goes_to_claude_on_vertex_with_its_text() -> None:
    body = {"model": SONNET, "messages": conversation(CUT), "tools": [WEATHER]}
    translated = translate_request(
        body, SONNET, stream=False, image_urls=False, inference_geo=False
    )
    sent = anthropic_vertex.messages_body(translated)
    assert sent["messages"] == translated["messages"]
    assert anthropic_inputs(orjson.dumps(translated)) == [{"unparsed_arguments": CUT}]


@pytest.mark.parametrize("model", [SONNET, BEDROCK_HAIKU])
async def test_parallel_calls_keep_the_whole_ones_and_the_text_of_the_last(
    gateway: Processor, model: str
) -> None:
    # Claude writes its calls one after the other: only the last can be cut.
    sent = await send(gateway, model, conversation('{"city": "Paris"}', '{"city": "Ro'))
    inputs = anthropic_inputs(sent) if model == SONNET else converse_inputs(sent)
    assert inputs == [{"city": "Paris"}, {"unparsed_arguments": '{"city": "Ro'}]


@pytest.mark.parametrize(
    ("arguments", "sent"),
    [
        pytest.param("", {}, id="empty"),
        pytest.param("  ", {}, id="blank"),
        pytest.param("{", {"unparsed_arguments": "{"}, id="only-the-brace"),
        pytest.param('{"city": "Paris"', {"unparsed_arguments": '{"city": "Paris"'}, id="no-end"),
        pytest.param('["Paris"]', {"unparsed_arguments": '["Paris"]'}, id="json-not-an-object"),
        pytest.param("null", {"unparsed_arguments": "null"}, id="null"),
        pytest.param("Paris", {"unparsed_arguments": "Paris"}, id="not-json"),
    ],
)
async def test_any_string_is_taken_as_openai_takes_it(
    gateway: Processor, arguments: str, sent: dict[str, Any]
) -> None:
    assert anthropic_inputs(await send(gateway, SONNET, conversation(arguments))) == [sent]
    assert converse_inputs(await send(gateway, BEDROCK_HAIKU, conversation(arguments))) == [sent]


@pytest.mark.parametrize("model", [SONNET, BEDROCK_HAIKU])
async def test_arguments_that_are_no_string_are_still_a_400_naming_the_call(
    gateway: Processor, model: str
) -> None:
    # OpenAI refuses them too ("expected a string"): the client's bug, not the model's text.
    messages = conversation("{}")
    messages[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    body = orjson.dumps({"model": model, "messages": messages, "tools": [WEATHER]})
    answers = await run_stream(
        gateway,
        [request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(body)],
    )
    refusal = answers[-1].immediate_response
    error = orjson.loads(refusal.body)["error"]
    assert refusal.status.code == 400 and error["type"] == "invalid_request_error"
    assert error["param"].startswith("messages[1].tool_calls[0].function")


# --- the mock's cut calls (docs/mock-llm.md), which the integration test scripts ---------


def test_the_mock_cuts_only_the_last_call_and_ends_with_max_tokens() -> None:
    cut = '[{"name": "a", "arguments": "{}"}, {"name": "b", "arguments": ["{\\"x"], "cut": true}]'
    calls = scripted_tool_calls({TOOL_CALLS_HEADER: cut})
    assert calls is not None and cut_short(calls)
    assert [call.input for call in calls] == [{}, {}] and calls[1].pieces == ('{"x',)
    with pytest.raises(ScriptError, match="only the last call can be cut"):
        scripted_tool_calls({TOOL_CALLS_HEADER: '[{"name": "a", "cut": true}, {"name": "b"}]'})
    with pytest.raises(ScriptError, match=r"\[0\]\.cut must be true or false"):
        scripted_tool_calls({TOOL_CALLS_HEADER: '[{"name": "a", "cut": 1}]'})
