"""Failover for Gemini API clients (google-genai, Gemini CLI, ADK) and Bedrock Runtime
clients (boto3's bedrock-runtime, the AWS SDKs), one ext_proc stream at a time: the
downstream filter sends a generateContent, Converse or InvokeModel call for a model with
fallbacks to its chain, less the fallbacks that cannot speak the client's API (Gemini:
Google's models on Vertex; Converse: Bedrock; InvokeModel: a model of the body's family);
each attempt sends the client's body to its own provider (its region or account, its
model in the path, its token or signature), and the answer reaches the client in its
own API, priced as the member that answered. Token counts never fail over."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc import headers
from extproc.backends import serves_invoke_body
from extproc.config import parse_config
from extproc.config.model import GatewayConfig, cluster_name
from extproc.context import PhaseOutput, RequestContext
from extproc.envoy_bootstrap import render_bootstrap
from extproc.envoy_failover import ANSWERED_HEADERS, failover_cluster_name
from extproc.errors import UpstreamError
from extproc.headers import FAILOVER_REQUEST_KEY, metadata_key
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import AttemptStage
from extproc.stages.pipeline import default_stages
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
from tests.unit.test_anthropic_failover import running, sent_json

DEFAULT = Path("config/gateway.yaml").read_text(encoding="utf-8")
GEMINI = "gemini-2.5-flash"
VERTEX_CLAUDE = "claude-sonnet-4-5@20250929"
LLAMA = "meta.llama3-8b-instruct-v1:0"  # on mock-bedrock
BEDROCK_CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
TITAN = "amazon.titan-text-express-v1"
CLIENT_KEY = "team1-key"
GEMINI_BODY = {
    "contents": [{"role": "user", "parts": [{"text": "fail over please"}]}],
    "generationConfig": {"maxOutputTokens": 100},
}
CONVERSE_BODY = {
    "messages": [{"role": "user", "content": [{"text": "fail over please"}]}],
    "inferenceConfig": {"maxTokens": 100},
}
LLAMA_BODY = {"prompt": "fail over please", "max_gen_len": 100}
CLAUDE_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "fail over please"}],
}
# Europe's Bedrock account: another key, another region.
EU_KEY_ID = "AKIDEUROPE"
# The price of the fallback on Vertex in Europe, dearer than the primary's.
GEMINI_EU_PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}
LOCATION_EU = "/v1/projects/mock-project/locations/europe-west4"


def config(vertex: str | None = None, key_file: Path | None = None) -> GatewayConfig:
    """The default config with Llama in Europe (``llama-eu``) failing over to an OpenAI
    model (no Bedrock API), Llama on mock-bedrock, Claude and Titan on Bedrock accounts
    of their own; Claude on Bedrock failing over to Llama, then to Claude in Europe. With
    ``vertex`` (the mock's URL) and its ``key_file``: Gemini on Vertex in us-central1
    (``gemini``) failing over to an OpenAI model, Claude on Vertex (no Gemini API), then
    Gemini in europe-west4. The Converse route takes every configured model (no provider
    of its own); Gemini's API is at the SDK's v1beta paths."""
    raw = yaml.safe_load(DEFAULT)
    bedrock = next(p for p in raw["providers"] if p["name"] == "mock-bedrock")
    europe = {"region": "eu-west-1", "access_key_id": EU_KEY_ID, "secret_access_key": "eu-secret"}
    raw["providers"] += [
        {**bedrock, "name": "bedrock-eu", "aws": europe},
        {**bedrock, "name": "bedrock-claude"},
        {**bedrock, "name": "bedrock-titan"},
    ]
    raw["models"] += [
        {
            "name": "llama-eu",
            "provider": "bedrock-eu",
            "upstream_model": LLAMA,
            "fallbacks": ["gpt-4o", LLAMA, "claude-b", "titan-b"],
        },
        {
            "name": "claude-b",
            "provider": "bedrock-claude",
            "upstream_model": BEDROCK_CLAUDE,
            "fallbacks": [LLAMA, "claude-eu"],
        },
        {"name": "claude-eu", "provider": "bedrock-eu", "upstream_model": BEDROCK_CLAUDE},
        {"name": "titan-b", "provider": "bedrock-titan", "upstream_model": TITAN},
    ]
    for route in raw["routes"]:
        if route["name"] == "bedrock-converse":
            del route["provider"]
    if vertex is not None and key_file is not None:
        here = vertex_provider(vertex, key_file)
        raw["providers"] += [
            {**here, "name": "vertex-us", "gcp": {**here["gcp"], "region": "us-central1"}},
            {**here, "name": "vertex-eu", "gcp": {**here["gcp"], "region": "europe-west4"}},
            {**here, "name": "vertex-claude"},
        ]
        raw["models"] += [
            {
                "name": "gemini",
                "provider": "vertex-us",
                "upstream_model": GEMINI,
                "fallbacks": ["gpt-4o", "claude-v", "gemini-eu"],
            },
            {"name": "gemini-eu", "provider": "vertex-eu", "upstream_model": GEMINI},
            {"name": "claude-v", "provider": "vertex-claude", "upstream_model": VERTEX_CLAUDE},
        ]
        raw["pricing"]["models"]["gemini-eu"] = GEMINI_EU_PRICE
        raw["routes"].insert(
            0, {"name": "gemini", "path_prefix": "/v1beta/models", "api": "gemini_generate_content"}
        )
    return parse_config(yaml.safe_dump(raw), "test", {})


@asynccontextmanager
async def with_vertex(tmp_path: Path) -> AsyncIterator[GatewayConfig]:
    """The config with its Vertex providers on a mock that mints their tokens."""
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        yield config(mock, key_file)


def gemini_path(model: str = "gemini", stream: bool = False) -> str:
    operation = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/{model}:{operation}"


def bedrock_path(model: str, operation: str) -> str:
    return f"/model/{model.replace(':', '%3A')}/{operation}"


async def admitted(
    cfg: GatewayConfig,
    services: Services,
    path: str,
    body: dict[str, Any],
    runtime: Runtime | None = None,
) -> tuple[str, bytes]:
    """The cluster the downstream filter sends the client's request to, and its body
    (``runtime``: a started one, for a request it signs or sends with a token)."""
    client = {"x-goog-api-key": CLIENT_KEY} if "/models/" in path else {}
    client.setdefault("authorization", f"Bearer {CLIENT_KEY}")
    processor = processor_for(cfg, services)
    if runtime is not None:
        processor = Processor(lambda: runtime, default_stages())
    answers = await run_stream(
        processor,
        [request_headers(path, headers=client), request_body(orjson.dumps(body))],
    )
    mutation = answers[-1].request_body.response
    set_headers = {
        o.header.key: o.header.raw_value.decode() for o in mutation.header_mutation.set_headers
    }
    return set_headers[headers.CLUSTER], mutation.body_mutation.body


def attempt(
    runtime: Runtime, provider: str, path: str, body: bytes, replayed: dict[str, str] | None = None
) -> tuple[RequestContext, PhaseOutput, AttemptStage]:
    """One attempt at ``provider`` of the request the client sent to ``path``;
    ``replayed``: an earlier attempt's header changes, which Envoy gives this one."""
    ctx = RequestContext(runtime=runtime)
    ctx.attributes = attempt_on(provider)
    ctx.request_headers = {":path": path, headers.REQUEST_ID: "req-7"}
    ctx.request_headers.update(replayed or {})
    stage = AttemptStage()
    stage.request_headers(ctx, PhaseOutput())
    out = PhaseOutput()
    stage.request_body(ctx, out, body)
    return ctx, out, stage


def chain_of(body: bytes) -> list[list[str]]:
    chain: list[list[str]] = orjson.loads(body)[headers.FAILOVER_CHAIN_KEY]
    return chain


# --- Gemini's API -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_gemini_call_fails_over_to_googles_models_on_vertex_alone(
    services: Services, tmp_path: Path, stream: bool
) -> None:
    async with with_vertex(tmp_path) as cfg:
        cluster, body = await admitted(cfg, services, gemini_path(stream=stream), GEMINI_BODY)
    # gpt-4o (OpenAI's API) and Claude on Vertex (no Gemini API) are left out.
    assert cluster == failover_cluster_name("gemini", (0, 1))
    assert chain_of(body) == [["vertex-us", "gemini", GEMINI], ["vertex-eu", "gemini-eu", GEMINI]]
    sent = orjson.loads(body)
    # The stream is the path's, which each attempt rewrites: the note carries it.
    assert sent[FAILOVER_REQUEST_KEY] == {
        "api": "gemini_generate_content",
        "headers": {},
        "stream": stream,
    }
    assert sent["contents"] == GEMINI_BODY["contents"]


