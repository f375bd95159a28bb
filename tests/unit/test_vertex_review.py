"""A review of Vertex AI models' request and answer paths, as the ``anthropic`` and ``openai``
SDKs, Claude Code and the Vercel AI SDK see them: what the gateway sends Vertex (and whether
Vertex takes it), what each client reads back (answers, Vertex's own stream events, errors
in and out of Google's shape, a refusal of the gateway's token), what a stream without
Vertex's count costs, and what a caller of the Anthropic route is shown in ``GET /v1/models``.

The processor tests play one request through the gateway (real ext_proc messages, the
default config with a ``vertex`` provider and two of its models, Claude and Gemini). The
runtime mints its access token at the mock's token endpoint, as it does at start; the
answers are played by the test, so it decides what Vertex says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.config.loader import parse_config
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
from tests.unit.mock_vertex import mock_vertex, vertex_provider

CLAUDE = "claude-sonnet-4-5@20250929"
GEMINI = "google/gemini-2.5-flash"
ANTHROPIC_KEY = {"x-api-key": "team1-key"}
OPENAI_KEY = {"authorization": "Bearer team1-key"}
PROMPT = [{"role": "user", "content": "Say hello."}]
# What Envoy's router adds to an answer that came from the provider.
FROM_PROVIDER = {"x-envoy-upstream-service-time": "4"}
SSE = {"content-type": "text/event-stream; charset=utf-8", **FROM_PROVIDER}
JSON = {"content-type": "application/json; charset=UTF-8", **FROM_PROVIDER}
# Sonnet's list price (USD per million tokens), so the log line's cost says something.
SONNET = {"input_per_million": 3.0, "output_per_million": 15.0}

# One request of each client to a Vertex model: (path, client headers, body).
Call = tuple[str, dict[str, str], dict[str, Any]]
ANTHROPIC_TO_CLAUDE: Call = (
    "/v1/messages",
    ANTHROPIC_KEY,
    {"model": "sonnet-vertex", "max_tokens": 50, "messages": PROMPT},
)
OPENAI_TO_GEMINI: Call = (
    "/v1/chat/completions",
    OPENAI_KEY,
    {"model": "gemini-flash", "messages": PROMPT},
)
OPENAI_TO_CLAUDE: Call = (
    "/v1/chat/completions",
    OPENAI_KEY,
    {"model": "sonnet-vertex", "messages": PROMPT},
)
EVERY_CLIENT = pytest.mark.parametrize(
    "call",
    [ANTHROPIC_TO_CLAUDE, OPENAI_TO_GEMINI, OPENAI_TO_CLAUDE],
    ids=["anthropic-claude", "openai-gemini", "openai-claude"],
)

# Claude's stream as Vertex's streamRawPredict sends it. Vertex adds an event of its own,
# ``vertex_event`` (its usage, tiered), that Anthropic's API never sends.
VERTEX_EVENT = {"type": "vertex_event", "usage": {"input_tokens": 12, "output_tokens": 1,
                "cache_creation_input_tokens": None, "cache_read_input_tokens": None,
                "tiers": {"0-to-200000": {"input_tokens": 12, "output_tokens": 1}}}}  # fmt: skip
EVENTS: list[dict[str, Any]] = [
    {"type": "message_start", "message": {"id": "msg_vrtx_01", "type": "message",
     "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": [],
     "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1}}},
    VERTEX_EVENT,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
    {"type": "message_stop"},
]  # fmt: skip
# The event types of Anthropic's Messages stream.
ANTHROPIC_EVENT_TYPES = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
}


def sse_event(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"


def event_types(stream: bytes) -> list[str]:
    """The ``type`` of each event's data in an SSE stream (events without data: none)."""
    types = []
    for event in stream.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data: {"):
                types.append(orjson.loads(line[6:]).get("type"))
    return types


def google_error(status: int, name: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": status, "message": message, "status": name}})


# --- The gateway under test -------------------------------------------------------------------


@pytest.fixture
async def google(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """The mock's Vertex AI and a service account key its token endpoint trusts."""
    key_file = tmp_path / "vertex-key.json"
    async with mock_vertex(key_file) as mock:
        yield mock, key_file


def vertex_config(
    google: tuple[str, Path], change: Callable[[dict[str, Any]], None] | None = None
) -> GatewayConfig:
    """The default config with a Vertex provider (the mock's) serving Claude and Gemini;
    ``change`` edits the raw config before it is parsed."""
    mock, key_file = google
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["providers"].append(vertex_provider(mock, key_file))
    raw["models"] += [
        {"name": "sonnet-vertex", "provider": "vertex", "upstream_model": CLAUDE},
        {"name": "gemini-flash", "provider": "vertex", "upstream_model": GEMINI},
    ]
    raw["pricing"]["models"]["sonnet-vertex"] = SONNET
    raw["pricing"]["models"]["gemini-flash"] = SONNET
    if change is not None:
        change(raw)
    return parse_config(yaml.safe_dump(raw), "test", {})


@asynccontextmanager
async def serving(config: GatewayConfig, log: MemoryLog) -> AsyncIterator[Processor]:
    """A processor whose runtime has minted its Vertex token, as the server's has."""
    runtime = Runtime(config, Services(metrics=GatewayMetrics(), access_log=log))
    await runtime.start()
    try:
        yield Processor(lambda: runtime, default_stages())
    finally:
        await runtime.close()


@asynccontextmanager
async def vertex_gateway(
    key_dir: Path, log: MemoryLog, change: Callable[[dict[str, Any]], None] | None = None
) -> AsyncIterator[Processor]:
    """A processor serving ``vertex_config(.., change)`` with the mock's Vertex AI, its
    service account key written in ``key_dir``."""
    key_file = key_dir / "vertex-key.json"
    async with (
        mock_vertex(key_file) as mock,
        serving(vertex_config((mock, key_file), change), log) as running,
    ):
        yield running


@pytest.fixture
def access_log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
async def processor(google: tuple[str, Path], access_log: MemoryLog) -> AsyncIterator[Processor]:
    async with serving(vertex_config(google), access_log) as running:
        yield running


async def sent(processor: Processor, call: Call) -> list[ext.ProcessingResponse]:
    """The gateway's answers to a request's headers and body (what goes to Vertex)."""
    path, headers, body = call
    return await run_stream(
        processor, [request_headers(path, headers=headers), request_body(orjson.dumps(body))]
    )


async def answered(
    processor: Processor, call: Call, status: int, headers: dict[str, str], chunks: list[bytes]
) -> tuple[int, dict[str, str], bytes]:
    """What the client gets when Vertex answers ``call`` with ``status``, ``headers`` and
    the body in ``chunks``: its status, the headers the gateway set, its body."""
    path, client_headers, body = call
    messages = [
        request_headers(path, headers=client_headers),
        request_body(orjson.dumps(body)),
        response_headers(status, headers),
        *(response_body(chunk, end_of_stream=False) for chunk in chunks),
        response_body(b"", end_of_stream=True),
    ]
    answers = await run_stream(processor, messages)
    mutation = answers[2].response_headers.response.header_mutation
    set_headers = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    client_status = int(set_headers.get(":status", status))
    return client_status, set_headers, client_body([*chunks, b""], answers[3:])


def upstream_body(answers: list[ext.ProcessingResponse]) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(answers[1].request_body.response.body_mutation.body)
    return body


def upstream_headers(
    client_headers: dict[str, str], answers: list[ext.ProcessingResponse]
) -> dict[str, str]:
    """The request's headers as Envoy sends them on: the client's, less those the gateway
    removed, with those it set."""
    headers = dict(client_headers)
    for answer in answers[:2]:
        phase = answer.WhichOneof("response")
        mutation = getattr(answer, phase).response.header_mutation
        for name in mutation.remove_headers:
            headers.pop(name, None)
        for header in mutation.set_headers:
            headers[header.header.key] = header.header.raw_value.decode()
    return headers


# --- Claude's token count ---------------------------------------------------------------------


async def test_a_token_count_names_claude_without_its_vertex_version(
    processor: Processor,
) -> None:
    # count-tokens:rawPredict takes the model's name without the "@version" of the rawPredict
    # path: Vertex answers "claude-sonnet-4-5@20250929 is not supported for token counting"
    # (400) to the versioned id, which is the upstream_model the docs configure. Claude Code
    # counts tokens throughout a session.
    call: Call = ("/v1/messages/count_tokens", ANTHROPIC_KEY,
                  {"model": "sonnet-vertex", "messages": PROMPT})  # fmt: skip
    answers = await sent(processor, call)

    assert upstream_body(answers)["model"] == "claude-sonnet-4-5"


# --- anthropic-beta: Vertex refuses a flag it does not know ------------------------------------

# Flags Claude Code sends to an Anthropic endpoint (ANTHROPIC_BASE_URL at the gateway, as the
# docs advise for it); Vertex answers 400 "Unexpected value(s) `prompt-caching-scope-2026-01-05`
# for the `anthropic-beta` header" to a flag it does not take.
CLAUDE_CODE_BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,prompt-caching-scope-2026-01-05"
)
VERTEX_BETAS = ["claude-code-20250219", "interleaved-thinking-2025-05-14"]


def with_vertex_betas(raw: dict[str, Any]) -> None:
    raw["providers"][-1]["anthropic_betas"] = VERTEX_BETAS


def test_a_vertex_provider_takes_the_list_of_beta_flags_its_claude_accepts(
    google: tuple[str, Path],
) -> None:
    # As a Bedrock provider does: the operator lists the flags the provider takes.
    config = vertex_config(google, with_vertex_betas)
    assert config.providers[-1].anthropic_betas == tuple(VERTEX_BETAS)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_beta_flags_vertex_does_not_take_stay_behind(
    google: tuple[str, Path], access_log: MemoryLog, path: str
) -> None:
    client_headers = {**ANTHROPIC_KEY, "anthropic-beta": CLAUDE_CODE_BETAS}
    body: dict[str, Any] = {"model": "sonnet-vertex", "messages": PROMPT}
    if path == "/v1/messages":
        body["max_tokens"] = 50
    async with serving(vertex_config(google, with_vertex_betas), access_log) as gateway:
        answers = await sent(gateway, (path, client_headers, body))

    assert upstream_headers(client_headers, answers)["anthropic-beta"] == ",".join(VERTEX_BETAS)


# --- Vertex's own stream event ----------------------------------------------------------------


async def test_vertexs_own_stream_event_does_not_reach_an_anthropic_client(
    processor: Processor, access_log: MemoryLog
) -> None:
    # A client of Anthropic's API reads Anthropic's event types: the Vercel AI SDK's
    # anthropic provider fails the whole stream on "vertex_event" ("Type validation failed
    # ... No matching discriminator"); the same model on an anthropic provider never sends it.
    streamed = {**ANTHROPIC_TO_CLAUDE[2], "stream": True}
    chunks = [sse_event(event) for event in EVENTS]
    _, _, received = await answered(
        processor, (ANTHROPIC_TO_CLAUDE[0], ANTHROPIC_KEY, streamed), 200, SSE, chunks
    )

    assert "vertex_event" not in event_types(received)
    assert set(event_types(received)) <= ANTHROPIC_EVENT_TYPES
    [line] = access_log.lines()
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 2)


async def test_vertexs_own_stream_event_is_not_translated_for_an_openai_client(
    processor: Processor, access_log: MemoryLog
) -> None:
    streamed = {**OPENAI_TO_CLAUDE[2], "stream": True}
    chunks = [sse_event(event) for event in EVENTS]
    _, _, received = await answered(
        processor, (OPENAI_TO_CLAUDE[0], OPENAI_KEY, streamed), 200, SSE, chunks
    )

    assert b"vertex_event" not in received
    assert received.rstrip().endswith(b"data: [DONE]")
    [line] = access_log.lines()
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 2)


