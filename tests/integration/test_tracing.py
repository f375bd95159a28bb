"""Traces and request logs through the real Envoy, exported to a real OTLP/gRPC receiver.

Envoy's OpenTelemetry tracer makes the spans; the gateway's dynamic metadata
tags them with the gen_ai attributes and the caller's identity. The log line of
a request carries the same trace id, and a refused request still gets a full
line and a tagged span. Prompt and completion text appear only in the stack
that turns content capture on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    envoy_access_line,
    running_stack,
    wait_for,
    write_config,
)
from tests.integration.otlp_receiver import OtlpReceiver

PROMPT = "What is the capital of France?"
SECRET_WORD = "Marseille-7431"


def traced_config(workdir: Path, otlp_endpoint: str, *, content: bool) -> dict[str, Any]:
    """The default config with every span exported at once to ``otlp_endpoint``, the
    request log written to a file in ``workdir`` too, content captured in both or in
    neither, and a quota rule: one request a day for those sent ``x-test-budget: spent``."""
    config = default_config()
    config["telemetry"] = {
        "log": {
            "include_content": content,
            "file": str(workdir / "requests.log"),
            "max_bytes": 1_000_000,
            "backup_count": 1,
        },
        "tracing": {
            "enabled": True,
            "otlp_endpoint": otlp_endpoint,
            "service_name": "aigw-test",
            "capture_content": content,
            # Export each span at once, so the test does not wait for a batch.
            "flush_interval_ms": 200,
            "min_flush_spans": 1,
        },
    }
    config["quotas"] = {
        "rules": [
            {
                "name": "one-per-day",
                "subject": "header:x-test-budget",
                "match": "spent",
                "requests_per_day": 1,
            }
        ]
    }
    return config


def unchanged(config: dict[str, Any]) -> None:
    del config


@contextmanager
def running_traced_stack(
    tmp_path_factory: pytest.TempPathFactory,
    collector: OtlpReceiver,
    name: str,
    *,
    content: bool = False,
    changed: Callable[[dict[str, Any]], None] = unchanged,
) -> Iterator[LocalStack]:
    """A stack in a fresh ``name`` folder on ``traced_config`` (spans to ``collector``),
    after ``changed`` has added what the test module needs to that config."""
    workdir = tmp_path_factory.mktemp(name)
    config = traced_config(workdir, collector.endpoint, content=content)
    changed(config)
    with running_stack(workdir, write_config(workdir, config)) as stack:
        yield stack


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LocalStack]:
    with running_traced_stack(tmp_path_factory, collector, "traced") as stack:
        yield stack


@pytest.fixture(scope="module")
def with_content(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LocalStack]:
    with running_traced_stack(tmp_path_factory, collector, "traced-content", content=True) as stack:
        yield stack


def openai_client(stack: LocalStack, key: str = "team1-key") -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


def ask(stack: LocalStack, **extra: Any) -> tuple[str, Any]:
    raw = openai_client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], **extra
    )
    return raw.headers["x-request-id"], raw.parse()


def log_line(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def test_the_span_carries_gen_ai_attributes_and_the_identity(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    request_id, completion = ask(traced)
    span = collector.request_span(request_id)
    attributes = span.attributes
    assert span.service_name == "aigw-test"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == completion.model
    assert int(attributes["gen_ai.usage.input_tokens"]) == completion.usage.prompt_tokens
    assert int(attributes["gen_ai.usage.output_tokens"]) == completion.usage.completion_tokens
    assert orjson.loads(attributes["gen_ai.response.finish_reasons"]) == ["stop"]
    assert (attributes["aigw.api_key_id"], attributes["aigw.user_id"]) == ("team1", "alice")
    assert attributes["aigw.group_id"] == "engineering"
    assert attributes["http.status_code"] == "200"
    # The bootstrap's own http.method tag (a key sent as the method is never on a span)
    # keeps a registered method as sent.
    assert attributes["http.method"] == "POST"
    # No text on spans unless capture_content is on.
    assert "gen_ai.input.messages" not in attributes
    assert "gen_ai.output.messages" not in attributes
    assert PROMPT not in str(attributes)

    # The log line names the same trace, so one id leads from the log to the trace.
    line = log_line(traced, request_id)
    assert line["trace_id"] == span.trace_id
    assert line["finish_reasons"] == ["stop"]
    assert "prompt" not in line
    # So does Envoy's access log line.
    envoy_line = wait_for(lambda: envoy_access_line(traced, request_id))
    assert envoy_line["trace_id"] == span.trace_id
    # The upstream call to the provider is a child span of the same trace.
    names = {found.name for found in collector.trace(span.trace_id)}
    assert any(name.startswith("router provider_mock") for name in names), names


def test_a_streamed_anthropic_answer_is_traced_with_its_stop_reason(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    client = anthropic.Anthropic(base_url=traced.base_url, api_key="team2-key", max_retries=0)
    with client.messages.with_streaming_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=50,
        stream=True,
        messages=[{"role": "user", "content": "Stream a short answer"}],
    ) as raw:
        request_id = raw.headers["x-request-id"]
        events = list(raw.parse())
    usage = next(e for e in events if e.type == "message_delta").usage
    attributes = collector.request_span(request_id).attributes
    assert attributes["gen_ai.provider.name"] == "anthropic"
    assert attributes["aigw.user_id"] == "bob"
    assert int(attributes["gen_ai.usage.output_tokens"]) == usage.output_tokens
    assert orjson.loads(attributes["gen_ai.response.finish_reasons"]) == ["end_turn"]
    line = log_line(traced, request_id)
    assert line["stream"] is True
    assert line["time_to_first_token_ms"] is not None
    assert line["finish_reasons"] == ["end_turn"]


def test_prompt_cache_reads_and_writes_are_on_the_span_under_the_gen_ai_names(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    client = anthropic.Anthropic(base_url=traced.base_url, api_key="team2-key", max_retries=0)
    # The mock reports 3 of the prompt's tokens read from the cache and 4 written to it.
    with client.messages.with_streaming_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=50,
        stream=True,
        messages=[{"role": "user", "content": "Summarise the handbook we cached, in one line"}],
        extra_headers={"x-mock-fault": "cached=3", "x-mock-cache-write": "5m=4"},
    ) as raw:
        request_id = raw.headers["x-request-id"]
        start = next(e for e in raw.parse() if e.type == "message_start").message.usage
    attributes = collector.request_span(request_id).attributes
    line = log_line(traced, request_id)
    assert (line["cached_tokens"], line["cache_write_tokens"]) == (3, 4)
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == "3"
    assert attributes["gen_ai.usage.cache_creation.input_tokens"] == "4"
    # The conventions' input tokens include both; Anthropic's own count leaves them out.
    assert int(attributes["gen_ai.usage.input_tokens"]) == start.input_tokens + 3 + 4
    assert int(attributes["gen_ai.usage.input_tokens"]) == line["prompt_tokens"]


def refused(stack: LocalStack, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=30.0,
    )


def test_refused_requests_get_full_log_lines_and_tagged_spans(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    good = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    team1 = {"authorization": "Bearer team1-key"}
    unauthenticated = refused(traced, good, authorization="Bearer not-a-key")
    bad_json = refused(traced, b'{"model": "gpt-4o-mini", "messages": [', **team1)
    first = refused(traced, good, **team1, **{"x-test-budget": "spent"})
    over_quota = refused(traced, good, **team1, **{"x-test-budget": "spent"})
    assert [r.status_code for r in (unauthenticated, bad_json, first, over_quota)] == [
        401,
        400,
        200,
        429,
    ]

    expected = {
        unauthenticated: ("authentication_error", "invalid_api_key", None, None),
        bad_json: ("invalid_request_error", None, None, "team1"),
        over_quota: ("rate_limit_error", "rate_limit_exceeded", "rejected", "team1"),
    }
    for response, (error_type, code, quota, key) in expected.items():
        # The client gets the id its log line and span carry.
        request_id = response.headers["x-request-id"]
        line = log_line(traced, request_id)
        assert line["http_status_code"] == response.status_code
        assert line["outcome"] == "rejected"
        assert (line["error_type"], line["error_code"]) == (error_type, code)
        assert line["quota_decision"] == quota
        assert line["api_key_id"] == key
        assert line["trace_id"] is not None
        assert line["upstream_latency_ms"] is None
        span = collector.request_span(request_id)
        assert span.trace_id == line["trace_id"]
        assert span.attributes["http.status_code"] == str(response.status_code)
        assert span.attributes["aigw.error_type"] == error_type
    assert log_line(traced, first.headers["x-request-id"])["quota_decision"] == "allowed"
    assert log_line(traced, over_quota.headers["x-request-id"])["quota_rule"] == "one-per-day"
    quota_span = collector.request_span(over_quota.headers["x-request-id"])
    assert quota_span.attributes["aigw.quota_decision"] == "rejected"
    assert quota_span.attributes["aigw.api_key_id"] == "team1"
    assert "not-a-key" not in unauthenticated.text + str(
        collector.request_span(unauthenticated.headers["x-request-id"]).attributes
    )


def test_capture_content_puts_the_masked_text_on_the_span_and_in_the_log(
    with_content: LocalStack, collector: OtlpReceiver
) -> None:
    request_id, completion = ask(with_content, stream=False)
    answer = completion.choices[0].message.content
    attributes = collector.request_span(request_id).attributes
    prompt = orjson.loads(attributes["gen_ai.input.messages"])
    assert prompt == [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
    reply = orjson.loads(attributes["gen_ai.output.messages"])
    assert reply == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": answer}],
            "finish_reason": "stop",
        }
    ]

    line = log_line(with_content, request_id)
    assert line["prompt"] == [{"role": "user", "content": PROMPT}]
    assert line["completion"] == answer

    # The file sink got the same line: written by its own writer, maybe just after the
    # stdout line the helper above read.
    def in_file() -> list[dict[str, Any]]:
        written = (with_content.workdir / "requests.log").read_bytes().splitlines()
        return [line for line in map(orjson.loads, written) if line["request_id"] == request_id]

    [found] = wait_for(in_file)
    assert found["completion"] == answer


def test_streamed_text_is_captured_as_the_client_received_it(
    with_content: LocalStack, collector: OtlpReceiver
) -> None:
    client = openai_client(with_content)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        stream=True,
        messages=[{"role": "user", "content": f"Repeat {SECRET_WORD}"}],
    ) as response:
        request_id = response.headers["x-request-id"]
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        )
    line = log_line(with_content, request_id)
    assert line["completion"] == text
    assert SECRET_WORD in line["prompt"][0]["content"]
    reply = orjson.loads(collector.request_span(request_id).attributes["gen_ai.output.messages"])
    assert reply[0]["parts"][0]["content"] == text
