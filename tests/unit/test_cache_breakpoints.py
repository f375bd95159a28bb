"""Prompt-cache breakpoints of OpenAI SDK clients of Claude (LiteLLM's ``cache_control``).

A client marks ``cache_control: {"type": "ephemeral"}`` on content parts, whole messages
and tool definitions; the gateway carries it to Claude: Anthropic's ``cache_control`` on
the block (Anthropic's API, Vertex AI's Claude), Converse's ``cachePoint`` after it
(Bedrock). Each request is played through the processor and the body it sends is checked
by the mock provider as the real API checks it.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.errors import BadRequestError
from extproc.mock_llm.anthropic_api import parse_messages_request
from extproc.mock_llm.bedrock_api import parse_converse_request
from extproc.mock_llm.recorder import Body
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from extproc.translators.openai_anthropic import translate_request
from tests.unit.conftest import MemoryLog

AUTH = {"authorization": "Bearer team1-key"}
CLAUDE = "claude-sonnet-4-0"
BEDROCK_CLAUDE = "anthropic.claude-sonnet-4-20250514-v1:0"
EPHEMERAL = {"type": "ephemeral"}
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}
RULES = "You review contracts. " * 50
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def text(value: str, marker: dict[str, Any] | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": value}
    if marker is not None:
        part["cache_control"] = marker
    return part


def litellm_body(model: str) -> dict[str, Any]:
    """What LiteLLM's prompt-caching guide sends: a marked system part, a marked tool,
    a marked user message with string content, then the question."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": [text("Be brief."), text(RULES, EPHEMERAL)]},
            {"role": "user", "content": "Here is the contract: ...", "cache_control": EPHEMERAL},
            {"role": "assistant", "content": "I have read it."},
            {"role": "user", "content": "Is clause 4 fair?"},
        ],
        "tools": [{**WEATHER, "cache_control": ONE_HOUR}],
    }


async def sent(config: GatewayConfig, path: str, body: dict[str, Any]) -> ext.ProcessingResponse:
    """The gateway's answer to the request body (its runtime started, so that it signs
    Bedrock's requests as the server does)."""
    runtime = Runtime(config, Services(metrics=GatewayMetrics(), access_log=MemoryLog()))
    await runtime.start()
    try:
        answers = await run_stream(
            Processor(lambda: runtime, default_stages()),
            [request_headers(path, headers=AUTH), request_body(orjson.dumps(body))],
        )
    finally:
        await runtime.close()
    return answers[-1]


def upstream(answer: ext.ProcessingResponse) -> dict[str, Any]:
    assert not answer.HasField("immediate_response"), answer.immediate_response.body
    body: dict[str, Any] = orjson.loads(answer.request_body.response.body_mutation.body)
    return body


def refused(answer: ext.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    assert answer.HasField("immediate_response"), "the request went on"
    error: dict[str, Any] = orjson.loads(answer.immediate_response.body)["error"]
    return answer.immediate_response.status.code, error


def anthropic_accepts(body: dict[str, Any]) -> None:
    parse_messages_request(Body.parse(orjson.dumps(body)), "2023-06-01")


def converse_accepts(model: str, body: dict[str, Any]) -> None:
    parse_converse_request(model, Body.parse(orjson.dumps(body)))


# --- Anthropic's API ------------------------------------------------------------------------


async def test_litellms_markers_reach_anthropic_on_the_blocks_they_mark(
    config: GatewayConfig,
) -> None:
    body = upstream(await sent(config, "/v1/chat/completions", litellm_body(CLAUDE)))

    anthropic_accepts(body)
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": RULES, "cache_control": EPHEMERAL},
    ]
    assert body["tools"][0]["cache_control"] == ONE_HOUR
    # A string content becomes a text block to carry its message's marker.
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Here is the contract: ...", "cache_control": EPHEMERAL}
    ]
    assert body["messages"][2]["content"] == [{"type": "text", "text": "Is clause 4 fair?"}]


async def test_without_markers_the_system_prompt_stays_one_string(config: GatewayConfig) -> None:
    chat = litellm_body(CLAUDE)
    chat["messages"][0]["content"] = [text("Be brief."), text(RULES)]
    del chat["messages"][1]["cache_control"], chat["tools"][0]["cache_control"]

    body = upstream(await sent(config, "/v1/chat/completions", chat))

    assert body["system"] == f"Be brief.\n\n{RULES}"
    assert "cache_control" not in orjson.dumps(body).decode()


def test_a_system_messages_marker_goes_on_its_last_block() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": RULES, "cache_control": ONE_HOUR},
            {"role": "user", "content": "Hi"},
        ]
    }
    body = translate_request(chat, CLAUDE, stream=False)

    anthropic_accepts(body)
    assert body["system"] == [{"type": "text", "text": RULES, "cache_control": ONE_HOUR}]


