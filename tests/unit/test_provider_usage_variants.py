"""Usage that OpenAI-compatible providers report outside OpenAI's ``usage``, read for the bill.

Groq (``api.groq.com/openai/v1``) puts its count in ``x_groq.usage`` of the finish chunk
(OpenAI's fields plus ``queue_time``, ``prompt_time``, ``completion_time`` and
``total_time``, in seconds). Before it took ``stream_options`` that was its only report;
asked for usage today, it sends the same count three times: in ``x_groq.usage`` and in
``usage`` of the finish chunk, then in a usage-only chunk (``choices: []``) that also
names its ``service_tier`` (``on_demand``). The streams below are shaped as Groq sends
them (recorded Groq streams, kimi-k2 and gemma2-9b-it). The bill must read the count when
``x_groq.usage`` is the only one, count it once when it comes three times, and a client
that did not ask for usage (the gateway asked) must find none of the three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc.chargeback.pricing import TokenPrices, cost_of
from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.openai_openai import usage_from_object
from tests.unit.sse_play import only_line
from tests.unit.test_openai_compatible_streams import (
    DONE,
    counts,
    delta,
    event,
    stream,
    text,
)

GROQ_ID = {"id": "req_01k88s37gyfaqa5ckqj4t7mrg8"}
# Groq's count with its timings, as x_groq.usage and (when asked) usage carry it.
GROQ_USAGE = {
    "queue_time": 0.19017122,
    "prompt_tokens": 201,
    "prompt_time": 0.021080836,
    "completion_tokens": 61,
    "completion_time": 0.201014516,
    "total_tokens": 262,
    "total_time": 0.222095352,
}
# The first chunk names the request in x_groq; the text chunks carry no x_groq.
GROQ_FIRST = event(delta(role="assistant", content=""), x_groq=GROQ_ID)
GROQ_TEXT = [text("I'll"), text(" help")]
# Before Groq took stream_options: the count only in the finish chunk's x_groq.
GROQ_FINISH_X_ONLY = event(delta("stop"), x_groq={**GROQ_ID, "usage": GROQ_USAGE})
# Asked for usage today: the finish chunk has it twice, a usage-only chunk once more.
GROQ_FINISH_BOTH = event(delta("stop"), x_groq={**GROQ_ID, "usage": GROQ_USAGE}, usage=GROQ_USAGE)
GROQ_USAGE_CHUNK = event([], usage=GROQ_USAGE, service_tier="on_demand")


def events_of(received: bytes) -> list[dict[str, Any]]:
    return [
        orjson.loads(e.removeprefix(b"data: "))
        for e in received.split(b"\n\n")
        if e.startswith(b"data: {")
    ]


@pytest.mark.parametrize("ended", [True, False])
async def test_a_groq_count_only_in_x_groq_is_billed_not_estimated(
    processor: Processor, services: Services, ended: bool
) -> None:
    # Cut after the finish chunk (the client left before [DONE]), the count is known too.
    chunks = [GROQ_FIRST, *GROQ_TEXT, GROQ_FINISH_X_ONLY, *([DONE] if ended else [])]
    line, _ = await stream(processor, services, chunks, ended=ended)
    assert counts(line) == (201, 61)
    assert line["total_tokens"] == 262
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)


async def test_a_groq_count_sent_three_times_is_billed_once(
    processor: Processor, services: Services
) -> None:
    chunks = [GROQ_FIRST, *GROQ_TEXT, GROQ_FINISH_BOTH, GROQ_USAGE_CHUNK, DONE]
    line, received = await stream(processor, services, chunks, include_usage=True)
    assert counts(line) == (201, 61)
    assert line["total_tokens"] == 262
    # A client that asked for usage gets Groq's stream byte for byte.
    assert received == b"".join(chunks)


@pytest.mark.parametrize(
    "finish", [GROQ_FINISH_X_ONLY, GROQ_FINISH_BOTH], ids=["x-groq-only", "both"]
)
async def test_a_client_that_did_not_ask_for_usage_finds_no_groq_count(
    processor: Processor, services: Services, finish: bytes
) -> None:
    chunks = [GROQ_FIRST, *GROQ_TEXT, finish, GROQ_USAGE_CHUNK, DONE]
    line, received = await stream(processor, services, chunks, include_usage=False)
    assert counts(line) == (201, 61)
    assert b'"usage"' not in received
    events = events_of(received)
    # Every chunk with a choice arrives, the usage-only chunk does not; the finish chunk
    # keeps its finish_reason and Groq's request id.
    assert len(events) == 4
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["x_groq"] == GROQ_ID
    assert received.endswith(DONE)


# OpenRouter's usage, as its usage-accounting docs show it: cache writes (Anthropic models
# behind it bill them above the input price) inside prompt_tokens, under OpenAI's details.
OPENROUTER_USAGE = {
    "completion_tokens": 2,
    "completion_tokens_details": {"reasoning_tokens": 0},
    "cost": 0.95,
    "cost_details": {"upstream_inference_cost": 19},
    "prompt_tokens": 194,
    "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 100, "audio_tokens": 0},
    "total_tokens": 196,
}


def test_openrouters_cache_writes_are_billed_as_writes() -> None:
    usage = usage_from_object(OPENROUTER_USAGE)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (194, 2, 196)
    assert (usage.cached_tokens, usage.cache_write_tokens) == (0, 100)
    # USD per million: input 3, cache writes 3.75, output 15 (Claude Sonnet's).
    prices = TokenPrices(
        input=3_000_000, cached_input=300_000, output=15_000_000,
        cache_write_input=3_750_000, cache_write_1h_input=6_000_000,
    )  # fmt: skip
    assert cost_of(usage, prices).picousd == 94 * 3_000_000 + 100 * 3_750_000 + 2 * 15_000_000


@pytest.mark.parametrize(
    ("details", "written"),
    [
        ({"cached_tokens": 150, "cache_write_tokens": 100}, 44),  # never past the prompt
        ({"cache_write_tokens": -5}, 0),
        ({"cache_write_tokens": True}, 0),
        ({"cache_write_tokens": None}, 0),
    ],
)
def test_a_cache_write_count_never_bills_a_prompt_token_twice(
    details: dict[str, Any], written: int
) -> None:
    usage = usage_from_object({**OPENROUTER_USAGE, "prompt_tokens_details": details})
    assert usage is not None and usage.cache_write_tokens == written


# --- What the provider says it charged ------------------------------------------------------

# OpenRouter's report of a call with its own key at the model's provider (cost is then its
# whole charge; the upstream cost it fills in beside it is the same amount, not more)...
OPENROUTER_CHARGE = {**OPENROUTER_USAGE, "cost": 0.00014, "is_byok": False,
                     "cost_details": {"upstream_inference_cost": 0.00014}}  # fmt: skip
# ...and of a call on the account's own provider key (BYOK): its fee, plus what that
# provider charged.
OPENROUTER_BYOK = {**OPENROUTER_USAGE, "cost": 0.000005, "is_byok": True,
                   "cost_details": {"upstream_inference_cost": 0.0001}}  # fmt: skip


@pytest.mark.parametrize(
    ("reported", "picousd"),
    [(OPENROUTER_CHARGE, 140_000_000), (OPENROUTER_BYOK, 105_000_000)],
    ids=["credits", "byok"],
)
def test_openrouters_charge_is_read_to_the_picodollar(
    reported: dict[str, Any], picousd: int
) -> None:
    usage = usage_from_object(reported)
    assert usage is not None and usage.reported_cost_picousd == picousd


@pytest.mark.parametrize("cost", ["0.1", True, -0.5, 10**9, float("inf"), None, {"usd": 1}])
def test_a_cost_that_is_no_amount_is_no_report(cost: Any) -> None:
    usage = usage_from_object({**OPENROUTER_USAGE, "cost": cost})
    assert usage is not None and usage.reported_cost_picousd is None


def with_unpriced_model(services: Services) -> Processor:
    """The default config, plus a model of the mock provider that the price table lacks
    (as OpenRouter's hundreds of models are lacking from most tables)."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["models"].append({"name": "openrouter/auto", "provider": "mock"})
    return processor_for(parse_config(yaml.safe_dump(raw), "t", {}), services)


async def answered(processor: Processor, model: str, usage: dict[str, Any]) -> None:
    answer = {"id": "gen-1", "object": "chat.completion", "created": 1, "model": model,
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "Hi"}}],
              "usage": usage}  # fmt: skip
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}]})
    await run_stream(processor, [
        request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
        request_body(body),
        response_headers(200),
        response_body(orjson.dumps(answer)),
    ])  # fmt: skip


