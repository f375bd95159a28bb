"""Clients of Vertex AI (AnthropicVertex, Claude Code's Vertex mode) on an anthropic_vertex
route, one request through the processor (real ext_proc messages): the Messages call each
provider type gets, the provider's project rather than the client's, the model mapping,
access rules, guards and hard caps that apply to the path's model, and the gateway's own
refusals in Anthropic's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
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

KEY = {"authorization": "Bearer team1-key"}
# Where the client's Vertex would serve it: a project and region the gateway never uses.
CLIENT_LOCATION = "/vertex/projects/client-project/locations/europe-west1"
ANTHROPIC_MODEL = "claude-3-5-haiku-latest"  # on mock-anthropic in the default config
VERTEX_MODEL = "claude-sonnet-4-5@20250929"
BEDROCK_ALIAS = "haiku"  # anthropic.claude-3-haiku-20240307-v1:0 on mock-bedrock
# Claude Code names models as Vertex does; an operator maps such a name to Anthropic's.
MAPPED_MODEL = "claude-opus-4-1@20250805"
PROMPT = [{"role": "user", "content": "Say hello, please."}]
BODY = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 100, "messages": PROMPT}
ANSWER = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 11, "output_tokens": 3},
}
FROM_PROVIDER = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}


def predict(model: str, operation: str = "rawPredict") -> str:
    return f"{CLIENT_LOCATION}/publishers/anthropic/models/{model}:{operation}"


COUNT = f"{CLIENT_LOCATION}/publishers/anthropic/models/count-tokens:rawPredict"


def vertex_clients_config(
    key_file: Path, mock: str, route: dict[str, Any] | None = None, **tail: Any
) -> Any:
    """The default config with the mock's Vertex, an anthropic_vertex route under /vertex
    (with ``route``'s fields), and ``tail``'s sections."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["providers"].append(vertex_provider(mock, key_file))
    raw["models"] += [
        {"name": VERTEX_MODEL, "provider": "vertex"},
        {
            "name": MAPPED_MODEL,
            "provider": "mock-anthropic",
            "upstream_model": "claude-opus-4-1-20250805",
        },
    ]
    raw["auth"]["api_keys"].append(
        {"id": "team3", "key": "team3-key", "allowed_models": [ANTHROPIC_MODEL]}
    )
    raw["routes"].insert(
        0,
        {
            "name": "vertex-clients",
            "path_prefix": "/vertex",
            "api": "anthropic_vertex",
            **(route or {}),
        },
    )
    raw.update(tail)
    return parse_config(yaml.safe_dump(raw), "test", {})


@pytest.fixture
async def vertex(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        yield mock, key_file


async def gateway(
    vertex: tuple[str, Path], services: Services, route: dict[str, Any] | None = None, **tail: Any
) -> AsyncIterator[Processor]:
    mock, key_file = vertex
    runtime = Runtime(vertex_clients_config(key_file, mock, route, **tail), services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


@pytest.fixture
def services() -> Services:
    return Services(GatewayMetrics(), MemoryLog())


def sent_upstream(answers: list[Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """The headers the gateway set on the request to the provider, and the body it wrote."""
    response = answers[1].request_body.response
    headers = {
        h.header.key: h.header.raw_value.decode() for h in response.header_mutation.set_headers
    }
    mutation = response.body_mutation
    assert mutation.WhichOneof("mutation") == "body", "the client's body never goes as it came"
    return headers, orjson.loads(mutation.body)


def refusal(answers: list[Any]) -> tuple[int, dict[str, Any]]:
    answer = answers[-1].immediate_response
    return answer.status.code, orjson.loads(answer.body)


def line_status(services: Services) -> int:
    status: int = log_line(services)["http_status_code"]
    return status


def log_line(services: Services) -> dict[str, Any]:
    log = services.access_log
    assert isinstance(log, MemoryLog)
    [line] = log.lines()
    return line


async def call(
    processor: Processor, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> list[Any]:
    return await run_stream(
        processor,
        [request_headers(path, headers=headers or KEY), request_body(orjson.dumps(body))],
    )


async def test_a_message_goes_to_an_anthropic_provider_as_a_messages_call(
    vertex: tuple[str, Path], services: Services
) -> None:
    async for processor in gateway(vertex, services):
        answers = await call(processor, predict(ANTHROPIC_MODEL), BODY)
    headers, body = sent_upstream(answers)
    assert headers[":path"] == "/v1/messages"
    assert headers["x-api-key"] == "mock-provider-key"
    assert body == {"max_tokens": 100, "messages": PROMPT, "model": ANTHROPIC_MODEL}
    removed = answers[0].request_headers.response.header_mutation.remove_headers
    assert "authorization" in removed, "the client's key never reaches the provider"
    # A pass-through answer skips the response headers, as on /v1/messages.
    assert answers[0].mode_override.response_header_mode == ProcessingMode.SKIP


async def test_a_vertex_model_name_maps_to_the_providers_name(
    vertex: tuple[str, Path], services: Services
) -> None:
    async for processor in gateway(vertex, services):
        answers = await call(processor, predict(MAPPED_MODEL), BODY)
    headers, body = sent_upstream(answers)
    assert (headers[":path"], body["model"]) == ("/v1/messages", "claude-opus-4-1-20250805")


async def test_claude_on_a_vertex_provider_is_served_from_the_providers_own_project(
    vertex: tuple[str, Path], services: Services
) -> None:
    events = [
        {"type": "message_start", "message": {**ANSWER, "content": [], "stop_reason": None}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 5},
        },
        {"type": "message_stop"},
    ]
    stream = b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )
    async for processor in gateway(vertex, services):
        answers = await run_stream(
            processor,
            [
                request_headers(predict(VERTEX_MODEL, "streamRawPredict"), headers=KEY),
                request_body(orjson.dumps({**BODY, "stream": True})),
                response_headers(200, {**FROM_PROVIDER, "content-type": "text/event-stream"}),
                response_body(stream),
            ],
        )
    headers, body = sent_upstream(answers)
    assert headers[":path"] == (
        "/v1/projects/mock-project/locations/us-east5/publishers/anthropic/models/"
        f"{VERTEX_MODEL}:streamRawPredict"
    )
    assert headers["authorization"].startswith("Bearer ya29.mock-")
    assert body == {
        "max_tokens": 100,
        "messages": PROMPT,
        "stream": True,
        "anthropic_version": "vertex-2023-10-16",
    }
    line = log_line(services)
    assert (line["route"], line["provider"], line["model"], line["stream"]) == (
        "vertex-clients",
        "vertex",
        VERTEX_MODEL,
        True,
    )
    assert (line["prompt_tokens"], line["completion_tokens"]) == (11, 5)


async def test_claude_on_bedrock_gets_invoke_model_with_bedrocks_version(
    vertex: tuple[str, Path], services: Services
) -> None:
    async for processor in gateway(vertex, services):
        answers = await call(processor, predict(BEDROCK_ALIAS), BODY)
    headers, body = sent_upstream(answers)
    assert headers[":path"] == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert body["anthropic_version"] == "bedrock-2023-05-31" and "model" not in body


async def test_a_count_goes_to_anthropics_count_under_the_bodys_model(
    vertex: tuple[str, Path], services: Services
) -> None:
    count = {"anthropic_version": "vertex-2023-10-16", "model": ANTHROPIC_MODEL, "messages": PROMPT}
    async for processor in gateway(vertex, services):
        answers = await run_stream(
            processor,
            [
                request_headers(COUNT, headers=KEY),
                request_body(orjson.dumps(count)),
                response_headers(200, FROM_PROVIDER),
                response_body(b'{"input_tokens": 11}'),
            ],
        )
    headers, body = sent_upstream(answers)
    assert headers[":path"] == "/v1/messages/count_tokens"
    assert body == {"model": ANTHROPIC_MODEL, "messages": PROMPT}
    line = log_line(services)
    assert (line["model"], line["total_tokens"], line["http_status_code"]) == (
        ANTHROPIC_MODEL,
        0,
        200,
    )


@pytest.mark.parametrize(
    ("path", "status", "kind", "said"),
    [
        (predict("gpt-unknown@1"), 404, "not_found_error", "gpt-unknown@1"),
        (
            f"{CLIENT_LOCATION}/publishers/google/models/gemini-2.5-flash:rawPredict",
            404,
            "not_found_error",
            "publishers/anthropic",
        ),
        (predict(ANTHROPIC_MODEL, "predict"), 404, "not_found_error", "rawPredict"),
    ],
)
async def test_what_the_gateway_does_not_serve_is_refused_in_anthropics_shape(
    vertex: tuple[str, Path], services: Services, path: str, status: int, kind: str, said: str
) -> None:
    async for processor in gateway(vertex, services):
        answers = await call(processor, path, BODY)
    code, error = refusal(answers)
    assert code == status
    assert error["type"] == "error" and error["error"]["type"] == kind
    assert said in error["error"]["message"]


async def test_a_bad_key_is_refused_in_anthropics_shape(
    vertex: tuple[str, Path], services: Services
) -> None:
    async for processor in gateway(vertex, services):
        answers = await call(
            processor, predict(ANTHROPIC_MODEL), BODY, {"authorization": "Bearer wrong"}
        )
    code, error = refusal(answers)
    assert (code, error["type"], error["error"]["type"]) == (401, "error", "authentication_error")


async def test_the_keys_model_rules_apply_to_the_paths_model(
    vertex: tuple[str, Path], services: Services
) -> None:
    team3 = {"authorization": "Bearer team3-key"}
    async for processor in gateway(vertex, services):
        allowed = await call(processor, predict(ANTHROPIC_MODEL), BODY, team3)
        denied = await call(processor, predict(BEDROCK_ALIAS), BODY, team3)
    assert sent_upstream(allowed)[0][":path"] == "/v1/messages"
    code, error = refusal(denied)
    assert (code, error["error"]["type"]) == (403, "permission_error")


async def test_the_routes_guards_read_the_prompt(
    vertex: tuple[str, Path], services: Services
) -> None:
    policy = {"name": "secrets", "request": [{"name": "no-secret", "literals": ["hunter2"]}]}
    secret = {**BODY, "messages": [{"role": "user", "content": "my password is hunter2"}]}
    guarded = {"guardrails": "secrets"}
    async for processor in gateway(vertex, services, guarded, guardrails={"policies": [policy]}):
        answers = await call(processor, predict(VERTEX_MODEL), secret)
    code, error = refusal(answers)
    assert (code, error["type"], error["error"]["type"]) == (403, "error", "permission_error")
    assert line_status(services) == 403


async def test_a_hard_cap_lowers_max_tokens_to_the_room_left(
    vertex: tuple[str, Path], quota_store: QuotaStore
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    rules = {
        "rules": [{"name": "cap", "subject": "api_key", "tokens_per_day": 300, "hard_cap": True}]
    }
    async for processor in gateway(vertex, services, quotas=rules):
        answers = await call(processor, predict(VERTEX_MODEL), {**BODY, "max_tokens": 4096})
    _, body = sent_upstream(answers)
    assert 0 < body["max_tokens"] < 300, "the cap left room for the prompt"


async def test_a_model_no_anthropic_api_serves_is_a_400_naming_the_routes_api(
    vertex: tuple[str, Path], services: Services
) -> None:
    async for processor in gateway(vertex, services):
        answers = await call(processor, predict("gpt-4o-mini"), BODY)
    code, error = refusal(answers)
    assert (code, error["error"]["type"]) == (400, "invalid_request_error")
    assert "this route (anthropic_vertex)" in error["error"]["message"]


# Claude Code in its Vertex mode names Claude as Vertex does; the default config's
# `claude-` prefix sends a name it does not list to mock-anthropic.
CLAUDE_CODES_NAME = "claude-haiku-4-5@20251001"
ANTHROPICS_NAME = "claude-haiku-4-5-20251001"


async def test_a_vertex_name_the_config_does_not_list_reaches_anthropic_as_anthropic_spells_it(
    vertex: tuple[str, Path], services: Services
) -> None:
    prices = {"input_per_million": 1, "output_per_million": 5}
    async for processor in gateway(vertex, services, pricing={"models": {ANTHROPICS_NAME: prices}}):
        answers = await run_stream(
            processor,
            [
                request_headers(predict(CLAUDE_CODES_NAME), headers=KEY),
                request_body(orjson.dumps(BODY)),
                response_headers(200, FROM_PROVIDER),
                response_body(orjson.dumps({**ANSWER, "model": ANTHROPICS_NAME})),
            ],
        )
    headers, body = sent_upstream(answers)
    assert (headers[":path"], body["model"]) == ("/v1/messages", ANTHROPICS_NAME)
    line = log_line(services)
    assert (line["model"], line["provider"]) == (CLAUDE_CODES_NAME, "mock-anthropic")
    # Priced as the model it is: 11 tokens in at $1/M, 3 out at $5/M.
    assert (line["cost_usd"], line["cost_priced"]) == (0.000026, True)


async def test_a_key_limited_to_anthropics_spelling_may_call_it_by_vertexs(
    vertex: tuple[str, Path], services: Services
) -> None:
    team4 = {"id": "team4", "key": "team4-key", "allowed_models": [ANTHROPICS_NAME]}
    headers = {"authorization": "Bearer team4-key"}
    async for processor in gateway(vertex, services, auth={"api_keys": [team4]}):
        allowed = await call(processor, predict(CLAUDE_CODES_NAME), BODY, headers)
        denied = await call(processor, predict("claude-opus-4-1@20250805"), BODY, headers)
    assert sent_upstream(allowed)[1]["model"] == ANTHROPICS_NAME
    code, error = refusal(denied)
    assert (code, error["error"]["type"]) == (403, "permission_error")


async def test_a_rule_keeping_anthropics_spelling_to_a_group_keeps_vertexs_too(
    vertex: tuple[str, Path], services: Services
) -> None:
    # team1 is not in `research`: Vertex's spelling of the model must not get it past.
    rule = {"name": "haiku-4-5-research", "models": [ANTHROPICS_NAME], "groups": ["research"]}
    auth = {"api_keys": [{"id": "team1", "key": "team1-key"}], "access_rules": [rule]}
    async for processor in gateway(vertex, services, auth=auth):
        denied = await call(processor, predict(CLAUDE_CODES_NAME), BODY)
    code, error = refusal(denied)
    assert (code, error["error"]["type"]) == (403, "permission_error")
    assert "haiku-4-5-research" in error["error"]["message"]