def test_assistant_tool_calls_and_tool_results_carry_their_markers() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    chat = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call],
                "cache_control": EPHEMERAL,
            },
            {"role": "tool", "tool_call_id": "call_1", "content": [text("Sunny", EPHEMERAL)]},
            {"role": "user", "content": [text("And tomorrow?"), text(" ", ONE_HOUR)]},
        ],
        "tools": [WEATHER],
    }
    body = translate_request(chat, CLAUDE, stream=False)

    anthropic_accepts(body)
    assert body["messages"][1]["content"][0]["cache_control"] == EPHEMERAL  # the tool_use
    result, question = body["messages"][2]["content"]
    assert result["type"] == "tool_result" and result["cache_control"] == EPHEMERAL
    # Blank text is left out (Anthropic refuses it): its marker ends the same prefix
    # on the block before it.
    assert question == {"type": "text", "text": "And tomorrow?", "cache_control": ONE_HOUR}


def test_image_parts_carry_their_markers() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    chat = {"messages": [{"role": "user", "content": [{**image, "cache_control": EPHEMERAL}]}]}

    body = translate_request(chat, CLAUDE, stream=False)

    assert body["messages"][0]["content"][0]["cache_control"] == EPHEMERAL


def test_more_than_four_breakpoints_keep_the_last_four() -> None:
    # An agent that marks every user turn: Anthropic refuses a fifth marker ("A maximum of
    # 4 blocks with cache_control may be provided. Found 6."), so the earliest are dropped.
    turns: list[dict[str, Any]] = []
    for n in range(5):
        turns.append({"role": "user", "content": f"Question {n}", "cache_control": EPHEMERAL})
        turns.append({"role": "assistant", "content": f"Answer {n}"})
    chat = {
        "messages": [{"role": "system", "content": RULES, "cache_control": ONE_HOUR}, *turns],
    }
    chat["messages"].append({"role": "user", "content": "Last question"})

    body = translate_request(chat, CLAUDE, stream=False)

    anthropic_accepts(body)
    marked = [
        block["text"]
        for turn in [{"content": body["system"]}, *body["messages"]]
        for block in turn["content"]
        if "cache_control" in block
    ]
    assert marked == ["Question 1", "Question 2", "Question 3", "Question 4"]


@pytest.mark.parametrize(
    ("marker", "param"),
    [
        ({"type": "persistent"}, "messages[1].content[0].cache_control.type"),
        ({"ttl": "1h"}, "messages[1].content[0].cache_control.type"),
        ({"type": "ephemeral", "ttl": "24h"}, "messages[1].content[0].cache_control.ttl"),
        ({"type": "ephemeral", "ttl": 3600}, "messages[1].content[0].cache_control.ttl"),
        ({"type": "ephemeral", "scope": "org"}, "messages[1].content[0].cache_control"),
        ("ephemeral", "messages[1].content[0].cache_control"),
    ],
)
@pytest.mark.parametrize("model", [CLAUDE, BEDROCK_CLAUDE])
async def test_a_marker_claude_does_not_take_is_a_400_naming_it(
    config: GatewayConfig, marker: Any, param: str, model: str
) -> None:
    chat = {
        "model": model,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{**text("Hi"), "cache_control": marker}]},
        ],
    }
    path = "/bedrock" if model == BEDROCK_CLAUDE else "/v1/chat/completions"

    status, error = refused(await sent(config, path, chat))

    assert status == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]


async def test_a_bad_marker_on_a_tool_or_a_message_is_named_too(config: GatewayConfig) -> None:
    chat = litellm_body(CLAUDE)
    chat["tools"][0]["cache_control"] = {"type": "ephemeral", "ttl": "5 minutes"}
    status, error = refused(await sent(config, "/v1/chat/completions", chat))
    assert (status, error["param"]) == (400, "tools[0].cache_control.ttl")
    assert "'5 minutes'" in error["message"]

    chat = litellm_body(CLAUDE)
    chat["messages"][1]["cache_control"] = {"type": "persistent"}
    status, error = refused(await sent(config, "/v1/chat/completions", chat))
    assert (status, error["param"]) == (400, "messages[1].cache_control.type")


def test_a_marker_is_refused_the_same_on_vertex_claude() -> None:
    chat = {"messages": [{"role": "user", "content": "Hi", "cache_control": {"type": "x"}}]}
    with pytest.raises(BadRequestError) as caught:
        translate_request(chat, CLAUDE, stream=False, image_urls=False, inference_geo=False)
    assert caught.value.param == "messages[0].cache_control.type"


# --- Bedrock's Converse API -----------------------------------------------------------------


POINT = {"cachePoint": {"type": "default"}}
POINT_1H = {"cachePoint": {"type": "default", "ttl": "1h"}}


async def test_litellms_markers_reach_bedrocks_claude_as_cache_points(
    config: GatewayConfig,
) -> None:
    body = upstream(await sent(config, "/bedrock", litellm_body(BEDROCK_CLAUDE)))

    converse_accepts(BEDROCK_CLAUDE, body)
    assert body["system"] == [{"text": "Be brief."}, {"text": RULES}, POINT]
    assert body["toolConfig"]["tools"][1] == POINT_1H
    assert body["messages"][0]["content"] == [{"text": "Here is the contract: ..."}, POINT]
    assert body["messages"][2]["content"] == [{"text": "Is clause 4 fair?"}]


