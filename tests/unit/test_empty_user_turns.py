"""Empty user messages, translated for Anthropic's Messages API and Bedrock's Converse.

OpenAI takes a user message with nothing in it (``""``, whitespace, ``[]``, an empty text
part); Anthropic and Converse refuse an empty turn, so the translators leave it out and the
turns around it merge. That is harmless between other turns, but not everywhere:

- last: the conversation would end with the assistant's message, which both providers read
  as a prefill to continue ("Hello ..."), not as a turn to answer: the client would get an
  answer to a question it did not ask, and Claude 4.6 and later refuse a prefill outright.
- first, before an assistant message: Converse refuses a conversation that starts with the
  assistant ("A conversation must start with a user message", though the client's did).
  Anthropic's own API takes one, and the model reads it as the client meant it.

Each request the translators send is checked by the mock provider's validation, which
refuses what the real API refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from extproc.errors import BadRequestError
from extproc.mock_llm.anthropic_api import parse_messages_request
from extproc.mock_llm.bedrock_api import AwsError, parse_converse_request
from extproc.mock_llm.recorder import Body
from extproc.translators import openai_anthropic, openai_bedrock

CLAUDE = "claude-sonnet-4-5"
BEDROCK_CLAUDE = "anthropic.claude-3-5-haiku-20241022-v1:0"
HI = {"role": "user", "content": "Hi"}
HELLO = {"role": "assistant", "content": "Hello! How can I help?"}
QUESTION = {"role": "user", "content": "What is the capital of France?"}
SILENT_USERS = [
    {"role": "user", "content": ""},
    {"role": "user", "content": " \n "},
    {"role": "user", "content": []},
    {"role": "user", "content": [{"type": "text", "text": ""}]},
    {"role": "user", "content": None},
]
SILENT_IDS = ["empty-text", "blank", "no-parts", "empty-part", "null"]


def to_anthropic(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns Anthropic gets, after checking it would accept them."""
    body = {"model": "claude", "messages": messages}
    request = openai_anthropic.translate_request(body, CLAUDE, stream=False)
    parse_messages_request(Body.parse(orjson.dumps(request)), "2023-06-01")
    turns: list[dict[str, Any]] = request["messages"]
    return turns


