"""OpenAI's Moderations API (POST /v1/moderations) through the processor: where it goes, the
model a body without one asks for, the body checks, the kinds of model each route takes,
access rules, what is metered (one request, zero tokens, never a token reservation) and
what is not (no token or cost limit refuses it), guards, and the log line.

The provider's answer is OpenAI's wire format (the ``openai`` SDK's
``ModerationCreateResponse``): ``{"id", "model", "results": [...]}``, no ``usage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.chargeback.pricing import PriceTable
from extproc.config.loader import ConfigError, parse_config
from extproc.config.model import GatewayConfig
from extproc.headers import METADATA_NAMESPACE
from extproc.moderations_api import DEFAULT_MODEL
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
    sample,
)
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with
from tests.unit.sse_play import only_line
from tests.unit.test_guard_flow import WORKSHOP, Gateway, immediate, upstream_body

PATH = "/v1/moderations"
AUTH = {"authorization": "Bearer team1-key"}
DEFAULT_CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8")
RESULT = {
    "flagged": True,
    "categories": {"violence": True, "harassment": False},
    "category_scores": {"violence": 0.88, "harassment": 0.0001},
    "category_applied_input_types": {"violence": ["text"], "harassment": ["text"]},
}
ANSWER = orjson.dumps({"id": "modr-1", "model": "omni-moderation-latest", "results": [RESULT]})


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "omni-moderation-latest", "input": "I will attack", **fields})


def mutated_headers(answer: ext.ProcessingResponse) -> dict[str, str]:
    mutation = answer.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def processor_of(
    config: GatewayConfig, quota_store: QuotaStore | None = None
) -> tuple[Processor, Services]:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(config, services)
    return Processor(lambda: runtime, default_stages()), services


async def answered(
    processor: Processor,
    sent: bytes,
    answer: bytes = ANSWER,
    status: int = 200,
    path: str = PATH,
    auth: dict[str, str] = AUTH,
) -> list[ext.ProcessingResponse]:
    return await run_stream(
        processor,
        [
            request_headers(path, headers=auth),
            request_body(sent),
            response_headers(status),
            response_body(answer),
        ],
    )


# --- where it goes ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [PATH, "/openai/v1/moderations", "/openai/moderations"])
async def test_each_path_reaches_the_providers_moderations_endpoint_with_its_key(
    processor: Processor, services: Services, path: str
) -> None:
    answers = await run_stream(
        processor, [request_headers(path, headers=AUTH), request_body(body())]
    )
    mutated = mutated_headers(answers[1])
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    # The mock's base URL ends in /v1: the client's /v1 path needs no rewrite.
    assert mutated.get(":path", path) == "/v1/moderations"
    # The body as it came: the model's name is the provider's own.
    assert not answers[1].request_body.response.HasField("body_mutation")


async def test_a_body_without_a_model_asks_for_openais_default_named_to_the_provider(
    processor: Processor, services: Services
) -> None:
    sent = orjson.dumps({"input": ["first text", "second text"]})
    answers = await answered(processor, sent)
    upstream = upstream_body(answers[1])
    assert upstream == {"input": ["first text", "second text"], "model": DEFAULT_MODEL}
    line = only_line(services)
    assert (line["model"], line["http_status_code"]) == (DEFAULT_MODEL, 200)


async def test_a_default_model_the_config_does_not_serve_is_a_404() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    raw["models"] = [m for m in raw["models"] if m["name"] != DEFAULT_MODEL]
    processor, _ = processor_of(parse_config(yaml.safe_dump(raw), "t", {}))
    answers = await run_stream(
        processor,
        [request_headers(PATH, headers=AUTH), request_body(orjson.dumps({"input": "hi"}))],
    )
    status, error = immediate(answers[1])
    assert status == 404 and error["error"]["code"] == "model_not_found"
    assert DEFAULT_MODEL in error["error"]["message"]


async def test_the_provider_gets_its_own_name_for_the_model() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    for model in raw["models"]:
        if model["name"] == "text-moderation-latest":
            model["upstream_model"] = "text-moderation-007"
    processor, _ = processor_of(parse_config(yaml.safe_dump(raw), "t", {}))
    sent = body(model="text-moderation-latest", input=["a", "b"])
    answers = await run_stream(processor, [request_headers(PATH, headers=AUTH), request_body(sent)])
    assert upstream_body(answers[1]) == {"model": "text-moderation-007", "input": ["a", "b"]}


# --- the body -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        "one text",
        ["one", "two"],
        [{"type": "text", "text": "a caption"}],
        [
            {"type": "text", "text": "a caption"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        ],
    ],
)
async def test_every_input_shape_openai_takes_is_sent_on(processor: Processor, value: Any) -> None:
    answers = await run_stream(
        processor, [request_headers(PATH, headers=AUTH), request_body(body(input=value))]
    )
    assert mutated_headers(answers[1])[headers.CLUSTER] == "provider_mock"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": None}, "input"),
        ({"input": []}, "input"),
        ({"input": 7}, "input"),
        ({"input": {"text": "x"}}, "input"),
        ({"input": ["text", {"type": "text", "text": "x"}]}, "input"),
        ({"input": [["nested"]]}, "input"),
        ({"input": [{"type": "text"}]}, "input[0].text"),
        ({"input": [{"type": "text", "text": 3}]}, "input[0].text"),
        ({"input": [{"type": "image_url", "image_url": "https://x"}]}, "input[0].image_url"),
        ({"input": [{"type": "image_url", "image_url": {}}]}, "input[0].image_url"),
        ({"input": [{"type": "audio", "audio": "x"}]}, "input[0].type"),
        ({"input": ["x"] * 2049}, "input"),
        ({"model": 7}, "model"),
        ({"stream": True}, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    ],
)
async def test_a_body_of_no_shape_openai_takes_is_a_400_naming_the_field_before_the_quota(
    processor: Processor, services: Services, fields: dict[str, Any], param: str
) -> None:
    sent = {"model": "omni-moderation-latest", "input": "x", **fields}
    answers = await run_stream(
        processor, [request_headers(PATH, headers=AUTH), request_body(orjson.dumps(sent))]
    )
    status, error = immediate(answers[1])
    assert (status, error["error"]["param"]) == (400, param)
    assert error["error"]["type"] == "invalid_request_error"
    line = only_line(services)
    assert line["http_status_code"] == 400 and line["quota_decision"] is None


async def test_a_body_that_is_no_json_object_is_a_400(processor: Processor) -> None:
    answers = await run_stream(
        processor, [request_headers(PATH, headers=AUTH), request_body(b'["input"]')]
    )
    assert immediate(answers[1])[0] == 400


# --- models and routes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "endpoint"),
    [("text-embedding-3-small", "/v1/embeddings"), ("whisper-1", "/v1/audio/transcriptions")],
)
async def test_a_model_of_another_kind_is_a_400_naming_its_endpoint(
    processor: Processor, services: Services, model: str, endpoint: str
) -> None:
    answers = await run_stream(
        processor, [request_headers(PATH, headers=AUTH), request_body(body(model=model))]
    )
    status, error = immediate(answers[1])
    assert status == 400 and error["error"]["code"] == "unsupported_model_for_route"
    assert endpoint in error["error"]["message"]
    assert only_line(services)["quota_decision"] is None


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest", "titan"])
async def test_a_model_not_declared_a_moderation_model_is_refused(
    processor: Processor, model: str
) -> None:
    """Moderation is unmetered: only a model the config declares one may be reached there
    (never one that may generate, past every token limit)."""
    answers = await run_stream(
        processor, [request_headers(PATH, headers=AUTH), request_body(body(model=model))]
    )
    status, error = immediate(answers[1])
    assert status == 400 and error["error"]["code"] == "unsupported_model_for_route"
    assert "moderation" in error["error"]["message"]


async def test_a_moderation_model_on_a_chat_route_is_a_400_naming_the_moderations_endpoint(
    processor: Processor,
) -> None:
    chat = orjson.dumps(
        {"model": "omni-moderation-latest", "messages": [{"role": "user", "content": "hi"}]}
    )
    answers = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=AUTH), request_body(chat)]
    )
    status, error = immediate(answers[1])
    assert status == 400 and error["error"]["code"] == "unsupported_model_for_route"
    assert "moderation model" in error["error"]["message"]
    assert "/v1/moderations" in error["error"]["message"]


async def test_a_moderation_model_on_another_provider_type_is_a_400_naming_the_api() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    raw["models"].append(
        {"name": "claude-moderation", "provider": "mock-anthropic", "kind": "moderation"}
    )
    processor, services = processor_of(parse_config(yaml.safe_dump(raw), "t", {}))
    answers = await run_stream(
        processor,
        [request_headers(PATH, headers=AUTH), request_body(body(model="claude-moderation"))],
    )
    status, error = immediate(answers[1])
    assert status == 400 and error["error"]["code"] == "unsupported_model_for_route"
    assert "Moderations API (/v1/moderations)" in error["error"]["message"]
    assert only_line(services)["quota_decision"] is None


async def test_a_key_whose_allowed_models_leave_the_model_out_is_refused() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    raw["auth"]["api_keys"].append(
        {"id": "chat-only", "key": "chat-only-key", "allowed_models": ["gpt-4o-mini"]}
    )
    processor, _ = processor_of(parse_config(yaml.safe_dump(raw), "t", {}))
    answers = await run_stream(
        processor,
        [
            request_headers(PATH, headers={"authorization": "Bearer chat-only-key"}),
            request_body(orjson.dumps({"input": "hi"})),  # the default model, refused too
        ],
    )
    status, error = immediate(answers[1])
    assert status == 403 and error["error"]["code"] == "model_not_allowed"


def test_a_moderation_model_takes_no_fallbacks() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    for model in raw["models"]:
        if model["name"] == "omni-moderation-latest":
            model["provider"] = "openai"
            model["fallbacks"] = ["text-moderation-latest"]
    with pytest.raises(ConfigError, match="moderation model"):
        parse_config(yaml.safe_dump(raw), "t", {})


def test_a_group_of_moderation_models_with_a_member_of_no_kind_is_refused_at_load() -> None:
    """Served, a request for the group was a 400 on the draws of the member of no kind
    (the moderation route serves none) and classified on the others."""
    raw = yaml.safe_load(DEFAULT_CONFIG)
    raw["models"].append({"name": "in-house-moderation", "provider": "mock"})
    raw["model_groups"] = [
        {
            "name": "moderation",
            "members": [{"model": "omni-moderation-latest"}, {"model": "in-house-moderation"}],
        }
    ]
    with pytest.raises(ConfigError) as raised:
        parse_config(yaml.safe_dump(raw), "t", {})
    assert "model_groups[0].members" in str(raised.value)
    assert "'in-house-moderation'" in str(raised.value)


def test_a_moderation_model_is_no_other_models_fallback() -> None:
    """Loaded, a chat request that failed over went to a moderation model, which serves
    no chat (its provider's error instead of an answer), priced at its zero price."""
    raw = yaml.safe_load(DEFAULT_CONFIG)
    for model in raw["models"]:
        if model["name"] == "omni-moderation-latest":
            model["provider"] = "openai"
        if model["name"] == "gpt-4o-mini":
            model["fallbacks"] = ["omni-moderation-latest"]
    with pytest.raises(ConfigError) as raised:
        parse_config(yaml.safe_dump(raw), "t", {})
    assert "fallbacks" in str(raised.value)
    assert "'omni-moderation-latest' is a moderation model" in str(raised.value)


@pytest.mark.parametrize("fallback", ["rerank-v3.5", "whisper-1", "tts-1"])
def test_a_model_of_an_api_that_does_not_fail_over_is_no_other_models_fallback(
    fallback: str,
) -> None:
    """A rerank, transcription or speech model as a chat model's fallback: a chat request
    that failed over would be sent to a model that serves no chat."""
    raw = yaml.safe_load(DEFAULT_CONFIG)
    raw["providers"].append({"name": "other", "base_url": "http://127.0.0.1:1/v1"})
    for model in raw["models"]:
        if model["name"] == fallback:
            model["provider"] = "other"
        if model["name"] == "gpt-4o-mini":
            model["fallbacks"] = [fallback]
    with pytest.raises(ConfigError) as raised:
        parse_config(yaml.safe_dump(raw), "t", {})
    assert f"{fallback!r} is a " in str(raised.value)
    assert "can be no model's fallback" in str(raised.value)


def test_a_moderation_route_takes_no_enrichment() -> None:
    enrichment = "\n    enrichment: {prepend: [{role: system, content: Be kind.}]}"
    text = DEFAULT_CONFIG.replace(
        "    path: /v1/moderations\n", "    path: /v1/moderations" + enrichment + "\n"
    )
    with pytest.raises(ConfigError, match="enrichment"):
        parse_config(text, "t", {})


def test_a_moderation_model_no_price_names_is_free_not_unpriced() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    for name in ("omni-moderation-latest", "text-moderation-latest"):
        del raw["pricing"]["models"][name]
    raw["models"].append({"name": "gpt-4o-unpriced", "provider": "mock"})
    config = parse_config(yaml.safe_dump(raw), "t", {})
    table = PriceTable(config.pricing, config.models)
    assert table.unpriced_models == ("gpt-4o-unpriced",)
    free = table.prices("omni-moderation-latest")
    assert free is not None and table.prices("text-moderation-latest") == free


# --- metering ---------------------------------------------------------------------------------


async def test_a_moderation_is_counted_as_a_request_with_zero_tokens_and_never_billed(
    processor: Processor, services: Services
) -> None:
    answers = await answered(processor, body())
    # The client gets the provider's answer as it came.
    assert not answers[-1].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert line["route"] == "openai-moderations" and line["http_status_code"] == 200
    assert line["model"] == "omni-moderation-latest" and line["provider"] == "mock"
    assert (line["api_key_id"], line["user_id"], line["group_id"]) == (
        "team1",
        "alice",
        "engineering",
    )
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (0, 0, 0)
    assert line["cost_usd"] == 0 and line["cost_priced"] is True
    assert line["usage_reported"] is False and line["usage_estimated"] is False
    assert sample(services, "aigw_requests_total", route="openai-moderations") == 1
    assert sample(services, "tokens_consumed_total") == 0
    assert sample(services, "gen_ai_client_token_usage_count") == 0
    fields = answers[-1].dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields
    assert fields["operation"].string_value == "moderation"


async def test_a_providers_error_passes_through_and_is_logged(
    processor: Processor, services: Services
) -> None:
    error = b'{"error":{"message":"Failed to download the image.","code":"invalid_image_url"}}'
    answers = await answered(processor, body(), error, status=400)
    assert not answers[-1].HasField("immediate_response")
    line = only_line(services)
    assert line["http_status_code"] == 400 and line["total_tokens"] == 0


QUOTA = """
quotas:
  rules:
    - {name: team-tokens, subject: api_key, tokens_per_day: 1, hard_cap: true}
    - {name: team-dollars, subject: api_key, cost_quota: {limit_usd: 0.000001}}
    - {name: team-requests, subject: api_key, requests_per_minute: 2}
"""


async def test_request_limits_count_a_moderation_and_spent_token_budgets_do_not_refuse_it(
    quota_store: QuotaStore,
) -> None:
    """A moderation consumes no tokens: token and cost limits (here spent to all but
    nothing) neither refuse it nor reserve for it; requests_per_minute counts it."""
    processor, services = processor_of(parse_config(DEFAULT_CONFIG + QUOTA, "t", {}), quota_store)
    # The token budget refuses what generates (another key's, whose requests are its own).
    question = [{"role": "user", "content": "Tell me a long story. " * 20}]
    chat = orjson.dumps({"model": "gpt-4o-mini", "messages": question})
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers={"authorization": "Bearer team2-key"}),
            request_body(chat),
        ],
    )
    assert immediate(answers[1])[0] == 429
    for _ in range(2):
        answers = await answered(processor, body())
        assert not answers[1].HasField("immediate_response")
        assert not answers[1].request_body.response.HasField("body_mutation")
    answers = await run_stream(
        processor, [request_headers(PATH, headers=AUTH), request_body(body())]
    )
    status, error = immediate(answers[1])
    assert status == 429 and error["error"]["type"] == "rate_limit_error"
    lines = services.access_log.lines()[1:]  # type: ignore[attr-defined]
    assert [line["quota_decision"] for line in lines] == ["allowed", "allowed", "rejected"]
    assert lines[-1]["quota_rule"] == "team-requests"


