"""Anthropic through the real Envoy, gateway and mock, driven by the official SDKs.

OpenAI clients on ``/anthropic`` (translated both ways) and Anthropic clients on
``/v1/messages`` (passed through). The mock refuses what Anthropic refuses and answers in
its wire format (tool use, stop sequences, structured output), so what the SDKs read here is
what they would read from Anthropic.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import GatewayLog, mock_requests, running_stack

ORG_KEY = "team1-key"
PROVIDER_KEY = "mock-provider-key"
MODEL = "claude-3-5-haiku-latest"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"],
        },
    },
}
TIME: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
QUESTION: Any = {"role": "user", "content": "Weather and time in Paris?"}
# What the mock puts in a string argument: its usual reply to the last user message.
QUOTED = "Mock reply to: Weather and time in Paris?"


def openai_client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/anthropic", api_key=ORG_KEY, max_retries=0)


def upstream(stack: LocalStack) -> dict[str, Any]:
    """The last request the mock Anthropic received."""
    return mock_requests(stack)[-1]


# --- OpenAI clients, translated -------------------------------------------------------------


def test_a_conversation_with_an_empty_assistant_turn_is_answered(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # An assistant that said nothing is fine for OpenAI; Anthropic refuses an empty turn.
    raw = openai_client(stack).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Still there?"},
        ],
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == "Mock reply to: Hi Still there?"
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["http_status_code"] == 200
    assert completion.usage is not None
    assert line["completion_tokens"] == completion.usage.completion_tokens


def test_max_completion_tokens_wins_and_max_tokens_has_a_default(stack: LocalStack) -> None:
    client = openai_client(stack)
    cut = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=50,
        max_completion_tokens=3,
    )
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (
        "Mock reply to",
        "length",
    )
    assert upstream(stack)["json"]["max_tokens"] == 3

    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert upstream(stack)["json"]["max_tokens"] == 4096


def test_streamed_parallel_tool_calls_and_their_results_round_trip(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = openai_client(stack)
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[QUESTION],
        tools=[WEATHER, TIME],
        tool_choice="required",
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())

    calls: dict[int, dict[str, str]] = {}
    finish = []
    for chunk in chunks:
        for choice in chunk.choices:
            finish.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                assert delta.function is not None
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert orjson.loads(calls[0]["arguments"]) == {"city": QUOTED, "days": 1}
    assert orjson.loads(calls[1]["arguments"]) == {}
    assert [reason for reason in finish if reason] == ["tool_calls"]
    usage = chunks[-1].usage
    assert usage is not None
    [line] = gateway_log.for_request(request_id)
    assert (
        line["completion_tokens"]
        == usage.completion_tokens
        == sum(count_tokens(call["arguments"]) for call in calls.values())
    )

    # The client runs both tools and sends the results back; Anthropic checks that each
    # tool_result answers a tool_use of the turn before (the mock does too).
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[
            QUESTION,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": calls[i]["id"],
                        "type": "function",
                        "function": {"name": calls[i]["name"], "arguments": calls[i]["arguments"]},
                    }
                    for i in sorted(calls)
                ],
            },
            {"role": "tool", "tool_call_id": calls[1]["id"], "content": "12:00"},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "Sunny"},
        ],
        tools=[WEATHER, TIME],
    )
    assert answer.choices[0].finish_reason == "stop"
    results = upstream(stack)["json"]["messages"][-1]["content"]
    assert [(r["type"], r["tool_use_id"], r["content"]) for r in results] == [
        ("tool_result", calls[1]["id"], "12:00"),
        ("tool_result", calls[0]["id"], "Sunny"),
    ]


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, ["get_time"]),
        ({"tool_choice": "required", "parallel_tool_calls": False}, ["get_weather"]),
        ({"tool_choice": "none"}, []),
    ],
    ids=["named", "one-at-a-time", "none"],
)
def test_tool_choice_decides_the_calls(
    stack: LocalStack, fields: dict[str, Any], names: list[str]
) -> None:
    completion = openai_client(stack).chat.completions.create(
        model=MODEL,
        messages=[QUESTION],
        tools=[WEATHER, TIME],
        **fields,
    )
    message = completion.choices[0].message
    assert [call.function.name for call in message.tool_calls or []] == names
    assert completion.choices[0].finish_reason == ("tool_calls" if names else "stop")
    assert (message.content is None) == bool(names)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_stop_sequence_ends_the_answer(
    stack: LocalStack, gateway_log: GatewayLog, stream: bool
) -> None:
    client = openai_client(stack)
    messages: Any = [{"role": "user", "content": "count to ten"}]
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=messages, stop=" to", stream=True
        ) as response:
            request_id = response.headers["x-request-id"]
            chunks = list(response.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        finish = [reason for reason in reasons if reason]
    else:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, stop=["nowhere", " to"]
        )
        request_id = raw.headers["x-request-id"]
        completion = raw.parse()
        text = completion.choices[0].message.content or ""
        finish = [completion.choices[0].finish_reason]

    assert (text, finish) == ("Mock reply", ["stop"])
    [line] = gateway_log.for_request(request_id)
    assert line["completion_tokens"] == count_tokens("Mock reply")


def test_a_json_schema_response_format_gets_json_of_that_schema(stack: LocalStack) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "rain": {"type": "boolean"}},
        "required": ["city", "rain"],
        "additionalProperties": False,
    }
    completion = openai_client(stack).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Paris?"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": schema, "strict": True},
        },
    )
    answer = orjson.loads(completion.choices[0].message.content or "")
    assert answer == {"city": "Mock reply to: Paris?", "rain": True}
    assert upstream(stack)["json"]["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }


def test_json_object_is_refused_as_on_bedrock_before_it_reaches_anthropic(
    stack: LocalStack,
) -> None:
    # Claude has no "any JSON" mode: left out, the answer was JSON only as Claude chose.
    before = len(mock_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(stack).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Paris weather as JSON"}],
            response_format={"type": "json_object"},
        )

    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["param"]) == ("invalid_request_error", "response_format")
    assert "send 'json_schema'" in error["message"]
    assert len(mock_requests(stack)) == before


def test_images_reach_anthropic_as_image_blocks(stack: LocalStack) -> None:
    completion = openai_client(stack).chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/b.jpg"}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == "Mock reply to: Compare"
    blocks = upstream(stack)["json"]["messages"][0]["content"]
    assert [block.get("source") for block in blocks[1:]] == [
        {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
        {"type": "url", "url": "https://example.com/b.jpg"},
    ]


# --- Anthropic clients, passed through ------------------------------------------------------


def test_anthropic_sdk_stream_passes_through_with_cache_reads_counted(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # The SDK's own way to send the key (a bearer token since 2.0), and a beta header.
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=ORG_KEY, max_retries=0)
    with client.messages.stream(
        model=MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "Cached prompt please"}],
        extra_headers={"anthropic-beta": "context-1m-2025-08-07", "x-mock-fault": "cached=4"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]

    assert text == "Mock reply to: Cached prompt please"
    assert final.usage.cache_read_input_tokens == 4
    [line] = gateway_log.for_request(request_id)
    # Prompt tokens are everything the model read: uncached input plus cache reads.
    assert line["prompt_tokens"] == final.usage.input_tokens + 4
    assert line["cached_tokens"] == 4
    assert line["completion_tokens"] == final.usage.output_tokens
    headers = upstream(stack)["headers"]
    assert headers["x-api-key"] == PROVIDER_KEY
    assert "authorization" not in headers
    assert headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert headers["anthropic-version"] == client.default_headers["anthropic-version"]


# --- an operator's own settings: quotas on the Messages route, a newer API version -----------


RATE_KEY = "anthropic-rate-key"
SETTINGS = """
quotas:
  rules:
    - name: one-message-an-hour
      subject: api_key
      match: rated
      requests_per_hour: 1
