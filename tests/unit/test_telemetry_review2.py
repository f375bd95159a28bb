"""Telemetry review, second pass: what an operator reads in Envoy's access log and span agrees
with the gateway's log line, and the log line says what the client got.

Envoy's access log and the request's span read the dynamic metadata the gateway's answers
carried, merged key by key (``envoy_metadata`` below plays that merge), so each test states
what Envoy holds when the request ends and compares it with the one log line.
"""

from __future__ import annotations

from typing import Any

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from jsonschema import Draft202012Validator

from extproc.config import GatewayConfig
from extproc.headers import METADATA_NAMESPACE
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with, openai_chunk
from tests.unit.sse_play import only_line, play_sse

AUTH = {"authorization": "Bearer team1-key"}
CHAT = "/v1/chat/completions"
DONE = b"data: [DONE]\n\n"
# The OpenTelemetry GenAI conventions' schema of gen_ai.output.messages
# (docs/gen-ai/gen-ai-output-messages.json of open-telemetry/semantic-conventions): each
# output message has a role, parts and a finish_reason.
OUTPUT_MESSAGES_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["role", "parts", "finish_reason"],
        "properties": {
            "role": {"type": "string"},
            "parts": {
                "type": "array",
                "items": {"type": "object", "required": ["type", "content"]},
            },
            "finish_reason": {"type": "string"},
        },
    },
}


def chat(text: str = "hello there", **fields: Any) -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **fields}
    )


def gateway(config: GatewayConfig) -> tuple[Processor, Services]:
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    return processor_for(config, services), services


def envoy_metadata(answers: list[ext.ProcessingResponse]) -> dict[str, Any]:
    """The ``io.aigw`` metadata Envoy holds after applying every answer: each answer's
    keys merged into what it had, as Envoy merges dynamic metadata."""
    held: dict[str, Any] = {}
    for answer in answers:
        fields = answer.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields
        for key, value in fields.items():
            kind = value.WhichOneof("kind")
            held[key] = value.string_value if kind == "string_value" else value.number_value
    return held


def traced_with_content(config: GatewayConfig) -> GatewayConfig:
    tracing = config.telemetry.tracing.model_copy(update={"enabled": True, "capture_content": True})
    telemetry = config.telemetry.model_copy(update={"tracing": tracing})
    return config.model_copy(update={"telemetry": telemetry})


# --- the cost in Envoy's access log ---------------------------------------------------------


async def test_a_stream_without_a_usage_report_gives_envoy_the_cost_the_line_charges(
    config: GatewayConfig,
) -> None:
    # A provider that ignores include_usage (many OpenAI-compatible servers): the stream
    # is charged an estimate, and Envoy's access log must show that charge's cost, as the
    # docs say ("cost_usd is the log line's"); it showed the tokens and a null cost.
    processor, services = gateway(config)
    chunks = [openai_chunk("Hello there, how are you today?"), openai_chunk(None, "stop") + DONE]
    answers = await play_sse(processor, CHAT, AUTH, chat(stream=True), chunks)
    line = only_line(services)
    assert line["usage_estimated"] is True and line["cost_usd"] > 0
    held = envoy_metadata(answers)
    assert held["total_tokens"] == line["total_tokens"]
    assert held.get("cost_usd") == line["cost_usd"]


async def test_a_stream_the_provider_broke_off_gives_envoy_the_cost_the_line_charges(
    config: GatewayConfig,
) -> None:
    processor, services = gateway(config)
    failure = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    chunks = [openai_chunk("Hello there, how are you"), failure]
    answers = await play_sse(processor, CHAT, AUTH, chat(stream=True), chunks)
    line = only_line(services)
    assert line["outcome"] == "upstream_error" and line["cost_usd"] > 0
    assert envoy_metadata(answers).get("cost_usd") == line["cost_usd"]


# --- who asked, before the answer starts ----------------------------------------------------