def chat_chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
             "model": GEMINI, "choices": [choice]}  # fmt: skip
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def estimate_cost(line: dict[str, Any]) -> float:
    """What SONNET's prices make of the tokens a log line charges, in USD."""
    tokens = float(line["prompt_tokens"]) * SONNET["input_per_million"]
    return (tokens + float(line["completion_tokens"]) * SONNET["output_per_million"]) / 1e6


@pytest.mark.parametrize(
    ("call", "chunks"),
    [
        # Claude's stream ended before message_delta and message_stop.
        (ANTHROPIC_TO_CLAUDE, [sse_event(event) for event in EVENTS[:5]]),
        # Gemini's stream whole, but without the usage the gateway asked for.
        (
            OPENAI_TO_GEMINI,
            [chat_chunk("Hello "), chat_chunk("there", "stop"), b"data: [DONE]\n\n"],
        ),
    ],
    ids=["claude-ended-early", "gemini-without-usage"],
)
async def test_a_stream_without_vertexs_count_is_priced_at_its_estimate(
    processor: Processor, access_log: MemoryLog, call: Call, chunks: list[bytes]
) -> None:
    # The estimate is the bill (docs/providers.md): its tokens are in the log line, the
    # token metrics and the quota; its cost must be too, or the cost metric, the usage
    # rollup and every chargeback report count the request as free.
    path, headers, body = call
    await answered(processor, (path, headers, {**body, "stream": True}), 200, SSE, chunks)

    [line] = access_log.lines()
    assert line["usage_estimated"] is True and line["provider"] == "vertex"
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
    assert line["cost_usd"] == pytest.approx(estimate_cost(line))


