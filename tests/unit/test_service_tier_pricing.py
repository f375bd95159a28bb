"""Requests are billed at the service tier the provider says served them.

OpenAI bills a chat completion at the tier named by the answer's top-level
``service_tier`` (``flex`` at about half the standard price, ``priority`` above it,
``default`` the standard price); Anthropic reports ``usage.service_tier`` (``standard``,
``priority``). A model's ``pricing.models.<m>.service_tiers`` gives each such tier's
price; a tier without one, the standard tier and an answer that names none are billed at
the model's own price. The prices below are the test's own, not anyone's list prices.
"""

from __future__ import annotations

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
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.openai_anthropic import StreamTranslator
from extproc.translators.openai_openai import ChunkStreamReader
from tests.unit.sse_play import only_line, play_sse

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
OPENAI_AUTH = {"authorization": "Bearer team1-key"}
ANTHROPIC_AUTH = {"x-api-key": "team1-key"}
PROMPT = [{"role": "user", "content": "Classify these support tickets"}]
MINI, SONNET = "gpt-4o-mini", "claude-sonnet-4-0"

# USD per million tokens. The default config's own prices of the two models (gpt-4o-mini:
# 0.15 input, 0.075 cached, 0.60 output; Sonnet: 3.00 input, 15.00 output), and the
# tiers this test prices apart.
TIERS: dict[str, dict[str, Any]] = {
    MINI: {
        "flex": {"input_per_million": "0.075", "cached_input_per_million": "0.0375",
                 "output_per_million": "0.30"},
        "priority": {"input_per_million": "0.25", "cached_input_per_million": "0.125",
                     "output_per_million": "1.00"},
    },
    # Sonnet prices prompts above 200K tokens apart, so its tier must price them too.
    SONNET: {"priority": {"input_per_million": "3.60", "output_per_million": "18.00",
                          "long_context": {"above_input_tokens": 200000,
                                           "input_per_million": "7.20",
                                           "output_per_million": "27.00"}}},
}  # fmt: skip

# An OpenAI answer's usage: 1000 prompt tokens of which 400 cached, 200 completion tokens.
OPENAI_USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
                "prompt_tokens_details": {"cached_tokens": 400}}  # fmt: skip
# 600 * 0.15 + 400 * 0.075 + 200 * 0.60 = 240 USD per million such requests; at flex
# 45 + 15 + 60 = 120; at priority 150 + 50 + 200 = 400.
MINI_STANDARD, MINI_FLEX, MINI_PRIORITY = (Decimal(n) / 10**6 for n in (240, 120, 400))
# An Anthropic answer's usage: 1000 input tokens, 100 output tokens.
ANTHROPIC_USAGE = {"input_tokens": 1000, "output_tokens": 100}
# 1000 * 3.00 + 100 * 15.00 = 4500; at priority 1000 * 3.60 + 100 * 18.00 = 5400.
SONNET_STANDARD, SONNET_PRIORITY = Decimal("0.0045"), Decimal("0.0054")


def config_text(tiers: dict[str, dict[str, Any]]) -> str:
    """The default config with ``tiers`` as the models' ``service_tiers``."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for model, entries in tiers.items():
        raw["pricing"]["models"][model]["service_tiers"] = entries
    return yaml.safe_dump(raw, sort_keys=False)


def tiered_config() -> GatewayConfig:
    return parse_config(config_text(TIERS), "gateway.yaml", {})


@pytest.fixture
def gateway(services: Services) -> Processor:
    """The default config's gateway, with the tier prices above."""
    return processor_for(tiered_config(), services)


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def priced(line: dict[str, Any], input_price: str, output_price: str) -> Decimal:
    """What the line's tokens cost at these prices (USD per million; no cached tokens)."""
    prompt, completion = int(line["prompt_tokens"]), int(line["completion_tokens"])
    return (prompt * Decimal(input_price) + completion * Decimal(output_price)) / 10**6


