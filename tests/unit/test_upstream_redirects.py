"""A provider's (or a proxy's) redirect: a 3xx is no answer of the model's.

Envoy passes an upstream 3xx on. A body beside it that read like an answer was taken
for one: the log line said ``completed``, the usage in it was billed and counted, a
translated client got it as a completion with the 302, and an SDK following its
``location`` left the gateway with the client's key. Now, wherever the gateway answers
the response headers, the client gets a 502 in its API's shape without ``location``;
the request is charged nothing, logged ``upstream_error`` with the provider's status
as ``upstream_status_code``, and aigw_upstream_errors_total counts it by that status.
On the lean path (headers already sent) the client gets the 3xx as sent, unbilled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_gemini_route import ANSWER, BODY, FROM_VERTEX, GENERATE, vertex
from tests.unit.test_gemini_route import gateway as gemini_gateway
from tests.unit.test_invalid_upstream_status import (
    CHAT,
    COMPLETION,
    CONVERSE,
    FROM_PROVIDER,
    HAIKU,
    KEY,
    MESSAGE,
    SCHEMA,
    answered_body,
    answered_headers,
    first_chunk,
    started,
    upstream_errors,
)
from tests.unit.test_quota_review import runtime_with

__all__ = ["started", "vertex"]  # fixtures of the Converse and Gemini tests
# The quota_store fixture's key prefix (tests/unit/conftest.py).
STORE_PREFIX = "test:"

MOVED = {**FROM_PROVIDER, "location": "https://elsewhere.example/v1/chat/completions"}
CLAUDE_CHAT = {"model": "claude-3-5-haiku-latest", "messages": CHAT["messages"]}
CLAUDE_MESSAGES = {**CLAUDE_CHAT, "max_tokens": 10}
CONVERSE_ANSWER = orjson.dumps(
    {
        "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10},
    }
)


def log_line(services: Services) -> dict[str, Any]:
    log = services.access_log
    assert isinstance(log, MemoryLog)
    [line] = log.lines()
    SCHEMA.validate(line)
    return line


def assert_unbilled_upstream_error(services: Services, client_status: int, status: int) -> None:
    line = log_line(services)
    found = {
        "http_status_code": line["http_status_code"],
        "upstream_status_code": line["upstream_status_code"],
        "outcome": line["outcome"],
        "total_tokens": line["total_tokens"],
        "cost_usd": line["cost_usd"],
    }
    assert found == {
        "http_status_code": client_status,
        "upstream_status_code": status,
        "outcome": "upstream_error",
        "total_tokens": 0,
        "cost_usd": 0.0,
    }
    assert upstream_errors(services) == {str(status): 1.0}


def assert_a_502_without_location(answers: list[ext.ProcessingResponse], status: int) -> None:
    assert answered_headers(answers)[":status"] == "502"
    [headers] = [a for a in answers if a.WhichOneof("response") == "response_headers"]
    assert "location" in headers.response_headers.response.header_mutation.remove_headers
    said = orjson.dumps(answered_body(answers)).decode()
    assert f"redirect (HTTP {status})" in said


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_an_openai_client_gets_a_502_and_is_not_billed(
    processor: Processor, services: Services, status: int
) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers=KEY),
            request_body(orjson.dumps(CHAT)),
            response_headers(status, MOVED),
            response_body(COMPLETION),
        ],
    )
    assert_a_502_without_location(answers, status)
    error = answered_body(answers)["error"]
    assert (error["type"], error["code"]) == ("server_error", "upstream_error")
    assert_unbilled_upstream_error(services, 502, status)


async def test_a_translated_answer_behind_a_redirect_is_not_a_completion(
    processor: Processor, services: Services
) -> None:
    # An OpenAI client of Claude: the message was translated and handed over with the 302.
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers=KEY),
            request_body(orjson.dumps(CLAUDE_CHAT)),
            response_headers(302, MOVED),
            response_body(MESSAGE),
        ],
    )
    assert_a_502_without_location(answers, 302)
    assert "choices" not in answered_body(answers)
    assert_unbilled_upstream_error(services, 502, 302)


async def test_an_anthropic_client_gets_the_502_in_anthropics_shape(
    processor: Processor, services: Services
) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers=KEY),
            request_body(orjson.dumps(CLAUDE_MESSAGES)),
            response_headers(307, MOVED),
            response_body(MESSAGE),
        ],
    )
    assert_a_502_without_location(answers, 307)
    assert answered_body(answers)["type"] == "error"
    assert_unbilled_upstream_error(services, 502, 307)


async def test_a_converse_client_gets_the_502_as_bedrock_shapes_errors(
    started: Processor, services: Services
) -> None:
    answers = await run_stream(
        started,
        [
            request_headers(f"/model/{HAIKU}/converse", headers=KEY),
            request_body(CONVERSE),
            response_headers(302, MOVED),
            response_body(CONVERSE_ANSWER),
        ],
    )
    assert_a_502_without_location(answers, 302)
    assert answered_headers(answers)["x-amzn-errortype"]
    assert_unbilled_upstream_error(services, 502, 302)


async def test_a_gemini_client_gets_the_502_in_googles_shape(vertex: tuple[str, Path]) -> None:
    services = Services(GatewayMetrics(), MemoryLog())
    async for processor in gemini_gateway(vertex, services):
        answers = await run_stream(
            processor,
            [
                request_headers(GENERATE, headers={"x-goog-api-key": "team1-key"}),
                request_body(orjson.dumps(BODY)),
                response_headers(302, {**FROM_VERTEX, "location": "https://elsewhere.example/"}),
                response_body(orjson.dumps(ANSWER)),
            ],
        )
    assert_a_502_without_location(answers, 302)
    assert answered_body(answers)["error"]["code"] == 502  # Google's shape: the status
    assert_unbilled_upstream_error(services, 502, 302)


async def test_on_the_lean_path_the_client_gets_the_redirect_unbilled(
    processor: Processor, services: Services
) -> None:
    await run_stream(
        processor,
        [
            request_headers("/openai/gpt-4o-mini", headers=KEY),
            request_body(orjson.dumps(CHAT)),
            first_chunk(COMPLETION, 302),
        ],
    )
    assert_unbilled_upstream_error(services, 302, 302)


HOURLY_TOKENS = """
quotas:
  rules:
    - {name: team1-tokens, subject: api_key, match: team1, tokens_per_hour: 100000}
"""


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
async def test_the_reservation_goes_back(
    quota_store: QuotaStore, valkey: EmbeddedValkey, lean: bool
) -> None:
    runtime = runtime_with(quota_store, HOURLY_TOKENS)
    processor = Processor(lambda: runtime, default_stages())
    path = "/openai/gpt-4o-mini" if lean else "/v1/chat/completions"
    answer = (
        [first_chunk(COMPLETION, 302)]
        if lean
        else [response_headers(302, MOVED), response_body(COMPLETION)]
    )
    await run_stream(
        processor, [request_headers(path, headers=KEY), request_body(orjson.dumps(CHAT)), *answer]
    )
    await quota_store.flush()

    [limit] = runtime.quota_rules.limits_for_subject("api_key", "team1", quota_store.now())
    client = connect(valkey.url, 2.0)
    try:
        used = await client.get(limit.key(STORE_PREFIX))
    finally:
        await client.aclose()
    assert int(used or 0) == 0  # the usage its body showed (10 tokens) was not billed
