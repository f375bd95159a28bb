"""A review of Gemini's own API (google-genai, Gemini CLI) through the processor.

Each test plays one request with real ext_proc messages to a Vertex provider whose
token the mock's Vertex issued (``test_gemini_route``), and checks what its client or its
operator would notice: the path and body Vertex gets, what the client reads, and the
request's log line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.gemini_api import cap_completion
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.mock_vertex import mock_vertex
from tests.unit.test_gemini_route import gemini_config, sent_upstream

KEY = {"x-goog-api-key": "team1-key"}
PREFIX = "/v1beta/models/gemini-2.5-flash"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello, please."}]}]}
SSE = {"content-type": "text/event-stream", "x-envoy-upstream-service-time": "3"}


@pytest.fixture
async def vertex(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        yield mock, key_file


async def play(
    vertex: tuple[str, Path], messages: list[Any], services: Services, **tail: Any
) -> list[Any]:
    """One request through a processor whose runtime has its Vertex token."""
    mock, key_file = vertex
    runtime = Runtime(gemini_config(key_file, mock, tail), services)
    await runtime.start()
    try:
        return await run_stream(Processor(lambda: runtime, default_stages()), messages)
    finally:
        await runtime.close()


def memory_services() -> Services:
    return Services(GatewayMetrics(), MemoryLog())


def log_line(services: Services) -> dict[str, Any]:
    log = services.access_log
    assert isinstance(log, MemoryLog)
    [line] = log.lines()
    return line


def event(document: dict[str, Any]) -> bytes:
    """One event of Gemini's stream, as Google writes it."""
    return b"data: " + orjson.dumps(document) + b"\r\n\r\n"


def refusal(answers: list[Any]) -> tuple[int, dict[str, Any]]:
    """The gateway's own answer: its status and its JSON body."""
    immediate = answers[-1].immediate_response
    return immediate.status.code, orjson.loads(immediate.body)


def whole_line(services: Services) -> tuple[Any, ...]:
    """What the log line says of an answer's end and its bill."""
    line = log_line(services)
    return (
        line["outcome"],
        line["usage_reported"],
        line["usage_estimated"],
        line["prompt_tokens"],
        line["completion_tokens"],
    )


async def streamed(
    vertex: tuple[str, Path],
    services: Services,
    events: list[dict[str, Any]],
    *,
    ended: bool,
    body: dict[str, Any] = BODY,
    **tail: Any,
) -> list[Any]:
    """One streamGenerateContent call answered with ``events`` in one chunk; ``ended``
    False: the client hung up right after them (Envoy's end of stream never comes)."""
    return await play(
        vertex,
        [
            request_headers(f"{PREFIX}:streamGenerateContent?alt=sse", headers=KEY),
            request_body(orjson.dumps(body)),
            response_headers(200, SSE),
            response_body(b"".join(event(e) for e in events), end_of_stream=ended),
        ],
        services,
        **tail,
    )


# --- the requests clients send ----------------------------------------------------------


async def test_a_stream_asked_for_without_alt_sse_is_never_answered_with_events(
    vertex: tuple[str, Path],
) -> None:
    # Without ?alt=sse, Google answers streamGenerateContent with one JSON array of
    # answers (the REST transport of Google's older client libraries reads it so). The
    # gateway must not turn it into Server-Sent Events behind the client's back: either
    # it asks Vertex for what the client asked for, or it says it cannot, in Google's
    # words.
    answers = await play(
        vertex,
        [
            request_headers(f"{PREFIX}:streamGenerateContent", headers=KEY),
            request_body(orjson.dumps(BODY)),
        ],
        memory_services(),
    )
    if answers[-1].WhichOneof("response") == "immediate_response":
        status, body = refusal(answers)
        assert (status, body["error"]["status"]) == (400, "INVALID_ARGUMENT")
        assert "alt=sse" in body["error"]["message"]
        return
    headers, _ = sent_upstream(answers)
    assert "alt=sse" not in headers[":path"], "the client asked for a JSON array"