def counted_cost(services: Services, model: str) -> float | None:
    return services.metrics.registry.get_sample_value(
        "aigw_cost_usd_total",
        {"api_key_id": "team1", "user_id": "alice", "group_id": "engineering",
         "model": model, "provider": "mock" if model == MINI else "mock-anthropic"},
    )  # fmt: skip


def chat_body(model: str, *, stream: bool = False, **fields: Any) -> bytes:
    return orjson.dumps({"model": model, "messages": PROMPT, "stream": stream, **fields})


def messages_body(model: str, *, stream: bool = False) -> bytes:
    return orjson.dumps({"model": model, "max_tokens": 200, "stream": stream, "messages": PROMPT})


def completion(tier: Any = None, *, with_tier: bool = True) -> bytes:
    answer: dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MINI,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "billing"},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": OPENAI_USAGE,
    }  # fmt: skip
    if with_tier:
        answer["service_tier"] = tier
    return orjson.dumps(answer)


async def ask_openai(gateway: Processor, path: str, body: bytes, answer: bytes) -> list[Any]:
    return await run_stream(gateway, [
        request_headers(path, headers=OPENAI_AUTH), request_body(body),
        response_headers(200, {"content-type": "application/json"}), response_body(answer),
    ])  # fmt: skip


def chunk_event(tier: str | None, delta: dict[str, Any] | None, usage: Any = None) -> bytes:
    """One chat.completion.chunk as OpenAI streams it, naming its tier in every chunk."""
    choices = [] if delta is None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]  # fmt: skip
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MINI,
        "choices": choices,
        "usage": usage,
    }
    if tier is not None:
        chunk["service_tier"] = tier
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def openai_stream(tier: str | None) -> list[bytes]:
    """A whole stream, one event per chunk: role, two text pieces, finish, usage, [DONE]."""
    return [
        chunk_event(tier, {"role": "assistant", "content": ""}),
        chunk_event(tier, {"content": "billing "}),
        chunk_event(tier, {"content": "question"}),
        chunk_event(tier, {}),
        chunk_event(tier, None, OPENAI_USAGE),
        b"data: [DONE]\n\n",
    ]


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        for event in events
    )


