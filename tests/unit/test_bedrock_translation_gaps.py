"""OpenAI chat to Bedrock Converse: what OpenAI takes and Converse refused with a 400 of its
own, which the client could not tell from its fields.

- ``stop``: an empty string is left out (it marks no place to stop; Converse refuses it);
  a sequence of whitespace alone is refused for Claude, naming ``stop``, as the Anthropic
  translation refuses it, and still sent to the models that take it (Llama's newline).
- a conversation that opens with the assistant's message: a 400 naming ``messages``,
  before the quota counts the request (Anthropic's API takes one; Converse does not, and
  no text the user did not write is made up to open it).
- ``parallel_tool_calls: false``: Claude gets Anthropic's ``disable_parallel_tool_use``
  through ``additionalModelRequestFields``; other models have no such switch.

Each request the translator sends is checked by the mock provider, which refuses what
Bedrock refuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from extproc.config.loader import parse_config
from extproc.errors import BadRequestError
from extproc.mock_llm.bedrock_api import AwsError, check_model_rules, parse_converse_request
from extproc.mock_llm.recorder import Body
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from extproc.translators.openai_bedrock import check_request, translate_request
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with
from tests.unit.quota_helpers import DEFAULT_CONFIG
from tests.unit.test_bedrock_invoke_review import signing_processor
from tests.unit.test_completions_api import AUTH, error_of
from tests.unit.test_guard_flow import upstream_body

CLAUDE = "anthropic.claude-3-5-haiku-20241022-v1:0"
CLAUDE_PROFILE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
LLAMA = "meta.llama3-1-70b-instruct-v1:0"
TITAN = "amazon.titan-text-express-v1"
HELLO = {"role": "assistant", "content": "Hello! How can I help?"}
QUESTION = {"role": "user", "content": "What is the capital of France?"}
SYSTEM = {"role": "system", "content": "Answer in one word."}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}


def to_bedrock(model_id: str, **body: Any) -> dict[str, Any]:
    """The Converse body for ``body``, after checking Bedrock would accept it."""
    body.setdefault("messages", [QUESTION])
    converse = translate_request(body, model_id=model_id)
    parse_converse_request(model_id, Body.parse(orjson.dumps(converse)))
    check_model_rules(model_id, converse, stream=False)
    return converse


def bedrock_refuses(model_id: str, converse: dict[str, Any]) -> str:
    """Bedrock's (the mock's) refusal of a Converse body."""
    with pytest.raises(AwsError) as refused:
        parse_converse_request(model_id, Body.parse(orjson.dumps(converse)))
        check_model_rules(model_id, converse, stream=False)
    return str(refused.value)


# --- stop --------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", [CLAUDE, LLAMA])
@pytest.mark.parametrize(
    ("stop", "sent"),
    [("", None), ([""], None), (["", "END"], ["END"]), ("END", ["END"])],
    ids=["empty", "only-empty", "empty-and-other", "other"],
)
def test_an_empty_stop_sequence_is_left_out(
    model_id: str, stop: Any, sent: list[str] | None
) -> None:
    # Converse refuses "" (a stop sequence is at least one character), with a 400 naming
    # inferenceConfig.stopSequences.0, a field the client never sent.
    inference = to_bedrock(model_id, stop=stop).get("inferenceConfig", {})
    assert inference.get("stopSequences") == sent


def test_bedrock_refuses_an_empty_stop_sequence() -> None:
    # What leaving it out spares the client.
    converse = {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}
    converse["inferenceConfig"] = {"stopSequences": [""]}
    assert "stopSequences" in bedrock_refuses(LLAMA, converse)


@pytest.mark.parametrize("model_id", [CLAUDE, CLAUDE_PROFILE])
@pytest.mark.parametrize("stop", ["\n", ["END", " \n\t"]], ids=["newline", "in-a-list"])
def test_a_whitespace_stop_sequence_for_claude_is_refused_naming_stop(
    model_id: str, stop: Any
) -> None:
    body = {"messages": [QUESTION], "stop": stop}
    for check in (
        lambda: translate_request(body, model_id=model_id),
        lambda: check_request(body, model_id=model_id),
    ):
        with pytest.raises(BadRequestError) as refused:
            check()
        assert refused.value.param == "stop"
        assert "whitespace" in refused.value.message


def test_bedrock_refuses_a_whitespace_stop_sequence_for_claude() -> None:
    converse = {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}
    converse["inferenceConfig"] = {"stopSequences": ["\n"]}
    assert "non-whitespace" in bedrock_refuses(CLAUDE, converse)


def test_a_newline_stop_sequence_still_goes_to_the_models_that_take_it() -> None:
    # Llama and Mistral clients stop at a newline on purpose.
    inference = to_bedrock(LLAMA, stop="\n")["inferenceConfig"]
    assert inference["stopSequences"] == ["\n"]


# --- a conversation that opens with the assistant ----------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        [HELLO, QUESTION],
        [SYSTEM, HELLO, QUESTION],
        [{"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]}, QUESTION],
        [{"role": "assistant", "content": ""}, SYSTEM, HELLO, QUESTION],
    ],
    ids=["greeting", "after-system", "text-parts", "after-an-empty-assistant-message"],
)
def test_a_conversation_opened_by_the_assistant_is_refused_naming_messages(
    messages: list[dict[str, Any]],
) -> None:
    body = {"messages": messages}
    for check in (
        lambda: translate_request(body, model_id=CLAUDE),
        lambda: check_request(body),
    ):
        with pytest.raises(BadRequestError) as refused:
            check()
        assert refused.value.param == "messages"
        opener = messages.index(HELLO) if HELLO in messages else 0
        assert f"messages[{opener}] is the assistant's" in refused.value.message
        assert "start with a user message" in refused.value.message


def test_bedrock_refuses_a_conversation_opened_by_the_assistant() -> None:
    converse = {
        "messages": [
            {"role": "assistant", "content": [{"text": "Hello!"}]},
            {"role": "user", "content": [{"text": "Hi"}]},
        ]
    }
    assert "must start with a user message" in bedrock_refuses(CLAUDE, converse)


def test_an_empty_assistant_message_before_the_user_is_left_out() -> None:
    messages = [{"role": "assistant", "content": ""}, QUESTION]
    check_request({"messages": messages})
    assert to_bedrock(CLAUDE, messages=messages)["messages"][0]["role"] == "user"


def test_a_model_without_system_opens_with_the_system_text_instead() -> None:
    # Titan takes no system prompt: its text is the user's opening turn, so the
    # conversation starts with the user there.
    messages = [SYSTEM, HELLO, QUESTION]
    check_request({"messages": messages}, model_id=TITAN)
    turns = to_bedrock(TITAN, messages=messages)["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]


def test_a_route_that_puts_a_user_message_first_lets_the_early_check_pass() -> None:
    # The route's enrichment opens the conversation with the user by translation time.
    check_request({"messages": [HELLO, QUESTION]}, route_prepends_user=True)


# --- parallel_tool_calls: false -----------------------------------------------------------


@pytest.mark.parametrize("model_id", [CLAUDE, CLAUDE_PROFILE])
@pytest.mark.parametrize(
    ("choice", "anthropic_choice"),
    [
        (None, {"type": "auto"}),
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
    ids=["no-choice", "auto", "required", "named"],
)
def test_claude_is_asked_for_one_tool_call_at_a_time(
    model_id: str, choice: Any, anthropic_choice: dict[str, Any]
) -> None:
    fields: dict[str, Any] = {"tools": [TOOL], "parallel_tool_calls": False}
    if choice is not None:
        fields["tool_choice"] = choice
    converse = to_bedrock(model_id, **fields)
    expected = {**anthropic_choice, "disable_parallel_tool_use": True}
    assert converse["additionalModelRequestFields"] == {"tool_choice": expected}
    # The choice travels once: Bedrock refuses it in both places.
    assert "toolChoice" not in converse["toolConfig"]


def test_bedrock_refuses_a_choice_both_in_tool_config_and_in_additional_fields() -> None:
    converse = to_bedrock(CLAUDE, tools=[TOOL], tool_choice="required")
    converse["additionalModelRequestFields"] = {
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True}
    }
    assert "conflicts with the existing field toolConfig.toolChoice.any" in bedrock_refuses(
        CLAUDE, converse
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [TOOL]},
        {"tools": [TOOL], "parallel_tool_calls": True},
        {"tools": [TOOL], "parallel_tool_calls": False, "tool_choice": "none"},
        {"parallel_tool_calls": False},
    ],
    ids=["unset", "true", "tools-left-out", "no-tools"],
)
def test_claude_gets_no_extra_field_when_parallel_calls_are_allowed_or_moot(
    fields: dict[str, Any],
) -> None:
    assert "additionalModelRequestFields" not in to_bedrock(CLAUDE, **fields)


def test_other_models_have_no_switch_and_get_the_request_without_it() -> None:
    converse = to_bedrock(LLAMA, tools=[TOOL], tool_choice="required", parallel_tool_calls=False)
    assert "additionalModelRequestFields" not in converse
    assert converse["toolConfig"]["toolChoice"] == {"any": {}}


# --- before the quota ------------------------------------------------------------------------

ONE_REQUEST_A_MINUTE = """
quotas:
  rules:
    - {name: one-rpm, subject: api_key, requests_per_minute: 1}