# --- Errors Vertex answers in no JSON shape ----------------------------------------------------

# What Google's front answers to a path it does not serve (a base_url with a stray segment,
# a region without the model), and what a proxy in front of Vertex sends on a bad gateway.
GOOGLE_404_PAGE = (
    b"<!DOCTYPE html><html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1</title>"
    b"<p><b>404.</b> <ins>That\xe2\x80\x99s an error.</ins><p>The requested URL was not found "
    b"on this server.</html>"
)


@EVERY_CLIENT
async def test_a_page_in_place_of_vertexs_error_reaches_the_client_in_its_shape(
    processor: Processor, call: Call
) -> None:
    status, set_headers, received = await answered(
        processor, call, 404, {**FROM_PROVIDER, "content-type": "text/html; charset=UTF-8"},
        [GOOGLE_404_PAGE],
    )  # fmt: skip

    assert status == 404
    assert set_headers.get("content-type") == "application/json"
    error = orjson.loads(received)  # the gateway said JSON: it must be
    if call is ANTHROPIC_TO_CLAUDE:
        assert error["type"] == "error" and error["error"]["type"] == "not_found_error"
    else:
        assert error["error"]["message"]


# --- A refusal of the gateway's token --------------------------------------------------------


@EVERY_CLIENT
async def test_an_access_token_quoted_in_vertexs_refusal_is_redacted_whole(
    processor: Processor, call: Call
) -> None:
    # A token other than the one in use (the one a refresh just replaced, still valid for
    # up to ten minutes): known secrets are redacted by their first four characters too,
    # "ya29", which leaves the rest of any Google token where the ya29 pattern no longer
    # finds it.
    previous = "ya29.c.b0AXv0zTPreviousTokenStillValid-abcdefghijklmnop"
    refusal = google_error(401, "UNAUTHENTICATED", f"Invalid Credentials: {previous}")
    _, _, received = await answered(processor, call, 401, JSON, [refusal])

    assert b"PreviousTokenStillValid" not in received
    assert b"upstream_credentials_refused" in received or b"gateway's own credentials" in received