async def test_a_count_of_a_whole_request_reaches_vertex_in_vertexs_own_form(
    vertex: tuple[str, Path],
) -> None:
    # Gemini's countTokens takes a whole GenerateContentRequest (the only way to count a
    # system instruction or tools there); Vertex's CountTokensRequest has no such field:
    # contents, systemInstruction, tools and generationConfig sit at its top level, and
    # Google refuses an unknown field with a 400.
    system = {"parts": [{"text": "Be brief."}]}
    tools = [{"functionDeclarations": [{"name": "weather", "description": "The weather"}]}]
    wrapped = {
        "generateContentRequest": {
            "model": "models/gemini-2.5-flash",
            "systemInstruction": system,
            "tools": tools,
            **BODY,
        }
    }
    answers = await play(
        vertex,
        [
            request_headers(f"{PREFIX}:countTokens", headers=KEY),
            request_body(orjson.dumps(wrapped)),
        ],
        memory_services(),
    )
    headers, body = sent_upstream(answers)
    assert headers[":path"].endswith("/publishers/google/models/gemini-2.5-flash:countTokens")
    assert body == {**BODY, "systemInstruction": system, "tools": tools}


async def test_a_count_of_contents_goes_as_it_came(vertex: tuple[str, Path]) -> None:
    # What the SDKs send: passed through byte for byte, the colon encoded or not.
    answers = await play(
        vertex,
        [
            request_headers(f"{PREFIX}%3AcountTokens", headers=KEY),
            request_body(orjson.dumps(BODY)),
            response_headers(200, {"content-type": "application/json"}),
            response_body(b'{"totalTokens": 7}'),
        ],
        services := memory_services(),
    )
    headers, body = sent_upstream(answers)
    assert headers[":path"].endswith("/gemini-2.5-flash:countTokens") and body is None
    assert log_line(services)["total_tokens"] == 0


async def test_a_key_in_the_query_is_refused_in_googles_shape(vertex: tuple[str, Path]) -> None:
    answers = await play(
        vertex,
        [request_headers(f"{PREFIX}:generateContent?key=team1-key", headers=KEY)],
        memory_services(),
    )
    status, body = refusal(answers)
    assert (status, body["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert "team1-key" not in body["error"]["message"]


# --- the end of a stream ----------------------------------------------------------------


async def test_a_client_that_hangs_up_after_the_last_event_is_logged_complete(
    vertex: tuple[str, Path],
) -> None:
    services = memory_services()
    last = {
        "candidates": [
            {"content": {"parts": [{"text": "Hello!"}]}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 2},
    }
    await streamed(vertex, services, [last], ended=False)
    assert whole_line(services) == ("completed", True, False, 6, 2)


async def test_a_client_that_hangs_up_while_a_second_candidate_streams_is_not_logged_complete(
    vertex: tuple[str, Path],
) -> None:
    # candidateCount 2: Vertex streams both candidates; the first finished, the second
    # had not when the client hung up. The request was cut short: charged what Gemini
    # had counted by then (as any stream cut after a running count), not logged as an
    # answer read whole.
    services = memory_services()
    running = {
        "candidates": [
            {"content": {"parts": [{"text": "Hi."}]}, "finishReason": "STOP", "index": 0},
            {"content": {"parts": [{"text": "Hello, how are"}]}, "index": 1},
        ],
        "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 5},
    }
    two = {**BODY, "generationConfig": {"candidateCount": 2}}
    await streamed(vertex, services, [running], ended=False, body=two)
    line = log_line(services)
    assert (line["outcome"], line["prompt_tokens"], line["completion_tokens"]) == (
        "aborted",
        6,
        5,
    )


@pytest.mark.parametrize(
    "last",
    [
        # The answer was stopped by a filter before any output: no output count (Google
        # leaves out a count of 0).
        {
            "candidates": [{"finishReason": "SAFETY", "index": 0}],
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        },
        # The prompt was blocked: no candidate at all, the prompt's count only.
        {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        },
    ],
    ids=["stopped-by-safety", "prompt-blocked"],
)
async def test_a_stream_that_ended_without_output_is_complete_at_its_last_event(
    vertex: tuple[str, Path], last: dict[str, Any]
) -> None:
    # Google's last event came whole; the client hung up right after reading it.
    services = memory_services()
    await streamed(vertex, services, [last], ended=False)
    assert whole_line(services) == ("completed", True, False, 9, 0)


async def test_a_function_call_cut_before_its_count_is_charged_for_its_arguments(
    vertex: tuple[str, Path],
) -> None:
    # Vertex's events may count only the prompt until the last one. A stream cut after a
    # function call (what Gemini CLI's turns mostly are) carried generated arguments,
    # which are billed as output: they are part of the estimate, as OpenAI's
    # tool-call arguments are.
    services = memory_services()
    args = {
        "file_path": "src/main.py",
        "old_string": "print('hello')\n",
        "new_string": "print('hello, world')\n" * 20,
    }
    call = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"functionCall": {"name": "replace", "args": args}}],
                },
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 30},
    }
    await streamed(vertex, services, [call], ended=False)
    line = log_line(services)
    assert (line["outcome"], line["usage_estimated"], line["prompt_tokens"]) == (
        "aborted",
        True,
        30,
    )
    assert line["completion_tokens"] >= len(orjson.dumps(args)) // 8


