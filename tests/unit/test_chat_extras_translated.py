"""OpenAI (and vLLM) chat fields the Claude and Converse translations used to drop silently.

A user of the gateway sends an OpenAI chat body to Claude (Anthropic's API, Vertex AI) or a
Bedrock model. Before, ``modalities: ["audio"]``, ``audio``, ``web_search_options`` and
vLLM's ``documents`` went nowhere: the client got a text answer from the model's memory,
without its documents, billed as if it were what it had asked for. Now:

- audio output is a 400 ``invalid_request_error`` naming ``modalities`` or ``audio``,
  before the quota counts the request;
- ``web_search_options`` is Anthropic's web search tool (``user_location`` carried), and
  a 400 naming it on Bedrock, where Claude's web search is not offered;
- ``documents`` are plain-text documents read before the conversation;
- ``prediction``, ``chat_template_kwargs`` (but its ``documents``) and a message's
  ``name`` are hints, left out as documented.

Each request plays through the processor with the default config (the mock providers),
and what goes to Bedrock is checked by the mock, which refuses what Bedrock refuses.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from openai.types.chat import ChatCompletion

from extproc.config import GatewayConfig
from extproc.config.loader import parse_config
from extproc.mock_llm.bedrock_api import check_model_rules, parse_converse_request
from extproc.mock_llm.recorder import Body
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG
from tests.unit.test_bedrock_invoke_review import signing_processor
from tests.unit.test_bedrock_translation_gaps import ONE_REQUEST_A_MINUTE
from tests.unit.test_vertex_review import OPENAI_KEY, sent, upstream_headers, vertex_gateway

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
CLAUDE = "claude-3-5-haiku-latest"
BEDROCK_CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
LLAMA = "meta.llama3-8b-instruct-v1:0"
QUESTION = {"role": "user", "content": "What is the weather in Paris today?"}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
PARIS = {
    "type": "approximate",
    "approximate": {"city": "Paris", "country": "FR", "timezone": "Europe/Paris"},
}
DOCUMENTS = [
    {"title": "Visitor guide", "text": "The Louvre opens at 9am.", "url": "https://example.org"},
    {"text": "Closed on Tuesdays."},
]


@pytest.fixture
async def processor(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    """The default config's processor, its AWS credentials loaded (Bedrock's requests are
    signed)."""
    async with signing_processor(config, services) as started:
        yield started


@pytest.fixture
async def limited(quota_store: QuotaStore) -> AsyncIterator[Processor]:
    """The default config, each key allowed one request a minute."""
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    config = parse_config(DEFAULT_CONFIG + ONE_REQUEST_A_MINUTE, "t", {})
    async with signing_processor(config, services) as started:
        yield started


async def play(processor: Processor, model: str, **fields: Any) -> ext.ProcessingResponse:
    """The gateway's answer to a chat request's body: what goes upstream, or its refusal."""
    body = {"model": model, "messages": [QUESTION], **fields}
    answers = await run_stream(
        processor, [request_headers(CHAT, headers=AUTH), request_body(orjson.dumps(body))]
    )
    return answers[-1]


def sent_body(answer: ext.ProcessingResponse) -> dict[str, Any]:
    assert answer.WhichOneof("response") == "request_body", answer
    result: dict[str, Any] = orjson.loads(answer.request_body.response.body_mutation.body)
    return result


def refusal(answer: ext.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    assert answer.WhichOneof("response") == "immediate_response", answer
    error = orjson.loads(answer.immediate_response.body)["error"]
    return answer.immediate_response.status.code, error


def bedrock_takes(model_id: str, converse: dict[str, Any]) -> None:
    """The mock's checks of a Converse body, which refuse what Bedrock refuses."""
    parse_converse_request(model_id, Body.parse(orjson.dumps(converse)))
    check_model_rules(model_id, converse, stream=False)


async def the_next_request_goes(processor: Processor, model: str) -> None:
    """A plain request after a refusal reaches the provider: under one request a minute,
    the refusal did not count against the key (refused before the quota)."""
    sent_body(await play(processor, model))


