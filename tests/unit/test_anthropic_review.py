"""OpenAI requests the translator must send in a form Anthropic accepts.

Each translated request is checked by the mock's validation, which refuses what the real
Messages API refuses (``parse_messages_request``): a request that passes the translator but
not that check would be a 400 from Anthropic for the client.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.errors import BadRequestError
from extproc.mock_llm.anthropic_api import parse_messages_request
from extproc.mock_llm.recorder import Body
from extproc.translators.openai_anthropic import translate_request

UPSTREAM_MODEL = "claude-sonnet-4-5"
USER = {"role": "user", "content": "Hi"}


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude", "messages": list(messages), **fields}


def sent(body: dict[str, Any], **options: Any) -> dict[str, Any]:
    """The Anthropic request for ``body``, after checking Anthropic would accept it."""
    request = translate_request(body, UPSTREAM_MODEL, stream=False, **options)
    version = options.get("anthropic_version", "2023-06-01")
    parse_messages_request(Body.parse(orjson.dumps(request)), version)
    return request


CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


ASSISTANT_SILENT = [
    {"role": "assistant", "content": ""},
    {"role": "assistant", "content": None},
    {"role": "assistant", "content": []},
    {"role": "assistant", "content": " \n"},
]
USER_SILENT = [
    {"role": "user", "content": ""},
    {"role": "user", "content": [{"type": "text", "text": "  "}]},
]


@pytest.mark.parametrize(
    "silent", ASSISTANT_SILENT, ids=["empty-text", "null", "no-parts", "blank"]
)
def test_an_assistant_turn_with_nothing_said_is_left_out(silent: dict[str, Any]) -> None:
    # OpenAI accepts these (an assistant that answered nothing after a tool result);
    # Anthropic refuses an empty or blank turn with a 400. Without it the two user
    # turns around it are one.
    turns = sent(chat(USER, silent, {"role": "user", "content": "Still there?"}))["messages"]
    assert turns == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Still there?"}],
        }
    ]


@pytest.mark.parametrize("silent", USER_SILENT, ids=["empty-text", "blank-part"])
def test_a_user_turn_with_nothing_said_is_left_out(silent: dict[str, Any]) -> None:
    # A chat UI that sends a blank line.
    body = chat(
        USER,
        {"role": "assistant", "content": "Hello"},
        silent,
        {"role": "assistant", "content": "Anything else?"},
        {"role": "user", "content": "No"},
    )
    turns = sent(body)["messages"]
    texts = [[block["text"] for block in turn["content"]] for turn in turns]
    assert texts == [["Hi"], ["Hello", "Anything else?"], ["No"]]


def test_blank_text_beside_real_text_is_dropped_and_the_rest_kept() -> None:
    parts = [{"type": "text", "text": " "}, {"type": "text", "text": "Look"}]
    turns = sent(chat({"role": "user", "content": parts}))["messages"]
    assert turns == [{"role": "user", "content": [{"type": "text", "text": "Look"}]}]


def test_an_assistant_turn_of_tool_calls_only_is_kept() -> None:
    body = chat(
        USER,
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": ""},
    )
    turns = sent(body)["messages"]
    assert [block["type"] for block in turns[1]["content"]] == ["tool_use"]
    assert turns[2]["content"] == [{"type": "tool_result", "tool_use_id": "call_1"}]


def test_a_final_assistant_turn_loses_its_trailing_whitespace() -> None:
    # A prefill like "The answer is " is refused by Anthropic as it stands.
    body = chat(USER, {"role": "assistant", "content": "The answer is "})
    assert sent(body)["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "The answer is"}],
    }


def test_earlier_assistant_turns_keep_their_whitespace() -> None:
    body = chat(USER, {"role": "assistant", "content": "Line one\n"}, USER)
    assert sent(body)["messages"][1]["content"] == [{"type": "text", "text": "Line one\n"}]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Be brief"}],
        [{"role": "system", "content": "Be brief"}, {"role": "user", "content": ""}],
        [],
    ],
    ids=["only-system", "system-and-empty-user", "none"],
)
def test_a_conversation_with_nothing_to_answer_is_a_clear_400(
    messages: list[dict[str, Any]],
) -> None:
    with pytest.raises(BadRequestError) as refused:
        translate_request(chat(*messages), UPSTREAM_MODEL, stream=False)
    assert refused.value.param == "messages"
    assert "at least one user or assistant message" in refused.value.message


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def test_json_schema_response_format_becomes_anthropics_structured_output() -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": SCHEMA, "strict": True},
    }
    request = sent(chat(USER, response_format=response_format))
    assert request["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}


@pytest.mark.parametrize(
    ("json_schema", "param"),
    [
        ({"name": "place"}, "response_format.json_schema.schema"),
        ({"name": "place", "schema": "object"}, "response_format.json_schema.schema"),
        (None, "response_format.json_schema"),
    ],
)
def test_json_schema_without_a_schema_is_refused(json_schema: Any, param: str) -> None:
    body = chat(USER, response_format={"type": "json_schema", "json_schema": json_schema})
    with pytest.raises(BadRequestError) as refused:
        translate_request(body, UPSTREAM_MODEL, stream=False)
    assert refused.value.param == param
    assert "json_schema.schema" in refused.value.message


@pytest.mark.parametrize("fields", [{"temperature": 0.2}, {"top_p": 0.9}, {"temperature": 0}])
def test_api_version_2026_10_21_gets_no_sampling_parameters(fields: dict[str, Any]) -> None:
    # That version removed temperature, top_p and top_k: sending them is a 400 for every
    # OpenAI client that sets one (most frameworks do by default).
    request = sent(chat(USER, **fields), anthropic_version="2026-10-21")
    assert not {"temperature", "top_p", "top_k"} & request.keys()


def test_older_api_versions_still_get_the_temperature() -> None:
    request = sent(chat(USER, temperature=0.2), anthropic_version="2023-06-01")
    assert request["temperature"] == 0.2
