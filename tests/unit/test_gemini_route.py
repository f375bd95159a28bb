"""Gemini's API on a gemini_generate_content route, one request through the processor
(real ext_proc messages) to a Vertex provider whose token the mock's Vertex issued: the
path Vertex gets, the hard cap on maxOutputTokens, the gateway's own errors in Google's
shape, and content capture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.gemini_content import answer_text, conversation
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.mock_vertex import mock_vertex, vertex_provider

KEY = {"x-goog-api-key": "team1-key"}
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello, please."}]}]}
ANSWER = {
    "candidates": [
        {"content": {"role": "model", "parts": [{"text": "Hello!"}]}, "finishReason": "STOP"}
    ],
    "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 2, "totalTokenCount": 8},
    "modelVersion": "gemini-2.5-flash",
}
FROM_VERTEX = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}


def gemini_config(key_file: Path, mock: str, tail: dict[str, Any]) -> Any:
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["providers"].append(vertex_provider(mock, key_file))
    raw["models"].append(
        {
            "name": "gemini-2.5-flash",
            "provider": "vertex",
            "upstream_model": "google/gemini-2.5-flash",
        }
    )
    raw["routes"].insert(
        0, {"name": "gemini", "path_prefix": "/v1beta/models", "api": "gemini_generate_content"}
    )
    raw.update(tail)
    return parse_config(yaml.safe_dump(raw), "test", {})


@pytest.fixture
async def vertex(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        yield mock, key_file


async def gateway(
    vertex: tuple[str, Path], services: Services, **tail: Any
) -> AsyncIterator[Processor]:
    mock, key_file = vertex
    runtime = Runtime(gemini_config(key_file, mock, tail), services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


def sent_upstream(answers: list[Any]) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The headers the gateway set on the request to Vertex, and the body it wrote (None:
    the client's bytes went as they came)."""
    response = answers[1].request_body.response
    headers = {
        h.header.key: h.header.raw_value.decode() for h in response.header_mutation.set_headers
    }
    mutation = response.body_mutation
    body = orjson.loads(mutation.body) if mutation.WhichOneof("mutation") == "body" else None
    return headers, body


def log_line(services: Services) -> dict[str, Any]:
    log = services.access_log
    assert isinstance(log, MemoryLog)
    [line] = log.lines()
    return line


async def test_the_body_goes_as_it_came_to_googles_model_on_vertex(
    vertex: tuple[str, Path],
) -> None:
    services = Services(GatewayMetrics(), MemoryLog())
    async for processor in gateway(vertex, services):
        answers = await run_stream(
            processor,
            [
                request_headers(GENERATE, headers=KEY),
                request_body(orjson.dumps(BODY)),
                response_headers(200, FROM_VERTEX),
                response_body(orjson.dumps(ANSWER)),
            ],
        )
    headers, body = sent_upstream(answers)
    assert headers[":path"] == (
        "/v1/projects/mock-project/locations/us-east5/publishers/google/models/"
        "gemini-2.5-flash:generateContent"
    )
    assert headers["authorization"].startswith("Bearer ya29.mock-")
    assert body is None, "nothing changed the body: the client's bytes go"
    removed = answers[0].request_headers.response.header_mutation.remove_headers
    assert "x-goog-api-key" in removed, "the client's key never reaches Vertex"
    line = log_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"], line["finish_reasons"]) == (
        6,
        2,
        ["STOP"],
    )


async def test_a_hard_cap_sets_max_output_tokens_to_the_room_left(
    vertex: tuple[str, Path], quota_store: QuotaStore
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    rules = {
        "rules": [{"name": "cap", "subject": "api_key", "tokens_per_day": 300, "hard_cap": True}]
    }
    async for processor in gateway(vertex, services, quotas=rules):
        answers = await run_stream(
            processor, [request_headers(GENERATE, headers=KEY), request_body(orjson.dumps(BODY))]
        )
    _, body = sent_upstream(answers)
    assert body is not None
    allowed = body["generationConfig"]["maxOutputTokens"]
    assert 0 < allowed < 300, "the cap left room for the prompt"


async def test_the_gateways_own_refusal_is_in_googles_shape(vertex: tuple[str, Path]) -> None:
    services = Services(GatewayMetrics(), MemoryLog())
    async for processor in gateway(vertex, services):
        answers = await run_stream(
            processor,
            [request_headers(GENERATE, headers=KEY), request_body(b'{"contents": "hello"}')],
        )
    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    error = orjson.loads(refusal.body)["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert "contents" in error["message"]


def test_content_capture_reads_the_conversation_and_the_answer() -> None:
    call = {"functionCall": {"name": "weather", "args": {"c": "Oslo"}}}
    result = {"functionResponse": {"name": "weather", "response": {"t": 3}}}
    body = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Weather?"}, {"inlineData": {"data": "AA=="}}]},
            {"role": "model", "parts": [call]},
            {"role": "user", "parts": [result]},
        ],
    }
    assert conversation(body) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?\n[inlineData]"},
        {"role": "assistant", "content": '[tool_call weather] {"c":"Oslo"}'},
        {"role": "user", "content": '[tool_result weather] {"t":3}'},
    ]
    stream = (
        b'data: {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]}\r\n\r\n'
        b'data: {"candidates": [{"content": {"parts": [{"text": "lo"}]}}]}\r\n\r\n'
    )
    assert answer_text(stream) == "Hello"
    assert answer_text(orjson.dumps(ANSWER)) == "Hello!"
    assert answer_text(b"<html>") is None
