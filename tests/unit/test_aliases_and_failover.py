"""A model asked for by an alias is the model: same access rules, quotas and failover chain;
each failover attempt is sent as a request of its own to its provider, and billed as the
model that answered."""

from __future__ import annotations

from typing import Any

import orjson
from google.protobuf import struct_pb2

from extproc import headers
from extproc.config import parse_config
from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity, PhaseOutput, RequestContext
from extproc.devstack import DEFAULT_CONFIG
from extproc.envoy_failover import HOST_METADATA_ATTRIBUTE, failover_cluster_name
from extproc.quota.rules import RuleSet
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

DEFAULT = DEFAULT_CONFIG.read_text()
MINI_FOR_ENGINEERING = DEFAULT.replace(
    "  - name: gpt-4o-mini\n", "  - name: gpt-4o-mini\n    aliases: [mini]\n", 1
).replace(
    "\nauth:\n",
    "\nauth:\n  access_rules:\n"
    "    - {name: mini-for-engineering, models: [gpt-4o-mini], groups: [engineering]}\n",
    1,
)
WITH_FALLBACKS = DEFAULT.replace(
    "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n",
    "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n"
    "    aliases: [four]\n"
    "    fallbacks: [claude-3-5-haiku-latest]\n",
)
TWO_ANTHROPIC_ACCOUNTS = DEFAULT.replace(
    "\nproviders:\n",
    "\nproviders:\n  - {name: anthropic-b, type: anthropic, base_url: 'http://127.0.0.1:1/v1',"
    " api_key: k-b-123456}\n",
    1,
).replace(
    "\nmodels:\n",
    "\nmodels:\n  - {name: primary, provider: anthropic-b, fallbacks: [claude-3-5-haiku-latest]}\n",
    1,
)


