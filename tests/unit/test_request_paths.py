"""Request paths: a trailing slash never moves a request onto another route.

Without the check, ``POST /openai/v1/embeddings/`` fell to the ``/openai`` prefix and
was read as a chat completion (a 400 "'messages' is required" for an embeddings
body), ``POST /v1/responses/compact/`` was taken for a stored response named
``compact`` (a 405 "use GET or DELETE"), and ``/v1/messages/`` got an OpenAI-shaped
404 that Anthropic's SDKs do not read. Now each gets a 404 in the error shape of the
API it meant, naming the path without the slash; paths whose slash keeps them on
their route are served as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.loader import parse_config
from extproc.headers import CLUSTER
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG

KEY = {"authorization": "Bearer team1-key"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
EMBEDDINGS = {"model": "text-embedding-3-small", "input": "hi"}
RESPONSES = {"model": "gpt-4o-mini", "input": "hi"}
MESSAGES = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "hi"}],
}
# The path a client sent with a trailing slash, its body, and the error shape of the
# API it meant.
MEANT_ANOTHER_ROUTE = [
    ("/v1/chat/completions/", CHAT, "openai"),
    ("/v1/chat/completions//?stream=false", CHAT, "openai"),
    ("/v1/embeddings/", EMBEDDINGS, "openai"),
    ("/openai/v1/embeddings/", EMBEDDINGS, "openai"),
    ("/openai/embeddings/", EMBEDDINGS, "openai"),
    ("/openai/v1/completions/", {"model": "gpt-4o-mini", "prompt": "hi"}, "openai"),
    ("/v1/responses/", RESPONSES, "openai"),
    ("/v1/responses/compact/", RESPONSES, "openai"),
    ("/openai/v1/responses/compact/", RESPONSES, "openai"),
    ("/v1/responses/input_tokens/", RESPONSES, "openai"),
    ("/v1/messages/", MESSAGES, "anthropic"),
    ("/v1/messages/count_tokens/", MESSAGES, "anthropic"),
]


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Processor, MemoryLog]]:
    log = MemoryLog()
    runtime = Runtime(parse_config(DEFAULT_CONFIG, "t", {}), Services(GatewayMetrics(), log))
    await runtime.start()
    try:
        yield Processor(lambda: runtime, default_stages()), log
    finally:
        await runtime.close()


async def send(
    gateway: Processor, path: str, body: dict[str, Any] | None, method: str = "POST"
) -> list[ext.ProcessingResponse]:
    messages = [request_headers(path, method, KEY, end_of_stream=body is None)]
    if body is not None:
        messages.append(request_body(orjson.dumps(body)))
    return await run_stream(gateway, messages)


def sent_upstream(answers: list[ext.ProcessingResponse]) -> bool:
    """Whether the gateway sent the request on to a provider (set its cluster)."""
    for answer in answers:
        kind = answer.WhichOneof("response")
        if kind in ("request_headers", "request_body"):
            mutation = getattr(answer, kind).response.header_mutation
            if any(h.header.key == CLUSTER for h in mutation.set_headers):
                return True
    return False


def error_of(answers: list[ext.ProcessingResponse]) -> tuple[int, dict[str, Any]]:
    [answer] = [a for a in answers if a.HasField("immediate_response")]
    immediate = answer.immediate_response
    return immediate.status.code, orjson.loads(immediate.body)


@pytest.mark.parametrize(("path", "body", "shape"), MEANT_ANOTHER_ROUTE)
async def test_a_trailing_slash_is_a_404_naming_the_path_the_client_meant(
    gateway: tuple[Processor, MemoryLog], path: str, body: dict[str, Any], shape: str
) -> None:
    processor, log = gateway
    answers = await send(processor, path, body)
    status, answer = error_of(answers)
    assert status == 404
    meant = path.partition("?")[0].rstrip("/")
    if shape == "anthropic":
        assert answer["type"] == "error"
        assert answer["error"]["type"] == "not_found_error"
        message = answer["error"]["message"]
    else:
        assert answer["error"]["code"] == "route_not_found"
        message = answer["error"]["message"]
    assert f"did you mean {meant} " in message
    assert not sent_upstream(answers)
    [line] = log.lines()
    assert line["http_status_code"] == 404
    assert line["total_tokens"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        # The prefix route serves anything below it: the slash keeps it there.
        ("POST", "/openai/v1/chat/completions/", CHAT),
        ("POST", "/openai/gpt-4o/", CHAT),
        ("POST", "/bedrock/titan/", CHAT),
    ],
)
async def test_a_trailing_slash_that_keeps_the_route_is_served(
    gateway: tuple[Processor, MemoryLog], method: str, path: str, body: dict[str, Any]
) -> None:
    processor, _ = gateway
    answers = await send(processor, path, body, method)
    assert not any(a.HasField("immediate_response") for a in answers)
    assert sent_upstream(answers)


@pytest.mark.parametrize("path", ["/v1/models/", "/openai/v1/models/"])
async def test_the_model_list_with_a_trailing_slash_is_the_model_list(
    gateway: tuple[Processor, MemoryLog], path: str
) -> None:
    processor, _ = gateway
    answers = await send(processor, path, None, "GET")
    status, answer = error_of(answers)
    assert status == 200
    assert answer["object"] == "list"


async def test_a_path_no_route_serves_with_or_without_its_slash_passes_by(
    gateway: tuple[Processor, MemoryLog],
) -> None:
    """Not AI traffic: Envoy answers it (its catch-all 404), the gateway stays out."""
    processor, log = gateway
    answers = await send(processor, "/healthz/", None, "GET")
    assert not any(a.HasField("immediate_response") for a in answers)
    assert not sent_upstream(answers)
    assert log.lines() == []


# A path whose letters' case put it on another route than the configured spelling (or
# on none), its body, the error shape of the API it meant, and that spelling.
MISCASED = [
    # The /openai prefix read it as a chat completion: 400 "'messages' is required".
    ("POST", "/openai/v1/Embeddings", EMBEDDINGS, "openai", "/openai/v1/embeddings"),
    ("POST", "/openai/Embeddings/", EMBEDDINGS, "openai", "/openai/embeddings"),
    ("POST", "/openai/v1/Responses", RESPONSES, "openai", "/openai/v1/responses"),
    # The model list was told to use POST.
    ("GET", "/openai/v1/Models", None, "openai", "/openai/v1/models"),
    # No route at all: Envoy's 404, which named no path.
    ("POST", "/V1/embeddings", EMBEDDINGS, "openai", "/v1/embeddings"),
    ("POST", "/OpenAI/gpt-4o?stream=false", CHAT, "openai", "/openai/gpt-4o"),
    ("POST", "/v1/Messages", MESSAGES, "anthropic", "/v1/messages"),
]


@pytest.mark.parametrize(("method", "path", "body", "shape", "meant"), MISCASED)
async def test_a_miscased_path_is_a_404_naming_the_path_the_client_meant(
    gateway: tuple[Processor, MemoryLog],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    shape: str,
    meant: str,
) -> None:
    processor, log = gateway
    answers = await send(processor, path, body, method)
    status, answer = error_of(answers)
    assert status == 404
    if shape == "anthropic":
        assert answer["error"]["type"] == "not_found_error"
    else:
        assert answer["error"]["code"] == "route_not_found"
    assert f"did you mean {meant} (paths are case-sensitive)?" in answer["error"]["message"]
    assert "stream=false" not in answer["error"]["message"]
    assert not sent_upstream(answers)
    [line] = log.lines()
    assert line["http_status_code"] == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        # Below a prefix route, case is the client's own: a model's name, an id.
        ("POST", "/openai/GPT-4o", CHAT),
        ("POST", "/openai/v1/Chat/Completions", CHAT),
        ("POST", "/bedrock/Titan", CHAT),
        ("GET", "/v1/models/GPT-4o-mini", None),
    ],
)
async def test_case_below_a_prefix_keeps_the_route(
    gateway: tuple[Processor, MemoryLog], method: str, path: str, body: dict[str, Any] | None
) -> None:
    processor, _ = gateway
    answers = await send(processor, path, body, method)
    assert not any(
        a.HasField("immediate_response") and b"route_not_found" in a.immediate_response.body
        for a in answers
    )


def test_routes_differing_only_in_case_each_serve_their_own() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    raw["routes"] += [
        {"name": "upper-embeddings", "path": "/Team/v1/embeddings", "api": "openai_embeddings"},
        {"name": "upper", "path_prefix": "/Team/chat"},
        {"name": "lower", "path_prefix": "/team/chat"},
    ]
    config = parse_config(yaml.safe_dump(raw), "t", {})
    routes = Runtime(config, Services(GatewayMetrics(), MemoryLog())).routes
    for path in ("/Team/v1/embeddings", "/Team/chat/gpt-4o", "/team/chat/gpt-4o"):
        assert routes.case_twin(path) is None
    twin = routes.case_twin("/TEAM/v1/embeddings")
    assert twin is not None and twin[0] == "/Team/v1/embeddings"


GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize(
    "path",
    [
        # google-genai without api_version: the model list's `/v1/models/{model}`.
        "/v1/models/gemini-2.5-flash:generateContent",
        "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "/openai/v1/models/gemini-2.5-flash:countTokens",
    ],
)
async def test_a_gemini_call_on_the_model_list_is_googles_404(
    gateway: tuple[Processor, MemoryLog], path: str
) -> None:
    """It was OpenAI's 405 "POST is not allowed", which google-genai reads as no
    status, on a gateway that serves Gemini's API nowhere."""
    processor, log = gateway
    answers = await send(processor, path, GEMINI_BODY)
    status, answer = error_of(answers)
    assert status == 404
    assert answer["error"]["status"] == "NOT_FOUND"
    message = answer["error"]["message"]
    assert message.startswith(f"POST {path.partition('?')[0]} is a Gemini API call on ")
    assert message.endswith("OpenAI's model list here; this gateway serves no Gemini API route")
    assert not sent_upstream(answers)
    [line] = log.lines()
    assert line["http_status_code"] == 404


