"""Requests Anthropic ran in one geography only are billed at that geography's multiplier.

A request with ``inference_geo: "us"`` (or a workspace whose default geography is the US)
runs on US infrastructure only, and Anthropic bills every kind of its tokens (input,
output, cache reads and writes) at 1.1x the model's price; its answer says where it ran
in ``usage.inference_geo``. ``pricing.inference_geos`` gives each geography's multiplier
for all models, ``pricing.models.<m>.inference_geos`` a model's own. Before, the gateway
read no geography: every US-only request was billed 10% short, with nothing in the log
line to tell. Each test plays one request through the real processor with the default
config (``claude-sonnet-4-0`` on ``mock-anthropic``: 3.00 input, 15.00 output per
million) and the geography prices below.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc.chargeback.pricing import PriceTable
from extproc.config import ConfigError, GatewayConfig, parse_config
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
ANTHROPIC_AUTH = {"x-api-key": "team1-key"}
OPENAI_AUTH = {"authorization": "Bearer team1-key"}
PROMPT = [{"role": "user", "content": "Summarise the contract for the US legal team"}]
SONNET = "claude-sonnet-4-0"

# 1000 input tokens, 100 output: 1000 * 3.00 + 100 * 15.00 = 4500 USD per million such
# requests; run in the US, 1.1x that.
USAGE = {"input_tokens": 1000, "output_tokens": 100}
GLOBAL_COST = Decimal("0.0045")
US_COST = Decimal("0.00495")


def config(pricing: dict[str, Any] | None = None, **models: dict[str, Any]) -> GatewayConfig:
    """The default config, with ``pricing`` merged into its pricing section and each of
    ``models`` into that model's price."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["pricing"].update(pricing or {})
    for name, fields in models.items():
        raw["pricing"]["models"][name].update(fields)
    return parse_config(yaml.safe_dump(raw, sort_keys=False), "gateway.yaml", {})


US_TABLE = {"inference_geos": {"us": "1.1"}}


@pytest.fixture
def gateway(services: Services) -> Processor:
    return processor_for(config(US_TABLE), services)


