"""Review of the request spans through the real Envoy and an OTLP receiver: a client's
own trace continued, translated and failed-over requests named by who answered,
refused requests without usage, bounded content, and no credential of any kind.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    REFUSED_PORT,
    GatewayLog,
    metric,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.otlp_receiver import OtlpReceiver
from tests.integration.test_tracing import traced_config

API_KEY = "team1-key"
ANTHROPIC_KEY = "team2-key"
CONTENT_CAP = 40
LONG_PROMPT = "Tell me everything about the sea, the waves and the tides " * 3


def review_config(workdir: Path, collector: OtlpReceiver) -> dict[str, Any]:
    # test_tracing's traced stack (content captured, spans exported at once, the quota
    # rule), with content bounded and a failover chain.
    config = traced_config(workdir, collector.endpoint, content=True)
    config["telemetry"]["log"]["max_content_chars"] = CONTENT_CAP
    # A primary nobody listens on (connection refused), an OpenAI-type provider,
    # with an Anthropic-type fallback: the answer comes from another API.
    config["providers"].append(
        {"name": "dead", "base_url": f"http://127.0.0.1:{REFUSED_PORT}/v1", "api_key": "dead-k"}
    )
    config["models"].append(
        {"name": "primary-dead", "provider": "dead", "fallbacks": ["claude-3-5-haiku-latest"]}
    )
    config["models"].append({"name": "only-dead", "provider": "dead"})
    return config


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("traced-review-2")
    with running_stack(workdir, write_config(workdir, review_config(workdir, collector))) as stack:
        yield stack


def openai_client(stack: LocalStack, prefix: str = "/v1") -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{prefix}", api_key=API_KEY, max_retries=0)


def log_line(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def test_a_clients_traceparent_is_continued_and_the_log_names_that_trace(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    raw = openai_client(traced).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    request_id = raw.headers["x-request-id"]
    span = collector.request_span(request_id)
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id)
    assert log_line(traced, request_id)["trace_id"] == trace_id


def attempt_spans(collector: OtlpReceiver, trace_id: str, count: int) -> list[dict[str, Any]]:
    """The attributes of a trace's upstream spans, once ``count`` have arrived."""
    found = [s.attributes for s in collector.trace(trace_id) if s.name.startswith("router ")]
    return found if len(found) >= count else []


