"""The status the log line and aigw_requests_total record is the one the client got.

A translated provider error changes status on its way to the client: Anthropic's 529
(overloaded) reaches an OpenAI client as a 503, a provider's refusal of the gateway's
own key (401) as a 502 (Bedrock's errors likewise). The log line's ``http_status_code`` and
``aigw_requests_total{status_code}`` are "the status the client got"; they used to
record the provider's. The provider's own status stays visible: in the log line's
``upstream_status_code`` and in ``aigw_upstream_errors_total``, which counts the
upstream side's errors by their own status.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

KEY = {"authorization": "Bearer team1-key"}
# As a provider's answer reaches the gateway (Envoy marks it; its own replies lack it).
JSON = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}


async def translated_error(
    processor: Processor, services: Services, path: str, model: str, status: int, body: bytes
) -> dict[str, Any]:
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    await run_stream(
        processor,
        [
            request_headers(path, headers=KEY),
            request_body(orjson.dumps(chat)),
            response_headers(status, JSON),
            response_body(body),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line  # type: ignore[no-any-return]


def samples(services: Services, name: str) -> dict[str, float]:
    """``name``'s samples by their status_code label."""
    found: dict[str, float] = {}
    for family in services.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and "status_code" in sample.labels:
                found[sample.labels["status_code"]] = sample.value
    return found


OVERLOADED = orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
REFUSED = orjson.dumps(
    {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}}
)


@pytest.mark.parametrize(
    ("path", "model", "provider_status", "body", "client_status"),
    [
        ("/v1/chat/completions", "claude-3-5-haiku-latest", 529, OVERLOADED, 503),
        ("/v1/chat/completions", "claude-3-5-haiku-latest", 401, REFUSED, 502),
    ],
)
async def test_a_translated_error_is_recorded_with_the_status_the_client_got(
    processor: Processor,
    services: Services,
    path: str,
    model: str,
    provider_status: int,
    body: bytes,
    client_status: int,
) -> None:
    line = await translated_error(processor, services, path, model, provider_status, body)
    assert line["http_status_code"] == client_status
    assert line["upstream_status_code"] == provider_status
    assert line["outcome"] == "upstream_error"
    assert samples(services, "aigw_requests_total") == {str(client_status): 1.0}
    assert samples(services, "aigw_upstream_errors_total") == {str(provider_status): 1.0}


async def test_a_refused_request_never_reached_a_provider(
    processor: Processor, services: Services
) -> None:
    await run_stream(processor, [request_headers("/v1/chat/completions", headers={})])
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["http_status_code"], line["upstream_status_code"]) == (401, None)


async def test_a_pass_through_answer_keeps_one_status(
    processor: Processor, services: Services
) -> None:
    error = orjson.dumps({"error": {"message": "slow down", "type": "requests", "code": None}})
    line = await translated_error(
        processor, services, "/v1/chat/completions", "gpt-4o-mini", 429, error
    )
    assert (line["http_status_code"], line["upstream_status_code"]) == (429, 429)
