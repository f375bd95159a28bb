"""The mock's Bedrock tool use, read with the official boto3 client: scripted calls
(``x-mock-tool-calls``) answered as Converse and ConverseStream send them, and tool results
checked as Bedrock checks them (each call of a turn answered in the next user turn).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from botocore.exceptions import EventStreamError

from tests.unit.test_mock_llm_bedrock import (
    MESSAGES,
    MODEL,
    bedrock,
    client,
    client_error,
    converse,
    converse_path,
    converse_stream,
    signed_post,
)

__all__ = ["client"]  # the boto3 client fixture of the Converse tests

SAID = ["I'll", " look", "."]
PIECES = ['{"ci', 'ty": "Par', 'is"}']
CALLS = json.dumps([{"name": "get_weather", "arguments": PIECES}, {"name": "get_time"}])
SCRIPT = {"x-mock-reply": json.dumps(SAID), "x-mock-tool-calls": CALLS}
# "{}" is cut into one piece per token: "{" and "}".
OUTPUT_TOKENS = len(SAID) + len(PIECES) + 2


def tool(name: str) -> dict[str, Any]:
    return {"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}}


TOOLS = {"tools": [tool("get_weather"), tool("get_time")]}


def call(call_id: str, name: str = "f") -> dict[str, Any]:
    return {"toolUse": {"toolUseId": call_id, "name": name, "input": {}}}


def result(call_id: str) -> dict[str, Any]:
    return {"toolResult": {"toolUseId": call_id, "content": [{"text": "ok"}]}}


async def test_converse_says_its_text_then_calls_the_tools(mock_url: str) -> None:
    answer = await converse(bedrock(mock_url, headers=SCRIPT), toolConfig=TOOLS)

    assert answer["stopReason"] == "tool_use"
    content = answer["output"]["message"]["content"]
    assert content[0] == {"text": "I'll look."}
    assert [(b["toolUse"]["name"], b["toolUse"]["input"]) for b in content[1:]] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    ids = [b["toolUse"]["toolUseId"] for b in content[1:]]
    assert len(set(ids)) == 2 and all(i.startswith("tooluse_") for i in ids)
    assert answer["usage"]["outputTokens"] == OUTPUT_TOKENS


async def test_converse_stream_announces_each_call_then_streams_its_input(
    mock_url: str,
) -> None:
    events = await converse_stream(bedrock(mock_url, headers=SCRIPT), toolConfig=TOOLS)

    starts = [
        (e["contentBlockStart"]["contentBlockIndex"], e["contentBlockStart"]["start"]["toolUse"])
        for e in events
        if "contentBlockStart" in e
    ]
    assert [(index, use["name"]) for index, use in starts] == [(1, "get_weather"), (2, "get_time")]
    deltas = [
        (e["contentBlockDelta"]["contentBlockIndex"], e["contentBlockDelta"]["delta"])
        for e in events
        if "contentBlockDelta" in e
    ]
    assert deltas == [
        *((0, {"text": piece}) for piece in SAID),
        *((1, {"toolUse": {"input": piece}}) for piece in PIECES),
        (2, {"toolUse": {"input": "{"}}),
        (2, {"toolUse": {"input": "}"}}),
    ]
    stops = [e["contentBlockStop"]["contentBlockIndex"] for e in events if "contentBlockStop" in e]
    assert stops == [0, 1, 2]
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}
    assert events[-1]["metadata"]["usage"]["outputTokens"] == OUTPUT_TOKENS
    # The ids are those of the same answer whole: unique, Bedrock-shaped.
    assert starts[0][1]["toolUseId"] != starts[1][1]["toolUseId"]


async def test_calls_alone_answer_no_text_block(mock_url: str) -> None:
    headers = {"x-mock-tool-calls": CALLS}
    answer = await converse(bedrock(mock_url, headers=headers), toolConfig=TOOLS)
    events = await converse_stream(bedrock(mock_url, headers=headers), toolConfig=TOOLS)

    assert [list(block) for block in answer["output"]["message"]["content"]] == [
        ["toolUse"],
        ["toolUse"],
    ]
    first = next(e["contentBlockStart"] for e in events if "contentBlockStart" in e)
    assert first["contentBlockIndex"] == 0


async def test_a_model_calls_only_the_tools_the_request_declares(mock_url: str) -> None:
    # A request with no toolConfig offers no tool: the model answers text.
    plain = await converse(bedrock(mock_url, headers=SCRIPT))
    assert plain["stopReason"] == "end_turn"
    assert plain["output"]["message"]["content"] == [{"text": "I'll look."}]

    only_time = {"tools": [tool("get_time")]}
    answer = await converse(bedrock(mock_url, headers=SCRIPT), toolConfig=only_time)
    names = [b["toolUse"]["name"] for b in answer["output"]["message"]["content"][1:]]
    assert names == ["get_time"]


async def test_error_after_counts_the_input_pieces_too(mock_url: str) -> None:
    headers = {**SCRIPT, "x-mock-fault": f"error_after={len(SAID) + 1}"}
    client = bedrock(mock_url, headers=headers)
    events: list[dict[str, Any]] = []

    def read() -> None:
        stream = client.converse_stream(modelId=MODEL, messages=MESSAGES, toolConfig=TOOLS)
        events.extend(stream["stream"])

    with pytest.raises(EventStreamError) as failed:
        await asyncio.to_thread(read)

    assert failed.value.response["Error"]["Code"] == "modelStreamErrorException"
    # The text, the first call's start and one piece of its input, then the error.
    last = events[-1]["contentBlockDelta"]
    assert last == {"contentBlockIndex": 1, "delta": {"toolUse": {"input": PIECES[0]}}}


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [*MESSAGES, {"role": "assistant", "content": [call("t1"), call("t2")]},
             {"role": "user", "content": [result("t1"), {"text": "and?"}]}],
            "Expected toolResult blocks at messages.2.content for the following Ids: t2",
        ),
        (
            [*MESSAGES, {"role": "assistant", "content": [call("t1")]},
             {"role": "user", "content": [result("t1"), result("t9")]}],
            "The number of toolResult blocks at messages.2.content exceeds the number of"
            " toolUse blocks of previous turn.",
        ),
        (
            [*MESSAGES, {"role": "assistant", "content": [call("t1")]},
             {"role": "user", "content": [result("t9")]}],
            "Expected toolResult blocks at messages.2.content for the following Ids: t1",
        ),
        (
            [{"role": "user", "content": [result("t1")]}],
            "The number of toolResult blocks at messages.0.content exceeds",
        ),
        (
            [*MESSAGES, {"role": "assistant", "content": [{"toolUse": {"name": "f"}}]}],
            "messages.1.content.0.toolUse.toolUseId",
        ),
    ],
    ids=["one-unanswered", "more-results-than-calls", "wrong-id", "result-first", "no-id"],
)  # fmt: skip
async def test_tool_results_must_answer_the_calls_just_before(
    http: httpx.AsyncClient, messages: list[dict[str, Any]], expected: str
) -> None:
    doc = {"messages": messages, "toolConfig": {"tools": [tool("f")]}}
    response = await signed_post(http, converse_path(), doc)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    assert expected in response.json()["message"]


async def test_results_answering_every_call_are_accepted(client: Any) -> None:
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": [{"text": "Both."}, call("t1"), call("t2")]},
        {"role": "user", "content": [result("t2"), result("t1"), {"text": "thanks"}]},
    ]
    answer = await converse(client, messages=messages, toolConfig={"tools": [tool("f")]})
    assert answer["output"]["message"]["content"] == [{"text": "Mock reply to: thanks"}]


async def test_a_malformed_script_is_a_validation_exception_naming_the_header(
    mock_url: str,
) -> None:
    headers = {"x-mock-tool-calls": '[{"name": "f", "arguments": ["[1", "]"]}]'}
    error = await client_error(
        converse, client=bedrock(mock_url, headers=headers), toolConfig=TOOLS
    )
    assert error.response["Error"]["Code"] == "ValidationException"
    assert "x-mock-tool-calls[0].arguments must join into a JSON object" in str(error)


@pytest.mark.parametrize("stream", [False, True], ids=["converse", "converse-stream"])
async def test_a_scripted_stop_reason_ends_the_answer(mock_url: str, stream: bool) -> None:
    headers = {**SCRIPT, "x-mock-stop-reason": "malformed_tool_use"}
    client = bedrock(mock_url, headers=headers)
    if stream:
        events = await converse_stream(client, toolConfig=TOOLS)
        [stop] = [event["messageStop"] for event in events if "messageStop" in event]
        assert stop["stopReason"] == "malformed_tool_use"
    else:
        answer = await converse(client, toolConfig=TOOLS)
        assert answer["stopReason"] == "malformed_tool_use"


async def test_an_unknown_scripted_stop_reason_is_a_validation_exception(mock_url: str) -> None:
    client = bedrock(mock_url, headers={"x-mock-stop-reason": "broken"})
    error = await client_error(converse, client=client)
    assert error.response["Error"]["Code"] == "ValidationException"
    assert "x-mock-stop-reason must be one of" in str(error)