async def test_an_error_event_is_charged_and_named(vertex: tuple[str, Path]) -> None:
    services = memory_services()
    running = {
        "candidates": [{"content": {"parts": [{"text": "Hello there, this is"}]}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 3},
        "modelVersion": "gemini-2.5-flash",
    }
    failed = {
        "error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}
    }
    await streamed(vertex, services, [running, failed], ended=False)
    line = log_line(services)
    assert (line["outcome"], line["http_status_code"], line["error_code"]) == (
        "upstream_error",
        200,
        "internal",
    )
    assert line["usage_estimated"] is True and line["prompt_tokens"] == 6
    assert line["completion_tokens"] >= 3 and line["response_model"] == "gemini-2.5-flash"


# --- errors -----------------------------------------------------------------------------


async def test_envoys_own_reply_reaches_a_gemini_client_in_googles_shape(
    vertex: tuple[str, Path],
) -> None:
    # Envoy's timeout, as its local_reply_config writes it (OpenAI's shape). Google's
    # SDK reads error.status: it gets None from OpenAI's shape.
    local = orjson.dumps(
        {
            "error": {
                "message": "the provider did not answer in time",
                "type": "server_error",
                "param": None,
                "code": "upstream_timeout",
            }
        }
    )
    answers = await play(
        vertex,
        [
            request_headers(f"{PREFIX}:generateContent", headers=KEY),
            request_body(orjson.dumps(BODY)),
            response_headers(504, {"content-type": "application/json"}),
            response_body(local),
        ],
        memory_services(),
    )
    error = orjson.loads(client_body([local], answers))["error"]
    assert (error.get("code"), error.get("status")) == (504, "DEADLINE_EXCEEDED")
    assert error["message"] == "the provider did not answer in time"


# --- the hard cap -----------------------------------------------------------------------


def test_a_hard_cap_leaves_a_thinking_budget_to_max_output_tokens() -> None:
    # Gemini counts its thinking in maxOutputTokens: the capped maxOutputTokens bounds
    # it already. A budget written below what the client asked can be one the model
    # refuses (Gemini 2.5 Pro takes 128 at the least, Flash-Lite 512: "The thinking
    # budget ... is invalid"), which turns a request within the quota into Google's 400.
    config = {"maxOutputTokens": 8000, "thinkingConfig": {"thinkingBudget": 1024}}
    body: dict[str, Any] = {**BODY, "generationConfig": config}
    assert cap_completion(body, 100) is True
    assert body["generationConfig"] == {
        "maxOutputTokens": 100,
        "thinkingConfig": {"thinkingBudget": 1024},
    }


# --- telemetry --------------------------------------------------------------------------


async def test_a_generate_content_call_is_named_as_the_conventions_name_it(
    vertex: tuple[str, Path],
) -> None:
    # OpenTelemetry's gen_ai.operation.name has a well-known value for it,
    # "generate_content" ("such as Gemini Generate Content"), which MUST be used when it
    # applies: Google's own instrumentation of google-genai reports it, and a dashboard
    # built on the conventions finds Gemini's calls by it.
    services = memory_services()
    answer = {
        "candidates": [{"content": {"parts": [{"text": "Hello!"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 2},
        "modelVersion": "gemini-2.5-flash-001",
    }
    await play(
        vertex,
        [
            request_headers(f"{PREFIX}:generateContent", headers=KEY),
            request_body(orjson.dumps(BODY)),
            response_headers(200, {"content-type": "application/json"}),
            response_body(orjson.dumps(answer)),
        ],
        services,
    )
    assert log_line(services)["response_model"] == "gemini-2.5-flash-001"
    operations = {
        sample.labels["gen_ai_operation_name"]
        for family in services.metrics.registry.collect()
        if family.name == "gen_ai_client_token_usage"
        for sample in family.samples
    }
    assert operations == {"generate_content"}
