"""Long prompts are billed at the model's long-context price, whole.

Anthropic bills a Claude Sonnet 4 / 4.5 request (1M-token context window) whose prompt
exceeds 200K tokens at $6 input and $22.50 output per million instead of $3 and $15, the
prompt-cache prices scaled alike, and counts toward the threshold everything in the
prompt: ``input_tokens + cache_creation_input_tokens + cache_read_input_tokens`` (the
gateway's ``prompt_tokens``). Gemini 2.5 Pro switches above 200K prompt tokens too. The
gateway's table gives such a price per model in ``pricing.models.<m>.long_context``; a
request over its ``above_input_tokens`` is priced wholly at it, prompt and completion.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc.chargeback.pricing import PriceTable, cost_of, token_prices
from extproc.config import ConfigError, GatewayConfig, parse_config
from extproc.config.pricing_model import ModelPrice
from extproc.context import Usage
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
from tests.unit.sse_play import only_line, play_sse

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
SONNET, MINI = "claude-sonnet-4-0", "gpt-4o-mini"
ANTHROPIC_AUTH = {"x-api-key": "team1-key"}
OPENAI_AUTH = {"authorization": "Bearer team1-key"}
MILLION = Decimal(10**6)
PROMPT = [{"role": "user", "content": "Review this repository"}]

# Claude Sonnet 4's list prices, USD per million tokens: up to 200K prompt tokens, and
# above (2x input, 1.5x output; cache reads 0.1x, 5-minute writes 1.25x and 1-hour writes
# 2x of the input price in both).
SONNET_PRICE: dict[str, Any] = {
    "input_per_million": "3.00", "cached_input_per_million": "0.30",
    "cache_write_input_per_million": "3.75", "cache_write_1h_input_per_million": "6.00",
    "output_per_million": "15.00",
    "long_context": {
        "above_input_tokens": 200_000,
        "input_per_million": "6.00", "cached_input_per_million": "0.60",
        "cache_write_input_per_million": "7.50", "cache_write_1h_input_per_million": "12.00",
        "output_per_million": "22.50",
    },
}  # fmt: skip


def sonnet(**changes: Any) -> ModelPrice:
    return ModelPrice.model_validate({**SONNET_PRICE, **changes})


def config_text(prices: dict[str, dict[str, Any]]) -> str:
    """The default config with ``prices`` as the named models' whole price entries."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["pricing"]["models"].update(prices)
    return yaml.safe_dump(raw, sort_keys=False)


def usd(tokens_at_prices: list[tuple[int, str]]) -> Decimal:
    """The cost of token counts at prices in USD per million."""
    return sum((count * Decimal(price) for count, price in tokens_at_prices), Decimal(0)) / MILLION


# --- Across the threshold --------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "input_price", "output_price", "long_context"),
    [
        (199_999, "3.00", "15.00", False),
        # "Exceeds 200K": a prompt of exactly 200,000 tokens is still at the standard price.
        (200_000, "3.00", "15.00", False),
        (200_001, "6.00", "22.50", True),
        (1_000_000, "6.00", "22.50", True),
    ],
)
def test_a_prompt_over_the_threshold_is_priced_wholly_at_the_long_context_price(
    prompt: int, input_price: str, output_price: str, long_context: bool
) -> None:
    cost = cost_of(Usage(prompt, 1000, prompt + 1000), token_prices(sonnet()))
    # Every prompt token and the completion: not only the tokens past the threshold.
    assert cost.usd == usd([(prompt, input_price), (1000, output_price)])
    assert (cost.long_context, cost.priced) == (long_context, True)