async def test_a_request_cut_before_its_answer_started_names_the_caller_to_envoy(
    config: GatewayConfig,
) -> None:
    # The client gave up waiting for the first token (a client timeout on a slow model):
    # Envoy ends the request before any answer of the gateway's to the response. The
    # log line names the route, the model and the caller; Envoy's access log and the
    # span (gen_ai.operation.name and gen_ai.provider.name are required attributes)
    # named nobody, so "whose requests time out" had no answer there.
    processor, services = gateway(config)
    answers = await run_stream(
        processor, [request_headers(CHAT, headers=AUTH), request_body(chat(stream=True))]
    )
    line = only_line(services)
    assert line["outcome"] == "aborted" and line["api_key_id"] == "team1"
    held = envoy_metadata(answers)
    expected = {
        "route": "openai-chat",
        "model": "gpt-4o-mini",
        "provider": "mock",
        "api_key_id": "team1",
        "user_id": "alice",
        "group_id": "engineering",
        "operation": "chat",
        "provider_type": "openai",
    }
    assert {key: held.get(key) for key in expected} == expected


# --- a stream a response guard refused ------------------------------------------------------

REFUSING = {
    "policies": [
        {
            "name": "no-secrets",
            "response": [
                {"name": "secret-word", "literals": ["top secret"], "message": "Withheld."}
            ],
        }
    ]
}


def guarded() -> GatewayConfig:
    """The default config with REFUSING on the OpenAI chat route."""
    return config_with(REFUSING, {"openai-chat": {"guardrails": "no-secrets"}})


async def test_a_stream_a_response_guard_ended_is_logged_as_refused() -> None:
    # The client reads the gateway's refusal (guardrail_rejected) in place of the rest of
    # the answer: the line said outcome "completed" with no error, so a search for the
    # refusals (outcome, error_code) missed every refused stream; the span had no
    # aigw.error_type.
    processor, services = gateway(guarded())
    chunks = [
        openai_chunk("Fine so far. "),
        openai_chunk("This is top secret."),
        openai_chunk(None, "stop") + DONE,
    ]
    answers = await play_sse(processor, CHAT, AUTH, chat(stream=True), chunks)
    line = only_line(services)
    assert {"guard": "secret-word", "phase": "response", "action": "reject"} in line["guardrails"]
    assert (line["outcome"], line["error_code"], line["error_message"]) == (
        "rejected",
        "guardrail_rejected",
        "Withheld.",
    )
    assert envoy_metadata(answers).get("error_type") == line["error_type"] == "permission_error"


async def test_a_refused_stream_the_client_left_at_the_refusal_is_still_charged() -> None:
    # The openai SDK raises at the error event and hangs up (Envoy then sends no end of
    # stream): what the provider produced is still charged, as docs/guardrails.md says.
    processor, services = gateway(guarded())
    chunks = [openai_chunk("Fine so far. "), openai_chunk("This is top secret.")]
    await play_sse(processor, CHAT, AUTH, chat(stream=True), chunks, ended=False)
    line = only_line(services)
    assert line["outcome"] == "rejected" and line["error_code"] == "guardrail_rejected"
    assert line["usage_estimated"] is True and line["completion_tokens"] > 0


async def test_a_buffered_answer_a_response_guard_refused_keeps_the_providers_latency() -> None:
    # The provider answered in full (upstream_status_code 200): its share of the wait is
    # known. upstream_latency_ms was null, which the docs keep for requests that never
    # went upstream.
    processor, services = gateway(guarded())
    answer = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "It is top secret."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13},
        }
    )
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat()),
            response_headers(200),
            response_body(answer),
        ],
    )
    line = only_line(services)
    assert (line["http_status_code"], line["upstream_status_code"]) == (403, 200)
    assert isinstance(line["upstream_latency_ms"], float)


# --- gen_ai.output.messages -----------------------------------------------------------------


async def test_the_spans_output_messages_follow_the_conventions_schema(
    config: GatewayConfig,
) -> None:
    # docs/logging.md promises the conventions' shape; their schema requires each output
    # message's finish_reason, which a consumer that validates (or reads) it missed.
    processor, _ = gateway(traced_with_content(config))
    chunks = [openai_chunk("Hello there"), openai_chunk(None, "length") + DONE]
    answers = await play_sse(processor, CHAT, AUTH, chat(stream=True), chunks)
    output = orjson.loads(envoy_metadata(answers)["output_messages"])
    errors = [e.message for e in Draft202012Validator(OUTPUT_MESSAGES_SCHEMA).iter_errors(output)]
    assert not errors, errors
    assert output[0]["finish_reason"] == "length"