def message(tier: str | None, **usage: Any) -> dict[str, Any]:
    used = {**ANTHROPIC_USAGE, **usage}
    if tier is not None:
        used["service_tier"] = tier
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": SONNET,
            "content": [{"type": "text", "text": "billing"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": used}  # fmt: skip


def anthropic_events(tier: str | None) -> list[bytes]:
    """Anthropic's stream, one event per chunk: message_start names the tier."""
    start = {**message(tier, output_tokens=1), "content": [], "stop_reason": None}
    return [
        sse({"type": "message_start", "message": start}),
        sse({"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}),
        sse({"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": "billing"}}),
        sse({"type": "content_block_stop", "index": 0}),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": 100}}),
        sse({"type": "message_stop"}),
    ]  # fmt: skip


def data_of(body: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of an OpenAI stream the client received."""
    return [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]


# --- OpenAI: JSON answers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "price", "logged"),
    [
        ("flex", MINI_FLEX, "flex"),
        ("priority", MINI_PRIORITY, "priority"),
        ("default", MINI_STANDARD, "default"),
        # A tier the table does not price apart: the model's own price, the tier named.
        ("scale", MINI_STANDARD, "scale"),
        # What no provider names a tier: ignored, the model's own price.
        (None, MINI_STANDARD, None),
        (7, MINI_STANDARD, None),
        ("Flex!", MINI_STANDARD, None),
        ("f" * 300, MINI_STANDARD, None),
    ],
)
async def test_an_openai_answer_is_billed_at_the_tier_that_served_it(
    gateway: Processor, services: Services, reported: Any, price: Decimal, logged: str | None
) -> None:
    await ask_openai(gateway, "/v1/chat/completions", chat_body(MINI), completion(reported))
    line = only_line(services)
    assert cost(line) == price
    assert line["service_tier"] == logged and line["cost_priced"] is True
    # The counter is billed what the log line says.
    assert counted_cost(services, MINI) == float(price)


async def test_an_answer_that_names_no_tier_is_billed_at_the_models_price(
    gateway: Processor, services: Services
) -> None:
    # An OpenAI-compatible server that has no tiers (vLLM, Ollama): no field at all.
    await ask_openai(gateway, "/v1/chat/completions", chat_body(MINI), completion(with_tier=False))
    line = only_line(services)
    assert (cost(line), line["service_tier"]) == (MINI_STANDARD, None)


async def test_without_tier_prices_a_flex_answer_costs_what_it_always_did(
    config: GatewayConfig, services: Services
) -> None:
    # The default config prices no tier: nothing changes but the line naming the tier.
    processor = processor_for(config, services)
    await ask_openai(processor, "/v1/chat/completions", chat_body(MINI), completion("flex"))
    line = only_line(services)
    assert (cost(line), line["service_tier"]) == (MINI_STANDARD, "flex")


# --- OpenAI: streams -------------------------------------------------------------------


@pytest.mark.parametrize("client_wants_usage", [True, False])
async def test_a_flex_stream_is_billed_at_the_flex_price(
    gateway: Processor, services: Services, client_wants_usage: bool
) -> None:
    options = {"stream_options": {"include_usage": True}} if client_wants_usage else {}
    chunks = openai_stream("flex")
    answers = await play_sse(
        gateway, "/v1/chat/completions", OPENAI_AUTH,
        chat_body(MINI, stream=True, **options), chunks,
    )  # fmt: skip
    line = only_line(services)
    assert (cost(line), line["service_tier"], line["usage_reported"]) == (MINI_FLEX, "flex", True)
    received = data_of(client_body(chunks, answers))
    # The client reads the tier in every chunk, and the usage chunk only if it asked.
    assert {chunk["service_tier"] for chunk in received} == {"flex"}
    assert any(chunk["choices"] == [] for chunk in received) is client_wants_usage


async def test_a_flex_stream_cut_before_its_usage_chunk_is_billed_at_the_flex_price(
    gateway: Processor, services: Services
) -> None:
    # The client hangs up after two text chunks: the usage is estimated, and its tier is
    # the one the first chunk named.
    await play_sse(
        gateway, "/v1/chat/completions", OPENAI_AUTH, chat_body(MINI, stream=True),
        openai_stream("flex")[:3], ended=False,
    )  # fmt: skip
    line = only_line(services)
    assert (line["usage_estimated"], line["service_tier"]) == (True, "flex")
    assert cost(line) == priced(line, "0.075", "0.30")


async def test_a_stream_cut_before_it_named_a_tier_is_billed_at_the_models_price(
    gateway: Processor, services: Services
) -> None:
    # A provider that names the tier only in its usage chunk, cut before it.
    chunks = [chunk_event(None, {"role": "assistant", "content": ""}),
              chunk_event(None, {"content": "billing "})]  # fmt: skip
    await play_sse(
        gateway, "/v1/chat/completions", OPENAI_AUTH, chat_body(MINI, stream=True), chunks,
        ended=False,
    )  # fmt: skip
    line = only_line(services)
    assert (line["usage_estimated"], line["service_tier"]) == (True, None)
    assert cost(line) == priced(line, "0.15", "0.60")


async def test_a_tier_named_only_in_the_usage_chunk_prices_the_stream(
    gateway: Processor, services: Services
) -> None:
    chunks = [chunk_event(None, {"role": "assistant", "content": ""}),
              chunk_event(None, {}), chunk_event("priority", None, OPENAI_USAGE),
              b"data: [DONE]\n\n"]  # fmt: skip
    await play_sse(gateway, "/v1/chat/completions", OPENAI_AUTH, chat_body(MINI, stream=True),
                   chunks)  # fmt: skip
    line = only_line(services)
    assert (cost(line), line["service_tier"]) == (MINI_PRIORITY, "priority")


async def test_generated_text_cannot_name_the_tier(gateway: Processor, services: Services) -> None:
    # The model writes `"service_tier": "flex"` in its answer: escaped, it is text.
    chunks = [chunk_event(None, {"role": "assistant", "content": '"service_tier": "flex"'}),
              chunk_event(None, {}), chunk_event(None, None, OPENAI_USAGE),
              b"data: [DONE]\n\n"]  # fmt: skip
    await play_sse(gateway, "/v1/chat/completions", OPENAI_AUTH, chat_body(MINI, stream=True),
                   chunks)  # fmt: skip
    line = only_line(services)
    assert (cost(line), line["service_tier"]) == (MINI_STANDARD, None)


# --- Anthropic clients -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "price"), [("priority", SONNET_PRIORITY), ("standard", SONNET_STANDARD)]
)
async def test_an_anthropic_message_is_billed_at_its_usage_service_tier(
    gateway: Processor, services: Services, reported: str, price: Decimal
) -> None:
    await run_stream(gateway, [
        request_headers("/v1/messages", headers=ANTHROPIC_AUTH),
        request_body(messages_body(SONNET)),
        response_headers(200, {"content-type": "application/json"}),
        response_body(orjson.dumps(message(reported))),
    ])  # fmt: skip
    line = only_line(services)
    assert (cost(line), line["service_tier"]) == (price, reported)
    assert counted_cost(services, SONNET) == float(price)


async def test_an_anthropic_stream_is_billed_at_the_tier_of_its_message_start(
    gateway: Processor, services: Services
) -> None:
    await play_sse(gateway, "/v1/messages", ANTHROPIC_AUTH, messages_body(SONNET, stream=True),
                   anthropic_events("priority"))  # fmt: skip
    line = only_line(services)
    assert (cost(line), line["service_tier"]) == (SONNET_PRIORITY, "priority")


async def test_an_anthropic_stream_cut_after_message_start_is_billed_at_its_tier(
    gateway: Processor, services: Services
) -> None:
    await play_sse(
        gateway, "/v1/messages", ANTHROPIC_AUTH, messages_body(SONNET, stream=True),
        anthropic_events("priority")[:3], ended=False,
    )  # fmt: skip
    line = only_line(services)
    assert (line["usage_estimated"], line["service_tier"]) == (True, "priority")
    # message_start's 1000 input tokens, and the estimated output, at the priority price.
    assert line["prompt_tokens"] == 1000
    assert cost(line) == priced(line, "3.60", "18.00")


# --- OpenAI clients of Anthropic (translated answers) ---------------------------------


@pytest.mark.parametrize(
    ("reported", "shown", "price"),
    [("priority", "priority", SONNET_PRIORITY), ("standard", "default", SONNET_STANDARD)],
)
async def test_an_openai_client_of_anthropic_is_billed_and_told_its_tier(
    gateway: Processor, services: Services, reported: str, shown: str, price: Decimal
) -> None:
    answer = orjson.dumps(message(reported))
    answers = await ask_openai(gateway, "/anthropic/chat/completions", chat_body(SONNET), answer)
    line = only_line(services)
    assert (cost(line), line["service_tier"]) == (price, reported)
    # In OpenAI's words, as OpenAI would tell it.
    [received] = [orjson.loads(client_body([answer], answers))]
    assert received["service_tier"] == shown


async def test_an_openai_client_of_an_anthropic_stream_is_billed_and_told_its_tier(
    gateway: Processor, services: Services
) -> None:
    chunks = anthropic_events("priority")
    answers = await play_sse(
        gateway, "/anthropic/chat/completions", OPENAI_AUTH,
        chat_body(SONNET, stream=True, stream_options={"include_usage": True}), chunks,
    )  # fmt: skip
    line = only_line(services)
    assert (cost(line), line["service_tier"]) == (SONNET_PRIORITY, "priority")
    received = data_of(client_body(chunks, answers))
    assert received and {chunk["service_tier"] for chunk in received} == {"priority"}


def test_a_translated_stream_tells_a_downstream_openai_reader_its_tier() -> None:
    """A failover chain prices downstream, reading the attempt's translated answer as an
    OpenAI stream: the tier must reach it there, even for a stream cut after its start."""
    translator = StreamTranslator(include_usage=True, request_id="r", created=1)
    translated = [translator.feed(event, False) for event in anthropic_events("priority")]
    whole = ChunkStreamReader(hide_usage_chunk=True)
    for chunk in translated:
        whole.feed(chunk, False)
    assert whole.service_tier == "priority" and whole.usage is not None
    cut = ChunkStreamReader(hide_usage_chunk=True)
    cut.feed(translated[0], False)
    assert cut.service_tier == "priority" and cut.usage is None


# --- The price table and its config ----------------------------------------------------


def test_a_tier_entry_is_whole_and_shared_by_aliases() -> None:
    text = config_text({"anthropic.claude-3-haiku-20240307-v1:0": {
        "priority": {"input_per_million": "0.30", "output_per_million": "1.50",
                     "server_tools_per_thousand": {"web_fetch": "1.00"}}}})  # fmt: skip
    config = parse_config(text, "gateway.yaml", {})
    table = PriceTable(config.pricing, config.models)
    usage = Usage(1000, 100, 1100, cached_tokens=400,
                  server_tool_requests={"web_search": 1, "web_fetch": 1})  # fmt: skip
    # `haiku` is the model's alias; the tier's cached input defaults to the tier's input
    # price (not the model's cached price), web search keeps the table's $10 per 1,000
    # and web fetch takes the tier's own price.
    priority = table.cost("haiku", usage, "priority")
    assert (
        priority.usd
        == (1000 * Decimal("0.30") + 100 * Decimal("1.50")) / 10**6
        + (Decimal("10") + Decimal("1")) / 1000
    )
    assert table.cost("haiku", usage, "standard") == table.cost("haiku", usage)


def test_a_tier_served_without_its_own_prices_is_said_once_per_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Billed at the model's own price (docs/chargeback.md): twice a flex request's
    # price on OpenAI. The operator hears of it once, not per request.
    config = parse_config(config_text({}), "gateway.yaml", {})
    table = PriceTable(config.pricing, config.models)
    usage = Usage(1000, 100, 1100)
    # Groq's standard tier is "on_demand": its every answer names it, and says nothing.
    for tier in ("flex", "flex", "default", "on_demand", None):
        assert table.cost("gpt-4o-mini", usage, tier) == table.cost("gpt-4o-mini", usage)
    table.cost("unpriced-model", usage, "flex")  # no price at all: said elsewhere
    warned = [r.getMessage() for r in caplog.records if "service tier" in r.getMessage()]
    assert len(warned) == 1
    assert "'gpt-4o-mini'" in warned[0] and "'flex'" in warned[0]


@pytest.mark.parametrize(
    ("tiers", "problem"),
    [
        ({"default": {"input_per_million": 1, "output_per_million": 1}},
         "pricing.models.gpt-4o-mini.service_tiers: 'default' is the standard tier"),
        ({"standard": {"input_per_million": 1, "output_per_million": 1}},
         "pricing.models.gpt-4o-mini.service_tiers: 'standard' is the standard tier"),
        ({"on_demand": {"input_per_million": 1, "output_per_million": 1}},
         "pricing.models.gpt-4o-mini.service_tiers: 'on_demand' is the standard tier"),
        ({"flex": {"input_per_million": "0.0000001", "output_per_million": 1}},
         "pricing.models.gpt-4o-mini.service_tiers.flex.input_per_million: "
         "at most 6 decimal places"),
        ({"flex": {"output_per_million": 1}},
         "pricing.models.gpt-4o-mini.service_tiers.flex.input_per_million: "
         "required field is missing"),
        ({"flex": {"input_per_million": 1, "output_per_million": 1,
                   "service_tiers": {"priority": {}}}},
         "pricing.models.gpt-4o-mini.service_tiers.flex.service_tiers: unknown field"),
        ({"Flex": {"input_per_million": 1, "output_per_million": 1}},
         "pricing.models.gpt-4o-mini.service_tiers.Flex.[key]"),
    ],
)  # fmt: skip
def test_tier_prices_are_checked_at_load_naming_the_field(
    tiers: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text({MINI: tiers}), "gateway.yaml", {})
    assert any(found.startswith(problem) for found in caught.value.problems), caught.value.problems
