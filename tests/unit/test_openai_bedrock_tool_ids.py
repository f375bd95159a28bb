"""Tool call ids from elsewhere, sent to Bedrock Converse, and empty tool results.

Converse takes a ``toolUseId`` of 1 to 64 characters of ``[a-zA-Z0-9_-]`` (AWS's API
reference, ToolUseBlock and ToolResultBlock) and answers anything else with a 400
ValidationException. An OpenAI client's history can hold ids another provider made
(``functions.get_weather:0`` from Kimi, ids longer than 64 characters): the gateway gives
each such id a Bedrock id of its own, the same in the call and in its result, and keeps
ids that fit as they are. The mock refuses what Bedrock refuses, so the translator's output
is checked against it, read by the official boto3 client.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from extproc.translators.openai_bedrock import translate_request
from tests.unit.test_mock_llm_bedrock import MODEL, client, converse_path, http, mock_url
from tests.unit.test_mock_llm_bedrock import converse as converse_with
from tests.unit.test_mock_llm_bedrock import signed_post as signed

__all__ = ["client", "http", "mock_url"]  # fixtures, shared with the Converse tests

BEDROCK_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
WEATHER: Any = {"type": "function", "function": {"name": "get_weather"}}
QUESTION: Any = {"role": "user", "content": "Weather in Paris and Lyon?"}
# Ids other providers make: Kimi's numbered functions, a URN, one past 64 characters, none.
FOREIGN_IDS = [
    "functions.get_weather:0",
    "urn:call/get weather@1",
    "call_" + "x" * 70,
    "",
]


def history(*call_ids: str, results: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The user's question, one assistant turn calling get_weather once per id, the results."""
    calls = [
        {
            "id": call_id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        for call_id in call_ids
    ]
    answered = results or {call_id: "18 °C" for call_id in call_ids}
    return [
        QUESTION,
        {"role": "assistant", "content": "", "tool_calls": calls},
        *({"role": "tool", "tool_call_id": i, "content": text} for i, text in answered.items()),
    ]


def sent_ids(converse: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The ``toolUseId`` of every call and of every result, in the order sent."""
    blocks = [block for turn in converse["messages"] for block in turn["content"]]
    calls = [block["toolUse"]["toolUseId"] for block in blocks if "toolUse" in block]
    results = [block["toolResult"]["toolUseId"] for block in blocks if "toolResult" in block]
    return calls, results


def translated(*call_ids: str) -> dict[str, Any]:
    return translate_request({"messages": history(*call_ids), "tools": [WEATHER]})


# --- ids: what the translator sends ----------------------------------------------------------


@pytest.mark.parametrize("call_id", FOREIGN_IDS, ids=["dots-and-colon", "urn", "too-long", "empty"])
def test_a_foreign_id_gets_a_bedrock_id_its_result_shares(call_id: str) -> None:
    calls, results = sent_ids(translated(call_id))

    assert calls == results
    assert BEDROCK_ID.fullmatch(calls[0]), calls[0]


def test_ids_that_fit_are_sent_as_they_are() -> None:
    valid = ["call_abc123", "toolu_01A-b", "x" * 64]

    assert sent_ids(translated(*valid)) == (valid, valid)


def test_the_same_id_gets_the_same_bedrock_id_in_every_request() -> None:
    # Stateless: the next request of the conversation sends the same history again.
    assert sent_ids(translated(*FOREIGN_IDS)) == sent_ids(translated(*FOREIGN_IDS))


def test_ids_that_differ_only_where_they_do_not_fit_stay_apart() -> None:
    # Replacing the bad characters alone would send a.b and a:b as the same id, and a
    # cut at 64 characters would merge two long ids: Bedrock would pair the wrong results.
    lookalikes = ["a.b", "a:b", "a_b", "y" * 64 + "1", "y" * 64 + "2"]

    calls, results = sent_ids(translated(*lookalikes))

    assert len(set(calls)) == len(lookalikes)
    assert calls == results
    assert calls[2] == "a_b"  # it fits: kept


def test_results_in_another_order_still_answer_their_own_call() -> None:
    first, second = FOREIGN_IDS[0], FOREIGN_IDS[1]
    messages = history(first, second, results={second: "12 °C", first: "18 °C"})

    converse = translate_request({"messages": messages, "tools": [WEATHER]})

    calls, _ = sent_ids(converse)
    answers = {
        block["toolResult"]["toolUseId"]: block["toolResult"]["content"]
        for block in converse["messages"][2]["content"]
    }
    assert answers == {calls[0]: [{"text": "18 °C"}], calls[1]: [{"text": "12 °C"}]}


def test_a_history_sent_as_text_keeps_the_clients_own_ids() -> None:
    # Without tools the calls go as text, which has no id rules: the model reads the real id.
    converse = translate_request({"messages": history(FOREIGN_IDS[0])})

    said = " ".join(block["text"] for turn in converse["messages"] for block in turn["content"])
    assert f"(call id {FOREIGN_IDS[0]})" in said


# --- ids: Bedrock (the mock) refuses what does not fit ----------------------------------------


def converse_doc(call_id: str, result_id: str | None = None) -> dict[str, Any]:
    use = {"toolUse": {"toolUseId": call_id, "name": "get_weather", "input": {}}}
    result = {"toolResult": {"toolUseId": result_id or call_id, "content": [{"text": "ok"}]}}
    return {
        "messages": [
            {"role": "user", "content": [{"text": "Weather?"}]},
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [result]},
        ],
        "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather",
                                               "inputSchema": {"json": {"type": "object"}}}}]},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            converse_doc("functions.get_weather:0"),
            "Value at 'messages.1.content.0.toolUse.toolUseId' failed to satisfy constraint:"
            " Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
        ),
        (
            converse_doc("call_1", "call_1." ),
            "Value at 'messages.2.content.0.toolResult.toolUseId' failed to satisfy constraint:"
            " Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
        ),
        (
            converse_doc("c" * 65),
            "Value at 'messages.1.content.0.toolUse.toolUseId' failed to satisfy constraint:"
            " Member must have length less than or equal to 64",
        ),
        (
            converse_doc(""),
            "Member must have length greater than or equal to 1",
        ),
    ],
    ids=["call-id-pattern", "result-id-pattern", "too-long", "empty"],
)  # fmt: skip
async def test_bedrock_refuses_an_id_that_does_not_fit(
    http: httpx.AsyncClient, doc: dict[str, Any], expected: str
) -> None:
    response = await signed(http, converse_path(), doc)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "ValidationException:"
    assert expected in response.json()["message"]


async def test_bedrock_takes_what_the_gateway_sends_for_foreign_ids(client: Any) -> None:
    converse = translated(*FOREIGN_IDS, "call_ok")

    answer = await converse_with(client, modelId=MODEL, **converse)

    assert answer["stopReason"] == "end_turn"


# --- empty tool results -------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "  \n", [], [{"type": "text", "text": ""}]])
def test_an_empty_result_is_sent_as_one_empty_text(content: Any) -> None:
    # Converse takes a blank text inside a toolResult (it refuses one only as a message's
    # own block); some models (Nova, Nemotron) refuse a toolResult with no content at all.
    messages = [*history("call_1")[:2], {"role": "tool", "tool_call_id": "call_1",
                                         "content": content}]  # fmt: skip

    converse = translate_request({"messages": messages, "tools": [WEATHER]})

    assert converse["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "call_1", "content": [{"text": ""}]}}
    ]


async def test_bedrock_takes_an_empty_result_but_not_an_empty_message_text(
    http: httpx.AsyncClient,
) -> None:
    doc = converse_doc("call_1")
    doc["messages"][2]["content"][0]["toolResult"]["content"] = [{"text": ""}]
    assert (await signed(http, converse_path(), doc)).status_code == 200

    doc["messages"][2]["content"].append({"text": " "})
    refused = await signed(http, converse_path(), doc)
    assert refused.status_code == 400
    assert "messages.2.content.1 is blank" in refused.json()["message"]
