"""Google's error list from an OpenAI-compatible provider, read by an OpenAI client.

Gemini's OpenAI-compatible endpoint (an ``openai`` provider whose ``base_url`` is
Google's) answers its errors in Google's shape wrapped in a list,
``[{"error": {"code", "message", "status"}}]``. Passed on as it came, the OpenAI SDKs
read no error in it: openai-node reports "400 status code (no body)", openai-python no
``code`` nor ``type``. Each test plays one request through the processor (real ext_proc
messages), on the full response path and the lean one: the client gets the error in
OpenAI's shape with the provider's status, the log line and the ledgers record the
provider's error at no cost.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config import load_config
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
from tests.unit.sse_play import only_line
from tests.unit.test_response_path import first_chunk

PLAIN = load_config("config/gateway.yaml", environ={})
AUTH = {"authorization": "Bearer team1-key"}
JSON = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
GOOGLE_LIST = orjson.dumps(
    [
        {
            "error": {
                "code": 400,
                "message": 'Invalid JSON payload received. Unknown name "foo"',
                "status": "INVALID_ARGUMENT",
            }
        }
    ]
)


async def play(status: int, error: bytes, *, lean: bool, stream: bool) -> tuple[bytes, Any]:
    """An OpenAI client's chat request answered ``status`` with ``error``: what the client
    reads, and the processor's answers."""
    services = Services(GatewayMetrics(), MemoryLog())
    processor = processor_for(PLAIN, services)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    if lean:
        opening = first_chunk(error, status)
        opening.response_body.end_of_stream = True
        answer = [opening]
    else:
        answer = [response_headers(status, JSON), response_body(error, end_of_stream=True)]
    answers = await run_stream(
        processor,
        [
            request_headers("/openai/gpt-4o-mini", headers=AUTH),
            request_body(orjson.dumps(body)),
            *answer,
        ],
    )
    return client_body([error], answers[-1:]), (answers, only_line(services))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("lean", [False, True], ids=["full-path", "lean-path"])
async def test_googles_error_list_reaches_an_openai_client_in_openais_shape(
    lean: bool, stream: bool
) -> None:
    shown, (answers, line) = await play(400, GOOGLE_LIST, lean=lean, stream=stream)
    assert orjson.loads(shown) == {
        "error": {
            "message": 'Invalid JSON payload received. Unknown name "foo"',
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_argument",
        }
    }
    if not lean:
        headers = answers[2].response_headers.response.header_mutation
        assert "content-length" in headers.remove_headers
        assert not any(h.header.key == ":status" for h in headers.set_headers)
    assert (line["http_status_code"], line["outcome"]) == (400, "upstream_error")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (0, 0)


@pytest.mark.parametrize("lean", [False, True], ids=["full-path", "lean-path"])
async def test_a_quota_error_in_googles_list_is_a_rate_limit_error(lean: bool) -> None:
    exhausted = orjson.dumps(
        [{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}]
    )
    shown, (_, line) = await play(429, exhausted, lean=lean, stream=False)
    error = orjson.loads(shown)["error"]
    assert (error["type"], error["code"], error["message"]) == (
        "rate_limit_error",
        "resource_exhausted",
        "Quota exceeded",
    )
    assert line["http_status_code"] == 429


@pytest.mark.parametrize("lean", [False, True], ids=["full-path", "lean-path"])
async def test_an_openai_shaped_error_passes_as_it_came(lean: bool) -> None:
    error = orjson.dumps(
        {"error": {"message": "bad", "type": "invalid_request_error", "code": None}}
    )
    shown, (answers, _) = await play(400, error, lean=lean, stream=False)
    assert shown == error
    mutation = answers[-1].response_body.response.body_mutation
    assert mutation.WhichOneof("mutation") is None  # no body mutation at all