async def test_a_gemini_call_on_the_model_list_names_the_gemini_routes_path() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    raw["routes"].insert(
        0, {"name": "gemini", "path_prefix": "/v1beta/models", "api": "gemini_generate_content"}
    )
    runtime = Runtime(
        parse_config(yaml.safe_dump(raw), "t", {}), Services(GatewayMetrics(), MemoryLog())
    )
    await runtime.start()
    try:
        processor = Processor(lambda: runtime, default_stages())
        answers = await send(processor, "/v1/models/gemini-2.5-flash:generateContent", GEMINI_BODY)
    finally:
        await runtime.close()
    status, answer = error_of(answers)
    assert status == 404
    assert answer["error"]["message"].endswith(
        "; use /v1beta/models/gemini-2.5-flash:generateContent"
        " (google-genai: HttpOptions(api_version='v1beta'))"
    )


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        # A fine-tuned OpenAI model's id holds colons: still the model list's to answer.
        ("GET", "/v1/models/ft:gpt-4o-mini:org:custom:abc123", 404),
        ("POST", "/v1/models/ft:gpt-4o-mini:org:custom:abc123", 405),
    ],
)
async def test_an_openai_model_id_with_colons_stays_the_model_lists(
    gateway: tuple[Processor, MemoryLog], method: str, path: str, status: int
) -> None:
    processor, _ = gateway
    answers = await send(processor, path, None if method == "GET" else {}, method)
    found, answer = error_of(answers)
    assert found == status
    assert "type" in answer["error"]  # OpenAI's shape
