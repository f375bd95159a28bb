"""Spans of streams that did not end normally, through the real Envoy and an OTLP receiver.

A stream the client hangs up on, one the provider resets, and one the provider ends
with its own error event after the 200 (OpenAI's ``{"error": ...}``, Anthropic's
``event: error``, Bedrock's exception message) are all charged: the log line has
the usage (reported where the provider gave it, estimated for the rest). The span
is one of the ledgers users reconcile, so its ``gen_ai.usage.*`` attributes must
be the log line's counts, and it must still name the caller. The one exception
Envoy imposes: a chunk still at the gateway when the provider resets (docs/logging.md,
"Streams that did not end normally").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import yaml

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, envoy_access_line, running_stack, wait_for
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver

API_KEY = "team1-key"
PROMPT = "Tell me a long story about the sea"
ERROR_FAULT = {"x-mock-fault": "error_after=2"}


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("traced-cut")
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["telemetry"] = {
        "tracing": {
            "enabled": True,
            "otlp_endpoint": collector.endpoint,
            # Export each span at once, so the test does not wait for a batch.
            "flush_interval_ms": 200,
            "min_flush_spans": 1,
        }
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with running_stack(workdir, path) as stack:
        yield stack


def server_span(collector: OtlpReceiver, request_id: str, timeout_s: float = 20.0) -> ReceivedSpan:
    """Envoy's server span of one request (its upstream span has the same request id)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [
            span
            for span in list(collector.spans)
            if span.name == "ingress" and span.attributes.get("guid:x-request-id") == request_id
        ]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no server span for request {request_id}")


def assert_span_has_the_log_lines_usage(span: ReceivedSpan, line: dict[str, Any]) -> None:
    """The span's usage is the log line's, count for count, and it names the caller."""
    attributes = span.attributes
    spanned = {
        key: attributes.get(name)
        for key, name in (
            ("prompt_tokens", "gen_ai.usage.input_tokens"),
            ("completion_tokens", "gen_ai.usage.output_tokens"),
            ("total_tokens", "aigw.usage.total_tokens"),
            ("cached_tokens", "aigw.usage.cached_input_tokens"),
        )
    }
    logged = {key: str(line[key]) for key in spanned}
    assert spanned == logged, sorted(attributes.items())
    assert attributes["aigw.api_key_id"] == line["api_key_id"]
    assert attributes["gen_ai.request.model"] == line["model"]


def stream_and_hang_up(stack: LocalStack, path: str, body: dict[str, Any], fault: str) -> str:
    """Stream, read four events, then close the connection as a client that gives up."""
    headers = {
        "authorization": f"Bearer {API_KEY}",
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "x-mock-fault": fault,
    }
    events = 0
    with (
        httpx.Client(timeout=30.0) as client,
        client.stream(
            "POST", f"{stack.base_url}{path}", content=orjson.dumps(body), headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        try:
            for text in response.iter_lines():
                if text.startswith("data:"):
                    events += 1
                    if events >= 4:
                        break  # leaving the block closes the connection mid-stream
        except httpx.RemoteProtocolError:
            pass  # the provider's reset: the client sees its stream cut
    return request_id


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": PROMPT}],
        **extra,
    }


def logged(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def test_a_stream_the_client_hangs_up_on_has_its_estimated_usage_on_the_span(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    request_id = stream_and_hang_up(
        traced, "/v1/chat/completions", chat_body(), "chunks=40;interval=0.2"
    )
    line = logged(traced, request_id)
    assert (line["outcome"], line["usage_estimated"]) == ("aborted", True)
    assert line["completion_tokens"] >= 1
    assert_span_has_the_log_lines_usage(server_span(collector, request_id), line)
    # Envoy's access log reads the same metadata when the stream ends: same counts.
    envoy_line = wait_for(lambda: envoy_access_line(traced, request_id))
    assert envoy_line["response_flags"] == "DC"
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert {key: int(envoy_line[key]) for key in counts} == {key: line[key] for key in counts}


def test_an_anthropic_stream_the_client_hangs_up_on_has_its_usage_on_the_span(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    body = {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 200,
        "stream": True,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    request_id = stream_and_hang_up(traced, "/v1/messages", body, "chunks=40;interval=0.2")
    line = logged(traced, request_id)
    assert (line["outcome"], line["usage_estimated"]) == ("aborted", True)
    assert_span_has_the_log_lines_usage(server_span(collector, request_id), line)


def test_a_stream_the_provider_resets_has_the_usage_answered_before_the_reset_on_the_span(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    """The mock resets right after its third chunk, while the gateway is still answering
    it: Envoy closes the span at the reset, so that chunk, charged in the log line (the
    provider generated it), cannot reach the span (docs/logging.md, cut streams)."""
    request_id = stream_and_hang_up(
        traced, "/v1/chat/completions", chat_body(), "chunks=20;reset_after=3;interval=0.2"
    )
    line = logged(traced, request_id)
    assert (line["outcome"], line["usage_estimated"]) == ("aborted", True)
    attributes = server_span(collector, request_id).attributes
    assert attributes["gen_ai.usage.input_tokens"] == str(line["prompt_tokens"])
    spanned = int(attributes["gen_ai.usage.output_tokens"])
    assert 1 <= spanned <= line["completion_tokens"]
    assert attributes["aigw.usage.total_tokens"] == str(line["prompt_tokens"] + spanned)
    assert attributes["aigw.api_key_id"] == line["api_key_id"]


def openai_stream_error(stack: LocalStack, prefix: str, model: str) -> str:
    """An OpenAI SDK stream that the provider breaks off with an error event; its request id."""
    client = openai.OpenAI(base_url=f"{stack.base_url}{prefix}", api_key=API_KEY, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers=ERROR_FAULT,
    ) as response:
        request_id: str = response.headers["x-request-id"]
        with pytest.raises(openai.APIError):
            list(response.parse())
    return request_id


@pytest.mark.parametrize(
    ("prefix", "model", "provider"),
    [
        ("/v1", "gpt-4o-mini", "openai"),
        ("/anthropic", "claude-3-5-haiku-latest", "anthropic"),
        ("/bedrock/haiku", "ignored", "aws.bedrock"),
    ],
)
def test_a_providers_error_event_mid_stream_leaves_the_charged_usage_on_the_span(
    traced: LocalStack, collector: OtlpReceiver, prefix: str, model: str, provider: str
) -> None:
    request_id = openai_stream_error(traced, prefix, model)
    line = logged(traced, request_id)
    assert (line["outcome"], line["usage_estimated"]) == ("upstream_error", True)
    span = server_span(collector, request_id)
    assert span.attributes["gen_ai.provider.name"] == provider
    assert span.attributes["error"] == "true"
    assert_span_has_the_log_lines_usage(span, line)


def test_an_anthropic_clients_stream_error_leaves_the_providers_input_count_on_the_span(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    client = anthropic.Anthropic(base_url=traced.base_url, api_key=API_KEY, max_retries=0)
    with client.messages.with_streaming_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=200,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers=ERROR_FAULT,
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            list(response.parse())
    line = logged(traced, request_id)
    assert (line["outcome"], line["usage_estimated"]) == ("upstream_error", True)
    assert_span_has_the_log_lines_usage(server_span(collector, request_id), line)
