"""Telemetry review, s42: what the log line, the metrics and the client get when an answer
does not come the usual way.

- A provider's answer that ends with its headers (a bodiless 200, 429 or 500: a proxy or
  a load balancer in front of a model server) gets no body message from Envoy. Its body
  phase never ran: a success answer was charged as one cut mid-body (the whole
  completion allowance the quota reserved, 4096 tokens for a client that got nothing),
  and a translated one reached an OpenAI client as an empty 200 logged ``completed``; a
  bodiless error reached it with no error body at all.
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