def test_a_failed_over_request_names_the_provider_that_answered(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    raw = openai_client(traced).chat.completions.with_raw_response.create(
        model="primary-dead", messages=[{"role": "user", "content": "fail over please"}]
    )
    answer = raw.parse()
    request_id = raw.headers["x-request-id"]
    line = log_line(traced, request_id)
    assert line["provider"] == "mock-anthropic"
    span = collector.request_span(request_id)
    attributes = span.attributes
    assert attributes["aigw.provider"] == "mock-anthropic"
    # The Anthropic-type fallback answered: the conventions' provider is Anthropic.
    assert attributes["gen_ai.provider.name"] == "anthropic"
    assert attributes["gen_ai.request.model"] == "primary-dead"
    assert attributes["gen_ai.response.model"] == answer.model
    assert int(attributes["gen_ai.usage.input_tokens"]) == answer.usage.prompt_tokens  # type: ignore[union-attr]
    assert int(attributes["gen_ai.usage.output_tokens"]) == answer.usage.completion_tokens  # type: ignore[union-attr]
    # The chain: one client span per attempt, the refused primary's and the fallback's.
    attempts = wait_for(lambda: attempt_spans(collector, span.trace_id, count=2))
    assert sorted((a["response_flags"], a["http.status_code"]) for a in attempts) == [
        ("-", "200"),
        ("UF", "0"),
    ]
    # The OpenTelemetry token metric names the same provider.
    by_anthropic = wait_for(
        lambda: metric(
            scrape(traced.metrics_url),
            "gen_ai_client_token_usage_count",
            gen_ai_request_model="primary-dead",
            gen_ai_token_type="input",
            gen_ai_provider_name="anthropic",
        )
    )
    assert by_anthropic == 1


def test_a_bedrock_answer_to_an_openai_client_is_traced_as_bedrock_without_its_keys(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    raw = openai_client(traced, "/bedrock/haiku").chat.completions.with_raw_response.create(
        model="ignored-by-path", messages=[{"role": "user", "content": "Translate me"}]
    )
    answer = raw.parse()
    request_id = raw.headers["x-request-id"]
    span = collector.request_span(request_id)
    attributes = span.attributes
    line = log_line(traced, request_id)
    assert attributes["gen_ai.provider.name"] == "aws.bedrock"
    assert attributes["gen_ai.request.model"] == line["model"]
    assert int(attributes["gen_ai.usage.input_tokens"]) == answer.usage.prompt_tokens  # type: ignore[union-attr]
    assert int(attributes["gen_ai.usage.output_tokens"]) == answer.usage.completion_tokens  # type: ignore[union-attr]
    assert orjson.loads(attributes["gen_ai.response.finish_reasons"]) == ["stop"]
    # Neither the SigV4 signature nor the AWS secret, nor the client's key, on any span.
    text = repr([s.attributes for s in collector.trace(span.trace_id)])
    for secret in ("mock-secret-key", "Signature=", "AKIDMOCK", API_KEY):
        assert secret not in text


def test_an_anthropic_clients_key_and_the_provider_key_stay_off_the_spans(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    client = anthropic.Anthropic(base_url=traced.base_url, api_key=ANTHROPIC_KEY, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=20,
        messages=[{"role": "user", "content": "hello"}],
    )
    span = collector.request_span(raw.headers["x-request-id"])
    assert span.attributes["gen_ai.provider.name"] == "anthropic"
    text = repr([s.attributes for s in collector.trace(span.trace_id)])
    for secret in (ANTHROPIC_KEY, "mock-provider-key"):
        assert secret not in text


def post(stack: LocalStack, key: str, model: str = "gpt-4o-mini", **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}", **headers},
        timeout=30.0,
    )


def test_refused_requests_carry_no_usage_and_no_content(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    assert post(traced, API_KEY, **{"x-test-budget": "spent"}).status_code == 200
    over_quota = post(traced, API_KEY, **{"x-test-budget": "spent"})
    unauthenticated = post(traced, "not-a-key")
    assert (over_quota.status_code, unauthenticated.status_code) == (429, 401)
    for response in (over_quota, unauthenticated):
        attributes = collector.request_span(response.headers["x-request-id"]).attributes
        spent = [name for name in attributes if name.startswith(("gen_ai.usage", "aigw.usage"))]
        assert spent == [], attributes
        assert "gen_ai.input.messages" not in attributes
        assert "gen_ai.output.messages" not in attributes


def test_span_content_is_cut_at_the_configured_bound(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    raw = openai_client(traced).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": LONG_PROMPT}]
    )
    attributes = collector.request_span(raw.headers["x-request-id"]).attributes
    prompt = orjson.loads(attributes["gen_ai.input.messages"])
    reply = orjson.loads(attributes["gen_ai.output.messages"])
    assert sum(len(p["content"]) for m in prompt for p in m["parts"]) <= CONTENT_CAP
    assert sum(len(p["content"]) for m in reply for p in m["parts"]) <= CONTENT_CAP
    assert LONG_PROMPT not in str(attributes)


def test_a_token_count_is_not_traced_as_a_chat(traced: LocalStack, collector: OtlpReceiver) -> None:
    client = anthropic.Anthropic(base_url=traced.base_url, api_key=ANTHROPIC_KEY, max_retries=0)
    raw = client.messages.with_raw_response.count_tokens(
        model="claude-3-5-haiku-latest", messages=[{"role": "user", "content": "count me"}]
    )
    assert raw.parse().input_tokens > 0
    attributes = collector.request_span(raw.headers["x-request-id"]).attributes
    # A count generates nothing: a search for chats (and their tokens) must not find it.
    assert attributes["gen_ai.operation.name"] == "count_tokens", attributes


STATUS_ERROR = 2


def test_a_provider_envoy_cannot_reach_and_a_translated_provider_error_are_failures(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    unreachable = post(traced, API_KEY, model="only-dead")
    overloaded = post(
        traced, API_KEY, model="claude-3-5-haiku-latest", **{"x-mock-fault": "status=529"}
    )
    assert (unreachable.status_code, overloaded.status_code) == (503, 503)
    for response in (unreachable, overloaded):
        span = collector.request_span(response.headers["x-request-id"])
        assert span.status_code == STATUS_ERROR, span
        assert span.attributes.get("error.type"), span
        assert "gen_ai.output.messages" not in span.attributes


def test_a_key_sent_in_the_query_string_stays_off_every_span(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    response = httpx.post(
        f"{traced.base_url}/v1/chat/completions?api-key={API_KEY}",
        content=orjson.dumps(body),
        headers={"content-type": "application/json"},
        timeout=30.0,
    )
    assert response.status_code == 400
    span = collector.request_span(response.headers["x-request-id"])
    assert span.attributes["http.url"].endswith("/v1/chat/completions")
    assert API_KEY not in repr([s.attributes for s in collector.trace(span.trace_id)])