async def test_a_gemini_token_count_goes_to_its_models_provider_alone(
    services: Services, tmp_path: Path
) -> None:
    async with with_vertex(tmp_path) as cfg, running(cfg, services) as runtime:
        cluster, _ = await admitted(
            cfg, services, "/v1beta/models/gemini:countTokens", GEMINI_BODY, runtime
        )
    assert cluster == cluster_name(cfg.provider("vertex-us"))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_vertex_attempt_sends_the_gemini_body_to_its_own_region_with_its_token(
    services: Services, tmp_path: Path, stream: bool
) -> None:
    async with with_vertex(tmp_path) as cfg:
        _, body = await admitted(cfg, services, gemini_path(stream=stream), GEMINI_BODY)
        async with running(cfg, services) as runtime:
            # After the first attempt, Envoy replays its path and token.
            first_path = (
                "/v1/projects/mock-project/locations/us-central1/publishers/google/models/"
                f"{GEMINI}:generateContent"
            )
            replayed = {":path": first_path, "authorization": "Bearer the-first-attempts"}
            ctx, out, _ = attempt(runtime, "vertex-eu", first_path, body, replayed)
    operation = "streamGenerateContent?alt=sse" if stream else "generateContent"
    assert out.set_headers[":path"] == (
        f"{LOCATION_EU}/publishers/google/models/{GEMINI}:{operation}"
    )
    assert out.set_headers["authorization"].startswith("Bearer ya29.mock-")
    assert sent_json(out) == GEMINI_BODY
    assert out.body is not None and b"x-aigw" not in out.body
    assert (ctx.model, ctx.stream, ctx.error_shape) == ("gemini-eu", stream, "google")