# --- audio output: refused, naming the field ---------------------------------------------

AUDIO_ASKS = [
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
    ({"modalities": ["audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
    ({"modalities": "audio"}, "modalities"),
]


@pytest.mark.parametrize("model", [CLAUDE, BEDROCK_CLAUDE, LLAMA])
@pytest.mark.parametrize(
    ("fields", "param"), AUDIO_ASKS, ids=["both", "modalities", "audio", "odd"]
)
async def test_a_request_for_spoken_output_is_a_400_naming_the_field(
    processor: Processor, services: Services, model: str, fields: dict[str, Any], param: str
) -> None:
    # Before: a text answer, billed, to a client that asked to hear one.
    status, error = refusal(await play(processor, model, **fields))
    assert (status, error["type"], error["param"]) == (400, "invalid_request_error", param)
    assert "text only" in error["message"] or "array of strings" in error["message"]
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["http_status_code"] == 400
    assert line["total_tokens"] == 0


@pytest.mark.parametrize("model", [CLAUDE, BEDROCK_CLAUDE])
async def test_a_request_for_spoken_output_is_refused_before_the_quota(
    limited: Processor, model: str
) -> None:
    refused = await play(limited, model, modalities=["text", "audio"])
    assert refusal(refused)[0] == 400
    await the_next_request_goes(limited, model)


@pytest.mark.parametrize("model", [CLAUDE, BEDROCK_CLAUDE])
@pytest.mark.parametrize("fields", [{"modalities": ["text"]}, {"audio": None, "modalities": None}])
async def test_text_modalities_and_null_audio_ask_nothing_more(
    processor: Processor, model: str, fields: dict[str, Any]
) -> None:
    sent = sent_body(await play(processor, model, **fields))
    assert "modalities" not in sent and "audio" not in sent


# --- web_search_options ------------------------------------------------------------------


async def test_web_search_options_turn_on_claudes_web_search_with_the_users_location(
    processor: Processor,
) -> None:
    options = {"search_context_size": "high", "user_location": PARIS}
    sent = sent_body(await play(processor, CLAUDE, web_search_options=options))
    # search_context_size has no counterpart (Claude decides how much it reads): left out.
    assert sent["tools"] == [
        {
            "type": "web_search_20250305",
            "name": "web_search",
            "user_location": {
                "type": "approximate",
                "city": "Paris",
                "country": "FR",
                "timezone": "Europe/Paris",
            },
        }
    ]
    assert "web_search_options" not in sent


async def test_the_web_search_tool_goes_beside_the_clients_functions(
    processor: Processor,
) -> None:
    sent = sent_body(
        await play(processor, CLAUDE, web_search_options={}, tools=[WEATHER], tool_choice="auto")
    )
    assert [tool["name"] for tool in sent["tools"]] == ["get_weather", "web_search"]
    assert sent["tools"][1] == {"type": "web_search_20250305", "name": "web_search"}
    assert sent["tool_choice"] == {"type": "auto"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"web_search_options": "yes"}, "web_search_options"),
        (
            {"web_search_options": {"search_context_size": "huge"}},
            "web_search_options.search_context_size",
        ),
        (
            {"web_search_options": {"user_location": {"type": "exact"}}},
            "web_search_options.user_location",
        ),
        (
            {"web_search_options": {"user_location": {"approximate": {"city": 75}}}},
            "web_search_options.user_location.approximate.city",
        ),
        # Anthropic applies tool_choice none to every tool: Claude could not search.
        ({"web_search_options": {}, "tools": [WEATHER], "tool_choice": "none"}, None),
        # Two tools of one name: Anthropic refuses the request.
        (
            {
                "web_search_options": {},
                "tools": [{"type": "function", "function": {"name": "web_search"}}],
            },
            None,
        ),
    ],
    ids=["not-an-object", "context-size", "location-type", "city", "tools-off", "name-clash"],
)
async def test_web_search_options_claude_cannot_search_with_are_a_400_before_the_quota(
    limited: Processor, fields: dict[str, Any], param: str | None
) -> None:
    status, error = refusal(await play(limited, CLAUDE, **fields))
    assert (status, error["type"]) == (400, "invalid_request_error")
    assert error["param"] == (param or "web_search_options")
    await the_next_request_goes(limited, CLAUDE)


