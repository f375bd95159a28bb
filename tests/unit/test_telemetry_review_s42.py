"""Telemetry review, s42: what the log line, the metrics and the client get when an answer
does not come the usual way.

- A provider's answer that ends with its headers (a bodiless 200, 429 or 500: a proxy or
  a load balancer in front of a model server) gets no body message from Envoy. Its body
  phase never ran: a success answer was charged as one cut mid-body (the whole
  completion allowance the quota reserved, 4096 tokens for a client that got nothing),
  and a translated one reached an OpenAI client as an empty 200 logged ``completed``; a
  bodiless error reached it with no error body at all.
- Time to first token is a stream's first token: a provider's error status to a stream
  request (a quick 429, or Envoy's own 504 after its timeout) has no token in its body,
  yet it was observed in aigw_time_to_first_token_seconds and written in the line's
  time_to_first_token_ms, so a burst of fast 429s pulled the p95 down (hiding slow
  tokens from AigwSlowFirstToken) and timeouts pushed it past the last bucket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator, FormatChecker

from extproc.backends import ENVOY_UPSTREAM_TIME
from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog

SCHEMA = Draft202012Validator(
    orjson.loads(Path("docs/log-schema.json").read_bytes()), format_checker=FormatChecker()
)
AUTH = {"authorization": "Bearer team1-key"}
CHAT = "/v1/chat/completions"
BODILESS = {"content-length": "0", ENVOY_UPSTREAM_TIME: "3"}


def gateway(config: GatewayConfig) -> tuple[Any, Services]:
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    return processor_for(config, services), services


def chat(model: str, stream: bool = False) -> bytes:
    return orjson.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )


def sample(services: Services, name: str, **labels: str) -> float:
    value = services.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def bodiless_answer(
    config: GatewayConfig, model: str, status: int, stream: bool = False
) -> tuple[list[Any], dict[str, Any], Services]:
    processor, services = gateway(config)
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat(model, stream)),
            # Headers only: Envoy sends no body message after these. The provider's
            # answer, not Envoy's own reply: its router adds its service time.
            response_headers(status, headers=BODILESS, end_of_stream=True),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert not list(SCHEMA.iter_errors(line))
    return answers, line, services


async def test_a_bodiless_200_from_a_translated_provider_is_a_502_charged_nothing(
    config: GatewayConfig,
) -> None:
    """An OpenAI client asks Claude; Anthropic's side answers 200 with no body."""
    answers, line, services = await bodiless_answer(config, "claude-3-5-haiku-latest", 200)
    headers = answers[-1].response_headers.response
    status = {h.header.key: h.header.raw_value for h in headers.header_mutation.set_headers}
    assert status[":status"] == b"502"
    # The error body reaches the client: Envoy applies a body from the headers' answer
    # only with CONTINUE_AND_REPLACE.
    assert headers.status == headers.CONTINUE_AND_REPLACE
    error = orjson.loads(headers.body_mutation.body)["error"]
    assert error["code"] == "invalid_upstream_response"
    assert line["http_status_code"] == 502
    assert line["upstream_status_code"] == 200
    assert line["outcome"] == "upstream_error"
    assert line["error_code"] == "invalid_upstream_response"
    # Nothing was generated: nothing charged (it was the 4096-token allowance).
    assert (line["prompt_tokens"], line["completion_tokens"], line["cost_usd"]) == (0, 0, 0.0)
    assert line["usage_estimated"] is False
    assert sample(services, "tokens_consumed_total", token_type="completion") == 0.0
    assert sample(services, "aigw_requests_total", status_code="502", provider="mock-anthropic",
                  model="claude-3-5-haiku-latest", route="openai-chat") == 1.0  # fmt: skip


async def test_a_bodiless_stream_answer_from_a_translated_provider_is_a_502(
    config: GatewayConfig,
) -> None:
    _, line, _ = await bodiless_answer(config, "claude-3-5-haiku-latest", 200, stream=True)
    assert line["http_status_code"] == 502
    assert line["outcome"] == "upstream_error"
    assert line["error_code"] == "invalid_upstream_response"
    assert line["completion_tokens"] == 0


