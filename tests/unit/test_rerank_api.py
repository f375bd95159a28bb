"""Rerank (POST /v1/rerank and /v2/rerank, the wire format Cohere defined and Jina,
Voyage and vLLM serve) through the processor: the body checks, the provider's request,
the kinds of model each route serves, and the usage read from the answers (tokens from
``usage.total_tokens``, Cohere's ``meta.billed_units.search_units``, the gateway's
estimate when the answer reports neither) as the log line and the cost show them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.config import GatewayConfig
from extproc.config.loader import ConfigError, parse_config
from extproc.config.model import GatewayConfig as GatewayConfigModel
from extproc.config.model import ModelKind
from extproc.config.pricing_model import PricingConfig
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    sample,
)
from tests.unit.guard_helpers import config_with
from tests.unit.sse_play import only_line
from tests.unit.test_audio_token_log import span_metadata
from tests.unit.test_guard_flow import WORKSHOP, Gateway, immediate, upstream_body

AUTH = {"authorization": "Bearer team1-key"}
QUERY = "What is the capital of the United States?"
DEFAULT_CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8")
DOCUMENTS = [
    "Carson City is the capital city of the American state of Nevada.",
    "Washington, D.C. is the capital of the United States.",
    "Capital punishment has existed in the United States since before it was a country.",
]


def rerank(**fields: Any) -> bytes:
    return orjson.dumps(
        {"model": "rerank-v3.5", "query": QUERY, "documents": DOCUMENTS, "top_n": 2, **fields}
    )


def results() -> list[dict[str, Any]]:
    return [{"index": 1, "relevance_score": 0.98}, {"index": 0, "relevance_score": 0.12}]


def token_answer(tokens: int) -> bytes:
    """Jina's, Voyage's and vLLM's answer: the input's tokens in ``usage.total_tokens``."""
    return orjson.dumps({"id": "r-1", "results": results(), "usage": {"total_tokens": tokens}})


def cohere_answer(search_units: int) -> bytes:
    """Cohere's answer: the searches it bills in ``meta.billed_units.search_units``."""
    meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": search_units}}
    return orjson.dumps({"id": "r-1", "results": results(), "meta": meta})


def set_headers(answer: ext.ProcessingResponse) -> dict[str, str]:
    return {
        h.header.key: h.header.raw_value.decode()
        for h in answer.request_body.response.header_mutation.set_headers
    }


async def whole(
    processor: Processor, body: bytes, reply: bytes, path: str = "/v1/rerank"
) -> list[ext.ProcessingResponse]:
    return await run_stream(
        processor,
        [
            request_headers(path, headers=AUTH),
            request_body(body),
            response_headers(200),
            response_body(reply),
        ],
    )


