"""A review of Vertex AI models behind the gateway, through real Envoy, with the official
``openai`` and ``anthropic`` clients, to the mock's Vertex AI: what Vertex is sent (a token
count, beta flags), what a stream costs when Vertex's count is missing or the model fails
inside it, a project Vertex refuses the gateway, and a Vertex primary that fails over."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, metric, scrape
from tests.integration.mock_vertex import (
    CLAUDE_ON_VERTEX,
    FLASH,
    GEMINI_ON_VERTEX,
    LOCATION,
    SONNET,
    stack_serving,
    vertex_config,
    vertex_provider,
    vertex_requests,
)
from tests.integration.test_vertex import PROMPT, chat, claude


def review_config() -> dict[str, Any]:
    """The default config with the mock's Vertex AI (Claude and Gemini), the same key on a
    project Vertex refuses it, and a Vertex provider nothing listens for, whose Claude fails
    over to the mock's OpenAI models."""
    raw = vertex_config(
        {"sonnet-vertex": CLAUDE_ON_VERTEX, "gemini-flash": GEMINI_ON_VERTEX},
        {"sonnet-vertex": SONNET, "gemini-flash": FLASH},
    )
    raw["providers"] += [
        vertex_provider("vertex-elsewhere", project="another-project"),
        vertex_provider("vertex-down", base_url="http://127.0.0.1:9"),
    ]
    raw["models"] += [
        {"name": "sonnet-elsewhere", "provider": "vertex-elsewhere",
         "upstream_model": CLAUDE_ON_VERTEX},
        {"name": "sonnet-down", "provider": "vertex-down", "upstream_model": CLAUDE_ON_VERTEX,
         "fallbacks": ["gpt-4o-mini"]},
    ]  # fmt: skip
    for name in ("sonnet-elsewhere", "sonnet-down"):
        raw["pricing"]["models"][name] = SONNET
    return raw


stack = stack_serving(review_config, "vertex-review")


def last_vertex_request(stack: LocalStack) -> dict[str, Any]:
    return vertex_requests(stack)[-1]


def cost_of(line: dict[str, Any], price: dict[str, float]) -> float:
    tokens = line["prompt_tokens"] * price["input_per_million"]
    return (tokens + line["completion_tokens"] * price["output_per_million"]) / 1e6


# --- What Vertex is sent ------------------------------------------------------------------------


def test_claudes_token_count_names_the_model_without_its_vertex_version(
    stack: LocalStack,
) -> None:
    # Vertex's count-tokens answers 400 "claude-sonnet-4-5@20250929 is not supported for
    # token counting" to the id the rawPredict path takes; it counts for the model's name.
    counted = claude(stack).messages.count_tokens(model="sonnet-vertex", messages=PROMPT)

    assert counted.input_tokens > 0
    sent = last_vertex_request(stack)
    assert sent["path"] == f"{LOCATION}/publishers/anthropic/models/count-tokens:rawPredict"
    assert orjson.loads(sent["body"])["model"] == "claude-sonnet-4-5"


def test_the_anthropic_sdks_beta_call_reaches_vertex_with_its_flags_and_no_query(
    stack: LocalStack,
) -> None:
    message = claude(stack).beta.messages.create(
        model="sonnet-vertex",
        max_tokens=50,
        messages=PROMPT,
        betas=["interleaved-thinking-2025-05-14"],
    )

    assert message.content
    sent = last_vertex_request(stack)
    assert sent["path"].endswith(f"/models/{CLAUDE_ON_VERTEX}:rawPredict")
    assert sent["query_string"] == ""  # the SDK's ?beta=true stays behind
    assert sent["headers"]["anthropic-beta"] == "interleaved-thinking-2025-05-14"


# --- What a stream costs --------------------------------------------------------------------------


