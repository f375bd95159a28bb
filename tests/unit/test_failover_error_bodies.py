"""A failover attempt whose provider answered 200 with an error body moves the chain on.

A provider (or a proxy in front of it) that answers ``200`` with its error in the body
(OpenAI's ``{"error": ...}``, a bare one, Google's list, Anthropic's) generated nothing.
Passed to Envoy as a 200, the chain stopped there: the client got the first provider's
error while the fallbacks were never tried, where the same error with its status (429,
503, 529) fails over. The per-attempt filter holds the status until it has read the
whole body, so it hands Envoy the status the error stands for, which Envoy retries on
the next member; the attempt is counted as the error body it was
(``aigw_upstream_errors_total{status_code="error_body"}``) and never billed (the name
Envoy wrote at its 200 is taken back). An error whose status Envoy would not retry (a
bad request), an answer with usage beside an error, and the last member's answer go on
as they came: the client's answer, counted downstream.

Each test plays the per-attempt filter's gRPC stream with real ext_proc messages
(``tests.unit.test_failover_cut_attempts`` plays Envoy's part).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.runtime import Services
from tests.unit.test_failover_cut_attempts import (
    ANSWER,
    ANSWER_USAGE,
    Attempt,
    attempt,
    failover_config,  # noqa: F401 (fixture)
    failover_request,
    gateway,
    request_sent,
)
from tests.unit.test_openai_failover import upstream_errors
from tests.unit.test_request_log import only_line

JSON = {"content-type": "application/json"}
OVERLOADED = "The model is overloaded."


def google(code: int, status: str) -> list[dict[str, Any]]:
    return [{"error": {"code": code, "message": OVERLOADED, "status": status}}]


# (the provider's 200 body, the status the attempt hands Envoy)
RETRIED: dict[str, tuple[Any, int]] = {
    "openai": ({"error": {"message": OVERLOADED, "type": "server_error", "code": None}}, 502),
    "bare": ({"error": OVERLOADED}, 502),
    "google-unavailable": (google(503, "UNAVAILABLE"), 503),
    "google-resource-exhausted": (google(429, "RESOURCE_EXHAUSTED"), 429),
    "anthropic": ({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}, 503),
    "anthropic-rate-limit": ({"type": "error", "error": {"type": "rate_limit_error"}}, 429),
}


def handed_status(answers: list[ext.ProcessingResponse]) -> str | None:
    """The status the attempt's answer to the body gives Envoy's router (None: the
    provider's, unchanged)."""
    [answer] = [a for a in answers if a.WhichOneof("response") == "response_body"]
    mutation = answer.response_body.response.header_mutation
    found = [h.header.raw_value.decode() for h in mutation.set_headers if h.header.key == ":status"]
    return found[0] if found else None


def started(metadata: dict[str, Any], provider: str) -> str | None:
    return metadata.get("io.aigw", {}).get(f"x_aigw_started_by_{provider}")


@pytest.mark.parametrize("case", list(RETRIED))
async def test_an_error_body_is_handed_to_envoy_as_the_status_it_stands_for(
    failover_config: GatewayConfig,  # noqa: F811
    services: Services,
    case: str,
) -> None:
    """``cut``, the chain's OpenAI-compatible primary, answers its error in a 200: the
    attempt hands Envoy a status it retries, takes back the name Envoy gave it at its
    200 (not billed) and counts it under its provider as an error body."""
    processor = gateway(failover_config, services)
    body, status = RETRIED[case]
    sent = await request_sent(processor)
    metadata, answers = await attempt(processor, "cut", sent, 200, orjson.dumps(body), JSON)
    assert handed_status(answers) == str(status)
    assert started(metadata, "cut") == ""
    assert upstream_errors(services) == {("cut", "primary", "error_body"): 1.0}


@pytest.mark.parametrize(
    "body",
    [
        # A bad request: its 400 would not be retried either.
        {"error": {"message": "Unknown field", "type": "invalid_request_error"}},
        [{"error": {"code": 400, "message": "Bad field", "status": "INVALID_ARGUMENT"}}],
        # A usage report beside the error: an answer, billed as one.
        {
            "error": {"message": OVERLOADED},
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
        },
    ],
    ids=["openai-bad-request", "google-invalid-argument", "usage-beside"],
)
async def test_an_error_body_envoy_would_not_retry_goes_on_as_it_came(
    failover_config: GatewayConfig,  # noqa: F811
    services: Services,
    body: Any,
) -> None:
    processor = gateway(failover_config, services)
    sent = await request_sent(processor)
    metadata, answers = await attempt(processor, "cut", sent, 200, orjson.dumps(body), JSON)
    assert handed_status(answers) is None
    assert started(metadata, "cut") == "cut,"  # the client's answer: the Lua filter's name stays
    assert upstream_errors(services) == {}


async def test_the_last_members_error_body_is_the_clients_answer(
    failover_config: GatewayConfig,  # noqa: F811
    services: Services,
) -> None:
    """``mock`` is the chain's last member: no one is left to retry on. Its 200 reaches
    the client as without failover, counted downstream (here it would count twice)."""
    processor = gateway(failover_config, services)
    body = orjson.dumps(RETRIED["openai"][0])
    sent = await request_sent(processor)
    _, answers = await attempt(processor, "mock", sent, 200, body, JSON)
    assert handed_status(answers) is None
    assert upstream_errors(services) == {}


async def test_a_translated_error_body_is_counted_as_one(
    failover_config: GatewayConfig,  # noqa: F811
    services: Services,
) -> None:
    """Claude's overload in a 200 for an OpenAI client: the attempt's 503 (its
    translation, retried) is counted as the error body it was, as without failover,
    not as a 503 the provider never answered."""
    processor = gateway(failover_config, services)
    body = orjson.dumps(RETRIED["anthropic"][0])
    sent = await request_sent(processor)
    metadata, answers = await attempt(processor, "mock-anthropic", sent, 200, body, JSON)
    assert handed_status(answers) == "503"
    assert started(metadata, "mock-anthropic") == ""
    assert upstream_errors(services) == {("mock-anthropic", "primary", "error_body"): 1.0}


async def test_the_request_is_billed_the_fallbacks_answer_alone(
    failover_config: GatewayConfig,  # noqa: F811
    services: Services,
) -> None:
    """Envoy retried past the error body: the log line names the fallback's answer, with
    no cut attempt beside it (the error body billed nothing)."""
    processor = gateway(failover_config, services)
    attempts: list[Attempt] = [
        ("cut", 200, orjson.dumps(RETRIED["bare"][0])),
        ("mock", 200, ANSWER),
    ]
    await failover_request(processor, failover_config, attempts)
    line = only_line(services)
    assert (line["provider"], line["outcome"], line["cut_attempts"]) == ("mock", "completed", None)
    assert line["total_tokens"] == sum(ANSWER_USAGE)
    assert upstream_errors(services) == {("cut", "primary", "error_body"): 1.0}
