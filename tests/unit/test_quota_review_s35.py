"""Quota accounting found wrong in review (s35): each test is what a client does and
what its limits show afterwards, on the real embedded Valkey."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import parse_config
from extproc.mock_llm.bedrock_api import claude_thinks
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG

OPENAI_AUTH = {"authorization": "Bearer team1-key"}


def gateway(quota_store: QuotaStore, quotas: str) -> Processor:
    """The default config with ``quotas`` over ``quota_store``."""
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(DEFAULT_CONFIG + quotas, "gateway.yaml", {}), services)
    return Processor(lambda: runtime, default_stages())


def refusal(answer: ext.ProcessingResponse) -> tuple[int, dict[str, Any]] | None:
    """The gateway's own answer in place of the request, or None when it went on."""
    if answer.WhichOneof("response") != "immediate_response":
        return None
    immediate = answer.immediate_response
    return immediate.status.code, orjson.loads(immediate.body)


async def chat(processor: Processor, body: dict[str, Any]) -> ext.ProcessingResponse:
    """The gateway's answer to key team1's chat request (its last message)."""
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers=OPENAI_AUTH),
            request_body(orjson.dumps(body)),
        ],
    )
    return answers[-1]


# -- a request the gateway refuses after the quota counted it --------------------------------

TWO_A_MINUTE = """
quotas:
  rules:
    - {name: two-a-minute, subject: api_key, requests_per_minute: 2}
"""
CLAUDE_CHAT = {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_request_the_translation_refuses_takes_no_request_of_the_limit(
    quota_store: QuotaStore,
) -> None:
    # Claude has no log probabilities: translating the OpenAI body for it is a 400, after
    # the quota reserved. The request never reached a provider; like a hard cap's refusal
    # it counts in no limit (docs/quotas.md: "refused by the gateway after reserving").
    processor = gateway(quota_store, TWO_A_MINUTE)
    for _ in range(3):
        refused = refusal(await chat(processor, {**CLAUDE_CHAT, "logprobs": True}))
        assert refused is not None and refused[0] == 400
        assert refused[1]["error"]["param"] == "logprobs"
        await quota_store.flush()  # the give-back goes with the next settlement batch
    # The key's two requests of the minute are still there.
    assert refusal(await chat(processor, CLAUDE_CHAT)) is None
    assert refusal(await chat(processor, CLAUDE_CHAT)) is None
    third = refusal(await chat(processor, CLAUDE_CHAT))
    assert third is not None and third[0] == 429


# -- Claude's thinking on Bedrock's Converse API under a hard cap ----------------------------

SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
# The default config with a Claude that thinks on the mock Bedrock.
WITH_SONNET = DEFAULT_CONFIG.replace(
    "    aliases: [haiku]\n",
    f"    aliases: [haiku]\n  - name: {SONNET}\n    provider: mock-bedrock\n",
    1,
)
CAPPED_DAY = """
quotas:
  default_max_tokens: 1000
  rules:
    - {name: team-cap, subject: api_key, tokens_per_day: %d, hard_cap: true}
"""


async def capped_converse(
    quota_store: QuotaStore, budget: int, body: dict[str, Any]
) -> ext.ProcessingResponse:
    """The gateway's answer to key team1's Converse call to Sonnet under a hard-capped
    daily budget of ``budget`` tokens."""
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    config = parse_config(WITH_SONNET + CAPPED_DAY % budget, "gateway.yaml", {})
    runtime = Runtime(config, services)
    await runtime.start()  # the AWS credentials that sign the call
    try:
        answers = await run_stream(
            Processor(lambda: runtime, default_stages()),
            [
                request_headers(
                    f"/model/{quote(SONNET, safe='')}/converse",
                    headers={"authorization": "Bearer team1-key"},
                ),
                request_body(orjson.dumps(body)),
            ],
        )
    finally:
        await runtime.close()
    return answers[-1]


def thinking_converse(max_tokens: int | None = 32_000, budget: int = 31_999) -> dict[str, Any]:
    """A Converse call asking Claude to think (Anthropic's fields, passed on to Claude),
    with no inferenceConfig when ``max_tokens`` is None."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": [{"text": "Plan it, then do it."}]}],
        "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": budget}},
    }
    if max_tokens is not None:
        body["inferenceConfig"] = {"maxTokens": max_tokens}
    return body


async def test_a_cap_on_converse_lowers_claudes_thinking_budget_below_max_tokens(
    quota_store: QuotaStore,
) -> None:
    # Bedrock refuses a thinking budget that is not below maxTokens (400): the cap that
    # lowers maxTokens must lower the budget with it, as it does on the Messages API.
    answer = await capped_converse(quota_store, 5_000, thinking_converse())

    mutation = answer.request_body.response.body_mutation
    sent = orjson.loads(mutation.body)
    most = sent["inferenceConfig"]["maxTokens"]
    assert 1_024 < most < 5_000
    budget = sent["additionalModelRequestFields"]["thinking"]["budget_tokens"]
    assert 1_024 <= budget < most
    # The mock Bedrock, which checks thinking as Bedrock does, takes it.
    assert claude_thinks(SONNET, sent)


async def test_a_cap_too_small_for_converse_thinking_is_the_gateways_refusal_not_bedrocks(
    quota_store: QuotaStore,
) -> None:
    # 600 tokens leave no room for the least budget (1,024) and an answer: refused by the
    # budget, rather than sent on with a maxTokens Bedrock refuses; for good (the whole
    # budget is too small), so as Bedrock's ServiceQuotaExceededException (400), which
    # boto3 does not retry, not a throttle.
    refused = refusal(await capped_converse(quota_store, 600, thinking_converse()))

    assert refused is not None and refused[0] == 400
    assert refused[1]["code"] == "insufficient_quota"


async def test_a_cap_on_converse_thinking_without_max_tokens_leaves_room_for_the_budget(
    quota_store: QuotaStore,
) -> None:
    # No maxTokens: the request is reserved the default answer (1,000 tokens here) and
    # its thinking budget, as reasoning_effort is. Reserving the default alone made the
    # cap write maxTokens 1,000, which no budget (at least 1,024) stays below.
    answer = await capped_converse(quota_store, 5_000, thinking_converse(None, 2_000))

    sent = orjson.loads(answer.request_body.response.body_mutation.body)
    most = sent["inferenceConfig"]["maxTokens"]
    budget = sent["additionalModelRequestFields"]["thinking"]["budget_tokens"]
    assert 1_024 <= budget < most <= 3_000
    assert claude_thinks(SONNET, sent)