def to_bedrock(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns Converse gets, after checking it would accept them."""
    request = openai_bedrock.translate_request({"messages": messages}, model_id=BEDROCK_CLAUDE)
    parse_converse_request(BEDROCK_CLAUDE, Body.parse(orjson.dumps(request)))
    turns: list[dict[str, Any]] = request["messages"]
    return turns


Translate = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
PROVIDERS = pytest.mark.parametrize(
    ("translate", "provider"),
    [(to_anthropic, "Anthropic"), (to_bedrock, "Bedrock")],
    ids=["anthropic", "bedrock"],
)


def texts(turns: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """Each turn's role and texts, in either provider's block shape."""
    return [(turn["role"], [block["text"] for block in turn["content"]]) for turn in turns]


# --- last: the provider would continue the assistant's message ---------------------------


@PROVIDERS
@pytest.mark.parametrize("silent", SILENT_USERS, ids=SILENT_IDS)
def test_an_empty_last_user_message_is_a_400_naming_it(
    translate: Translate, provider: str, silent: dict[str, Any]
) -> None:
    # Before: sent as [user "Hi", assistant "Hello! ..."], which the provider continues.
    with pytest.raises(BadRequestError) as refused:
        translate([HI, HELLO, silent])
    assert refused.value.status == 400
    assert refused.value.param == "messages[2].content"
    assert provider in refused.value.message
    assert "continue" in refused.value.message


@PROVIDERS
def test_system_messages_after_it_do_not_hide_it(translate: Translate, provider: str) -> None:
    system = {"role": "system", "content": "Be brief."}
    empty_assistant = {"role": "assistant", "content": ""}
    with pytest.raises(BadRequestError) as refused:
        translate([HI, HELLO, {"role": "user", "content": ""}, empty_assistant, system])
    assert refused.value.param == "messages[2].content"


@PROVIDERS
def test_a_prefill_the_client_sent_on_purpose_is_still_continued(
    translate: Translate, provider: str
) -> None:
    # A conversation that ends with the assistant's own message is a prefill the
    # client asked for (Anthropic documents it): sent as it is, trailing space trimmed.
    prefill = {"role": "assistant", "content": "The capital of France is "}
    assert texts(translate([QUESTION, prefill])) == [
        ("user", ["What is the capital of France?"]),
        ("assistant", ["The capital of France is"]),
    ]


@PROVIDERS
def test_an_empty_user_message_after_a_user_message_is_left_out(
    translate: Translate, provider: str
) -> None:
    # The conversation still ends with the user: the same question to answer.
    assert texts(translate([HI, HELLO, QUESTION, {"role": "user", "content": ""}])) == [
        ("user", ["Hi"]),
        ("assistant", ["Hello! How can I help?"]),
        ("user", ["What is the capital of France?"]),
    ]


@PROVIDERS
def test_an_empty_user_message_after_a_tool_result_is_left_out(
    translate: Translate, provider: str
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    messages = [
        QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Paris"},
        {"role": "user", "content": ""},
    ]
    body: dict[str, Any] = {
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": "lookup"}}],
    }
    if provider == "Anthropic":
        turns = openai_anthropic.translate_request({"model": "c", **body}, CLAUDE, stream=False)
    else:
        turns = openai_bedrock.translate_request(body, model_id=BEDROCK_CLAUDE)
    # The tool's result is the user's turn the model answers.
    assert [turn["role"] for turn in turns["messages"]] == ["user", "assistant", "user"]


# --- between other turns: left out, the turns around it merge ----------------------------


@PROVIDERS
@pytest.mark.parametrize("silent", SILENT_USERS, ids=SILENT_IDS)
def test_an_empty_user_message_between_turns_is_left_out(
    translate: Translate, provider: str, silent: dict[str, Any]
) -> None:
    # A chat UI that sent a blank line, then the assistant went on: the assistant's two
    # messages read as one turn, as two consecutive assistant messages would.
    again = {"role": "assistant", "content": "Anything else?"}
    assert texts(translate([HI, HELLO, silent, again, QUESTION])) == [
        ("user", ["Hi"]),
        ("assistant", ["Hello! How can I help?", "Anything else?"]),
        ("user", ["What is the capital of France?"]),
    ]


# --- first, before the assistant's message ------------------------------------------------


@pytest.mark.parametrize("silent", SILENT_USERS, ids=SILENT_IDS)
def test_bedrock_refuses_an_empty_first_user_message_before_the_assistant_naming_it(
    silent: dict[str, Any],
) -> None:
    # Before: sent as [assistant, user], which Converse refuses with "A conversation must
    # start with a user message": the client's did.
    system = {"role": "system", "content": "Be brief."}
    with pytest.raises(BadRequestError) as refused:
        to_bedrock([system, silent, HELLO, QUESTION])
    assert refused.value.status == 400
    assert refused.value.param == "messages[1].content"
    assert "Bedrock" in refused.value.message
    assert "start" in refused.value.message


def test_converse_does_refuse_a_conversation_that_starts_with_the_assistant() -> None:
    # What the gateway's 400 spares the client: the provider's, which names no message.
    # (The translator refuses the client's own such conversation, naming `messages`.)
    converse = {
        "messages": [
            {"role": "assistant", "content": [{"text": HELLO["content"]}]},
            {"role": "user", "content": [{"text": QUESTION["content"]}]},
        ]
    }
    with pytest.raises(AwsError, match="must start with a user message"):
        parse_converse_request(BEDROCK_CLAUDE, Body.parse(orjson.dumps(converse)))


@pytest.mark.parametrize("silent", SILENT_USERS, ids=SILENT_IDS)
def test_anthropic_takes_the_conversation_from_the_assistant_message_on(
    silent: dict[str, Any],
) -> None:
    # Anthropic's API takes a first assistant turn (its SDKs' issue tracker shows it
    # answering one that Bedrock refuses): the conversation means what the client sent.
    assert texts(to_anthropic([silent, HELLO, QUESTION])) == [
        ("assistant", ["Hello! How can I help?"]),
        ("user", ["What is the capital of France?"]),
    ]


@PROVIDERS
def test_an_empty_first_user_message_before_another_is_left_out(
    translate: Translate, provider: str
) -> None:
    assert texts(translate([{"role": "user", "content": ""}, QUESTION])) == [
        ("user", ["What is the capital of France?"]),
    ]
