"""Google Cloud Vertex AI behind the gateway: the official ``openai`` and ``anthropic``
clients, through real Envoy and the gateway, to the mock's Vertex AI, which issues OAuth2
tokens for a service account key (JWT-bearer, checked with google-auth's own requests)
and takes only its own tokens: Claude on ``rawPredict`` / ``streamRawPredict``, Gemini on
the OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest

from extproc.devstack import LocalStack
from extproc.mock_llm.web_search import PAGE
from tests.integration.conftest import GatewayLog, metric, scrape
from tests.integration.mock_vertex import (
    CLAUDE_ON_VERTEX,
    FLASH,
    GEMINI_ON_VERTEX,
    LOCATION,
    SONNET,
    stack_serving,
    tokens_issued,
    vertex_config,
    vertex_requests,
)

CLIENT_KEY = "team1-key"
# Gemini's Priority PayGo (1.8x) and Flex PayGo (half) prices.
FLASH_TIERS = {
    "priority": {"input_per_million": 0.54, "output_per_million": 4.50},
    "flex": {"input_per_million": 0.15, "output_per_million": 1.25},
}
PROMPT = [{"role": "user", "content": "Say hello to the gateway, please."}]


def claude_and_gemini_config() -> dict[str, Any]:
    """The default config with a Vertex AI provider (the mock's) and two of its models,
    one of which a primary model fails over to."""
    raw = vertex_config(
        {
            "sonnet-vertex": CLAUDE_ON_VERTEX,
            "gemini-flash": GEMINI_ON_VERTEX,
            # Named bare, as Gemini's API and the embeddings paths name Google's models.
            "gemini-bare": GEMINI_ON_VERTEX.removeprefix("google/"),
        },
        {"sonnet-vertex": SONNET, "gemini-flash": {**FLASH, "service_tiers": FLASH_TIERS}},
    )
    # A provider nothing listens for: its model fails over to Gemini on Vertex.
    raw["providers"].append(
        {"name": "unreachable", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-none"}
    )
    raw["models"].append(
        {"name": "gpt-4o-failing", "provider": "unreachable", "upstream_model": "gpt-4o",
         "fallbacks": ["gemini-flash"]}
    )  # fmt: skip
    return raw


stack = stack_serving(claude_and_gemini_config, "vertex")


def chat(stack: LocalStack, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=30.0,
        default_headers=headers or None,
    )


def claude(stack: LocalStack, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.base_url,
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=30.0,
        default_headers=headers or None,
    )


def assert_sent_with_a_vertex_token_only(sent: dict[str, Any]) -> None:
    """The request reached Vertex with the gateway's access token and nothing of the
    client's credentials."""
    assert sent["headers"]["authorization"].startswith("Bearer ya29.mock-")
    assert "x-api-key" not in {name.lower() for name in sent["headers"]}
    assert CLIENT_KEY not in orjson.dumps(sent).decode()


def test_an_anthropic_client_reaches_claude_on_vertex_and_is_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    reply = claude(stack).messages.with_raw_response.create(
        model="sonnet-vertex", max_tokens=200, messages=PROMPT
    )
    message = reply.parse()

    assert message.content[0].type == "text" and message.content[0].text
    sent = vertex_requests(stack)[-1]
    assert sent["path"] == (f"{LOCATION}/publishers/anthropic/models/{CLAUDE_ON_VERTEX}:rawPredict")
    body = orjson.loads(sent["body"])
    assert "model" not in body
    assert body["anthropic_version"] == "vertex-2023-10-16"
    assert_sent_with_a_vertex_token_only(sent)

    [line] = gateway_log.for_request(reply.headers["x-request-id"])
    assert (line["provider"], line["model"], line["http_status_code"]) == (
        "vertex",
        "sonnet-vertex",
        200,
    )
    usage = message.usage
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.input_tokens,
        usage.output_tokens,
    )
    cost = usage.input_tokens * SONNET["input_per_million"]
    cost += usage.output_tokens * SONNET["output_per_million"]
    assert line["cost_usd"] == pytest.approx(cost / 1e6)
    after = scrape(stack.metrics_url)
    labels = {"model": "sonnet-vertex", "provider": "vertex", "token_type": "completion"}
    grown = metric(after, "tokens_consumed_total", **labels)
    assert grown - metric(before, "tokens_consumed_total", **labels) == usage.output_tokens


