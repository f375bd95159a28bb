"""A provider's 200 that is no answer, where the gateway translates the answer.

An OpenAI client on a route whose provider speaks another API (Anthropic, Bedrock) gets
the translation of the provider's answer; a ``200`` whose body is the provider's error
(Anthropic's ``{"type": "error", ...}``, OpenAI's or a bare ``{"error": ...}`` from a
proxy), or that cannot be read at all, cannot be translated and is replaced by an error
(the answer is buffered: its headers have not left). Before, the log line said
``upstream_error`` with no error in it, and the client read the gateway's 502 "the
provider's answer could not be read", the provider's words (``overloaded_error``) lost.
Each test plays one request through the processor (real ext_proc messages; a real
Valkey where the ledgers are read).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config import load_config
from extproc.runtime import Services
from extproc.store.connection import StoreClient
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
from tests.unit.sse_play import only_line
from tests.unit.test_accounting_review_streams import (
    OPENAI_KEY,
    USER,
    Answer,
    ledgers,
    sample,
    store,  # noqa: F401 (fixture)
)

JSON = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
PLAIN = load_config("config/gateway.yaml", environ={})
CLAUDE = ("/anthropic/chat/completions", {"model": "claude-3-5-haiku-latest", "messages": USER})
CONVERSE = ("/bedrock/haiku/chat/completions", {"messages": USER})
TITAN = ("/v1/embeddings", {"model": "titan-embed", "input": "x" * 40})
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
RATE_LIMITED = {
    "type": "error",
    "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded"},
}
OPENAI_ERROR = {"error": {"message": "The proxy failed", "type": "server_error", "code": "boom"}}


def google_error(code: int, status: str, message: str) -> dict[str, Any]:
    """Google's error object, as Vertex's front answers it (``{"error": {...}}``)."""
    return {"error": {"code": code, "message": message, "status": status}}


UNREADABLE = ("upstream_error", "invalid_upstream_response")

# (route and body, the provider's 200, the client's status, the log line's error type,
# code and message)
CASES: dict[str, tuple[tuple[str, dict[str, Any]], bytes, int, tuple[Any, ...]]] = {
    "claude-overloaded": (
        CLAUDE,
        orjson.dumps(OVERLOADED),
        503,
        ("overloaded_error", None, "Overloaded"),
    ),
    "claude-rate-limited": (
        CLAUDE,
        orjson.dumps(RATE_LIMITED),
        429,
        ("rate_limit_error", None, "Number of requests has exceeded"),
    ),
    "claude-openai-shaped": (
        CLAUDE,
        orjson.dumps(OPENAI_ERROR),
        502,
        ("server_error", "boom", "The proxy failed"),
    ),
    "claude-bare": (
        CLAUDE,
        orjson.dumps({"error": "no healthy upstream"}),
        502,
        ("upstream_error", None, "no healthy upstream"),
    ),
    # Google's errors (Vertex's front before Claude, a proxy) by the status Google
    # answers each with: UNAVAILABLE is its 503, an overload, as Anthropic's 529 is.
    "claude-google-unavailable": (
        CLAUDE,
        orjson.dumps([google_error(503, "UNAVAILABLE", "The model is overloaded.")]),
        503,
        ("overloaded_error", "unavailable", "The model is overloaded."),
    ),
    "claude-google-resource-exhausted": (
        CLAUDE,
        orjson.dumps([google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded")]),
        429,
        ("rate_limit_error", "resource_exhausted", "Quota exceeded"),
    ),
    "claude-google-internal": (
        CLAUDE,
        orjson.dumps(google_error(500, "INTERNAL", "Internal error")),
        502,
        ("api_error", "internal", "Internal error"),
    ),
    "claude-google-deadline-exceeded": (
        CLAUDE,
        orjson.dumps(google_error(504, "DEADLINE_EXCEEDED", "Deadline expired")),
        502,
        ("timeout_error", "deadline_exceeded", "Deadline expired"),
    ),
    "claude-google-invalid-argument": (
        CLAUDE,
        orjson.dumps(google_error(400, "INVALID_ARGUMENT", "Bad field")),
        400,
        ("invalid_request_error", "invalid_argument", "Bad field"),
    ),
    "titan-google-unavailable": (
        TITAN,
        orjson.dumps(google_error(503, "UNAVAILABLE", "The service is unavailable.")),
        503,
        ("overloaded_error", "unavailable", "The service is unavailable."),
    ),
    "claude-page": (
        CLAUDE,
        b"<html>Bad gateway</html>",
        502,
        (*UNREADABLE, "the provider's answer could not be read"),
    ),
    "converse-error": (
        CONVERSE,
        orjson.dumps(OPENAI_ERROR),
        502,
        ("server_error", "boom", "The proxy failed"),
    ),
    "converse-unreadable": (
        CONVERSE,
        b'{"output": {}}',
        502,
        (*UNREADABLE, "the provider's answer could not be read as a Bedrock Converse response"),
    ),
    "titan-error": (
        TITAN,
        orjson.dumps({"error": "model is loading"}),
        502,
        ("upstream_error", None, "model is loading"),
    ),
    "titan-unreadable": (
        TITAN,
        b"{}",
        502,
        (*UNREADABLE, "the provider's answer could not be read as a Titan embedding"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_log_line_names_the_error_that_replaced_a_translated_answer(
    store: StoreClient,  # noqa: F811
    case: str,
) -> None:
    (path, body), answer, status, error = CASES[case]
    recorded = await ledgers(store, path, OPENAI_KEY, body, Answer([answer], JSON))
    line = recorded.line
    assert (line["http_status_code"], line["upstream_status_code"]) == (status, 200)
    assert line["outcome"] == "upstream_error"
    assert (line["error_type"], line["error_code"], line["error_message"]) == error
    assert (line["prompt_tokens"], line["completion_tokens"], line["cost_usd"]) == (0, 0, 0.0)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, False)
    recorded.agree()  # every ledger at 0: the quota released what it reserved
    assert recorded.quota == 0


async def translated(answer: bytes) -> tuple[int, dict[str, Any], Services]:
    """An OpenAI chat request to Claude answered 200 with ``answer``: the client's status
    and body, and the services that recorded it."""
    services = Services(GatewayMetrics(), MemoryLog())
    path, body = CLAUDE
    answers = await run_stream(
        processor_for(PLAIN, services),
        [
            request_headers(path, headers=OPENAI_KEY),
            request_body(orjson.dumps(body)),
            response_headers(200, JSON),
            response_body(answer, end_of_stream=True),
        ],
    )
    mutation = answers[-1].response_body.response.header_mutation
    statuses = [h.header.raw_value for h in mutation.set_headers if h.header.key == ":status"]
    assert len(statuses) == 1
    return int(statuses[0]), orjson.loads(client_body([answer], answers[-1:])), services


async def test_an_openai_client_reads_claudes_overload_in_a_200_as_it_reads_its_529() -> None:
    """Anthropic's ``overloaded_error`` is its 529, which an OpenAI client gets as a 503
    (``anthropic_errors``): in a 200 too, with Anthropic's message, so the SDK retries it.
    The upstream error counter names it as the same error passed through is named."""
    status, shown, services = await translated(orjson.dumps(OVERLOADED))
    assert status == 503
    assert shown["error"]["message"] == "Overloaded"
    assert shown["error"]["code"] == "upstream_overloaded"
    assert sample(services, "aigw_upstream_errors_total", status_code="error_body") == 1
    assert sample(services, "aigw_requests_total", status_code="503") == 1
    assert sample(services, "tokens_consumed_total") == 0
    assert only_line(services)["error_type"] == "overloaded_error"


async def test_the_gateways_provider_key_is_starred_out_of_a_translated_error() -> None:
    quoting = {
        "type": "error",
        "error": {"type": "api_error", "message": "bad header x-api-key: mock-provider-key"},
    }
    status, shown, services = await translated(orjson.dumps(quoting))
    assert status == 502
    assert "mock-provider-key" not in shown["error"]["message"]
    assert shown["error"]["message"].startswith("bad header x-api-key: ")
    assert "mock-provider-key" not in only_line(services)["error_message"]


async def test_an_unreadable_answer_is_the_gateways_502_and_counted_by_it() -> None:
    status, shown, services = await translated(b"<html>Bad gateway</html>")
    assert status == 502
    assert shown["error"]["code"] == "invalid_upstream_response"
    assert sample(services, "aigw_upstream_errors_total", status_code="502") == 1
    assert sample(services, "aigw_upstream_errors_total", status_code="error_body") == 0
    line = only_line(services)
    assert (line["error_type"], line["error_code"]) == UNREADABLE