async def test_a_model_the_table_lacks_costs_what_its_provider_charged(
    services: Services,
) -> None:
    await answered(with_unpriced_model(services), "openrouter/auto", OPENROUTER_BYOK)
    line = only_line(services)
    assert line["cost_usd"] == 0.000105 and line["cost_priced"] is True
    counted = services.metrics.registry.get_sample_value(
        "aigw_cost_usd_total",
        {"api_key_id": "team1", "user_id": "alice", "group_id": "engineering",
         "model": "openrouter/auto", "provider": "mock"},
    )  # fmt: skip
    assert counted == 0.000105


async def test_without_a_charge_a_model_the_table_lacks_stays_unpriced(
    services: Services,
) -> None:
    await answered(
        with_unpriced_model(services), "openrouter/auto", OPENROUTER_USAGE | {"cost": None}
    )
    line = only_line(services)
    assert line["cost_usd"] == 0 and line["cost_priced"] is False


async def test_the_tables_price_wins_over_the_providers_charge(
    processor: Processor, services: Services
) -> None:
    # gpt-4o-mini: $0.15 in (cache writes at the input price: the table gives none),
    # $0.60 out per million; the operator's price is the bill, whatever the provider says.
    await answered(processor, "gpt-4o-mini", OPENROUTER_CHARGE)
    line = only_line(services)
    assert line["cost_usd"] == pytest.approx((194 * 0.15 + 2 * 0.60) / 1e6)


async def test_a_responses_answer_of_a_model_the_table_lacks_costs_what_was_charged(
    services: Services,
) -> None:
    # OpenRouter's Responses API reports the same cost fields in its usage.
    answer = {"id": "resp_1", "object": "response", "status": "completed",
              "model": "openrouter/auto", "output": [],
              "usage": {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15,
                        "cost": 0.000005, "is_byok": True,
                        "cost_details": {"upstream_inference_cost": 0.0001}}}  # fmt: skip
    body = orjson.dumps({"model": "openrouter/auto", "input": "Hi", "store": False})
    await run_stream(with_unpriced_model(services), [
        request_headers("/v1/responses", headers={"authorization": "Bearer team1-key"}),
        request_body(body),
        response_headers(200),
        response_body(orjson.dumps(answer)),
    ])  # fmt: skip
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 3)
    assert line["cost_usd"] == 0.000105 and line["cost_priced"] is True