async def test_a_vertex_attempts_answer_and_its_429_reach_the_gemini_client_as_they_came(
    services: Services, tmp_path: Path
) -> None:
    async with with_vertex(tmp_path) as cfg:
        _, body = await admitted(cfg, services, gemini_path(stream=True), GEMINI_BODY)
        async with running(cfg, services) as runtime:
            ctx, _, stage = attempt(runtime, "vertex-eu", gemini_path(stream=True), body)
            ctx_429, _, stage_429 = attempt(runtime, "vertex-us", gemini_path(stream=True), body)
    out = PhaseOutput()
    stage.response_headers(ctx, out, {":status": "200", "content-type": "text/event-stream"})
    assert out.set_headers[headers.ANSWERED_BY_PROVIDER] == "vertex-eu"
    assert out.set_headers[headers.ANSWERED_BY_MODEL] == "gemini-eu"
    event = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]},
                        "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1},
    }  # fmt: skip
    sse = b"data: " + orjson.dumps(event) + b"\r\n\r\n"
    answer = PhaseOutput()
    stage.response_body(ctx, answer, sse, True)
    assert answer.body in (None, sse)  # Gemini's own events, unchanged
    # Vertex's quota error: Google's shape, its 429 kept, so Envoy tries the next member.
    exhausted = {
        "error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}
    }
    error_out = PhaseOutput()
    stage_429.response_headers(
        ctx_429, error_out, {":status": "429", "content-type": "application/json"}
    )
    assert error_out.set_headers.get(":status", "429") == "429"
    error_answer = PhaseOutput()
    stage_429.response_body(ctx_429, error_answer, orjson.dumps(exhausted), True)
    assert error_answer.body in (None, orjson.dumps(exhausted))


async def test_a_gemini_answer_is_logged_under_the_clients_model_and_the_member_that_answered(
    services: Services, tmp_path: Path
) -> None:
    answer = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]},
                        "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 1_000_000, "candidatesTokenCount": 1_000_000,
                          "totalTokenCount": 2_000_000},
    }  # fmt: skip
    async with with_vertex(tmp_path) as cfg:
        await run_stream(
            processor_for(cfg, services),
            [
                request_headers(gemini_path(), headers={"x-goog-api-key": CLIENT_KEY}),
                request_body(orjson.dumps(GEMINI_BODY)),
                response_headers(200, answered("vertex-eu", "gemini-eu", GEMINI)),
                response_body(orjson.dumps(answer)),
            ],
        )
    line = only_log_line(services)
    assert (line["provider"], line["model"], line["upstream_model"]) == (
        "vertex-eu",
        "gemini",
        GEMINI,
    )
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1_000_000, 1_000_000)
    assert line["cost_usd"] == pytest.approx(3.0)  # gemini-eu's price


