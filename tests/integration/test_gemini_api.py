"""Gemini's own API behind the gateway: Google's ``google-genai`` SDK (as Gemini CLI and
ADK use it) with the gateway's key, through real Envoy and the gateway, to Google's
models on the mock's Vertex AI, which takes only the OAuth2 tokens it issued for the
gateway's service account key."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from google import genai
from google.genai import errors, types

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, metric, scrape
from tests.integration.mock_vertex import (
    CLAUDE_ON_VERTEX,
    FLASH,
    GEMINI_ON_VERTEX,
    LOCATION,
    stack_serving,
    vertex_config,
    vertex_requests,
)

CLIENT_KEY = "team1-key"
PROMPT = "Say hello to the gateway, please."


def gemini_config() -> dict[str, Any]:
    """The default config with the mock's Vertex AI, Gemini on it, Gemini's API on the
    SDK's own paths and again on a route that guards prompts."""
    raw = vertex_config(
        {"gemini-2.5-flash": GEMINI_ON_VERTEX, "claude-on-vertex": CLAUDE_ON_VERTEX},
        {"gemini-2.5-flash": FLASH},
    )
    raw["guardrails"] = {
        "policies": [
            {
                "name": "pii",
                "request": [{"name": "emails", "builtins": ["EMAIL"], "action": "MASK"}],
            }
        ]
    }
    raw["routes"] = [
        # The SDK's own paths (google-genai 3 calls v1; Gemini CLI and older SDKs v1beta).
        {"name": "gemini", "path_prefix": "/v1/models", "api": "gemini_generate_content"},
        {"name": "gemini-beta", "path_prefix": "/v1beta/models",
         "api": "gemini_generate_content"},
        {"name": "guarded-gemini", "path_prefix": "/guarded/v1/models",
         "api": "gemini_generate_content", "guardrails": "pii"},
        *raw["routes"],
    ]  # fmt: skip
    return raw


stack = stack_serving(gemini_config, "gemini")


# The clients made so far: the SDK closes its connections when its Client is collected,
# so a call on a Client nothing holds any more would fail.
CLIENTS: list[genai.Client] = []


def client(
    stack: LocalStack,
    prefix: str = "",
    key: str = CLIENT_KEY,
    api_version: str | None = None,
    **headers: str,
) -> Any:
    """The SDK, with the gateway as its base URL."""
    options = types.HttpOptions(
        base_url=f"{stack.base_url}{prefix}",
        api_version=api_version,
        headers=headers or None,
        timeout=30_000,
    )
    made = genai.Client(api_key=key, http_options=options)
    CLIENTS.append(made)
    return made


def request_id(response: Any) -> str:
    headers = response.sdk_http_response.headers
    found: str = headers["x-request-id"]
    return found


def test_the_sdk_reaches_gemini_on_vertex_and_is_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    answer = client(stack).models.generate_content(model="gemini-2.5-flash", contents=PROMPT)

    assert answer.text
    usage = answer.usage_metadata
    assert usage is not None and usage.prompt_token_count and usage.candidates_token_count
    sent = vertex_requests(stack)[-1]
    assert sent["path"] == f"{LOCATION}/publishers/google/models/gemini-2.5-flash:generateContent"
    assert sent["headers"]["authorization"].startswith("Bearer ya29.mock-")
    lowered = {name.lower() for name in sent["headers"]}
    assert "x-goog-api-key" not in lowered
    assert CLIENT_KEY not in orjson.dumps(sent).decode()

    [line] = gateway_log.for_request(request_id(answer))
    assert (line["route"], line["provider"], line["model"], line["http_status_code"]) == (
        "gemini",
        "vertex",
        "gemini-2.5-flash",
        200,
    )
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.prompt_token_count,
        usage.candidates_token_count,
    )
    assert line["usage_reported"] is True
    assert line["finish_reasons"] == ["STOP"]
    cost = usage.prompt_token_count * FLASH["input_per_million"]
    cost += usage.candidates_token_count * FLASH["output_per_million"]
    assert line["cost_usd"] == pytest.approx(cost / 1e6)
    after = scrape(stack.metrics_url)
    labels = {"model": "gemini-2.5-flash", "token_type": "completion"}
    grown = metric(after, "tokens_consumed_total", **labels)
    assert grown - metric(before, "tokens_consumed_total", **labels) == (
        usage.candidates_token_count
    )


