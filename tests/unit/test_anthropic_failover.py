"""Failover for Anthropic Messages clients (Claude Code, the anthropic SDK, AnthropicVertex),
one ext_proc stream at a time: the downstream filter sends a Messages request for a model
with fallbacks to its chain (less the fallbacks that speak no Anthropic, less those the
caller may not use), each attempt sends the client's Anthropic body as its provider takes
it, with that provider's credentials and the client's own Anthropic headers, and the
answer reaches the client in Anthropic's API, priced as the member that answered."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc import headers
from extproc.aws_eventstream import encode_event
from extproc.config import parse_config
from extproc.config.model import GatewayConfig, cluster_name
from extproc.context import PhaseOutput, RequestContext
from extproc.envoy_failover import failover_cluster_name
from extproc.errors import UpstreamError
from extproc.headers import FAILOVER_REQUEST_KEY
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import AttemptStage
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.mock_vertex import mock_vertex, vertex_provider
from tests.unit.test_aliases_and_failover import attempt_on

DEFAULT = Path("config/gateway.yaml").read_text(encoding="utf-8")
BEDROCK_CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"  # on mock-bedrock
VERTEX_CLAUDE = "claude-sonnet-4-5@20250929"
MESSAGES = [{"role": "user", "content": "fail over please"}]
KEPT_BETA = "interleaved-thinking-2025-05-14"
CLIENT_HEADERS = {
    "x-api-key": "team1-key",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "interleaved-thinking-2025-05-14,context-1m-2025-08-07",
}


def config(vertex: dict[str, Any] | None = None) -> GatewayConfig:
    """The default config with ``sonnet`` on mock-anthropic failing over to Claude on
    Bedrock, an OpenAI model and Titan (neither speaks Anthropic's API), then Claude on
    Vertex when ``vertex`` (its provider entry) is given; marketing may not use Bedrock's
    Claude."""
    raw = yaml.safe_load(DEFAULT)
    # Titan on a Bedrock account of its own: a chain has one member per provider.
    bedrock = next(p for p in raw["providers"] if p["name"] == "mock-bedrock")
    raw["providers"].append({**bedrock, "name": "bedrock-titan"})
    raw["models"].append(
        {
            "name": "titan-b",
            "provider": "bedrock-titan",
            "upstream_model": "amazon.titan-text-express-v1",
        }
    )
    fallbacks = [BEDROCK_CLAUDE, "gpt-4o", "titan-b"]
    raw["models"].insert(
        0,
        {
            "name": "sonnet",
            "provider": "mock-anthropic",
            "upstream_model": "claude-sonnet-4-0",
            "fallbacks": fallbacks,
        },
    )
    if vertex is not None:
        raw["providers"].append(vertex)
        raw["models"].append({"name": VERTEX_CLAUDE, "provider": "vertex"})
        fallbacks.append(VERTEX_CLAUDE)
    raw["auth"]["access_rules"] = [
        {"name": "bedrock-for-engineering", "models": [BEDROCK_CLAUDE], "groups": ["engineering"]}
    ]
    return parse_config(yaml.safe_dump(raw), "test", {})


async def admitted(
    cfg: GatewayConfig,
    services: Services,
    path: str = "/v1/messages",
    body: dict[str, Any] | None = None,
    client_headers: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    """The cluster the downstream filter sends a Messages request to, and its body."""
    sent = body or {"model": "sonnet", "max_tokens": 100, "messages": MESSAGES}
    answers = await run_stream(
        processor_for(cfg, services),
        [
            request_headers(path, headers=client_headers or CLIENT_HEADERS),
            request_body(orjson.dumps(sent)),
        ],
    )
    mutation = answers[-1].request_body.response
    set_headers = {
        o.header.key: o.header.raw_value.decode() for o in mutation.header_mutation.set_headers
    }
    return set_headers[headers.CLUSTER], mutation.body_mutation.body


@asynccontextmanager
async def running(cfg: GatewayConfig, services: Services) -> AsyncIterator[Runtime]:
    """A worker's runtime, its signers and token sources started."""
    runtime = Runtime(cfg, services)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.close()


def attempt(
    runtime: Runtime, provider: str, body: bytes, replayed: dict[str, str] | None = None
) -> tuple[RequestContext, PhaseOutput, AttemptStage]:
    """One attempt at ``provider``; ``replayed``: the headers Envoy gives it (the client's
    request, with an earlier attempt's changes)."""
    ctx = RequestContext(runtime=runtime)
    ctx.attributes = attempt_on(provider)
    ctx.request_headers = {":path": "/v1/messages", headers.REQUEST_ID: "req-9"}
    ctx.request_headers.update(replayed or {})
    stage = AttemptStage()
    stage.request_headers(ctx, PhaseOutput())
    out = PhaseOutput()
    stage.request_body(ctx, out, body)
    return ctx, out, stage


def sent_json(out: PhaseOutput) -> dict[str, Any]:
    assert out.body is not None
    sent: dict[str, Any] = orjson.loads(out.body)
    return sent


async def test_a_messages_request_fails_over_to_the_claude_members_of_its_chain(
    services: Services,
) -> None:
    cluster, body = await admitted(config(), services)
    # gpt-4o (OpenAI's API) and Titan (no Messages API on Bedrock) are left out.
    assert cluster == failover_cluster_name("sonnet", (1, 2))
    sent = orjson.loads(body)
    assert sent[headers.FAILOVER_CHAIN_KEY] == [
        ["mock-anthropic", "sonnet", "claude-sonnet-4-0"],
        ["mock-bedrock", BEDROCK_CLAUDE, BEDROCK_CLAUDE],
    ]
    assert sent[FAILOVER_REQUEST_KEY] == {
        "api": "anthropic_messages",
        "headers": {
            "anthropic-version": "2023-06-01",
            "anthropic-beta": CLIENT_HEADERS["anthropic-beta"],
        },
    }
    assert sent["messages"] == MESSAGES


async def test_a_fallback_the_callers_access_rules_keep_from_it_is_skipped(
    services: Services,
) -> None:
    marketing = {**CLIENT_HEADERS, "x-api-key": "team2-key"}
    cluster, body = await admitted(config(), services, client_headers=marketing)
    assert cluster == failover_cluster_name("sonnet", (0, 1, 2))
    assert orjson.loads(body)[headers.FAILOVER_CHAIN_KEY] == [
        ["mock-anthropic", "sonnet", "claude-sonnet-4-0"]
    ]


async def test_a_vertex_clients_call_fails_over_as_a_messages_request(
    services: Services,
) -> None:
    path = "/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models/sonnet:rawPredict"
    body = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 100, "messages": MESSAGES}
    headers_sent = {"authorization": "Bearer team1-key"}
    cluster, sent = await admitted(config(), services, path, body, headers_sent)
    assert cluster == failover_cluster_name("sonnet", (1, 2))
    written = orjson.loads(sent)
    # The Anthropic call the path stands for: its model named, Vertex's version gone.
    assert written["model"] == "sonnet"
    assert "anthropic_version" not in written
    assert written[FAILOVER_REQUEST_KEY] == {"api": "anthropic_messages", "headers": {}}