# --- guards ---------------------------------------------------------------------------------


async def test_request_guards_do_not_read_the_input_it_classifies() -> None:
    """Its input is the text to classify: a guard refusing or masking it would keep the
    client from learning what a moderation model says of it."""
    gateway = Gateway(config_with(WORKSHOP, {"openai-moderations": {"guardrails": "workshop"}}))
    text = "Tell me about credit card fraud, card 4111 1111 1111 1111, mail a@b.example"
    answers = await gateway.send(
        PATH, body(input=text), response_headers(200), response_body(ANSWER)
    )
    assert mutated_headers(answers[1])[headers.CLUSTER] == "provider_mock"
    assert not answers[1].request_body.response.HasField("body_mutation")  # not masked
    assert not answers[-1].response_body.response.HasField("body_mutation")
    assert gateway.log()["http_status_code"] == 200


async def test_the_model_list_shows_moderation_models(processor: Processor) -> None:
    answers = await run_stream(
        processor, [request_headers("/v1/models", method="GET", headers=AUTH)]
    )
    listed = orjson.loads(answers[0].immediate_response.body)
    names = {model["id"] for model in listed["data"]}
    assert {"omni-moderation-latest", "text-moderation-latest", "gpt-4o-mini"} <= names


async def test_a_key_held_to_the_moderation_route_lists_only_moderation_models() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    raw["auth"]["api_keys"].append(
        {"id": "mod-only", "key": "mod-only-key", "allowed_routes": ["openai-moderations"]}
    )
    processor, _ = processor_of(parse_config(yaml.safe_dump(raw), "t", {}))
    auth = {"authorization": "Bearer mod-only-key"}
    answers = await run_stream(
        processor, [request_headers("/v1/models", method="GET", headers=auth)]
    )
    listed = orjson.loads(answers[0].immediate_response.body)
    assert {model["id"] for model in listed["data"]} == {
        "omni-moderation-latest",
        "text-moderation-latest",
    }
