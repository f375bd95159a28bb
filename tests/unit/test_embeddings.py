"""OpenAI embeddings through the processor: the body checks, the provider's request,
the usage read from the answer, and what the log line records."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.config import GatewayConfig, load_config
from extproc.config.loader import ConfigError
from extproc.config.model import ModelKind
from extproc.context import Identity
from extproc.embeddings import check_embeddings_body, estimate_input_tokens
from extproc.errors import BadRequestError
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.model_list import usable_names
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.openai_embeddings import EmbeddingsReader
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import (
    WORKSHOP,
    Gateway,
    immediate,
    upstream_body,
    webhook_config,
    webhook_server,
)

EMBEDDINGS = "/v1/embeddings"
AUTH = {"authorization": "Bearer team1-key"}


def embeddings(**fields: Any) -> bytes:
    return orjson.dumps({"model": "text-embedding-3-small", "input": "hello world", **fields})


def answer(prompt_tokens: int, vectors: int = 1, model: str = "text-embedding-3-small") -> bytes:
    data = [
        {"object": "embedding", "index": i, "embedding": [0.125] * 1536} for i in range(vectors)
    ]
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


def set_headers(response: ext.ProcessingResponse, phase: str) -> dict[str, str]:
    mutation = getattr(response, phase).response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def error_of(response: ext.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    immediate = response.immediate_response
    return immediate.status.code, orjson.loads(immediate.body)["error"]


async def call(processor: Processor, body: bytes, reply: bytes) -> list[ext.ProcessingResponse]:
    return await run_stream(
        processor,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(body),
            response_headers(200),
            response_body(reply),
        ],
    )


async def test_an_embeddings_call_is_sent_to_the_providers_embeddings_endpoint(
    processor: Processor,
) -> None:
    answers = await run_stream(
        processor, [request_headers(EMBEDDINGS, headers=AUTH), request_body(embeddings())]
    )
    mutated = set_headers(answers[1], "request_body")
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    # The client's path is the mock provider's (base URL .../v1): no rewrite, no new body.
    assert ":path" not in mutated
    assert not answers[1].request_body.response.HasField("body_mutation")


async def test_usage_is_the_providers_prompt_count_and_nothing_is_completion(
    processor: Processor, services: Services
) -> None:
    await call(processor, embeddings(input=["one", "two", "three"]), answer(9, vectors=3))
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["route"] == "openai-embeddings"
    assert line["http_status_code"] == 200
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (9, 0, 9)
    assert line["usage_reported"] is True
    assert line["response_model"] == "text-embedding-3-small"
    assert line["finish_reasons"] is None
    # 9 tokens at the configured $0.02 per million input tokens.
    assert line["cost_usd"] == pytest.approx(9 * 0.02 / 1_000_000)


async def test_the_model_is_sent_under_the_providers_name(
    services: Services,
) -> None:
    config = load_config("config/gateway.yaml", environ={})
    models = [
        m.model_copy(update={"upstream_model": "text-embedding-3-small-2024"})
        if m.name == "text-embedding-3-small"
        else m
        for m in config.models
    ]
    processor = processor_for(config.model_copy(update={"models": tuple(models)}), services)
    answers = await run_stream(
        processor, [request_headers(EMBEDDINGS, headers=AUTH), request_body(embeddings())]
    )
    sent = orjson.loads(answers[1].request_body.response.body_mutation.body)
    assert sent == {"model": "text-embedding-3-small-2024", "input": "hello world"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "text-embedding-3-small"}, "input"),
        ({"model": "text-embedding-3-small", "input": ""}, "input"),
        ({"model": "text-embedding-3-small", "input": []}, "input"),
        ({"model": "text-embedding-3-small", "input": ["a", ""]}, "input[1]"),
        ({"model": "text-embedding-3-small", "input": ["a", 3]}, "input[1]"),
        ({"model": "text-embedding-3-small", "input": [1, "a"]}, "input"),
        ({"model": "text-embedding-3-small", "input": [[1, 2], []]}, "input[1]"),
        ({"model": "text-embedding-3-small", "input": [True]}, "input[0]"),
        ({"model": "text-embedding-3-small", "input": ["a"] * 2049}, "input"),
        ({"model": "text-embedding-3-small", "input": "a", "encoding_format": "int8"}, None),
        ({"model": "text-embedding-3-small", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "a", "stream": True}, "stream"),
        ({"model": "text-embedding-3-small", "messages": [{"role": "user"}]}, "messages"),
        ({"input": "a"}, "model"),
    ],
)
async def test_an_invalid_body_is_a_400_naming_the_field(
    processor: Processor, services: Services, body: dict[str, Any], param: str | None
) -> None:
    answers = await run_stream(
        processor,
        [request_headers(EMBEDDINGS, headers=AUTH), request_body(orjson.dumps(body))],
    )
    status, error = error_of(answers[1])
    assert status == 400
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["http_status_code"] == 400 and line["total_tokens"] == 0


async def test_a_model_of_a_provider_without_embeddings_is_a_400(processor: Processor) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings(model="claude-3-5-haiku-latest")),
        ],
    )
    status, error = error_of(answers[1])
    assert status == 400
    assert error["code"] == "unsupported_model_for_route"
    assert "anthropic" in error["message"]


async def test_an_unknown_model_is_a_404(processor: Processor) -> None:
    answers = await run_stream(
        processor,
        [request_headers(EMBEDDINGS, headers=AUTH), request_body(embeddings(model="nope"))],
    )
    status, error = error_of(answers[1])
    assert status == 404 and error["code"] == "model_not_found"


def test_the_estimate_counts_token_ids_as_given_and_text_by_characters() -> None:
    assert estimate_input_tokens({"input": "x" * 400}) == 100
    assert estimate_input_tokens({"input": ["x" * 40, "y"]}) == 10 + 1
    assert estimate_input_tokens({"input": [5, 6, 7]}) == 3
    assert estimate_input_tokens({"input": [[5, 6], [7]]}) == 3


def test_valid_bodies_of_every_input_shape_pass() -> None:
    for value in ("a", ["a", "b"], [1, 2], [[1], [2, 3]]):
        check_embeddings_body({"model": "m", "input": value})
    with pytest.raises(BadRequestError):
        check_embeddings_body({"model": "m", "input": {"text": "a"}})


def test_usage_is_read_from_the_tail_of_a_large_answer() -> None:
    reader = EmbeddingsReader()
    body = answer(2048 * 8, vectors=2048)
    assert len(body) > 4 * 1024 * 1024  # larger than the gateway ever parses whole
    reader.feed(body[:1000], False)
    reader.feed(body[1000:], True)
    assert reader.usage is not None and reader.usage.prompt_tokens == 2048 * 8
    assert reader.usage.completion_tokens == 0
    assert reader.response_model == "text-embedding-3-small"


def test_usage_written_before_the_vectors_is_read_too() -> None:
    reader = EmbeddingsReader()
    usage = {"prompt_tokens": 4, "total_tokens": 4}
    body = orjson.dumps({"usage": usage, "data": [], "model": "m"})
    reader.feed(body, True)
    assert reader.usage is not None and reader.usage.total_tokens == 4
    assert reader.response_model == "m"


def test_an_answer_without_usage_reports_none() -> None:
    reader = EmbeddingsReader()
    reader.feed(b"<html>bad gateway</html>", True)
    assert reader.usage is None


def test_enrichment_on_an_embeddings_route_is_a_config_error() -> None:
    enrichment = {"enrichment": {"prepend": [{"role": "system", "content": "x"}]}}
    with pytest.raises(ConfigError, match="openai_embeddings route has none"):
        config_with({}, {"openai-embeddings": enrichment})


async def test_request_guards_mask_and_refuse_the_input_text() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"openai-embeddings": {"guardrails": "workshop"}}))
    body = embeddings(input=["mail jane@example.com", "card 4111 1111 1111 1111", "plain"])
    answers = await gateway.send(EMBEDDINGS, body)
    sent = upstream_body(answers[1])
    assert sent["input"] == ["mail <EMAIL>", "card <CREDIT_CARD>", "plain"]

    answers = await gateway.send(EMBEDDINGS, embeddings(input="which credit card is best?"))
    status, refused = immediate(answers[-1])
    assert status == 403
    assert refused["error"]["message"] == "Sorry, I cannot talk about credit cards."
    assert gateway.log()["total_tokens"] == 0


async def test_token_id_inputs_pass_the_guards_unread() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"openai-embeddings": {"guardrails": "workshop"}}))
    answers = await gateway.send(EMBEDDINGS, embeddings(input=[[4111, 1111], [1111, 1111]]))
    assert answers[1].request_body.response.header_mutation.set_headers  # routed on
    # Token ids are no text: the guards let them through as they were.
    assert upstream_body(answers[1])["input"] == [[4111, 1111], [1111, 1111]]


@pytest.fixture
async def signing(config: GatewayConfig, services: Services) -> Processor:
    """The default config's processor, its Bedrock credentials loaded (as serving does)."""
    runtime = Runtime(config, services)
    for signer in runtime.signers.values():
        await signer.start()
    return Processor(lambda: runtime, default_stages())