"""


@pytest.fixture
async def one_request_a_minute(quota_store: QuotaStore) -> AsyncIterator[Processor]:
    """The default config, each key allowed one request a minute; its AWS signer started."""
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    config = parse_config(DEFAULT_CONFIG + ONE_REQUEST_A_MINUTE, "t", {})
    async with signing_processor(config, services) as processor:
        yield processor


async def test_a_conversation_opened_by_the_assistant_is_refused_before_the_quota(
    one_request_a_minute: Processor,
) -> None:
    processor = one_request_a_minute
    refused = orjson.dumps({"model": "haiku", "messages": [HELLO, QUESTION]})
    answers = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=AUTH), request_body(refused)]
    )
    status, error = error_of(answers[1])
    assert (status, error["param"], error["type"]) == (400, "messages", "invalid_request_error")
    # The key's one request of the minute is still there for the corrected conversation.
    fixed = orjson.dumps({"model": "haiku", "messages": [QUESTION, HELLO, QUESTION]})
    answers = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=AUTH), request_body(fixed)]
    )
    assert [turn["role"] for turn in upstream_body(answers[1])["messages"]] == [
        "user",
        "assistant",
        "user",
    ]


async def test_a_whitespace_stop_for_claude_on_bedrock_is_refused_naming_stop(
    one_request_a_minute: Processor,
) -> None:
    processor = one_request_a_minute
    body = orjson.dumps({"model": "haiku", "messages": [QUESTION], "stop": "\n"})
    answers = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=AUTH), request_body(body)]
    )
    status, error = error_of(answers[1])
    assert (status, error["param"]) == (400, "stop")


# --- with the model and the route known before the quota (backends.check_pair) ---------------


async def test_a_whitespace_stop_for_claude_is_refused_before_the_quota(
    one_request_a_minute: Processor,
) -> None:
    processor = one_request_a_minute
    refused = orjson.dumps({"model": "haiku", "messages": [QUESTION], "stop": "\n"})
    answers = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=AUTH), request_body(refused)]
    )
    assert error_of(answers[1])[0] == 400
    # The key's one request of the minute is still there for the corrected request.
    fixed = orjson.dumps({"model": "haiku", "messages": [QUESTION], "stop": "END"})
    answers = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=AUTH), request_body(fixed)]
    )
    assert upstream_body(answers[1])["inferenceConfig"]["stopSequences"] == ["END"]


async def test_a_route_that_opens_with_a_user_message_takes_the_assistant_s_greeting(
    quota_store: QuotaStore,
) -> None:
    enrichment = {"prepend": [{"role": "user", "content": "I am a customer."}]}
    config = config_with({}, {"openai-chat": {"enrichment": enrichment}})
    runtime = Runtime(config, Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store))
    await runtime.start()
    try:
        body = orjson.dumps({"model": "haiku", "messages": [HELLO, QUESTION]})
        answers = await run_stream(
            Processor(lambda: runtime, default_stages()),
            [request_headers("/v1/chat/completions", headers=AUTH), request_body(body)],
        )
    finally:
        await runtime.close()
    turns = upstream_body(answers[1])["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