def answered(provider: str, model: str, upstream_model: str) -> dict[str, str]:
    """The headers the per-attempt filter sends down with the member's answer."""
    return {
        headers.ANSWERED_BY_PROVIDER: provider,
        headers.ANSWERED_BY_MODEL: model,
        headers.ANSWERED_UPSTREAM_MODEL: upstream_model,
        "x-envoy-upstream-service-time": "5",
    }


def only_log_line(services: Services) -> dict[str, Any]:
    log = services.access_log
    assert isinstance(log, MemoryLog)
    [line] = log.lines()
    return line


# --- Bedrock's Converse and InvokeModel -----------------------------------------------


@pytest.mark.parametrize("operation", ["converse", "converse-stream"])
async def test_a_converse_call_fails_over_to_every_bedrock_member_of_its_chain(
    services: Services, operation: str
) -> None:
    cluster, body = await admitted(
        config(), services, bedrock_path("llama-eu", operation), CONVERSE_BODY
    )
    # Only gpt-4o (OpenAI's API) is left out: Converse speaks every Bedrock model.
    assert cluster == failover_cluster_name("llama-eu", (0,))
    assert chain_of(body) == [
        ["bedrock-eu", "llama-eu", LLAMA],
        ["mock-bedrock", LLAMA, LLAMA],
        ["bedrock-claude", "claude-b", BEDROCK_CLAUDE],
        ["bedrock-titan", "titan-b", TITAN],
    ]
    assert orjson.loads(body)[FAILOVER_REQUEST_KEY] == {
        "api": "bedrock_converse",
        "headers": {},
        "stream": operation == "converse-stream",
    }


async def test_an_invoke_model_call_fails_over_to_models_of_its_bodys_family_alone(
    services: Services,
) -> None:
    cluster, body = await admitted(
        config(), services, bedrock_path("llama-eu", "invoke"), LLAMA_BODY
    )
    # Llama's body: Claude and Titan (their own bodies) are left out, as is gpt-4o.
    assert cluster == failover_cluster_name("llama-eu", (0, 2, 3))
    assert chain_of(body) == [["bedrock-eu", "llama-eu", LLAMA], ["mock-bedrock", LLAMA, LLAMA]]
    assert orjson.loads(body)[FAILOVER_REQUEST_KEY]["api"] == "bedrock_invoke"

    cluster, body = await admitted(
        config(), services, bedrock_path("claude-b", "invoke-with-response-stream"), CLAUDE_BODY
    )
    # Claude's body: Llama is left out, Claude in Europe kept.
    assert cluster == failover_cluster_name("claude-b", (0,))
    assert chain_of(body) == [
        ["bedrock-claude", "claude-b", BEDROCK_CLAUDE],
        ["bedrock-eu", "claude-eu", BEDROCK_CLAUDE],
    ]
    assert orjson.loads(body)[FAILOVER_REQUEST_KEY]["stream"] is True


async def test_a_bedrock_token_count_goes_to_its_models_provider_alone(
    services: Services,
) -> None:
    counted = {"input": {"converse": CONVERSE_BODY}}
    cfg = config()
    async with running(cfg, services) as runtime:
        path = bedrock_path("llama-eu", "count-tokens")
        cluster, _ = await admitted(cfg, services, path, counted, runtime)
    assert cluster == cluster_name(cfg.provider("bedrock-eu"))