@EVERY_CLIENT
async def test_vertex_refusing_the_gateways_token_is_not_the_clients_401(
    processor: Processor, call: Call
) -> None:
    # Claude on Bedrock, and Claude on Vertex for an OpenAI client, answer a 502: the
    # client's key is fine. A 401 makes the anthropic SDK raise AuthenticationError and
    # Claude Code ask its user to log in again. Vertex never takes the lean path, the only
    # reason a pass-through pair keeps the provider's status.
    refusal = google_error(
        401, "UNAUTHENTICATED", "Request had invalid authentication credentials."
    )
    status, _, received = await answered(processor, call, 401, JSON, [refusal])

    assert status == 502
    assert b"not a problem with your API key" in received


# --- Google's quota error for an OpenAI client -----------------------------------------------


@pytest.mark.parametrize("call", [OPENAI_TO_GEMINI, OPENAI_TO_CLAUDE], ids=["gemini", "claude"])
async def test_vertexs_quota_error_is_a_rate_limit_error_for_an_openai_client(
    processor: Processor, call: Call
) -> None:
    # The gateway's own 429 and Anthropic's, translated, say rate_limit_error; a client that
    # retries by the error's type must not read a quota error as a bad request.
    quota = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com")
    status, _, received = await answered(processor, call, 429, JSON, [quota])

    assert status == 429
    error = orjson.loads(received)["error"]
    assert error["code"] == "resource_exhausted"
    assert error["type"] == "rate_limit_error"