def error_of(answer: ext.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    status, body = immediate(answer)
    return status, body["error"]


# --- routes ------------------------------------------------------------------------------------


def test_the_built_in_routes_serve_rerank_at_coheres_v1_and_v2_paths() -> None:
    config = GatewayConfigModel.model_validate(
        {
            "providers": [{"name": "cohere", "base_url": "https://api.cohere.com/v2"}],
            "models": [{"name": "rerank-v3.5", "provider": "cohere", "kind": "rerank"}],
        }
    )
    paths = {route.path: (route.name, route.api) for route in config.routes}
    assert paths["/v1/rerank"] == ("rerank", "rerank")
    assert paths["/v2/rerank"] == ("rerank-v2", "rerank")


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
async def test_a_rerank_goes_to_the_provider_with_its_key_under_the_clients_version(
    processor: Processor, path: str
) -> None:
    answers = await run_stream(
        processor, [request_headers(path, headers=AUTH), request_body(rerank())]
    )
    mutated = set_headers(answers[1])
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    # The mock's base URL ends in /v1: a v2 call goes to its /v2/rerank.
    assert mutated.get(":path", path) == path
    # Forwarded as the client sent it: the model's name is the provider's own.
    assert not answers[1].request_body.response.HasField("body_mutation")


async def test_a_key_held_to_the_rerank_routes_lists_no_model_of_a_provider_without_it(
    services: Services,
) -> None:
    """The model list names what the caller can use: an Anthropic model has no rerank
    API (a 400 on the rerank routes), so a key held to them is not offered it."""
    raw = yaml.safe_load(DEFAULT_CONFIG)
    allowed = ["rerank", "rerank-v2"]
    raw["auth"]["api_keys"].append({"id": "rr", "key": "rr-only-key", "allowed_routes": allowed})
    processor = processor_for(parse_config(yaml.safe_dump(raw), "t", {}), services)
    auth = {"authorization": "Bearer rr-only-key"}
    answers = await run_stream(
        processor, [request_headers("/v1/models", method="GET", headers=auth)]
    )
    names = {model["id"] for model in orjson.loads(answers[0].immediate_response.body)["data"]}
    assert "rerank-v3.5" in names
    assert "claude-3-5-haiku-latest" not in names


# --- the body checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"query": None}, "query"),
        ({"query": ""}, "query"),
        ({"query": ["a"]}, "query"),
        ({"documents": None}, "documents"),
        ({"documents": []}, "documents"),
        ({"documents": "one"}, "documents"),
        ({"documents": ["one", 2]}, "documents[1]"),
        ({"documents": [{"title": "no text"}]}, "documents[0]"),
        ({"documents": [{"text": 7}]}, "documents[0]"),
        ({"documents": ["d"] * 1001}, "documents"),
        ({"top_n": 0}, "top_n"),
        ({"top_n": "3"}, "top_n"),
        ({"top_n": True}, "top_n"),
        ({"top_n": 1.5}, "top_n"),
    ],
)
async def test_a_body_that_is_no_rerank_is_a_400_naming_the_field_before_the_quota(
    processor: Processor, services: Services, fields: dict[str, Any], param: str
) -> None:
    answers = await run_stream(
        processor, [request_headers("/v1/rerank", headers=AUTH), request_body(rerank(**fields))]
    )
    status, error = error_of(answers[1])
    assert (status, error["param"], error["type"]) == (400, param, "invalid_request_error")
    line = only_line(services)
    assert line["http_status_code"] == 400 and line["quota_decision"] is None


async def test_documents_as_text_objects_are_served(processor: Processor) -> None:
    body = rerank(documents=[{"text": each} for each in DOCUMENTS], return_documents=True)
    answers = await run_stream(
        processor, [request_headers("/v2/rerank", headers=AUTH), request_body(body)]
    )
    assert set_headers(answers[1])[headers.CLUSTER] == "provider_mock"


async def test_a_model_of_a_provider_without_the_api_is_a_clear_400_before_the_quota(
    processor: Processor, services: Services
) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/rerank", headers=AUTH),
            request_body(rerank(model="claude-3-5-haiku-latest")),
        ],
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["code"] == "unsupported_model_for_route"
    assert "speaks the anthropic API, which has no rerank API" in error["message"]
    assert only_line(services)["quota_decision"] is None


@pytest.mark.parametrize(
    ("model", "served_at"),
    [("gpt-4o-mini", "/v1/chat/completions"), ("text-embedding-3-small", "/v1/embeddings")],
)
async def test_a_model_of_another_kind_on_a_rerank_route_is_refused_naming_where_it_is_served(
    config: GatewayConfig, services: Services, model: str, served_at: str
) -> None:
    models = tuple(
        each.model_copy(update={"kind": ModelKind.CHAT}) if each.name == "gpt-4o-mini" else each
        for each in config.models
    )
    processor = processor_for(config.model_copy(update={"models": models}), services)
    answers = await run_stream(
        processor,
        [request_headers("/v1/rerank", headers=AUTH), request_body(rerank(model=model))],
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["code"] == "unsupported_model_for_route"
    assert error["param"] == "model" and served_at in error["message"]
    assert only_line(services)["quota_decision"] is None


async def test_a_rerank_model_on_the_chat_route_is_refused_naming_the_rerank_route(
    processor: Processor,
) -> None:
    chat = orjson.dumps(
        {"model": "rerank-v3.5", "messages": [{"role": "user", "content": "Hello"}]}
    )
    answers = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=AUTH), request_body(chat)]
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["code"] == "unsupported_model_for_route"
    assert "'rerank-v3.5' is a rerank model" in error["message"]
    assert "/v1/rerank" in error["message"]


# --- usage ---------------------------------------------------------------------------------------