def test_cache_reads_and_writes_count_toward_the_threshold_and_are_priced_above_it() -> None:
    # 150,000 uncached + 30,000 read + 25,000 written (10,000 of them to the 1-hour cache):
    # 205,000 prompt tokens, over 200K though the uncached part alone is well under it.
    usage = Usage(205_000, 2000, 207_000, cached_tokens=30_000, cache_write_tokens=25_000,
                  cache_write_1h_tokens=10_000)  # fmt: skip
    cost = cost_of(usage, token_prices(sonnet()))
    assert cost.long_context
    assert cost.usd == usd([(150_000, "6.00"), (30_000, "0.60"), (15_000, "7.50"),
                            (10_000, "12.00"), (2000, "22.50")])  # fmt: skip
    # The same prompt 5,001 tokens shorter in its cache reads is under it: standard prices.
    short = Usage(199_999, 2000, 201_999, cached_tokens=24_999, cache_write_tokens=25_000,
                  cache_write_1h_tokens=10_000)  # fmt: skip
    assert cost_of(short, token_prices(sonnet())).usd == usd(
        [(150_000, "3.00"), (24_999, "0.30"), (15_000, "3.75"), (10_000, "6.00"),
         (2000, "15.00")]
    )  # fmt: skip


def test_a_model_without_a_long_context_price_costs_the_same_at_any_length() -> None:
    # gpt-4.1 and the like bill one price over their whole window.
    flat = ModelPrice.model_validate({"input_per_million": "2.00", "output_per_million": "8.00"})
    cost = cost_of(Usage(900_000, 100, 900_100), token_prices(flat))
    assert cost.usd == usd([(900_000, "2.00"), (100, "8.00")]) and not cost.long_context


def test_server_tools_cost_their_price_at_any_prompt_length() -> None:
    # A web search costs $10 per 1,000 whatever the prompt: the tokens alone change price.
    prices = token_prices(sonnet(), {"web_search": Decimal("10.00")})
    usage = Usage(300_000, 0, 300_000, server_tool_requests={"web_search": 2})
    assert cost_of(usage, prices).usd == usd([(300_000, "6.00")]) + Decimal("0.02")


def test_a_long_context_entry_is_whole_its_unset_cache_prices_follow_its_own_input() -> None:
    # A model that leaves its cache prices to the input price may leave the long-context
    # ones too: they follow the long-context input price, not the model's.
    plain = ModelPrice.model_validate({
        "input_per_million": "1.25", "output_per_million": "10.00",
        "long_context": {"above_input_tokens": 200_000, "input_per_million": "2.50",
                         "output_per_million": "15.00"},
    })  # fmt: skip
    usage = Usage(250_000, 0, 250_000, cached_tokens=50_000, cache_write_tokens=50_000)
    assert cost_of(usage, token_prices(plain)).usd == usd([(250_000, "2.50")])


# --- Service tiers ---------------------------------------------------------------------


def tiered(**tiers: dict[str, Any]) -> PriceTable:
    config = parse_config(
        config_text({SONNET: {**SONNET_PRICE, "service_tiers": tiers}}), "gateway.yaml", {}
    )
    return PriceTable(config.pricing, config.models)


def test_a_tier_prices_long_prompts_at_its_own_long_context_price() -> None:
    # Fast mode at 6x, long prompts included (its long_context at 6x the model's).
    table = tiered(fast={
        "input_per_million": "18.00", "cached_input_per_million": "1.80",
        "cache_write_input_per_million": "22.50", "cache_write_1h_input_per_million": "36.00",
        "output_per_million": "90.00",
        "long_context": {
            "above_input_tokens": 200_000, "input_per_million": "36.00",
            "cached_input_per_million": "3.60", "cache_write_input_per_million": "45.00",
            "cache_write_1h_input_per_million": "72.00", "output_per_million": "135.00"},
    })  # fmt: skip
    long, short = Usage(250_000, 100, 250_100), Usage(150_000, 100, 150_100)
    assert table.cost(SONNET, long, "fast").usd == usd([(250_000, "36.00"), (100, "135.00")])
    assert table.cost(SONNET, short, "fast").usd == usd([(150_000, "18.00"), (100, "90.00")])
    # The standard tier, and a tier without an entry, keep the model's own long price.
    expected = usd([(250_000, "6.00"), (100, "22.50")])
    for tier in ("standard", "batch", None):
        assert table.cost(SONNET, long, tier).usd == expected