async def test_a_token_count_goes_to_its_models_provider_alone(services: Services) -> None:
    cluster, _ = await admitted(
        config(), services, "/v1/messages/count_tokens", {"model": "sonnet", "messages": MESSAGES}
    )
    assert cluster == cluster_name(config().provider("mock-anthropic"))


async def test_an_openai_client_cannot_have_its_attempts_read_its_body_as_anthropics(
    services: Services,
) -> None:
    cfg = parse_config(
        DEFAULT.replace(
            "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n",
            "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n"
            "    fallbacks: [claude-3-5-haiku-latest]\n",
        ),
        "gateway.yaml",
        {},
    )
    forged = {"api": "anthropic_messages", "headers": {"anthropic-version": "forged"}}
    _, body = await admitted(
        cfg,
        services,
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, FAILOVER_REQUEST_KEY: forged},
        {"authorization": "Bearer team1-key"},
    )
    assert orjson.loads(body)[FAILOVER_REQUEST_KEY] == {"api": "openai_chat", "headers": {}}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_bedrock_attempt_sends_claudes_body_to_invoke_model_signed(
    services: Services, stream: bool
) -> None:
    cfg = config()
    body = {"model": "sonnet", "max_tokens": 100, "messages": MESSAGES, "stream": stream}
    _, admitted_body = await admitted(cfg, services, body=body)
    async with running(cfg, services) as runtime:
        ctx, out, _ = attempt(runtime, "mock-bedrock", admitted_body)
    action = "invoke-with-response-stream" if stream else "invoke"
    assert out.set_headers[":path"] == f"/model/{BEDROCK_CLAUDE.replace(':', '%3A')}/{action}"
    assert out.set_headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
    sent = sent_json(out)
    assert sent["anthropic_version"] == "bedrock-2023-05-31"
    assert sent["anthropic_beta"] == ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]
    assert sent["messages"] == MESSAGES
    assert "model" not in sent and "stream" not in sent
    assert "x-aigw" not in out.body.decode()  # type: ignore[union-attr]
    assert (ctx.model, ctx.error_shape) == (BEDROCK_CLAUDE, "anthropic")