"""


@pytest.fixture(scope="module")
def operator_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("anthropic-operator")
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("  api_keys:\n", f"  api_keys:\n    - {{id: rated, key: {RATE_KEY}}}\n", 1)
    # The provider speaks Anthropic's API version 2026-10-21 (no sampling parameters).
    provider = "  - name: mock-anthropic\n    type: anthropic\n"
    assert provider in text
    text = text.replace(provider, provider + '    anthropic_version: "2026-10-21"\n', 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + SETTINGS)
    with running_stack(workdir, config) as running:
        yield running


def test_quota_refusals_on_the_messages_route_are_in_anthropics_shape(
    operator_stack: LocalStack,
) -> None:
    client = anthropic.Anthropic(base_url=operator_stack.base_url, api_key=RATE_KEY, max_retries=0)
    ask: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}],
    }
    client.messages.create(**ask)
    with pytest.raises(anthropic.RateLimitError) as refused, client.messages.stream(**ask) as s:
        s.get_final_message()

    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert "1 requests per hour" in body["error"]["message"]
    assert int(refused.value.response.headers["retry-after"]) > 0


def test_a_messages_request_without_a_key_is_an_anthropic_401(operator_stack: LocalStack) -> None:
    client = anthropic.Anthropic(base_url=operator_stack.base_url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client.messages.create(
            model=MODEL,
            max_tokens=20,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"Authorization": anthropic.omit},
        )
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"


def test_openai_clients_sampling_is_not_sent_to_api_version_2026_10_21(
    operator_stack: LocalStack,
) -> None:
    # Most OpenAI frameworks send a temperature; that API version refuses any.
    completion = openai_client(operator_stack).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        temperature=0.3,
        top_p=0.9,
    )
    assert completion.choices[0].message.content == "Mock reply to: Hi"
    sent = upstream(operator_stack)
    assert sent["headers"]["anthropic-version"] == "2026-10-21"
    assert not {"temperature", "top_p"} & sent["json"].keys()


def test_openai_clients_get_a_clear_error_when_anthropic_refuses(stack: LocalStack) -> None:
    # A 400 from Anthropic reaches an OpenAI client as an OpenAI 400 with Anthropic's words.
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(stack).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "no_such_tool"}},
        )
    assert "no_such_tool" in str(refused.value)