# --- Client APIs Vertex does not serve --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": "gemini-flash", "input": "hello"}),
        ("/v1/responses", {"model": "gemini-flash", "input": "hello"}),
        ("/v1/completions", {"model": "gemini-flash", "prompt": "hello"}),
        ("/v1/responses/input_tokens", {"model": "sonnet-vertex", "input": "hello"}),
    ],
    ids=["embeddings", "responses", "completions", "responses-count"],
)
async def test_an_api_vertex_does_not_serve_is_a_400_in_openais_shape(
    processor: Processor, path: str, body: dict[str, Any]
) -> None:
    answers = await sent(processor, (path, OPENAI_KEY, body))

    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    assert orjson.loads(refusal.body)["error"]["code"] == "unsupported_model_for_route"


async def test_gemini_is_refused_on_anthropics_count_in_anthropics_shape(
    processor: Processor,
) -> None:
    call: Call = ("/v1/messages/count_tokens", ANTHROPIC_KEY,
                  {"model": "gemini-flash", "messages": PROMPT})  # fmt: skip
    answers = await sent(processor, call)

    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    assert orjson.loads(refusal.body)["error"]["type"] == "invalid_request_error"


# --- Guardrails on a route serving Vertex models ----------------------------------------------


async def test_a_masked_prompt_reaches_claude_on_vertex_masked(
    google: tuple[str, Path], access_log: MemoryLog
) -> None:
    def guarded(raw: dict[str, Any]) -> None:
        raw["guardrails"] = {"policies": [{"name": "pii", "request": [
            {"name": "email", "builtins": ["EMAIL"], "action": "mask"}]}]}  # fmt: skip
        for route in raw["routes"]:
            if route["name"] == "anthropic-messages":
                route["guardrails"] = ["pii"]

    body = {"model": "sonnet-vertex", "max_tokens": 50,
            "messages": [{"role": "user", "content": "Write to jane.doe@example.com"}]}  # fmt: skip
    async with serving(vertex_config(google, guarded), access_log) as gateway:
        answers = await sent(gateway, ("/v1/messages", ANTHROPIC_KEY, body))

    sent_body = upstream_body(answers)
    assert "jane.doe@example.com" not in orjson.dumps(sent_body).decode()
    assert sent_body["anthropic_version"] == "vertex-2023-10-16" and "model" not in sent_body


# --- GET /v1/models ---------------------------------------------------------------------------


async def test_a_key_for_anthropics_route_is_shown_claude_on_vertex(
    google: tuple[str, Path], access_log: MemoryLog
) -> None:
    # A key kept to /v1/messages (Claude Code's) may use sonnet-vertex there, as it may use
    # Claude on an anthropic provider; the list shows it the latter only.
    def claude_code_key(raw: dict[str, Any]) -> None:
        raw["auth"]["api_keys"].append(
            {
                "id": "claude-code",
                "key": "claude-code-key",
                "allowed_routes": ["anthropic-messages"],
            }
        )

    async with serving(vertex_config(google, claude_code_key), access_log) as gateway:
        used = await sent(
            gateway, ("/v1/messages", {"x-api-key": "claude-code-key"}, ANTHROPIC_TO_CLAUDE[2])
        )
        listed = await run_stream(
            gateway,
            [
                request_headers(
                    "/v1/models", "GET", {"x-api-key": "claude-code-key"}, end_of_stream=True
                )
            ],
        )

    assert not used[-1].HasField("immediate_response"), "the key may use the model"
    names = [m["id"] for m in orjson.loads(listed[-1].immediate_response.body)["data"]]
    assert "claude-sonnet-4-0" in names
    assert "sonnet-vertex" in names


async def test_a_key_for_the_vertex_clients_route_is_shown_the_claude_models_it_may_call(
    google: tuple[str, Path], access_log: MemoryLog
) -> None:
    # A key kept to /vertex (Claude Code in its Vertex mode): its calls are Anthropic's,
    # so its list shows Claude wherever it is served, and no OpenAI model.
    def vertex_mode_key(raw: dict[str, Any]) -> None:
        raw["auth"]["api_keys"].append(
            {"id": "vertex-mode", "key": "vertex-mode-key", "allowed_routes": ["anthropic-vertex"]}
        )

    async with serving(vertex_config(google, vertex_mode_key), access_log) as gateway:
        listed = await run_stream(
            gateway,
            [
                request_headers(
                    "/v1/models", "GET", {"x-api-key": "vertex-mode-key"}, end_of_stream=True
                )
            ],
        )

    names = [m["id"] for m in orjson.loads(listed[-1].immediate_response.body)["data"]]
    assert "claude-sonnet-4-0" in names
    assert "sonnet-vertex" in names
    assert "gpt-4o-mini" not in names