async def test_a_bodiless_error_from_a_translated_provider_reaches_the_client_in_its_shape(
    config: GatewayConfig,
) -> None:
    """Anthropic's side answers 429 with no body: the OpenAI client got a 429 with an
    empty body, which its SDK cannot read as an error."""
    answers, line, services = await bodiless_answer(config, "claude-3-5-haiku-latest", 429)
    body = answers[-1].response_headers.response.body_mutation.body
    error = orjson.loads(body)["error"]
    assert error["type"] == "rate_limit_error"
    assert line["http_status_code"] == 429
    assert line["outcome"] == "upstream_error"
    assert line["prompt_tokens"] == 0
    assert sample(services, "aigw_upstream_errors_total", provider="mock-anthropic",
                  model="claude-3-5-haiku-latest", status_code="429") == 1.0  # fmt: skip


async def test_a_streamed_answer_is_still_read_from_its_body_messages(
    config: GatewayConfig,
) -> None:
    """Only an answer that ended with its headers is read in the headers' answer."""
    processor, services = gateway(config)
    answer = orjson.dumps(
        {"id": "m", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-latest",
         "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn",
         "usage": {"input_tokens": 7, "output_tokens": 2}}
    )  # fmt: skip
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat("claude-3-5-haiku-latest")),
            response_headers(200),
            response_body(answer),
        ],
    )
    assert not answers[2].response_headers.response.HasField("body_mutation")
    assert orjson.loads(client_body([answer], answers[3:]))["usage"]["completion_tokens"] == 2
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 2)


# --- time to first token of an answer, not of an error ----------------------------------------

TTFT = "aigw_time_to_first_token_seconds_count"
CHAT_LABELS = {"route": "openai-chat", "provider": "mock", "model": "gpt-4o-mini"}
RATE_LIMITED = (
    b'{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}}'
)
ENVOY_TIMEOUT = b'{"error":{"message":"upstream request timeout","type":"upstream_error"}}'


async def streamed_chat(config: GatewayConfig, status: int, headers: dict[str, str],
                        chunks: list[bytes]) -> tuple[dict[str, Any], Services]:  # fmt: skip
    processor, services = gateway(config)
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat("gpt-4o-mini", stream=True)),
            response_headers(status, headers=headers),
            *(response_body(chunk, end_of_stream=False) for chunk in chunks),
            response_body(b""),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert not list(SCHEMA.iter_errors(line))
    return line, services


async def test_a_providers_429_to_a_stream_is_no_first_token(config: GatewayConfig) -> None:
    line, services = await streamed_chat(config, 429, {ENVOY_UPSTREAM_TIME: "1"}, [RATE_LIMITED])
    assert line["http_status_code"] == 429
    assert line["time_to_first_token_ms"] is None
    assert sample(services, TTFT, **CHAT_LABELS) == 0.0
    # The request itself is still timed and counted.
    assert sample(services, "aigw_request_duration_seconds_count", **CHAT_LABELS) == 1.0


async def test_envoys_timeout_reply_to_a_stream_is_no_first_token(config: GatewayConfig) -> None:
    line, services = await streamed_chat(config, 504, {}, [ENVOY_TIMEOUT])
    assert line["http_status_code"] == 504
    assert line["time_to_first_token_ms"] is None
    assert sample(services, TTFT, **CHAT_LABELS) == 0.0


async def test_a_streamed_answer_has_the_same_first_token_in_the_line_and_the_histogram(
    config: GatewayConfig,
) -> None:
    chunk = (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":'
        b'[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    )
    line, services = await streamed_chat(config, 200, {ENVOY_UPSTREAM_TIME: "1",
                                         "content-type": "text/event-stream"}, [chunk])  # fmt: skip
    assert line["time_to_first_token_ms"] is not None
    assert sample(services, TTFT, **CHAT_LABELS) == 1.0
    seconds = sample(services, "aigw_time_to_first_token_seconds_sum", **CHAT_LABELS)
    assert round(seconds * 1000.0, 3) == line["time_to_first_token_ms"]
