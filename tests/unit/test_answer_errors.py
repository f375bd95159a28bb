"""A provider's 200 whose body is an error: the provider did no work and billed nothing.

Some OpenAI-compatible servers and proxies answer ``200`` with ``{"error": {...}}``
(Google's fronts with ``[{"error": {...}}]``). Each test plays one request through the
processor (real ext_proc messages; a real Valkey for the quota and the rollup where the
ledgers are read) and checks what an operator sees: the log line's outcome is
``upstream_error`` with the provider's error, nothing is charged in any ledger,
``aigw_upstream_errors_total`` counts it under ``status_code="error_body"``, and the
client reads the provider's bytes and status as they came. Before, such a request was
logged ``completed`` and charged the gateway's estimate of a whole answer.
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
from extproc.translators.answer_errors import error_in_answer
from tests.unit.conftest import MemoryLog
from tests.unit.sse_play import only_line
from tests.unit.test_accounting_review3 import BODY as GEMINI_BODY
from tests.unit.test_accounting_review3 import GENERATE, gemini, store  # noqa: F401 (fixtures)
from tests.unit.test_accounting_review3 import KEY as GEMINI_KEY
from tests.unit.test_accounting_review_streams import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    USER,
    Answer,
    ledgers,
    sample,
)
from tests.unit.test_response_path import whole_answer

JSON = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
PLAIN = load_config("config/gateway.yaml", environ={})

OPENAI_ERROR = {
    "error": {"message": "The server is overloaded", "type": "server_error", "code": "overloaded"}
}
ANTHROPIC_ERROR = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
GOOGLE_ERROR = [
    {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
]
# (path, key, body, the provider's 200, the log line's error type, code and message)
CASES: dict[str, tuple[str, dict[str, str], dict[str, Any], Any, tuple[Any, ...]]] = {
    "chat": (
        "/v1/chat/completions",
        OPENAI_KEY,
        {"model": "gpt-4o-mini", "messages": USER},
        OPENAI_ERROR,
        ("server_error", "overloaded", "The server is overloaded"),
    ),
    "chat-bare-message": (
        "/v1/chat/completions",
        OPENAI_KEY,
        {"model": "gpt-4o-mini", "messages": USER},
        {"error": "model 'gpt-4o-mini' not found, try pulling it first"},
        ("upstream_error", None, "model 'gpt-4o-mini' not found, try pulling it first"),
    ),
    "chat-google-list": (
        "/v1/chat/completions",
        OPENAI_KEY,
        {"model": "gpt-4o-mini", "messages": USER},
        GOOGLE_ERROR,
        ("rate_limit_error", "resource_exhausted", "Quota exceeded"),
    ),
    "chat-google-unavailable": (
        "/v1/chat/completions",
        OPENAI_KEY,
        {"model": "gpt-4o-mini", "messages": USER},
        [{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}],
        # Its status Google answers with a 503: an overload, as Anthropic's 529 is.
        ("overloaded_error", "unavailable", "The model is overloaded."),
    ),
    "completions": (
        "/v1/completions",
        OPENAI_KEY,
        {"model": "gpt-4o-mini", "prompt": "x" * 40},
        OPENAI_ERROR,
        ("server_error", "overloaded", "The server is overloaded"),
    ),
    "embeddings": (
        "/v1/embeddings",
        OPENAI_KEY,
        {"model": "text-embedding-3-small", "input": "x" * 40},
        OPENAI_ERROR,
        ("server_error", "overloaded", "The server is overloaded"),
    ),
    "responses": (
        "/v1/responses",
        OPENAI_KEY,
        {"model": "gpt-4o-mini", "input": "x" * 40},
        OPENAI_ERROR,
        ("server_error", "overloaded", "The server is overloaded"),
    ),
    "anthropic-messages": (
        "/v1/messages",
        ANTHROPIC_KEY,
        {"model": "claude-3-5-haiku-latest", "max_tokens": 100, "messages": USER},
        ANTHROPIC_ERROR,
        ("overloaded_error", None, "Overloaded"),
    ),
}


def assert_provider_error(line: dict[str, Any], error: tuple[Any, ...]) -> None:
    assert line["http_status_code"] == line["upstream_status_code"] == 200
    assert line["outcome"] == "upstream_error"
    assert (line["error_type"], line["error_code"], line["error_message"]) == error
    assert (line["prompt_tokens"], line["completion_tokens"], line["cost_usd"]) == (0, 0, 0.0)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, False)


@pytest.mark.parametrize("case", list(CASES))
async def test_a_200_whose_body_is_an_error_is_the_providers_error_and_costs_nothing(
    store: StoreClient,  # noqa: F811
    case: str,
) -> None:
    path, key, body, error_body, error = CASES[case]
    recorded = await ledgers(store, path, key, body, Answer([orjson.dumps(error_body)], JSON))
    assert_provider_error(recorded.line, error)
    recorded.agree()  # every ledger at 0: the quota released what it reserved
    assert recorded.quota == 0


async def test_gemini_answering_200_with_googles_error_list_costs_nothing(
    store: StoreClient,  # noqa: F811
    gemini: str,  # noqa: F811
) -> None:
    answer = Answer([orjson.dumps(GOOGLE_ERROR)], JSON)
    recorded = await ledgers(store, GENERATE, GEMINI_KEY, GEMINI_BODY, answer, config=gemini)
    assert_provider_error(
        recorded.line, ("rate_limit_error", "resource_exhausted", "Quota exceeded")
    )
    recorded.agree()
    assert recorded.quota == 0


async def test_a_stream_answered_200_with_a_json_error_costs_nothing(
    store: StoreClient,  # noqa: F811
) -> None:
    """The client asked for a stream; the provider answered JSON, an error: nothing was
    generated (it was charged the stream's estimate: the prompt)."""
    body = {"model": "gpt-4o-mini", "messages": USER, "stream": True}
    answer = Answer([orjson.dumps(OPENAI_ERROR)], JSON)
    recorded = await ledgers(store, "/v1/chat/completions", OPENAI_KEY, body, answer)
    assert_provider_error(recorded.line, CASES["chat"][4])
    recorded.agree()


async def test_a_failed_response_is_the_providers_error_billed_at_its_usage(
    store: StoreClient,  # noqa: F811
) -> None:
    """A Responses API answer whose status is ``failed`` reports the usage the provider
    billed: it is billed at it, and logged as the provider's error, as its stream's
    ``response.failed`` is (it was logged ``completed``)."""
    failed = {
        "id": "resp_1",
        "object": "response",
        "status": "failed",
        "model": "gpt-4o-mini",
        "error": {"code": "server_error", "message": "The model failed"},
        "output": [],
        "usage": {"input_tokens": 20, "output_tokens": 5, "total_tokens": 25},
    }
    body = {"model": "gpt-4o-mini", "input": "x" * 40}
    answer = Answer([orjson.dumps(failed)], JSON)
    recorded = await ledgers(store, "/v1/responses", OPENAI_KEY, body, answer)
    line = recorded.line
    assert line["outcome"] == "upstream_error"
    assert (line["error_type"], line["error_code"]) == ("server_error", "server_error")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (20, 5)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    recorded.agree()


@pytest.mark.parametrize(
    "answer",
    [
        # A whole response, whose "error" is null.
        {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "error": None,
            "output": [],
            "usage": {"input_tokens": 20, "output_tokens": 5, "total_tokens": 25},
        },
        # A result with an error beside it, which no provider sends: its usage is the bill.
        {
            "id": "c1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            "error": {"message": "a warning"},
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
        },
    ],
    ids=["responses-error-null", "chat-result-beside-an-error"],
)
async def test_an_answer_with_usage_is_billed_and_completed(
    store: StoreClient,  # noqa: F811
    answer: dict[str, Any],
) -> None:
    responses = answer["object"] == "response"
    path = "/v1/responses" if responses else "/v1/chat/completions"
    body = (
        {"model": "gpt-4o-mini", "input": "x" * 40}
        if responses
        else {"model": "gpt-4o-mini", "messages": USER}
    )
    recorded = await ledgers(store, path, OPENAI_KEY, body, Answer([orjson.dumps(answer)], JSON))
    line = recorded.line
    assert (line["outcome"], line["error_type"]) == ("completed", None)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (20, 5)
    recorded.agree()


@pytest.mark.parametrize("lean", [False, True], ids=["full-path", "lean-path"])
async def test_the_client_reads_the_providers_200_and_the_metrics_name_the_error(
    lean: bool,
) -> None:
    """On both response paths the client gets the provider's status and body as they
    came (the lean path's status has left before the body is read), but the provider's
    key, when its error quotes it; ``aigw_upstream_errors_total`` counts the error with
    ``status_code="error_body"`` and no token is counted."""
    services = Services(GatewayMetrics(), MemoryLog())
    processor = processor_for(PLAIN, services)
    quoted = {
        "error": {
            "message": "upstream refused: header Authorization: Bearer mock-provider-key",
            "type": "invalid_request_error",
        }
    }
    error = orjson.dumps(quoted)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": USER})
    answer = [whole_answer(error, 200)] if lean else [response_headers(200, JSON)]
    if not lean:
        answer.append(response_body(error, end_of_stream=True))
    answers = await run_stream(
        processor,
        [request_headers("/openai/gpt-4o-mini", headers=OPENAI_KEY), request_body(body), *answer],
    )
    shown = client_body([error], answers[-1:])
    assert shown == error.replace(b"mock-provider-key", b"*" * len(b"mock-provider-key"))
    line = only_line(services)
    assert line["outcome"] == "upstream_error"
    assert "mock-provider-key" not in line["error_message"]
    assert line["http_status_code"] == 200
    assert sample(services, "aigw_upstream_errors_total", status_code="error_body") == 1
    # A failed request to the client, whatever its status: the error-rate alert counts it.
    assert sample(services, "aigw_requests_total", status_code="error_body") == 1
    assert sample(services, "aigw_requests_total") == 1
    assert sample(services, "tokens_consumed_total") == 0


@pytest.mark.parametrize(
    "answer",
    [
        {"choices": [{"index": 0, "message": {"content": "hi"}}], "error": {"message": "x"}},
        {"content": [{"type": "text", "text": "hi"}], "error": "partial"},
        [{"candidates": [{"content": {}}], "error": {"code": 500, "status": "INTERNAL"}}],
    ],
)
def test_a_body_with_a_result_beside_an_error_is_an_answer(answer: object) -> None:
    assert error_in_answer(answer) is None