@pytest.mark.parametrize(
    ("provider", "key_id", "region"),
    [("mock-bedrock", "AKIDMOCK", "us-east-1"), ("bedrock-eu", EU_KEY_ID, "eu-west-1")],
)
@pytest.mark.parametrize("operation", ["converse", "converse-stream"])
async def test_a_bedrock_attempt_sends_the_converse_body_signed_for_its_own_account(
    services: Services, provider: str, key_id: str, region: str, operation: str
) -> None:
    cfg = config()
    path = bedrock_path("llama-eu", operation)
    _, body = await admitted(cfg, services, path, CONVERSE_BODY)
    async with running(cfg, services) as runtime:
        replayed = {"authorization": "AWS4-HMAC-SHA256 Credential=the-first-attempts"}
        ctx, out, _ = attempt(runtime, provider, path, body, replayed)
    assert out.set_headers[":path"] == bedrock_path(LLAMA, operation)
    credential = re.match(r"AWS4-HMAC-SHA256 Credential=([^,]+),", out.set_headers["authorization"])
    assert credential is not None
    scope = credential.group(1).split("/")
    assert (scope[0], scope[2], scope[3]) == (key_id, region, "bedrock")
    assert sent_json(out) == CONVERSE_BODY
    assert (ctx.stream, ctx.error_shape) == (operation == "converse-stream", "bedrock")


async def test_a_bedrock_attempt_sends_the_invoke_model_body_as_it_came(
    services: Services,
) -> None:
    cfg = config()
    path = bedrock_path("llama-eu", "invoke")
    _, body = await admitted(cfg, services, path, LLAMA_BODY)
    async with running(cfg, services) as runtime:
        ctx, out, stage = attempt(runtime, "mock-bedrock", path, body)
    assert out.set_headers[":path"] == bedrock_path(LLAMA, "invoke")
    assert out.set_headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    assert sent_json(out) == LLAMA_BODY
    # Llama's answer passes as it came, its counts in Bedrock's headers.
    llama = {"generation": "hi", "prompt_token_count": 4, "generation_token_count": 1,
             "stop_reason": "stop"}  # fmt: skip
    answer_headers = {":status": "200", "content-type": "application/json",
                      "x-amzn-bedrock-input-token-count": "4",
                      "x-amzn-bedrock-output-token-count": "1"}  # fmt: skip
    stage.response_headers(ctx, PhaseOutput(), answer_headers)
    answer = PhaseOutput()
    stage.response_body(ctx, answer, orjson.dumps(llama), True)
    assert answer.body in (None, orjson.dumps(llama))


async def test_a_bedrock_throttle_is_passed_on_as_it_came_so_envoy_tries_the_next_member(
    services: Services,
) -> None:
    cfg = config()
    path = bedrock_path("llama-eu", "converse")
    _, body = await admitted(cfg, services, path, CONVERSE_BODY)
    async with running(cfg, services) as runtime:
        ctx, _, stage = attempt(runtime, "bedrock-eu", path, body)
    throttled = {"message": "Too many requests, please wait before trying again."}
    out = PhaseOutput()
    stage.response_headers(
        ctx,
        out,
        {
            ":status": "429",
            "content-type": "application/json",
            "x-amzn-errortype": "ThrottlingException:http://internal.amazon.com/",
        },
    )
    assert out.set_headers.get(":status", "429") == "429"
    answer = PhaseOutput()
    stage.response_body(ctx, answer, orjson.dumps(throttled), True)
    assert answer.body in (None, orjson.dumps(throttled))


async def test_a_converse_answer_is_logged_under_the_clients_model_and_the_member_that_answered(
    services: Services,
) -> None:
    answer = {
        "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 1_000_000, "outputTokens": 1_000_000, "totalTokens": 2_000_000},
        "metrics": {"latencyMs": 5},
    }
    await run_stream(
        processor_for(config(), services),
        [
            request_headers(
                bedrock_path("llama-eu", "converse"),
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
            ),
            request_body(orjson.dumps(CONVERSE_BODY)),
            response_headers(200, answered("mock-bedrock", LLAMA, LLAMA)),
            response_body(orjson.dumps(answer)),
        ],
    )
    line = only_log_line(services)
    assert (line["provider"], line["model"], line["upstream_model"]) == (
        "mock-bedrock",
        "llama-eu",
        LLAMA,
    )
    assert line["cost_usd"] == pytest.approx(0.90)  # Llama 3 8B's price: 0.30 + 0.60