async def test_an_agents_tool_history_without_tools_cannot_search(processor: Processor) -> None:
    # Sent with tool_choice none (Anthropic wants the history's tools declared), which
    # would turn the search off without a word.
    function = {"name": "get_weather", "arguments": "{}"}
    call = {"id": "call_1", "type": "function", "function": function}
    messages = [
        QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]
    status, error = refusal(await play(processor, CLAUDE, messages=messages, web_search_options={}))
    assert (status, error["param"]) == (400, "web_search_options")


@pytest.mark.parametrize("model", [BEDROCK_CLAUDE, LLAMA])
async def test_web_search_on_bedrock_is_a_400_naming_the_field(
    processor: Processor, model: str
) -> None:
    # Claude's web search is Anthropic's server tool, which Bedrock does not run: the
    # answer would come from the model's memory, which the client would take for the web's.
    status, error = refusal(await play(processor, model, web_search_options={}))
    assert (status, error["type"], error["param"]) == (
        400,
        "invalid_request_error",
        "web_search_options",
    )
    assert "Bedrock" in error["message"]


async def test_claude_on_vertex_searches_with_the_beta_vertex_asks_for(
    tmp_path: Path,
) -> None:
    call = (
        CHAT,
        OPENAI_KEY,
        {"model": "sonnet-vertex", "messages": [QUESTION], "web_search_options": {}},
    )
    async with vertex_gateway(tmp_path, MemoryLog()) as gateway:
        answers = await sent(gateway, call)
    sent_request = orjson.loads(answers[-1].request_body.response.body_mutation.body)
    assert sent_request["tools"] == [{"type": "web_search_20250305", "name": "web_search"}]
    assert upstream_headers(OPENAI_KEY, answers)["anthropic-beta"] == "web-search-2025-03-05"


# --- vLLM's documents ----------------------------------------------------------------------


async def test_documents_are_text_documents_claude_reads_before_the_question(
    processor: Processor,
) -> None:
    sent = sent_body(await play(processor, CLAUDE, documents=DOCUMENTS))
    [turn] = sent["messages"]
    assert turn["content"] == [
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": DOCUMENTS[0]["text"]},
            "title": "Visitor guide",
            "context": "url: https://example.org",
        },
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": DOCUMENTS[1]["text"]},
        },
        {"type": "text", "text": QUESTION["content"]},
    ]
    assert "documents" not in sent


async def test_documents_in_chat_template_kwargs_win_as_vllm_reads_them(
    processor: Processor,
) -> None:
    sent = sent_body(
        await play(
            processor,
            CLAUDE,
            documents=DOCUMENTS,
            chat_template_kwargs={"documents": [{"text": "Kwargs win."}], "enable_thinking": True},
        )
    )
    blocks = sent["messages"][0]["content"]
    assert [block["source"]["data"] for block in blocks if block["type"] == "document"] == [
        "Kwargs win."
    ]
    # The template's own settings mean nothing to Claude: left out.
    assert "chat_template_kwargs" not in sent and "thinking" not in sent


@pytest.mark.parametrize("model", [BEDROCK_CLAUDE, LLAMA])
async def test_documents_are_converse_text_documents_bedrock_takes(
    processor: Processor, model: str
) -> None:
    sent = sent_body(await play(processor, model, documents=DOCUMENTS * 2))
    bedrock_takes(model, sent)
    blocks = sent["messages"][0]["content"]
    documents = [block["document"] for block in blocks if "document" in block]
    # Named from their titles, apart (Bedrock refuses two documents of one name).
    assert [d["name"] for d in documents] == [
        "Visitor guide",
        "document",
        "Visitor guide (2)",
        "document (2)",
    ]
    assert {d["format"] for d in documents} == {"txt"}
    assert base64.b64decode(documents[0]["source"]["bytes"]).decode() == (
        "url: https://example.org\n\nThe Louvre opens at 9am."
    )
    assert blocks[-1] == {"text": QUESTION["content"]}