async def test_an_answer_reporting_tokens_is_billed_by_them(
    processor: Processor, services: Services
) -> None:
    answers = await whole(processor, rerank(), token_answer(57))
    assert answers[-1].response_body.response.status == ext.CommonResponse.CONTINUE
    line = only_line(services)
    assert (line["route"], line["model"], line["http_status_code"]) == (
        "rerank",
        "rerank-v3.5",
        200,
    )
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (57, 0, 57)
    assert line["usage_reported"] is True and line["usage_estimated"] is False
    assert line["search_units"] is None
    # Counted as prompt tokens of a rerank operation in the metrics.
    assert sample(services, "tokens_consumed_total", model="rerank-v3.5", token_type="prompt") == 57
    assert sample(services, "gen_ai_client_token_usage_sum", gen_ai_operation_name="rerank") == 57
    assert (line["api_key_id"], line["user_id"], line["group_id"]) == (
        "team1",
        "alice",
        "engineering",
    )


async def test_cohere_search_units_are_logged_and_priced_per_search(
    processor: Processor, services: Services
) -> None:
    await whole(processor, rerank(), cohere_answer(1), "/v2/rerank")
    line = only_line(services)
    assert line["route"] == "rerank-v2"
    assert line["search_units"] == 1
    assert line["usage_reported"] is True and line["usage_estimated"] is False
    # rerank-v3.5: $2.00 per 1,000 searches in the default price table.
    assert line["cost_usd"] == 0.002 and line["cost_priced"] is True
    # Cohere counts no tokens: the token counts are the gateway's estimate of the input.
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] == 0


async def test_the_span_carries_the_searches_a_rerank_was_billed_by(
    processor: Processor,
) -> None:
    """The request's span (Envoy's tags from the gateway's metadata): the searches beside
    the counts, as the log line has them; a rerank billed by tokens carries none."""
    searched = span_metadata(await whole(processor, rerank(), cohere_answer(3), "/v2/rerank"))
    assert searched["search_units"] == 3
    assert searched["operation"] == "rerank"
    by_tokens = span_metadata(await whole(processor, rerank(), token_answer(40)))
    assert "search_units" not in by_tokens and by_tokens["prompt_tokens"] == 40


async def test_searches_reported_in_usage_as_openrouter_does_are_priced_per_search(
    processor: Processor, services: Services
) -> None:
    """OpenRouter's rerank reports Cohere's searches beside the tokens, in ``usage``:
    the searches are the bill, not the tokens Cohere does not charge for."""
    usage = {"search_units": 2, "total_tokens": 150}
    await whole(
        processor, rerank(), orjson.dumps({"id": "r-1", "results": results(), "usage": usage})
    )
    line = only_line(services)
    assert (line["search_units"], line["prompt_tokens"]) == (2, 150)
    assert line["cost_usd"] == 0.004 and line["cost_priced"] is True


async def test_tokens_a_litellm_proxy_reports_in_meta_are_billed_not_estimated(
    processor: Processor, services: Services
) -> None:
    """A LiteLLM proxy answers every provider's rerank in Cohere's shape, a Jina
    reranker's tokens in ``meta.billed_units.total_tokens``: the count is the bill."""
    meta = {"billed_units": {"total_tokens": 57}, "tokens": {}}
    await whole(
        processor, rerank(), orjson.dumps({"id": "r-1", "results": results(), "meta": meta})
    )
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (57, 0)
    assert line["usage_reported"] is True and line["usage_estimated"] is False


async def test_total_tokens_beside_a_null_prompt_count_are_billed_not_estimated(
    processor: Processor, services: Services
) -> None:
    """A server whose usage model leaves the count it lacks null (GPUStack's rerank:
    ``"prompt_tokens": null`` beside ``total_tokens``): the count it gave is the bill."""
    usage = {"total_tokens": 57, "prompt_tokens": None}
    await whole(
        processor, rerank(), orjson.dumps({"id": "r-1", "results": results(), "usage": usage})
    )
    line = only_line(services)
    assert (line["prompt_tokens"], line["usage_estimated"]) == (57, False)