async def answer_to(config_text: str, model: str, key: str) -> Any:
    """The gateway's answer to the request body: an immediate response or the changes."""
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    answers = await run_stream(
        processor_for(parse_config(config_text, "gateway.yaml", {})),
        [
            request_headers("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}),
            request_body(body),
        ],
    )
    return answers[-1]


def status_of(answer: Any) -> int:
    return answer.immediate_response.status.code if answer.HasField("immediate_response") else 200


def cluster_of(answer: Any) -> str | None:
    for option in answer.request_body.response.header_mutation.set_headers:
        if option.header.key == headers.CLUSTER:
            return str(option.header.raw_value.decode())
    return None


async def test_an_access_rule_on_a_model_covers_its_alias() -> None:
    # team2-key is in marketing: the rule keeps the model from it by either name.
    for model in ("gpt-4o-mini", "mini"):
        assert status_of(await answer_to(MINI_FOR_ENGINEERING, model, "team2-key")) == 403
        assert status_of(await answer_to(MINI_FOR_ENGINEERING, model, "team1-key")) == 200


def test_a_quota_rule_on_a_model_covers_its_alias() -> None:
    only_minis = LimitRule(
        name="minis", subject="user", models=("gpt-4o-mini",), requests_per_day=9
    )
    rules = RuleSet(QuotasConfig(rules=(only_minis,)))
    alice = Identity(method="api_key", api_key_id="k1", user_id="alice")
    assert rules.limits_for(alice, {}, "mini", 1_800_000_000.0, canonical="gpt-4o-mini")
    assert not rules.limits_for(alice, {}, "gpt-4o", 1_800_000_000.0)


async def test_an_alias_fails_over_along_its_models_chain() -> None:
    for model in ("gpt-4o", "four"):
        answer = await answer_to(WITH_FALLBACKS, model, "team1-key")
        assert cluster_of(answer) == failover_cluster_name("gpt-4o"), model


def attempt_body() -> bytes:
    """The body an attempt gets: the client's, with the chain the gateway admitted it with."""
    chain = [
        ["anthropic-b", "primary", "primary"],
        ["mock-anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-latest"],
    ]
    return orjson.dumps(
        {
            "model": "primary",
            "messages": [{"role": "user", "content": "x"}],
            headers.FAILOVER_CHAIN_KEY: chain,
        }
    )


def attempt_on(provider: str) -> dict[str, Any]:
    """The attributes Envoy sends an attempt: the endpoint metadata naming its provider."""
    struct = struct_pb2.Struct()
    struct.fields[HOST_METADATA_ATTRIBUTE].string_value = (
        'filter_metadata { key: "io.aigw" value { fields { key: "provider" '
        f'value {{ string_value: "{provider}" }} }} }}'
    )
    return {"envoy.filters.http.ext_proc": struct}


def test_a_second_anthropic_attempt_is_sent_with_its_own_version_and_key(
    services: Services,
) -> None:
    runtime = Runtime(parse_config(TWO_ANTHROPIC_ACCOUNTS, "gateway.yaml", {}), services)
    ctx = RequestContext(runtime=runtime)
    ctx.attributes = attempt_on("mock-anthropic")
    # Envoy replayed the first attempt's (anthropic-b's) header changes into this one.
    ctx.request_headers = {
        ":path": "/v1/chat/completions",
        headers.REQUEST_ID: "req-42",
        "anthropic-version": "2023-06-01",
        "x-api-key": "k-b-123456",
    }
    stage = AttemptStage()
    stage.request_headers(ctx, PhaseOutput())
    out = PhaseOutput()
    body = attempt_body()
    stage.request_body(ctx, out, body)
    assert "anthropic-version" in out.set_headers
    assert out.set_headers["x-api-key"] != "k-b-123456"
    # The answer's translation names the completion after the request.
    assert ctx.request_id == "req-42"


async def test_a_fallback_without_a_price_is_unpriced_not_billed_at_the_primarys(
    services: Services,
) -> None:
    text = DEFAULT.replace(
        "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n",
        "  - name: gpt-4o\n    provider: ${LLM_PROVIDER:-mock}\n"
        "    fallbacks: [unpriced-fallback]\n"
        "  - name: unpriced-fallback\n    provider: mock-anthropic\n",
    )
    processor = processor_for(parse_config(text, "gateway.yaml", {}), services)
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    answer = orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "choices": [],
            "usage": {
                "prompt_tokens": 1_000_000,
                "completion_tokens": 0,
                "total_tokens": 1_000_000,
            },
        }
    )
    await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
            request_body(body),
            # What the per-attempt filter sends down: the fallback's answer, translated.
            response_headers(
                200,
                {
                    headers.ANSWERED_BY_PROVIDER: "mock-anthropic",
                    headers.ANSWERED_BY_MODEL: "unpriced-fallback",
                    "x-envoy-upstream-service-time": "5",
                },
            ),
            response_body(answer),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["provider"], line["cost_usd"], line["cost_priced"]) == (
        "mock-anthropic",
        0.0,
        False,
    )


def test_an_attempts_answer_that_cannot_be_translated_is_a_502(services: Services) -> None:
    runtime = Runtime(parse_config(TWO_ANTHROPIC_ACCOUNTS, "gateway.yaml", {}), services)
    ctx = RequestContext(runtime=runtime)
    ctx.attributes = attempt_on("mock-anthropic")
    ctx.request_headers = {":path": "/v1/chat/completions"}
    stage = AttemptStage()
    stage.request_headers(ctx, PhaseOutput())
    body = attempt_body()
    stage.request_body(ctx, PhaseOutput(), body)
    stage.response_headers(
        ctx, PhaseOutput(), {":status": "200", "content-type": "application/json"}
    )
    out = PhaseOutput()
    stage.response_body(ctx, out, b"<html>not a message</html>", True)
    assert out.set_headers[":status"] == "502"
    assert orjson.loads(out.body or b"{}")["error"]["code"] == "invalid_upstream_response"
