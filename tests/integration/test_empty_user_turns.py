"""Empty user messages from an OpenAI client, translated to Anthropic and to Bedrock.

Through the real Envoy and gateway to the mock providers, which refuse what the real APIs
refuse, read by the openai client. A chat UI that sends a blank message after the
assistant's answer must be told so, not answered with a continuation of that answer (the
gateway used to leave the message out, and the provider read the assistant's message as a
prefill); a prefill the client sends on purpose is still continued.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests

KEY = "team1-key"
ROUTES = pytest.mark.parametrize(
    ("route", "model"),
    [("/anthropic", "claude-3-5-haiku-latest"), ("/bedrock/haiku", "haiku")],
    ids=["anthropic", "bedrock"],
)
HI: Any = {"role": "user", "content": "Hi"}
HELLO: Any = {"role": "assistant", "content": "Hello! How can I help?"}
QUESTION: Any = {"role": "user", "content": "Name a colour."}


def client(stack: LocalStack, route: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{route}", api_key=KEY, max_retries=0)


def refused(
    stack: LocalStack, route: str, model: str, messages: Any, **fields: Any
) -> openai.BadRequestError:
    sent_before = len(mock_requests(stack))
    with pytest.raises(openai.BadRequestError) as caught:
        client(stack, route).chat.completions.create(model=model, messages=messages, **fields)
    # The gateway answered: the provider was not asked (nor can it bill anything).
    assert len(mock_requests(stack)) == sent_before
    assert caught.value.status_code == 400
    return caught.value


@ROUTES
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_empty_last_user_message_is_a_400_naming_it(
    stack: LocalStack, gateway_log: GatewayLog, route: str, model: str, stream: bool
) -> None:
    # Before: a 200 whose answer went on from "Hello! How can I help?".
    messages = [HI, HELLO, {"role": "user", "content": ""}]
    error = refused(stack, route, model, messages, stream=stream)
    assert error.param == "messages[2].content"
    assert "continue" in error.message
    [line] = gateway_log.for_request(error.response.headers["x-request-id"])
    assert line["http_status_code"] == 400
    assert line["total_tokens"] == 0


@ROUTES
def test_a_prefill_the_client_sends_is_continued(stack: LocalStack, route: str, model: str) -> None:
    prefill: Any = {"role": "assistant", "content": "The colour is "}
    completion = client(stack, route).chat.completions.create(
        model=model, messages=[QUESTION, prefill]
    )
    assert completion.choices[0].finish_reason == "stop"
    turns = mock_requests(stack)[-1]["json"]["messages"]
    # The provider got the assistant's message last, to continue (its trailing space cut).
    assert turns[-1]["role"] == "assistant"
    assert "The colour is" in str(turns[-1]["content"])


def test_bedrock_refuses_an_empty_first_user_message_before_the_assistant(
    stack: LocalStack,
) -> None:
    # Converse would refuse [assistant, user] with "A conversation must start with a user
    # message", naming no message: the client's did start with one.
    messages = [{"role": "user", "content": " "}, HELLO, QUESTION]
    error = refused(stack, "/bedrock/haiku", "haiku", messages)
    assert error.param == "messages[0].content"
    assert "start" in error.message


def test_anthropic_answers_from_the_assistant_message_on(stack: LocalStack) -> None:
    # Anthropic's API takes a conversation that starts with the assistant.
    messages = [{"role": "user", "content": " "}, HELLO, QUESTION]
    completion = client(stack, "/anthropic").chat.completions.create(
        model="claude-3-5-haiku-latest", messages=messages
    )
    assert completion.choices[0].finish_reason == "stop"
    turns = mock_requests(stack)[-1]["json"]["messages"]
    assert [turn["role"] for turn in turns] == ["assistant", "user"]
