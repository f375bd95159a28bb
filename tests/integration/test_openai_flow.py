"""A client speaks OpenAI to the gateway; the mock provider stands in for OpenAI.

Real Envoy, real gateway process, real embedded Valkey, the official openai client.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import orjson
import pytest
from openai import OpenAI

from extproc.config import load_config
from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import (
    GatewayLog,
    envoy_access_line,
    envoy_stat,
    metric,
    mock_requests,
    scrape,
    wait_for,
)

CLIENT_KEY = "team1-key"
PROVIDER_KEY = "mock-provider-key"


@pytest.fixture
def client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=CLIENT_KEY, max_retries=0)


def expected_prompt_tokens(messages: list[dict[str, str]]) -> int:
    # The mock's documented count: words and punctuation, 4 per message, 2 per request.
    return sum(count_tokens(m["content"]) + 4 for m in messages) + 2


def usage_report(stack: LocalStack) -> dict[tuple[str, str], dict[str, int]]:
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "usage", "report", "--format", "json"],
        env=stack.env,
        capture_output=True,
        check=True,
    )
    rows = orjson.loads(result.stdout)["rows"]
    return {(row["route"], row["model"]): row for row in rows}


def tokens(samples: dict, model: str, token_type: str) -> float:  # type: ignore[type-arg]
    return metric(samples, "tokens_consumed_total", model=model, token_type=token_type)


def last_upstream_request(stack: LocalStack) -> dict:  # type: ignore[type-arg]
    return mock_requests(stack)[-1]


def test_chat_completion_is_answered_counted_logged_and_reported(
    stack: LocalStack, client: OpenAI, gateway_log: GatewayLog
) -> None:
    messages = [{"role": "user", "content": "Hello gateway, how are you?"}]
    before = scrape(stack.metrics_url)
    report_before = usage_report(stack)

    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    reply = raw.parse()

    assert reply.choices[0].message.content == "Mock reply to: Hello gateway, how are you?"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == expected_prompt_tokens(messages)
    assert reply.usage.completion_tokens == count_tokens(reply.choices[0].message.content)

    upstream = last_upstream_request(stack)
    assert upstream["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert CLIENT_KEY not in orjson.dumps(upstream).decode()
    assert upstream["path"] == "/v1/chat/completions"
    # The SDK asks for gzip; the gateway reads the answer, so the provider must not
    # compress it (a compressed answer could be neither counted nor guarded).
    assert "accept-encoding" not in upstream["headers"]

    request_id = raw.headers["x-request-id"]
    lines = gateway_log.for_request(request_id)
    assert len(lines) == 1
    line = lines[0]
    assert line["http_status_code"] == 200
    assert line["model"] == "gpt-4o-mini"
    assert line["provider"] == "mock"
    assert line["stream"] is False
    assert line["outcome"] == "completed"
    assert line["prompt_tokens"] == reply.usage.prompt_tokens
    assert line["completion_tokens"] == reply.usage.completion_tokens
    assert line["total_tokens"] == reply.usage.total_tokens

    after = scrape(stack.metrics_url)
    for token_type, count in (
        ("prompt", reply.usage.prompt_tokens),
        ("completion", reply.usage.completion_tokens),
    ):
        grown = tokens(after, "gpt-4o-mini", token_type) - tokens(before, "gpt-4o-mini", token_type)
        assert grown == count

    key = ("openai-chat", "gpt-4o-mini")
    report_after = wait_for(
        lambda: (
            found
            if (found := usage_report(stack)).get(key, {}).get("requests", 0)
            > report_before.get(key, {}).get("requests", 0)
            else None
        )
    )
    row, old = report_after[key], report_before.get(key, {})
    assert row["requests"] - old.get("requests", 0) == 1
    assert row["prompt_tokens"] - old.get("prompt_tokens", 0) == reply.usage.prompt_tokens
    assert row["completion_tokens"] - old.get("completion_tokens", 0) == (
        reply.usage.completion_tokens
    )


def test_stream_usage_is_counted_but_not_shown_to_a_client_that_did_not_ask(
    stack: LocalStack, client: OpenAI, gateway_log: GatewayLog
) -> None:
    messages = [{"role": "user", "content": "Stream me a short answer please"}]
    before = scrape(stack.metrics_url)

    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=messages, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock reply to: Stream me a short answer please"
    assert all(chunk.choices for chunk in chunks), "the gateway's usage chunk leaked to the client"
    assert all(chunk.usage is None for chunk in chunks)
    assert last_upstream_request(stack)["json"]["stream_options"] == {"include_usage": True}

    [line] = gateway_log.for_request(request_id)
    assert line["stream"] is True
    assert line["outcome"] == "completed"
    assert line["prompt_tokens"] == expected_prompt_tokens(messages)
    assert line["completion_tokens"] == count_tokens(text)
    after = scrape(stack.metrics_url)
    grown = tokens(after, "gpt-4o", "completion") - tokens(before, "gpt-4o", "completion")
    assert grown == count_tokens(text)


def test_stream_usage_reaches_a_client_that_asked_for_it(
    stack: LocalStack, client: OpenAI, gateway_log: GatewayLog
) -> None:
    messages = [{"role": "user", "content": "Count my tokens"}]
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == expected_prompt_tokens(messages)


def test_streams_are_switched_to_streamed_mode_and_their_chunks_answered(
    stack: LocalStack, client: OpenAI
) -> None:
    sent_before = envoy_stat(stack, "aigw.ext_proc.stream_msgs_sent")
    received_before = envoy_stat(stack, "aigw.ext_proc.stream_msgs_received")
    list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "one two three four five six"}],
            stream=True,
            # Spaced events: a burst could reach Envoy before the mode switch and
            # legitimately travel as one body message.
            extra_headers={"x-mock-fault": "chunks=20;interval=0.01"},
        )
    )

    def counts() -> tuple[int, int]:
        sent = envoy_stat(stack, "aigw.ext_proc.stream_msgs_sent") - sent_before
        received = envoy_stat(stack, "aigw.ext_proc.stream_msgs_received") - received_before
        return sent, received

    sent, received = counts()
    # headers, body, response headers, then the body in more than one streamed chunk
    assert sent > 8
    # Envoy waited for the gateway's answers (the trap in which it does not leaves
    # `received` at 0). Only the empty end-of-stream message may go unanswered, when
    # the client hangs up right after [DONE] and Envoy resets the stream.
    assert received >= sent - 1


def test_envoy_access_log_shows_the_usage(stack: LocalStack, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4.1-nano", messages=[{"role": "user", "content": "access log please"}]
    )
    usage = raw.parse().usage
    assert usage is not None
    request_id = raw.headers["x-request-id"]

    found = wait_for(lambda: envoy_access_line(stack, request_id))
    assert found is not None
    assert int(found["total_tokens"]) == usage.total_tokens
    assert found["model"] == "gpt-4.1-nano"
    assert found["provider"] == "mock"
    assert (found["api_key_id"], found["group_id"]) == ("team1", "engineering")


def test_models_are_listed_from_the_config(client: OpenAI) -> None:
    names = {model.id for model in client.models.list()}
    configured = load_config(DEFAULT_CONFIG, environ={}).models
    assert names == {name for model in configured for name in (model.name, *model.aliases)}


def test_non_ai_paths_pass_through_to_envoy(stack: LocalStack, http: httpx.Client) -> None:
    response = http.get("/not/an/ai/route")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "route_not_found"


def test_openai_route_shape_serves_chat_completions(
    stack: LocalStack, http: httpx.Client, gateway_log: GatewayLog
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "via /openai"}]}
    response = http.post(
        "/openai", content=orjson.dumps(body), headers={"authorization": "team2-key"}
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Mock reply to: via /openai"
    assert last_upstream_request(stack)["path"] == "/v1/chat/completions"
    [line] = gateway_log.for_request(response.headers["x-request-id"])
    assert line["route"] == "openai"