@pytest.mark.parametrize("model", [CLAUDE, BEDROCK_CLAUDE])
@pytest.mark.parametrize(
    ("documents", "param"),
    [
        ("the guide", "documents"),
        ([{"title": "No text"}], "documents[0].text"),
        ([{"text": "ok"}, {"text": 3}], "documents[1]"),
        ([{"text": "  "}], "documents[0].text"),
    ],
    ids=["not-a-list", "no-text", "not-strings", "blank"],
)
async def test_a_document_the_model_cannot_be_given_is_a_400_naming_it(
    processor: Processor, model: str, documents: Any, param: str
) -> None:
    status, error = refusal(await play(processor, model, documents=documents))
    assert (status, error["type"], error["param"]) == (400, "invalid_request_error", param)


# --- hints, left out as documented -----------------------------------------------------------


@pytest.mark.parametrize("model", [CLAUDE, BEDROCK_CLAUDE])
async def test_prediction_and_a_messages_name_are_hints_left_out(
    processor: Processor, model: str
) -> None:
    named = {**QUESTION, "name": "alice"}
    sent = sent_body(
        await play(
            processor,
            model,
            messages=[named],
            prediction={"type": "content", "content": "Sunny, 21C"},
        )
    )
    text = orjson.dumps(sent).decode()
    assert "prediction" not in sent
    assert "alice" not in text and "Sunny, 21C" not in text


# --- what a web search answer shows an OpenAI client ------------------------------------------

SEARCHED_ANSWER = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": CLAUDE,
    "content": [
        {"type": "text", "text": "Let me look that up."},
        {
            "type": "server_tool_use",
            "id": "srvtoolu_1",
            "name": "web_search",
            "input": {"query": "weather Paris today"},
        },
        {
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_1",
            "content": [
                {
                    "type": "web_search_result",
                    "url": "https://weather.example/paris",
                    "title": "Paris weather",
                    "encrypted_content": "EqgfCioIARgBIiQ3YTAw",
                    "page_age": "1 hour ago",
                }
            ],
        },
        {
            "type": "text",
            "text": "It is sunny, 21 C.",
            "citations": [
                {
                    "type": "web_search_result_location",
                    "url": "https://weather.example/paris",
                    "title": "Paris weather",
                    "encrypted_index": "Eo8BCioIAhgBIiQyYjQ0",
                    "cited_text": "Sunny, 21 C",
                }
            ],
        },
    ],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 120,
        "output_tokens": 30,
        "server_tool_use": {"web_search_requests": 1},
    },
}


async def test_the_pages_a_search_cited_are_openais_url_citations_and_searches_are_billed(
    processor: Processor, services: Services
) -> None:
    body = {"model": CLAUDE, "messages": [QUESTION], "web_search_options": {}}
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(orjson.dumps(body)),
            response_headers(200),
            response_body(orjson.dumps(SEARCHED_ANSWER)),
        ],
    )
    answer = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    completion = ChatCompletion.model_validate(answer)  # as the openai SDK reads it
    message = completion.choices[0].message
    assert message.content == "Let me look that up.It is sunny, 21 C."
    [annotation] = message.annotations or []
    cited = annotation.url_citation
    assert (cited.url, cited.title) == ("https://weather.example/paris", "Paris weather")
    assert message.content[cited.start_index : cited.end_index] == "It is sunny, 21 C."
    assert completion.choices[0].finish_reason == "stop"
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["server_tool_requests"] == {"web_search": 1}
    assert (line["prompt_tokens"], line["completion_tokens"]) == (120, 30)