def test_a_gemini_stream_without_its_usage_is_priced_at_its_estimate(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # Vertex's endpoint ignoring the include_usage the gateway asked for: the estimate is
    # the bill, in the log line's tokens and in its cost alike.
    before = scrape(stack.metrics_url)
    silent = chat(stack, **{"x-mock-fault": "no_usage=1"})
    stream = silent.chat.completions.with_raw_response.create(
        model="gemini-flash", messages=PROMPT, stream=True
    )
    request_id = stream.headers["x-request-id"]
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)

    assert text
    [line] = gateway_log.for_request(request_id)
    assert (line["usage_estimated"], line["provider"]) == (True, "vertex")
    assert line["completion_tokens"] > 0
    assert line["cost_usd"] == pytest.approx(cost_of(line, FLASH))
    after = scrape(stack.metrics_url)
    labels = {"model": "gemini-flash", "provider": "vertex"}
    grown = metric(after, "aigw_cost_usd_total", **labels)
    assert grown - metric(before, "aigw_cost_usd_total", **labels) > 0


def test_claude_on_vertex_streams_its_usage_to_an_openai_client_that_asks(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    stream = chat(stack).chat.completions.with_raw_response.create(
        model="sonnet-vertex",
        messages=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())

    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])
    [line] = gateway_log.for_request(request_id)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert line["cost_usd"] == pytest.approx(cost_of(line, SONNET))
    after = scrape(stack.metrics_url)
    labels = {"gen_ai_provider_name": "gcp.vertex_ai", "gen_ai_request_model": "sonnet-vertex"}
    name = "gen_ai_client_token_usage_count"
    assert metric(after, name, **labels) - metric(before, name, **labels) == 2  # input, output


def test_claudes_error_inside_a_vertex_stream_reaches_an_openai_client_and_is_charged(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    failing = chat(stack, **{"x-mock-fault": "error_after=2"})
    stream = failing.chat.completions.with_raw_response.create(
        model="sonnet-vertex", messages=PROMPT, stream=True
    )
    request_id = stream.headers["x-request-id"]
    with pytest.raises(openai.APIError):
        for _ in stream.parse():
            pass

    [line] = gateway_log.for_request(request_id)
    assert (line["outcome"], line["http_status_code"]) == ("upstream_error", 200)
    assert line["usage_estimated"] is True and line["prompt_tokens"] > 0
    assert line["cost_usd"] == pytest.approx(cost_of(line, SONNET))


# --- A project Vertex refuses the gateway -----------------------------------------------------


def test_a_project_vertex_refuses_the_gateway_is_a_502_for_an_anthropic_client(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # Vertex's 403 PERMISSION_DENIED refused the gateway's service account: the client's key
    # is fine. Claude on Bedrock answers it a 502, and so does Claude on Vertex for an
    # OpenAI client; a 403 makes the anthropic SDK raise PermissionDeniedError.
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude(stack).messages.create(model="sonnet-elsewhere", max_tokens=50, messages=PROMPT)

    error = refused.value
    assert "not a problem with your API key" in error.message
    assert "ya29." not in error.response.text
    [line] = gateway_log.for_request(error.response.headers["x-request-id"])
    assert "ya29." not in orjson.dumps(line).decode()
    assert (line["upstream_status_code"], line["total_tokens"]) == (403, 0)
    assert error.status_code == 502


def test_a_project_vertex_refuses_the_gateway_is_a_502_for_an_openai_client(
    stack: LocalStack,
) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        chat(stack).chat.completions.create(model="sonnet-elsewhere", messages=PROMPT)

    assert refused.value.status_code == 502
    assert refused.value.code == "upstream_credentials_refused"
    assert "ya29." not in refused.value.response.text


# --- Failover from a Vertex primary -----------------------------------------------------------


def test_a_vertex_primary_nothing_answers_fails_over_to_its_fallback(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    reply = chat(stack).chat.completions.with_raw_response.create(
        model="sonnet-down", messages=PROMPT
    )
    completion = reply.parse()

    assert completion.choices[0].message.content
    assert "x-aigw-provider" not in reply.headers
    [line] = gateway_log.for_request(reply.headers["x-request-id"])
    assert (line["model"], line["provider"], line["http_status_code"]) == (
        "sonnet-down",
        "mock",
        200,
    )
    assert line["usage_reported"] is True