async def test_a_titan_model_on_bedrock_gets_a_signed_invoke_model_call(
    signing: Processor,
) -> None:
    processor = signing
    answers = await run_stream(
        processor,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings(model="titan-embed", input=["one text"], dimensions=256)),
        ],
    )
    mutated = set_headers(answers[1], "request_body")
    assert mutated[":path"] == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    assert mutated["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    sent = orjson.loads(answers[1].request_body.response.body_mutation.body)
    assert sent == {"inputText": "one text", "dimensions": 256}


@pytest.mark.parametrize("value", [["one", "two"], [[1, 2, 3]], [7, 8]])
async def test_a_batch_for_titan_is_a_400_not_several_calls(
    processor: Processor, value: Any
) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings(model="titan-embed", input=value)),
        ],
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["code"] == "unsupported_input"


async def test_a_titan_answer_becomes_openais_list_with_a_base64_vector(
    signing: Processor, services: Services
) -> None:
    processor = signing
    titan = orjson.dumps({"embedding": [0.5, -0.25, 1.0], "inputTextTokenCount": 3})
    answers = await call(
        processor, embeddings(model="titan-embed", encoding_format="base64"), titan
    )
    body = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    assert body["object"] == "list" and body["model"] == "titan-embed"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vector = struct.unpack("<3f", base64.b64decode(body["data"][0]["embedding"]))
    assert vector == (0.5, -0.25, 1.0)
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["provider"], line["prompt_tokens"], line["completion_tokens"]) == (
        "mock-bedrock",
        3,
        0,
    )