def test_a_tier_may_bill_long_prompts_at_its_own_price_by_saying_so() -> None:
    # A contract that prices Priority Tier flat: its long_context repeats its own prices.
    flat = {"input_per_million": "3.60", "output_per_million": "18.00"}
    table = tiered(priority={**flat, "long_context": {"above_input_tokens": 200_000, **flat}})
    cost = table.cost(SONNET, Usage(250_000, 100, 250_100), "priority")
    assert cost.usd == usd([(250_000, "3.60"), (100, "18.00")])


# --- Through the gateway ---------------------------------------------------------------


def messages_body(model: str, *, stream: bool = False) -> bytes:
    return orjson.dumps({"model": model, "max_tokens": 2000, "stream": stream, "messages": PROMPT})


async def test_a_250k_token_anthropic_answer_is_billed_at_the_long_context_price(
    processor: Processor, services: Services
) -> None:
    # The default config's Sonnet: Anthropic reports 250,000 prompt tokens (220,000 of them
    # read from the cache) and 1,000 output tokens.
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": SONNET,
              "content": [{"type": "text", "text": "Looks fine"}], "stop_reason": "end_turn",
              "usage": {"input_tokens": 30_000, "cache_read_input_tokens": 220_000,
                        "cache_creation_input_tokens": 0, "output_tokens": 1000}}  # fmt: skip
    answers = await run_stream(processor, [
        request_headers("/v1/messages", headers=ANTHROPIC_AUTH),
        request_body(messages_body(SONNET)),
        response_headers(200, {"content-type": "application/json"}),
        response_body(orjson.dumps(answer)),
    ])  # fmt: skip
    line = only_line(services)
    expected = usd([(30_000, "6.00"), (220_000, "0.60"), (1000, "22.50")])
    assert expected == Decimal("0.3345")  # not 0.171, the prices up to 200K
    assert (line["prompt_tokens"], line["cached_tokens"]) == (250_000, 220_000)
    assert Decimal(str(line["cost_usd"])) == expected and line["cost_priced"] is True
    assert line["long_context"] is True  # why it costs twice the short price
    # The counter and Envoy's metadata carry the very same cost.
    counted = services.metrics.registry.get_sample_value(
        "aigw_cost_usd_total",
        {"api_key_id": "team1", "user_id": "alice", "group_id": "engineering",
         "model": SONNET, "provider": "mock-anthropic"},
    )  # fmt: skip
    assert counted == float(expected)
    metadata = answers[-1].dynamic_metadata.fields["io.aigw"].struct_value
    assert metadata.fields["cost_usd"].number_value == float(expected)


def openai_chunks() -> list[bytes]:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MINI,
             "choices": [{"index": 0, "delta": {"content": "Looks fine, mostly"},
                          "finish_reason": None}]}  # fmt: skip
    return [b"data: " + orjson.dumps(chunk) + b"\n\n"] * 2


@pytest.mark.parametrize(("threshold", "long_context"), [(1, True), (1_000_000, False)])
async def test_a_stream_cut_before_its_usage_is_priced_by_its_estimated_prompt(
    services: Services, threshold: int, long_context: bool
) -> None:
    # gpt-4o-mini given a long-context price above `threshold` tokens: the client hangs up
    # before the usage chunk, and the estimated prompt decides the price.
    config: GatewayConfig = parse_config(config_text({MINI: {
        "input_per_million": "0.15", "output_per_million": "0.60",
        "long_context": {"above_input_tokens": threshold, "input_per_million": "0.30",
                         "output_per_million": "1.20"},
    }}), "gateway.yaml", {})  # fmt: skip
    body = orjson.dumps({"model": MINI, "stream": True, "messages": PROMPT})
    await play_sse(processor_for(config, services), "/v1/chat/completions", OPENAI_AUTH, body,
                   openai_chunks(), ended=False)  # fmt: skip
    line = only_line(services)
    assert line["usage_estimated"] is True and line["prompt_tokens"] > 1
    assert line["long_context"] is long_context
    prices = ("0.30", "1.20") if long_context else ("0.15", "0.60")
    assert Decimal(str(line["cost_usd"])) == usd(
        [(line["prompt_tokens"], prices[0]), (line["completion_tokens"], prices[1])]
    )