async def test_an_anthropic_attempt_after_another_gets_the_clients_own_headers(
    services: Services,
) -> None:
    cfg = config()
    _, body = await admitted(cfg, services)
    # Envoy replays an earlier attempt's changes: a Vertex attempt's beta flags (only
    # those Vertex knows), another provider's key and version.
    replayed = {
        "anthropic-beta": "interleaved-thinking-2025-05-14",
        "anthropic-version": "2099-01-01",
        "x-api-key": "another-providers-key",
    }
    _, out, _ = attempt(Runtime(cfg, services), "mock-anthropic", body, replayed)
    assert out.set_headers[":path"] == "/v1/messages"
    assert out.set_headers["x-api-key"] == "mock-provider-key"
    assert out.set_headers["anthropic-version"] == "2023-06-01"
    assert out.set_headers["anthropic-beta"] == CLIENT_HEADERS["anthropic-beta"]
    assert not set(out.remove_headers) & set(out.set_headers)
    assert sent_json(out) == {
        "model": "claude-sonnet-4-0",
        "max_tokens": 100,
        "messages": MESSAGES,
    }


async def test_a_vertex_attempt_calls_raw_predict_with_its_token(
    services: Services, tmp_path: Path
) -> None:
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        # Vertex takes only the beta flags its provider lists.
        vertex = {**vertex_provider(mock, key_file), "anthropic_betas": [KEPT_BETA]}
        cfg = config(vertex)
        _, body = await admitted(cfg, services)
        async with running(cfg, services) as runtime:
            _, out, _ = attempt(runtime, "vertex", body)
    assert out.set_headers[":path"] == (
        "/v1/projects/mock-project/locations/us-east5/publishers/anthropic/models/"
        f"{VERTEX_CLAUDE}:rawPredict"
    )
    assert out.set_headers["authorization"].startswith("Bearer ")
    assert "team1-key" not in out.set_headers["authorization"]
    sent = sent_json(out)
    assert sent["anthropic_version"] == "vertex-2023-10-16"
    assert "model" not in sent
    assert out.set_headers["anthropic-beta"] == KEPT_BETA
    assert "anthropic-beta" not in out.remove_headers


def chunk(event: dict[str, Any]) -> bytes:
    """One InvokeModel stream event carrying Claude's ``event``."""
    encoded = base64.b64encode(orjson.dumps(event)).decode()
    return encode_event("chunk", orjson.dumps({"bytes": encoded}))


async def test_a_bedrock_attempts_stream_reaches_the_client_as_anthropics_sse(
    services: Services,
) -> None:
    cfg = config()
    body = {"model": "sonnet", "max_tokens": 100, "messages": MESSAGES, "stream": True}
    _, admitted_body = await admitted(cfg, services, body=body)
    async with running(cfg, services) as runtime:
        ctx, _, stage = attempt(runtime, "mock-bedrock", admitted_body)
    out = PhaseOutput()
    stage.response_headers(
        ctx, out, {":status": "200", "content-type": "application/vnd.amazon.eventstream"}
    )
    assert out.set_headers["content-type"] == "text/event-stream"
    assert out.set_headers[headers.ANSWERED_BY_PROVIDER] == "mock-bedrock"
    assert out.set_headers[headers.ANSWERED_BY_MODEL] == BEDROCK_CLAUDE
    start = {
        "type": "message_start",
        "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                    "model": "claude", "usage": {"input_tokens": 9, "output_tokens": 1}},
    }  # fmt: skip
    answer = PhaseOutput()
    stage.response_body(ctx, answer, chunk(start) + chunk({"type": "message_stop"}), True)
    assert answer.body is not None
    assert b"event: message_start\ndata: " in answer.body
    assert b"event: message_stop" in answer.body


