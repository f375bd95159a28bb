"""Pricing, periods, latency percentiles and the cost a request carries into the log."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from extproc.chargeback.latency import BOUNDS_MS, BUCKETS, bucket_index, percentile
from extproc.chargeback.period import PeriodError, resolve_period
from extproc.chargeback.pricing import (
    PriceTable,
    cost_of,
    request_cost,
    token_prices,
    usd,
    usd_float,
    usd_text,
)
from extproc.config import GatewayConfig, load_config
from extproc.config.pricing_model import ModelPrice, PricingConfig
from extproc.context import RequestContext, Usage
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.openai_bedrock_stream import read_usage

PRICE = ModelPrice(input_per_million=Decimal("2.50"), output_per_million=Decimal("10"),
                   cached_input_per_million=Decimal("1.25"))  # fmt: skip


def test_a_request_costs_its_tokens_at_the_model_prices() -> None:
    # 1000 prompt tokens of which 400 cached, 200 completion tokens at gpt-4o's prices:
    # 600 * 2.50 + 400 * 1.25 + 200 * 10 = 4000 USD per million requests like it.
    cost = cost_of(Usage(1000, 200, 1200, cached_tokens=400), token_prices(PRICE))
    expected = Decimal(600) * Decimal("2.50") + 400 * Decimal("1.25") + 200 * Decimal(10)
    assert cost.usd == expected / 1_000_000
    assert cost.priced


def test_cached_input_defaults_to_the_input_price() -> None:
    price = ModelPrice(input_per_million=Decimal("0.15"), output_per_million=Decimal("0.6"))
    assert cost_of(Usage(10, 0, 10, 10), token_prices(price)).usd == Decimal("0.0000015")


def test_prices_take_yaml_numbers_exactly_and_refuse_sub_picodollar_precision() -> None:
    price = ModelPrice.model_validate({"input_per_million": 0.1, "output_per_million": 0.3})
    assert price.input_per_million == Decimal("0.1")
    with pytest.raises(ValidationError, match="at most 6 decimal places"):
        ModelPrice.model_validate({"input_per_million": 0.0000001, "output_per_million": 1})
    with pytest.raises(ValidationError):
        ModelPrice.model_validate({"input_per_million": -1, "output_per_million": 1})


def test_sums_of_many_costs_are_exact() -> None:
    # 0.1 + 0.2 != 0.3 in floats; in picodollars it is.
    prices = token_prices(ModelPrice(input_per_million=Decimal("0.1"),
                                     output_per_million=Decimal("0.2")))  # fmt: skip
    total = sum(cost_of(Usage(1, 1, 2), prices).picousd for _ in range(10_000))
    assert usd(total) == Decimal("0.003")
    assert usd_float(total) == 0.003 and repr(usd_float(total)) == "0.003"
    assert usd_text(total) == "0.003"
    assert usd_text(0) == "0.00" and usd_text(12_500_000_000_000) == "12.50"


@given(st.integers(min_value=0, max_value=10**24))
def test_a_costs_float_is_the_float_nearest_its_exact_amount(picousd: int) -> None:
    # The log line, the metadata and the metric print this float: it must be the
    # one nearest the exact decimal amount, whatever the size of the sum.
    assert usd_float(picousd) == float(usd(picousd))


def test_aliases_share_their_model_price_and_unknown_models_are_unpriced(
    config: GatewayConfig,
) -> None:
    table = PriceTable(config.pricing, config.models)
    haiku = table.cost("haiku", Usage(1_000_000, 0, 1_000_000))
    assert haiku.usd == Decimal("0.25")  # the alias of anthropic.claude-3-haiku-...
    unknown = table.cost("claude-3-opus-latest", Usage(100, 100, 200))
    assert (unknown.picousd, unknown.priced) == (0, False)
    assert table.unpriced_models == ()


def test_the_default_config_prices_every_model_it_lists(config: GatewayConfig) -> None:
    priced = set(config.pricing.models)
    assert {model.name for model in config.models} <= priced


def test_unpriced_models_of_a_config_are_listed() -> None:
    table = PriceTable(PricingConfig(models={"gpt-4o": PRICE}), ())
    assert table.prices("gpt-4o") is not None and table.prices(None) is None


@pytest.mark.parametrize(
    ("latency", "index"), [(0.5, 0), (10, 0), (10.01, 1), (300000, len(BOUNDS_MS) - 1),
                           (10**9, len(BOUNDS_MS))],
)  # fmt: skip
def test_latency_buckets_have_inclusive_upper_bounds(latency: float, index: int) -> None:
    assert bucket_index(latency) == index


def test_percentiles_interpolate_inside_the_bucket() -> None:
    counts = [0] * BUCKETS
    counts[bucket_index(150)] = 100  # all between 100 and 200 ms
    assert percentile(counts, 0.5) == 150.0
    assert percentile(counts, 0.95) == 195.0
    assert percentile([0] * BUCKETS, 0.5) is None
    slow = [0] * BUCKETS
    slow[-1] = 1
    assert percentile(slow, 0.95) == float(BOUNDS_MS[-1])


NOW = datetime(2026, 3, 14, 15, 42, tzinfo=UTC)


def test_period_shortcuts() -> None:
    day = resolve_period(day="2026-03-01", now=NOW)
    assert (day.start, day.end) == (
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 3, 2, tzinfo=UTC),
    )
    month = resolve_period(month="2026-02", now=NOW)
    assert month.hours == 28 * 24
    last = resolve_period(last_month=True, now=datetime(2026, 1, 5, tzinfo=UTC))
    assert last.start == datetime(2025, 12, 1, tzinfo=UTC)
    default = resolve_period(now=NOW)
    assert default.end == datetime(2026, 3, 14, 16, tzinfo=UTC) and default.hours == 24
    # A Berlin month starts at 23:00 UTC the day before; March has a DST change.
    berlin = resolve_period(month="2026-03", zone_name="Europe/Berlin", now=NOW)
    assert berlin.start == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert berlin.hours == 31 * 24 - 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"start": "2026-03-01T10:30:00Z"}, "not on a whole UTC hour"),
        # A day in a half-hour zone: the message shows a period that can be asked for.
        (
            {"day": "2026-03-01", "zone_name": "Asia/Kolkata"},
            "--from 2026-02-28T18:00Z --to 2026-03-01T19:00Z covers it",
        ),
        ({"day": "2026-03-01", "month": "2026-03"}, "give one of"),
        ({"month": "2026-13"}, "YYYY-MM"),
        ({"day": "01/03/2026"}, "YYYY-MM-DD"),
        ({"start": "2026-03-02T00:00Z", "end": "2026-03-01T00:00Z"}, "before its end"),
        ({"zone_name": "Mars/Olympus"}, "unknown time zone"),
    ],
)
def test_periods_the_rollups_cannot_answer_are_refused(
    arguments: dict[str, str], message: str
) -> None:
    with pytest.raises(PeriodError, match=message):
        resolve_period(**arguments, now=NOW)  # type: ignore[arg-type]


async def test_the_log_line_and_the_counter_carry_the_request_cost(
    processor: Processor, services: Services
) -> None:
    answer = {"model": "gpt-4o", "choices": [], "usage": {
        "prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
        "prompt_tokens_details": {"cached_tokens": 400}}}  # fmt: skip
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    answers = await run_stream(processor, [
        request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
        request_body(body), response_headers(200), response_body(orjson.dumps(answer)),
    ])  # fmt: skip
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["cost_usd"] == 0.004 and line["cost_priced"] is True
    assert line["cached_tokens"] == 400
    metadata = answers[-1].dynamic_metadata.fields["io.aigw"].struct_value
    assert metadata.fields["cost_usd"].number_value == 0.004
    value = services.metrics.registry.get_sample_value(
        "aigw_cost_usd_total",
        {"api_key_id": "team1", "user_id": "alice", "group_id": "engineering",
         "model": "gpt-4o", "provider": "mock"},
    )  # fmt: skip
    assert value == 0.004


def test_cache_writes_cost_the_cache_write_price() -> None:
    # Claude Sonnet: 3.00 input, 0.30 cache reads, 3.75 cache writes, 15.00 output.
    price = ModelPrice(
        input_per_million=Decimal("3"),
        output_per_million=Decimal("15"),
        cached_input_per_million=Decimal("0.30"),
        cache_write_input_per_million=Decimal("3.75"),
    )
    usage = Usage(3100, 50, 3150, cached_tokens=2000, cache_write_tokens=1000)
    cost = cost_of(usage, token_prices(price))
    # 100 plain, 2000 read, 1000 written: 300 + 600 + 3750, and 50 * 15 = 750.
    assert cost.usd == Decimal("0.0054")
    # Without a cache-write price, writes cost the input price.
    plain = ModelPrice(input_per_million=Decimal("3"), output_per_million=Decimal("15"))
    assert cost_of(Usage(1000, 0, 1000, cache_write_tokens=1000), token_prices(plain)).usd == (
        Decimal("0.003")
    )


async def test_an_anthropic_answer_that_wrote_to_the_cache_is_billed_for_the_writes(
    processor: Processor, services: Services
) -> None:
    answer = {"type": "message", "model": "claude-sonnet-4-0", "content": [], "usage": {
        "input_tokens": 100, "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 2000, "output_tokens": 50}}  # fmt: skip
    body = orjson.dumps({
        "model": "claude-sonnet-4-0", "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    await run_stream(processor, [
        request_headers("/v1/messages", headers={"x-api-key": "team1-key"}),
        request_body(body), response_headers(200), response_body(orjson.dumps(answer)),
    ])  # fmt: skip
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["prompt_tokens"], line["cached_tokens"], line["cache_write_tokens"]) == (
        3100,
        2000,
        1000,
    )
    # The default config's Sonnet prices: the writes at 3.75, not at the 3.00 input price.
    assert line["cost_usd"] == 0.0054


async def test_a_model_without_a_price_is_flagged_in_the_log(services: Services) -> None:
    config = load_config("config/gateway.yaml", environ={})
    pricing = PricingConfig(models={"gpt-4o": PRICE})
    unpriced = config.model_copy(update={"pricing": pricing})
    processor = processor_for(unpriced, services)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    answer = b'{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}'
    await run_stream(processor, [
        request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
        request_body(body), response_headers(200), response_body(answer),
    ])  # fmt: skip
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["cost_usd"], line["cost_priced"]) == (0.0, False)


async def test_a_request_of_a_model_without_a_price_that_used_nothing_is_not_flagged(
    services: Services,
) -> None:
    # The provider failed it before any token: it costs 0 at any price, so the bill is
    # not short and the reports' unpriced_requests do not count it.
    config = load_config("config/gateway.yaml", environ={})
    unpriced = config.model_copy(update={"pricing": PricingConfig(models={"gpt-4o": PRICE})})
    processor = processor_for(unpriced, services)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    failed = b'{"error":{"message":"The server had an error","type":"server_error"}}'
    await run_stream(processor, [
        request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
        request_body(body), response_headers(500), response_body(failed),
    ])  # fmt: skip
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["http_status_code"], line["prompt_tokens"]) == (500, 0)
    assert (line["cost_usd"], line["cost_priced"]) == (0.0, True)


def test_a_failover_is_priced_at_the_model_that_answered(config: GatewayConfig) -> None:
    chained = config.model_copy(
        update={
            "models": [
                model.model_copy(update={"fallbacks": ("gpt-4o-mini",)})
                if model.name == "gpt-4o"
                else model
                for model in config.models
            ]
        }
    )
    runtime = Runtime(chained, Services(GatewayMetrics(), AccessLog(stdout=False)))
    ctx = RequestContext(runtime=runtime, model="gpt-4o", failover_model="gpt-4o")
    # The per-attempt filter reported that the fallback gpt-4o-mini answered.
    ctx.answered_model = "gpt-4o-mini"
    ctx.usage = Usage(1_000_000, 0, 1_000_000)
    assert request_cost(ctx).usd == Decimal("0.15")
    # Refused before naming a model: nothing to price, nothing flagged.
    anonymous = RequestContext(runtime=runtime)
    assert (request_cost(anonymous).picousd, request_cost(anonymous).priced) == (0, True)


def test_bedrock_cache_writes_are_read_as_such() -> None:
    found = read_usage(
        {"inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 20,
         "cacheWriteInputTokens": 30}
    )  # fmt: skip
    assert found is not None
    usage, _ = found
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens) == (60, 20, 30)