async def test_when_every_attempt_failed_the_client_gets_bedrocks_error_as_it_came(
    services: Services,
) -> None:
    throttled = orjson.dumps({"message": "Too many requests, please wait before trying again."})
    errortype = "ThrottlingException:http://internal.amazon.com/"
    answers = await run_stream(
        processor_for(config(), services),
        [
            request_headers(
                bedrock_path("llama-eu", "converse"),
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
            ),
            request_body(orjson.dumps(CONVERSE_BODY)),
            response_headers(
                429, {**answered("bedrock-titan", "titan-b", TITAN), "x-amzn-errortype": errortype}
            ),
            response_body(throttled),
        ],
    )
    mutation = answers[2].response_headers.response.header_mutation
    assert ":status" not in {o.header.key for o in mutation.set_headers}
    assert not answers[3].response_body.response.body_mutation.body
    line = only_log_line(services)
    assert (line["provider"], line["model"], line["http_status_code"]) == (
        "bedrock-titan",
        "llama-eu",
        429,
    )
    assert line["total_tokens"] == 0


# --- what the attempts trust, Envoy's reply ------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        {"api": "bedrock_converse", "headers": {}},  # the stream is the path's: required
        {"api": "bedrock_converse", "headers": {}, "stream": "yes"},
        {"api": "bedrock_count_tokens", "headers": {}, "stream": False},  # never fails over
    ],
)
async def test_an_attempt_refuses_a_note_the_gateway_did_not_write(
    services: Services, written: object
) -> None:
    cfg = config()
    path = bedrock_path("llama-eu", "converse")
    _, body = await admitted(cfg, services, path, CONVERSE_BODY)
    tampered = orjson.dumps({**orjson.loads(body), FAILOVER_REQUEST_KEY: written})
    async with running(cfg, services) as runtime:
        with pytest.raises(UpstreamError) as refused:
            attempt(runtime, "mock-bedrock", path, tampered)
    assert refused.value.code == "failover_misrouted"


async def test_envoys_reply_to_an_answer_over_the_buffer_names_the_attempt_in_every_shape(
    tmp_path: Path,
) -> None:
    async with with_vertex(tmp_path) as cfg:
        listener = render_bootstrap(cfg)["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    too_large = [
        mapper
        for mapper in manager["local_reply_config"]["mappers"]
        if "response_payload_too_large" in str(mapper["filter"])
    ]
    # OpenAI's shape, and Bedrock's, Google's and Anthropic's for those APIs' clients.
    assert len(too_large) == 4
    for mapper in too_large:
        added = {
            option["header"]["key"]: option["header"]["value"]
            for option in mapper["headers_to_add"]
        }
        for name in ANSWERED_HEADERS:
            assert metadata_key(name) in added[name]


@pytest.mark.parametrize(
    ("named", "body", "fallback", "serves"),
    [
        # Claude's body: any Claude, through a profile or an ARN that hides its model.
        (BEDROCK_CLAUDE, CLAUDE_BODY, "eu.anthropic.claude-3-haiku-20240307-v1:0", True),
        (
            BEDROCK_CLAUDE,
            CLAUDE_BODY,
            "arn:aws:bedrock:us-east-1:1:application-inference-profile/x",
            True,
        ),
        (BEDROCK_CLAUDE, CLAUDE_BODY, LLAMA, False),
        # A family the gateway knows: any model of it.
        (LLAMA, LLAMA_BODY, "us.meta.llama3-1-70b-instruct-v1:0", True),
        (
            "mistral.mistral-7b-instruct-v0:2",
            {"prompt": "hi"},
            "mistral.mixtral-8x7b-instruct-v0:1",
            True,
        ),
        (LLAMA, LLAMA_BODY, "mistral.mistral-7b-instruct-v0:2", False),
        (TITAN, {"inputText": "hi"}, LLAMA, False),
        # Another family: the same model alone, in another region or account.
        ("amazon.nova-pro-v1:0", {"messages": []}, "us.amazon.nova-pro-v1:0", True),
        ("amazon.nova-pro-v1:0", {"messages": []}, "amazon.nova-lite-v1:0", False),
        # A model an ARN hides, its body not Claude's: no family to tell.
        ("arn:aws:bedrock:us-east-1:1:provisioned-model/x", LLAMA_BODY, LLAMA, False),
    ],
)
def test_an_invoke_model_fallback_serves_the_bodys_family_alone(
    named: str, body: dict[str, Any], fallback: str, serves: bool
) -> None:
    assert serves_invoke_body(body, named, fallback) is serves