def test_a_claude_stream_on_vertex_keeps_anthropics_events_and_its_usage(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    with claude(stack).messages.stream(
        model="sonnet-vertex", max_tokens=200, messages=PROMPT
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]

    assert text and final.usage.output_tokens > 0
    sent = vertex_requests(stack)[-1]
    assert sent["path"].endswith(f"/models/{CLAUDE_ON_VERTEX}:streamRawPredict")
    assert orjson.loads(sent["body"])["stream"] is True
    [line] = gateway_log.for_request(request_id)
    assert line["stream"] is True and line["usage_reported"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


def test_claudes_token_count_on_vertex_is_not_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    reply = claude(stack).messages.with_raw_response.count_tokens(
        model="sonnet-vertex", messages=PROMPT
    )
    counted = reply.parse()

    assert counted.input_tokens > 0
    sent = vertex_requests(stack)[-1]
    assert sent["path"] == f"{LOCATION}/publishers/anthropic/models/count-tokens:rawPredict"
    # The model's name: count-tokens refuses Vertex's versioned id.
    assert orjson.loads(sent["body"])["model"] == "claude-sonnet-4-5"
    [line] = gateway_log.for_request(reply.headers["x-request-id"])
    assert line["total_tokens"] == 0 and line["cost_usd"] == 0


def test_an_openai_client_reaches_claude_on_vertex_translated(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    reply = chat(stack).chat.completions.with_raw_response.create(
        model="sonnet-vertex", messages=[{"role": "system", "content": "Be brief."}, *PROMPT]
    )
    completion = reply.parse()

    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    sent = vertex_requests(stack)[-1]
    assert sent["path"].endswith(f"/models/{CLAUDE_ON_VERTEX}:rawPredict")
    body = orjson.loads(sent["body"])
    assert body["system"] == "Be brief." and "model" not in body
    assert_sent_with_a_vertex_token_only(sent)
    [line] = gateway_log.for_request(reply.headers["x-request-id"])
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )


def test_an_openai_client_streaming_a_search_on_vertex_sees_the_pages_claude_cited(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # Claude on Vertex streams Anthropic's events: its citations reach an OpenAI client as
    # they do from Anthropic's API, as the url_citation annotations of OpenAI's search models.
    asked: dict[str, Any] = {
        "model": "sonnet-vertex",
        "messages": PROMPT,
        "web_search_options": {},
    }
    with chat(stack).chat.completions.stream(**asked) as events:
        completion = events.get_final_completion()
    message = completion.choices[0].message
    [annotation] = message.annotations or []
    cited = annotation.url_citation
    assert (cited.url, cited.title) == (PAGE.url, PAGE.title)
    assert message.content is not None
    assert 0 < cited.start_index < cited.end_index == len(message.content)
    sent = vertex_requests(stack)[-1]
    assert sent["headers"]["anthropic-beta"] == "web-search-2025-03-05"
    [line] = gateway_log.for_request(completion.id.removeprefix("chatcmpl-"))
    assert line["server_tool_requests"] == {"web_search": 1}


def test_gemini_on_vertex_streams_through_the_openai_compatible_endpoint(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    stream = chat(stack).chat.completions.with_raw_response.create(
        model="gemini-flash", messages=PROMPT, stream=True
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The client did not ask for usage: the chunk the gateway asked for is not shown.
    assert all(chunk.usage is None for chunk in chunks)
    sent = vertex_requests(stack)[-1]
    assert sent["path"] == f"{LOCATION}/endpoints/openapi/chat/completions"
    body = orjson.loads(sent["body"])
    assert body["model"] == GEMINI_ON_VERTEX
    assert body["stream_options"] == {"include_usage": True}
    assert_sent_with_a_vertex_token_only(sent)
    [line] = gateway_log.for_request(request_id)
    assert line["usage_reported"] is True and line["completion_tokens"] > 0
    cost = line["prompt_tokens"] * FLASH["input_per_million"]
    cost += line["completion_tokens"] * FLASH["output_per_million"]
    assert line["cost_usd"] == pytest.approx(cost / 1e6)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_gemini_served_at_priority_paygo_is_billed_at_its_priority_price(
    stack: LocalStack, gateway_log: GatewayLog, stream: bool
) -> None:
    """A client asks Vertex for Priority PayGo with Google's header; Vertex names the
    capacity that served it in ``usage.extra_properties.google.traffic_type``, and the
    request is billed at the priority price, not the pay-as-you-go one."""
    client = chat(stack, **{"X-Vertex-AI-LLM-Shared-Request-Type": "priority"})
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-flash", messages=PROMPT, stream=stream
    )
    request_id = raw.headers["x-request-id"]
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        assert raw.parse().choices[0].message.content
    sent = vertex_requests(stack)[-1]
    assert sent["headers"]["x-vertex-ai-llm-shared-request-type"] == "priority"
    [line] = gateway_log.for_request(request_id)
    assert (line["service_tier"], line["usage_reported"]) == ("priority", True)
    cost = line["prompt_tokens"] * FLASH_TIERS["priority"]["input_per_million"]
    cost += line["completion_tokens"] * FLASH_TIERS["priority"]["output_per_million"]
    assert line["cost_usd"] == pytest.approx(cost / 1e6)


def test_a_google_model_named_without_its_publisher_reaches_the_openai_endpoint(
    stack: LocalStack,
) -> None:
    """Vertex's OpenAI-compatible endpoint refuses a model without its publisher (a 400
    to every request); the gateway names it ``google/...`` there."""
    answer = chat(stack).chat.completions.create(model="gemini-bare", messages=PROMPT)
    assert answer.choices[0].message.content
    sent = vertex_requests(stack)[-1]
    assert sent["path"] == f"{LOCATION}/endpoints/openapi/chat/completions"
    assert orjson.loads(sent["body"])["model"] == GEMINI_ON_VERTEX


def test_vertexs_quota_error_reaches_each_client_in_its_own_shape(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    fault = {"x-mock-fault": "status=429"}
    with pytest.raises(openai.RateLimitError) as from_gemini:
        chat(stack, **fault).chat.completions.create(model="gemini-flash", messages=PROMPT)
    assert from_gemini.value.code == "resource_exhausted"
    assert from_gemini.value.message

    with pytest.raises(anthropic.RateLimitError) as from_claude:
        claude(stack, **fault).messages.create(
            model="sonnet-vertex", max_tokens=50, messages=PROMPT
        )
    error = from_claude.value.body["error"]  # type: ignore[index]
    assert error["type"] == "rate_limit_error" and error["message"]
    [line] = gateway_log.for_request(from_claude.value.response.headers["x-request-id"])
    assert line["http_status_code"] == 429 and line["total_tokens"] == 0


def test_a_gemini_model_is_refused_on_anthropics_api(stack: LocalStack) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude(stack).messages.create(model="gemini-flash", max_tokens=50, messages=PROMPT)
    assert "only Claude models" in refused.value.message


def test_an_unreachable_primary_fails_over_to_gemini_on_vertex(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    reply = chat(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-failing", messages=PROMPT
    )
    completion = reply.parse()

    assert completion.choices[0].message.content
    sent = vertex_requests(stack)[-1]
    assert sent["path"] == f"{LOCATION}/endpoints/openapi/chat/completions"
    assert_sent_with_a_vertex_token_only(sent)
    [line] = gateway_log.for_request(reply.headers["x-request-id"])
    assert (line["provider"], line["upstream_model"]) == ("vertex", GEMINI_ON_VERTEX)


def test_the_gateway_minted_its_token_once_and_reuses_it(stack: LocalStack) -> None:
    chat(stack).chat.completions.create(model="gemini-flash", messages=PROMPT)
    issued = tokens_issued(stack)
    chat(stack).chat.completions.create(model="gemini-flash", messages=PROMPT)
    claude(stack).messages.create(model="sonnet-vertex", max_tokens=20, messages=PROMPT)
    # A token lives an hour: these calls took no new one.
    assert tokens_issued(stack) == issued >= 1