# --- The default config and the config checks ------------------------------------------


def test_the_default_config_prices_sonnets_long_prompts(config: GatewayConfig) -> None:
    price = config.pricing.models[SONNET]
    assert price.long_context is not None
    long = price.long_context
    assert long.above_input_tokens == 200_000
    # 2x the input price (and each cache price), 1.5x the output price.
    assert long.input_per_million == 2 * price.input_per_million
    assert long.cached_input == 2 * price.cached_input
    assert long.cache_write_input == 2 * price.cache_write_input
    assert long.cache_write_1h_input == 2 * price.cache_write_1h_input
    assert long.output_per_million == Decimal("1.5") * price.output_per_million


@pytest.mark.parametrize(
    ("long_context", "problem"),
    [
        ({"input_per_million": 6, "output_per_million": "22.5"},
         "pricing.models.m.long_context.above_input_tokens: required field is missing"),
        ({"above_input_tokens": 0, "input_per_million": 6, "output_per_million": 22},
         "pricing.models.m.long_context.above_input_tokens: "),
        ({"above_input_tokens": "200K", "input_per_million": 6, "output_per_million": 22},
         "pricing.models.m.long_context.above_input_tokens: "),
        ({"above_input_tokens": 200_000, "output_per_million": 22},
         "pricing.models.m.long_context.input_per_million: required field is missing"),
        ({"above_input_tokens": 200_000, "input_per_million": "6.0000001",
          "output_per_million": 22},
         "pricing.models.m.long_context.input_per_million: at most 6 decimal places"),
        ({"above_input_tokens": 200_000, "input_per_million": 6, "output_per_million": -1},
         "pricing.models.m.long_context.output_per_million: "),
        ({"above_input_tokens": 200_000, "input_per_million": 6, "output_per_million": 22,
          "server_tools_per_thousand": {"web_search": 20}},
         "pricing.models.m.long_context.server_tools_per_thousand: unknown field"),
        ({"above_input_tokens": 200_000, "input_per_million": 6, "output_per_million": 22,
          "long_context": {}},
         "pricing.models.m.long_context.long_context: unknown field"),
    ],
)  # fmt: skip
def test_a_long_context_price_is_checked_at_load_naming_the_field(
    long_context: dict[str, Any], problem: str
) -> None:
    entry = {"input_per_million": 3, "output_per_million": 15, "long_context": long_context}
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text({"m": entry}), "gateway.yaml", {})
    assert any(found.startswith(problem) for found in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    "missing",
    ["cached_input_per_million", "cache_write_input_per_million",
     "cache_write_1h_input_per_million"],
)  # fmt: skip
def test_a_cache_price_the_model_gives_its_long_context_must_give_too(missing: str) -> None:
    # Left out, the long-context cache reads would default to the long-context input price:
    # ten times Anthropic's bill for them. Refused rather than guessed.
    long_context = {k: v for k, v in SONNET_PRICE["long_context"].items() if k != missing}
    with pytest.raises(ConfigError) as caught:
        parse_config(
            config_text({SONNET: {**SONNET_PRICE, "long_context": long_context}}),
            "gateway.yaml", {},
        )  # fmt: skip
    [problem] = caught.value.problems
    assert problem.startswith(f"pricing.models.{SONNET}.long_context: ") and missing in problem


def test_a_tier_of_a_model_with_a_long_context_price_must_give_its_own() -> None:
    # Billed at the tier's price up to 200K and at the model's standard long price above
    # it, a fast answer would cost a sixth of its bill: the operator says which it is.
    tier = {"input_per_million": "18.00", "output_per_million": "90.00"}
    with pytest.raises(ConfigError) as caught:
        parse_config(
            config_text({SONNET: {**SONNET_PRICE, "service_tiers": {"fast": tier}}}),
            "gateway.yaml", {},
        )  # fmt: skip
    [problem] = caught.value.problems
    assert problem.startswith(f"pricing.models.{SONNET}.service_tiers: ")
    assert "'fast'" in problem and "long_context" in problem