@pytest.mark.parametrize(
    ("provider", "status", "error_type", "shape"),
    [
        # Anthropic's own overload: passed on as it came, so Envoy retries the next member.
        ("mock-anthropic", 529, None, "overloaded_error"),
        # Bedrock's throttling, in Anthropic's shape, still a 429 Envoy retries.
        ("mock-bedrock", 429, "ThrottlingException", "rate_limit_error"),
    ],
)
async def test_an_attempts_error_is_anthropics_and_keeps_a_status_envoy_retries(
    services: Services, provider: str, status: int, error_type: str | None, shape: str
) -> None:
    cfg = config()
    _, body = await admitted(cfg, services)
    async with running(cfg, services) as runtime:
        ctx, _, stage = attempt(runtime, provider, body)
    answer_headers = {":status": str(status), "content-type": "application/json"}
    error: dict[str, Any]
    if error_type is not None:
        answer_headers["x-amzn-errortype"] = f"{error_type}:http://internal.amazon.com/"
        error = {"message": "Too many requests, please wait before trying again."}
    else:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    out = PhaseOutput()
    stage.response_headers(ctx, out, answer_headers)
    assert out.set_headers.get(":status", str(status)) == str(status)
    answer = PhaseOutput()
    stage.response_body(ctx, answer, orjson.dumps(error), True)
    client_got = orjson.loads(answer.body) if answer.body is not None else error
    assert client_got["type"] == "error"
    assert client_got["error"]["type"] == shape


async def test_the_answer_is_logged_under_the_clients_model_and_the_member_that_answered(
    services: Services,
) -> None:
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": BEDROCK_CLAUDE,
        "content": [{"type": "text", "text": "Mock reply"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1_000_000, "output_tokens": 1_000_000},
    }
    answers = await run_stream(
        processor_for(config(), services),
        [
            request_headers("/v1/messages", headers=CLIENT_HEADERS),
            request_body(
                orjson.dumps({"model": "sonnet", "max_tokens": 100, "messages": MESSAGES})
            ),
            # What the per-attempt filter sends down: Bedrock's answer, as Anthropic's.
            response_headers(
                200,
                {
                    headers.ANSWERED_BY_PROVIDER: "mock-bedrock",
                    headers.ANSWERED_BY_MODEL: BEDROCK_CLAUDE,
                    headers.ANSWERED_UPSTREAM_MODEL: BEDROCK_CLAUDE,
                    "x-envoy-upstream-service-time": "5",
                },
            ),
            response_body(orjson.dumps(answer)),
        ],
    )
    removed = answers[2].response_headers.response.header_mutation.remove_headers
    assert headers.ANSWERED_BY_PROVIDER in removed
    log = services.access_log
    assert isinstance(log, MemoryLog)
    [line] = log.lines()
    assert (line["provider"], line["model"], line["upstream_model"]) == (
        "mock-bedrock",
        "sonnet",
        BEDROCK_CLAUDE,
    )
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1_000_000, 1_000_000)
    # Bedrock's Claude 3 Haiku price (0.25 + 1.25 per million), not Sonnet's.
    assert line["cost_usd"] == pytest.approx(1.50)


def test_a_messages_route_reaching_a_model_with_fallbacks_reads_every_answers_headers(
    services: Services,
) -> None:
    runtime = Runtime(config(), services)
    messages = runtime.routes.named("anthropic-messages")
    assert messages is not None
    assert not runtime.lean_response(messages, "sonnet")
    assert not runtime.lean_response(messages, None)
    # A model without fallbacks keeps the lean path.
    assert runtime.lean_response(messages, "claude-3-5-haiku-latest")


@pytest.mark.parametrize(
    "written",
    [
        {"api": "openai_embeddings", "headers": {}},  # no API that fails over
        {"api": "anthropic_messages", "headers": {"anthropic-version": 2023}},
        ["anthropic_messages"],
    ],
)
async def test_an_attempt_refuses_a_request_the_gateway_did_not_write(
    services: Services, written: object
) -> None:
    cfg = config()
    _, body = await admitted(cfg, services)
    tampered = orjson.dumps({**orjson.loads(body), FAILOVER_REQUEST_KEY: written})
    async with running(cfg, services) as runtime:
        with pytest.raises(UpstreamError) as refused:
            attempt(runtime, "mock-anthropic", tampered)
    assert refused.value.code == "failover_misrouted"