@pytest.mark.parametrize(
    "model", ["anthropic.claude-3-haiku-20240307-v1:0", "meta.llama3-8b-instruct-v1:0"]
)
async def test_models_without_prompt_caching_get_no_cache_points(
    config: GatewayConfig, model: str
) -> None:
    # Bedrock refuses a cachePoint a model cannot take: the marker is dropped, as before.
    body = upstream(await sent(config, "/bedrock", litellm_body(model)))

    converse_accepts(model, body)
    assert "cachePoint" not in orjson.dumps(body).decode()
    assert "cache_control" not in orjson.dumps(body).decode()


async def test_nova_caches_its_system_and_messages_not_its_tools(config: GatewayConfig) -> None:
    model = "us.amazon.nova-pro-v1:0"
    body = upstream(await sent(config, "/bedrock", litellm_body(model)))

    assert body["system"][-1] == POINT
    assert body["messages"][0]["content"][-1] == POINT
    assert POINT_1H not in body["toolConfig"]["tools"]


async def test_a_bedrock_prefill_is_trimmed_and_keeps_its_cache_point(
    config: GatewayConfig,
) -> None:
    chat = {
        "model": BEDROCK_CLAUDE,
        "messages": [
            {"role": "user", "content": RULES},
            {"role": "assistant", "content": "The answer is  ", "cache_control": EPHEMERAL},
        ],
    }
    body = upstream(await sent(config, "/bedrock", chat))

    converse_accepts(BEDROCK_CLAUDE, body)
    assert body["messages"][1]["content"] == [{"text": "The answer is"}, POINT]


async def test_a_tool_history_sent_as_text_keeps_its_cache_points(config: GatewayConfig) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    chat = {
        "model": BEDROCK_CLAUDE,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "content": "Sunny",
                "cache_control": EPHEMERAL,
            },
            {"role": "user", "content": "Summarize."},
        ],
    }
    body = upstream(await sent(config, "/bedrock", chat))

    converse_accepts(BEDROCK_CLAUDE, body)
    result, point, summary = body["messages"][2]["content"]
    assert result["text"].startswith("[result of tool get_weather")
    assert (point, summary) == (POINT, {"text": "Summarize."})


def test_bedrock_keeps_the_last_four_cache_points() -> None:
    from extproc.translators.openai_bedrock import translate_request as to_converse

    turns: list[dict[str, Any]] = []
    for n in range(5):
        turns.append({"role": "user", "content": f"Question {n}", "cache_control": EPHEMERAL})
        turns.append({"role": "assistant", "content": f"Answer {n}"})
    turns.append({"role": "user", "content": "Last"})

    body = to_converse(
        {"messages": turns, "tools": [{**WEATHER, "cache_control": EPHEMERAL}]},
        model_id=BEDROCK_CLAUDE,
    )

    converse_accepts(BEDROCK_CLAUDE, body)
    points = [turn["content"][0]["text"] for turn in body["messages"] if POINT in turn["content"]]
    assert points == ["Question 1", "Question 2", "Question 3", "Question 4"]
    assert POINT not in body["toolConfig"]["tools"]


# --- a marker at the top of the body (automatic caching) ---------------------------------


async def test_a_top_level_marker_caches_up_to_the_last_block(config: GatewayConfig) -> None:
    # OpenRouter's (and Anthropic's own) automatic caching: the breakpoint is the prompt's
    # last block, wherever the conversation has got to.
    chat = {
        "messages": [{"role": "system", "content": RULES}, {"role": "user", "content": "Hi"}],
        "cache_control": ONE_HOUR,
    }
    anthropic = upstream(await sent(config, "/v1/chat/completions", {**chat, "model": CLAUDE}))
    bedrock = upstream(await sent(config, "/bedrock", {**chat, "model": BEDROCK_CLAUDE}))

    anthropic_accepts(anthropic)
    assert "cache_control" not in anthropic
    assert anthropic["messages"][-1]["content"] == [
        {"type": "text", "text": "Hi", "cache_control": ONE_HOUR}
    ]
    converse_accepts(BEDROCK_CLAUDE, bedrock)
    assert bedrock["messages"][-1]["content"] == [{"text": "Hi"}, POINT_1H]


def test_a_top_level_marker_leaves_the_clients_own_on_the_last_block() -> None:
    chat = {
        "messages": [{"role": "user", "content": "Hi", "cache_control": EPHEMERAL}],
        "cache_control": ONE_HOUR,
    }
    body = translate_request(chat, CLAUDE, stream=False)

    assert body["messages"][0]["content"][0]["cache_control"] == EPHEMERAL


async def test_a_bad_top_level_marker_is_a_400_naming_it(config: GatewayConfig) -> None:
    chat = {"model": CLAUDE, "messages": [{"role": "user", "content": "Hi"}]}
    status, error = refused(
        await sent(config, "/v1/chat/completions", {**chat, "cache_control": {"type": "auto"}})
    )
    assert (status, error["param"]) == (400, "cache_control.type")