async def test_ranked_results_beside_an_error_field_are_an_answer_and_billed(
    processor: Processor, services: Services
) -> None:
    """A 200 whose body holds the ranking is an answer whatever ``error`` it also names
    (as a chat answer's choices are): the client got its results, so it is billed, at the
    estimate when the answer reports nothing. Before, it was taken for the provider's
    error and charged nothing."""
    warning = {"message": "2 documents were truncated", "type": "warning"}
    await whole(
        processor, rerank(), orjson.dumps({"id": "r-1", "results": results(), "error": warning})
    )
    line = only_line(services)
    assert line["error_type"] is None
    assert line["usage_estimated"] is True and line["prompt_tokens"] > 0
    assert line["cost_usd"] > 0


async def test_an_answer_reporting_nothing_is_charged_the_gateways_estimate(
    processor: Processor, services: Services
) -> None:
    reply = orjson.dumps({"id": "r-1", "results": results()})
    await whole(processor, rerank(), reply)
    line = only_line(services)
    characters = len(QUERY) + sum(len(each) for each in DOCUMENTS)
    assert line["prompt_tokens"] == -(-characters // 4) and line["completion_tokens"] == 0
    assert line["usage_reported"] is False and line["usage_estimated"] is True
    # Priced as the search it would have been billed: one query of up to 100 documents.
    assert line["search_units"] == 1 and line["cost_usd"] == 0.002


def priced(config: GatewayConfig, **entry: Any) -> GatewayConfig:
    """The config with rerank-v3.5 at the price ``entry``."""
    raw = config.pricing.model_dump()
    raw["models"]["rerank-v3.5"] = entry
    return config.model_copy(update={"pricing": PricingConfig.model_validate(raw)})


async def test_an_answer_of_a_model_priced_by_tokens_reporting_nothing_counts_no_searches(
    config: GatewayConfig, services: Services
) -> None:
    """A Jina or vLLM reranker, priced by its tokens: an answer without usage is charged
    the estimated tokens, and the log line claims no searches nobody bills."""
    prices = priced(config, input_per_million=0.02, output_per_million=0)
    reply = orjson.dumps({"id": "r-1", "results": results()})
    await whole(processor_for(prices, services), rerank(), reply)
    line = only_line(services)
    assert line["usage_estimated"] is True and line["search_units"] is None
    assert line["cost_priced"] is True
    assert line["cost_usd"] == pytest.approx(line["prompt_tokens"] * 0.02e-6)


async def test_searches_billed_to_a_model_without_a_price_per_search_are_flagged_unpriced(
    config: GatewayConfig, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """Cohere bills the searches; a price entry that cannot bill them leaves the bill
    short, and says so (cost_priced, the rollup's unpriced_requests), not a silent $0;
    the operator is told once which price is missing."""
    processor = processor_for(priced(config, input_per_million=0, output_per_million=0), services)
    await whole(processor, rerank(), cohere_answer(3), "/v2/rerank")
    line = only_line(services)
    assert line["search_units"] == 3
    assert line["cost_priced"] is False
    await whole(processor, rerank(), cohere_answer(3), "/v2/rerank")
    warned = [r for r in caplog.records if "search_units_per_thousand" in r.getMessage()]
    assert len(warned) == 1 and "rerank-v3.5" in warned[0].getMessage()


# --- guards ------------------------------------------------------------------------------------


async def test_a_request_guard_reads_the_query_and_the_documents() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"rerank": {"guardrails": "workshop"}}))
    documents = ["Paris is in France.", {"text": "Which credit card has no fees?"}]
    answers = await gateway.send("/v1/rerank", rerank(documents=documents))
    status, body = immediate(answers[-1])
    assert status == 403
    assert body["error"]["message"] == "Sorry, I cannot talk about credit cards."
    answers = await gateway.send("/v1/rerank", rerank(query="Mail bob@example.com a list"))
    assert upstream_body(answers[-1])["query"] != "Mail bob@example.com a list"


def test_a_rerank_model_takes_no_fallbacks() -> None:
    """Rerank does not fail over: fallbacks on a rerank model would never be used, and
    an operator counting on them would find out when its provider failed."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text())
    raw["providers"].append({"name": "other", "base_url": "http://127.0.0.1:1/v1"})
    raw["models"].append({"name": "rerank-other", "provider": "other", "kind": "rerank"})
    for model in raw["models"]:
        if model["name"] == "rerank-v3.5":
            model["fallbacks"] = ["rerank-other"]
    with pytest.raises(ConfigError, match="rerank model"):
        parse_config(yaml.safe_dump(raw), "t", {})