def test_a_stream_is_passed_through_and_billed_by_its_last_counts(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    chunks = list(
        client(stack).models.generate_content_stream(model="gemini-2.5-flash", contents=PROMPT)
    )

    text = "".join(chunk.text or "" for chunk in chunks)
    assert text and len(chunks) > 1
    final = chunks[-1].usage_metadata
    assert final is not None and final.candidates_token_count
    sent = vertex_requests(stack)[-1]
    assert sent["path"].endswith("/gemini-2.5-flash:streamGenerateContent")
    assert "alt=sse" in sent["query_string"]
    [line] = gateway_log.for_request(request_id(chunks[0]))
    assert line["stream"] is True and line["usage_reported"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        final.prompt_token_count,
        final.candidates_token_count,
    )


def test_thinking_is_billed_as_output(stack: LocalStack, gateway_log: GatewayLog) -> None:
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=128))
    answer = client(stack).models.generate_content(
        model="gemini-2.5-flash", contents=PROMPT, config=config
    )
    usage = answer.usage_metadata
    assert usage is not None and usage.thoughts_token_count
    [line] = gateway_log.for_request(request_id(answer))
    assert line["completion_tokens"] == (
        (usage.candidates_token_count or 0) + usage.thoughts_token_count
    )


def test_a_token_count_is_answered_and_never_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    counted = client(stack).models.count_tokens(model="gemini-2.5-flash", contents=PROMPT)

    assert counted.total_tokens
    assert vertex_requests(stack)[-1]["path"].endswith("/gemini-2.5-flash:countTokens")
    [line] = gateway_log.for_request(request_id(counted))
    assert line["total_tokens"] == 0 and line["cost_usd"] == 0


def test_refusals_reach_the_sdk_in_googles_words(stack: LocalStack) -> None:
    with pytest.raises(errors.ClientError) as unknown_key:
        client(stack, key="not-a-key").models.generate_content(
            model="gemini-2.5-flash", contents=PROMPT
        )
    assert unknown_key.value.code == 401 and unknown_key.value.status == "UNAUTHENTICATED"

    with pytest.raises(errors.ClientError) as not_gemini:
        client(stack).models.generate_content(model="claude-on-vertex", contents=PROMPT)
    assert not_gemini.value.code == 400
    assert "only Google's models" in (not_gemini.value.message or "")

    with pytest.raises(errors.ClientError) as quota:
        client(stack, **{"x-mock-fault": "status=429"}).models.generate_content(
            model="gemini-2.5-flash", contents=PROMPT
        )
    assert quota.value.code == 429 and quota.value.status == "RESOURCE_EXHAUSTED"


def test_a_guarded_route_reads_geminis_contents_and_masks_them(stack: LocalStack) -> None:
    answer = client(stack, prefix="/guarded").models.generate_content(
        model="gemini-2.5-flash", contents="I am jane@example.com"
    )
    assert answer.text
    assert vertex_requests(stack)[-1]["json"]["contents"][0]["parts"] == [{"text": "I am <EMAIL>"}]
    assert not any("jane@example.com" in (r.get("body") or "") for r in vertex_requests(stack))


def test_gemini_clis_v1beta_paths_are_served_too(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    chunks = list(
        client(stack, api_version="v1beta").models.generate_content_stream(
            model="gemini-2.5-flash", contents=PROMPT
        )
    )
    assert "".join(chunk.text or "" for chunk in chunks)
    [line] = gateway_log.for_request(request_id(chunks[0]))
    assert line["route"] == "gemini-beta" and line["usage_reported"] is True