async def test_a_titan_answer_that_is_not_one_is_a_502(signing: Processor) -> None:
    processor = signing
    answers = await call(processor, embeddings(model="titan-embed"), b'{"vectors": []}')
    assert answers[-1].response_body.response.header_mutation.set_headers[0].header.key == (
        ":status"
    )
    body = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    assert body["error"]["type"] == "upstream_error"


async def test_an_embeddings_model_on_a_chat_route_is_a_400_before_the_provider(
    processor: Processor,
) -> None:
    chat = orjson.dumps(
        {"model": "text-embedding-3-small", "messages": [{"role": "user", "content": "hi"}]}
    )
    answers = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=AUTH), request_body(chat)]
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["code"] == "unsupported_model_for_route"
    assert "send it to /v1/embeddings" in error["message"]


async def test_a_chat_model_on_the_embeddings_route_is_a_400_when_its_kind_is_said(
    config: GatewayConfig, services: Services
) -> None:
    models = tuple(
        m.model_copy(update={"kind": ModelKind.CHAT}) if m.name == "gpt-4o-mini" else m
        for m in config.models
    )
    processor = processor_for(config.model_copy(update={"models": models}), services)
    answers = await run_stream(
        processor,
        [request_headers(EMBEDDINGS, headers=AUTH), request_body(embeddings(model="gpt-4o-mini"))],
    )
    status, error = error_of(answers[1])
    assert status == 400 and "'gpt-4o-mini' is a chat model" in error["message"]


def test_the_model_list_shows_embedding_models_where_they_can_be_used(
    config: GatewayConfig, services: Services
) -> None:
    runtime = Runtime(config, services)
    embeddings_only = Identity("api_key", "e", allowed_routes=("openai-embeddings",))
    names = usable_names(runtime, embeddings_only)
    assert {"text-embedding-3-small", "text-embedding-3-large", "titan-embed"} <= set(names)
    bedrock_chat = Identity("api_key", "b", allowed_routes=("bedrock",))
    assert "titan-embed" not in usable_names(runtime, bedrock_chat)


async def test_a_webhook_is_not_called_for_token_ids_and_passes_them() -> None:
    calls: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append(await request.json())
        return web.json_response({"action": {"reason": "ok"}})

    async with webhook_server(hook) as port:
        config = webhook_config(port)
        routes = tuple(
            r.model_copy(update={"guardrails": ("hooked",)}) if r.name == "openai-embeddings" else r
            for r in config.routes
        )
        gateway = Gateway(config.model_copy(update={"routes": routes}))
        await gateway.send(EMBEDDINGS, embeddings(input=[[1, 2], [3]]))
        assert calls == []
        assert gateway.decisions(guard="hook-guard", phase="request", action="pass") == 1
        await gateway.send(EMBEDDINGS, embeddings(input=["some text"]))
        assert calls == [{"body": {"messages": [{"role": "user", "content": "some text"}]}}]