def message(geo: str | None, **usage: Any) -> dict[str, Any]:
    used: dict[str, Any] = {**USAGE, **usage}
    if geo is not None:
        used["inference_geo"] = geo
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": SONNET,
            "content": [{"type": "text", "text": "Summary"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": used}  # fmt: skip


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        for event in events
    )


def events(geo: str | None) -> list[bytes]:
    """Anthropic's stream, one event per chunk: message_start names the geography."""
    start = {**message(geo, output_tokens=1), "content": [], "stop_reason": None}
    return [
        sse({"type": "message_start", "message": start}),
        sse({"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}),
        sse({"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": "Summary"}}),
        sse({"type": "content_block_stop", "index": 0}),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": 100}}),
        sse({"type": "message_stop"}),
    ]  # fmt: skip


def messages_body(*, stream: bool = False, **fields: Any) -> bytes:
    return orjson.dumps(
        {"model": SONNET, "max_tokens": 200, "stream": stream, "messages": PROMPT, **fields}
    )


def chat_body(*, stream: bool = False) -> bytes:
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
    return orjson.dumps({"model": SONNET, "messages": PROMPT, "stream": stream, **extra})


async def answer_json(gateway: Processor, path: str, body: bytes, answer: dict[str, Any]) -> None:
    auth = ANTHROPIC_AUTH if path == "/v1/messages" else OPENAI_AUTH
    await run_stream(gateway, [
        request_headers(path, headers=auth), request_body(body),
        response_headers(200, {"content-type": "application/json"}),
        response_body(orjson.dumps(answer)),
    ])  # fmt: skip


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def counted_cost(services: Services) -> float | None:
    return services.metrics.registry.get_sample_value(
        "aigw_cost_usd_total",
        {"api_key_id": "team1", "user_id": "alice", "group_id": "engineering",
         "model": SONNET, "provider": "mock-anthropic"},
    )  # fmt: skip


# --- Anthropic clients ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "price", "logged"),
    [
        ("us", US_COST, "us"),
        # The default geography, and an answer that names none: the model's own price.
        ("global", GLOBAL_COST, "global"),
        (None, GLOBAL_COST, None),
        # What no provider names a geography: ignored.
        ("US!", GLOBAL_COST, None),
    ],
)
async def test_a_message_is_billed_at_the_geography_it_ran_in(
    gateway: Processor, services: Services, reported: str | None, price: Decimal, logged: str
) -> None:
    await answer_json(gateway, "/v1/messages", messages_body(inference_geo="us"), message(reported))
    line = only_line(services)
    assert (cost(line), line["inference_geo"]) == (price, logged)
    assert counted_cost(services) == float(price)


async def test_a_stream_is_billed_at_the_geography_of_its_message_start(
    gateway: Processor, services: Services
) -> None:
    await play_sse(gateway, "/v1/messages", ANTHROPIC_AUTH, messages_body(stream=True),
                   events("us"))  # fmt: skip
    line = only_line(services)
    assert (cost(line), line["inference_geo"]) == (US_COST, "us")


async def test_a_stream_cut_after_message_start_is_billed_at_its_geography(
    gateway: Processor, services: Services
) -> None:
    await play_sse(gateway, "/v1/messages", ANTHROPIC_AUTH, messages_body(stream=True),
                   events("us")[:3], ended=False)  # fmt: skip
    line = only_line(services)
    assert (line["usage_estimated"], line["inference_geo"]) == (True, "us")
    base = (line["prompt_tokens"] * Decimal("3.00") + line["completion_tokens"] * 15) / 10**6
    assert cost(line) == base * Decimal("1.1")


# --- OpenAI clients of Anthropic: a workspace's default geography ------------------------


async def test_an_openai_client_of_anthropic_is_billed_at_the_geography_it_ran_in(
    gateway: Processor, services: Services
) -> None:
    await answer_json(gateway, "/anthropic/chat/completions", chat_body(), message("us"))
    line = only_line(services)
    assert (cost(line), line["inference_geo"]) == (US_COST, "us")


async def test_an_openai_client_of_an_anthropic_stream_is_billed_at_its_geography(
    gateway: Processor, services: Services
) -> None:
    await play_sse(gateway, "/anthropic/chat/completions", OPENAI_AUTH, chat_body(stream=True),
                   events("us"))  # fmt: skip
    line = only_line(services)
    assert (cost(line), line["inference_geo"]) == (US_COST, "us")


# --- The price table ---------------------------------------------------------------------


async def test_without_geography_prices_a_us_request_costs_what_it_always_did(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """A table written before geographies loads and prices as it did, and says once what
    it does not price."""
    gateway = processor_for(config(), services)
    with caplog.at_level(logging.WARNING, "extproc.chargeback.pricing"):
        for _ in range(2):
            await answer_json(gateway, "/v1/messages", messages_body(), message("us"))
    warned = [r for r in caplog.records if "inference geography 'us'" in r.getMessage()]
    assert len(warned) == 1
    assert "pricing.inference_geos" in warned[0].getMessage()


def sonnet(table: PriceTable, geo: str | None, usage: Usage, tier: str | None = None) -> int:
    return table.cost(SONNET, usage, tier, geo).picousd


def test_a_models_own_multiplier_overrides_the_tables() -> None:
    cfg = config({"inference_geos": {"us": "1.5", "eu": "1.2"}},
                 **{SONNET: {"inference_geos": {"us": "1.1"}}})  # fmt: skip
    table = PriceTable(cfg.pricing, cfg.models)
    usage = Usage(1000, 100, 1100)
    base = 1000 * 3_000_000 + 100 * 15_000_000
    assert sonnet(table, "us", usage) == base * 11 // 10
    # The table's multiplier of the geography the model does not price itself.
    assert sonnet(table, "eu", usage) == base * 12 // 10
    # Another model keeps the table's.
    assert table.cost("gpt-4o-mini", usage, None, "us").picousd == (
        (1000 * 150_000 + 100 * 600_000) * 15 // 10
    )


def test_the_multiplier_applies_to_the_tier_and_long_context_prices_it_picks() -> None:
    tiers = {"priority": {"input_per_million": "3.60", "output_per_million": "18.00",
                          "long_context": {"above_input_tokens": 200000,
                                           "input_per_million": "7.20",
                                           "output_per_million": "27.00"}}}  # fmt: skip
    cfg = config(US_TABLE, **{SONNET: {"service_tiers": tiers}})
    table = PriceTable(cfg.pricing, cfg.models)
    short, long = Usage(1000, 100, 1100), Usage(250_000, 100, 250_100)
    priority = 1000 * 3_600_000 + 100 * 18_000_000
    assert sonnet(table, "us", short, "priority") == priority * 11 // 10
    # The model's long-context prices (6.00 / 22.50), then the priority tier's.
    assert sonnet(table, "us", long) == (250_000 * 6_000_000 + 100 * 22_500_000) * 11 // 10
    assert sonnet(table, "us", long, "priority") == (
        (250_000 * 7_200_000 + 100 * 27_000_000) * 11 // 10
    )


def test_cache_tokens_are_multiplied_and_server_tools_are_not() -> None:
    cfg = config(US_TABLE)
    table = PriceTable(cfg.pricing, cfg.models)
    # 1000 prompt tokens: 600 read from the cache (0.30), 100 written (3.75), 300 plain;
    # 100 output; 2 web searches at 10.00 per thousand.
    usage = Usage(1000, 100, 1100, 600, 100, 0, {"web_search": 2})
    tokens = 300 * 3_000_000 + 600 * 300_000 + 100 * 3_750_000 + 100 * 15_000_000
    searches = 2 * 10_000_000_000
    assert sonnet(table, "us", usage) == tokens * 11 // 10 + searches


def test_a_multiplied_cost_is_rounded_once_to_the_picodollar() -> None:
    tiny = {"tiny": {"input_per_million": "0.000001", "output_per_million": "0"}}
    cfg = config({"models": tiny, "inference_geos": {"us": "1.1"}})
    table = PriceTable(cfg.pricing, cfg.models)
    # One picodollar per token: 5 tokens cost 5.5 pUSD in the US, rounded half to even;
    # 15 tokens cost 16.5, rounded to 16, not 15 tokens rounded one by one (15 * 1 = 15).
    assert table.cost("tiny", Usage(5, 0, 5), None, "us").picousd == 6
    assert table.cost("tiny", Usage(15, 0, 15), None, "us").picousd == 16


@pytest.mark.parametrize(
    ("geos", "message"),
    [
        ({"global": "1.0"}, "'global' is the default inference geography"),
        ({"us": "1.12345"}, "at most 4 decimal places"),
        ({"us": "0"}, "greater than 0"),
        ({"us": "-1.1"}, "greater than 0"),
        ({"us": "ten percent"}, "inference_geos.us"),
        ({"US": "1.1"}, "inference_geos.US"),
    ],
)
@pytest.mark.parametrize("where", ["table", "model"])
def test_a_bad_multiplier_is_refused_naming_its_field(
    geos: dict[str, str], message: str, where: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        if where == "table":
            config({"inference_geos": geos})
        else:
            config(**{SONNET: {"inference_geos": geos}})
    text = str(refused.value)
    assert message in text
    assert "inference_geos" in text
    if where == "model":
        assert SONNET in text
