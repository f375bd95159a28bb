"""Anthropic's fast mode is billed at its own price, as a service tier is.

A Messages request with ``speed: "fast"`` runs the same model faster at a multiple of its
standard price (Claude Opus 4.6: 6x, $30 / $150 per million input / output tokens, with
the prompt-cache multipliers on top). The answer says which speed served it in
``usage.speed`` (``fast`` or ``standard``: a request may fall back to standard speed,
billed at standard rates). The gateway prices a fast answer at the model's
``service_tiers.fast`` entry and names it ``fast`` in the log line; an OpenAI client of
Anthropic is told ``service_tier: "fast"``, OpenAI's own word for its faster tier. The
prices below are the test's own, in the proportions of Anthropic's list prices.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
import yaml

from extproc.config import parse_config
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
from tests.unit.test_service_tier_pricing import (
    ANTHROPIC_AUTH,
    OPENAI_AUTH,
    ask_openai,
    chat_body,
    config_text,
    cost,
    data_of,
    sse,
)

OPUS = "claude-opus-4-6"  # reaches the mock through the default config's claude- prefix
# 1000 input tokens, 100 output tokens.
USAGE = {"input_tokens": 1000, "output_tokens": 100}
# USD per million tokens: standard 5 / 25, fast 30 / 150.
STANDARD = (1000 * Decimal(5) + 100 * Decimal(25)) / 10**6
FAST = (1000 * Decimal(30) + 100 * Decimal(150)) / 10**6
PRIORITY = (1000 * Decimal(6) + 100 * Decimal(30)) / 10**6


def opus_gateway(services: Services, tiers: dict[str, Any]) -> Processor:
    """The default config's gateway, with Opus priced (USD per million tokens: 5 input,
    25 output) and ``tiers`` as its service tiers."""
    raw = yaml.safe_load(config_text({}))
    raw["pricing"]["models"][OPUS] = {
        "input_per_million": 5, "output_per_million": 25, "service_tiers": tiers}  # fmt: skip
    return processor_for(parse_config(yaml.safe_dump(raw), "gateway.yaml", {}), services)


@pytest.fixture
def gateway(services: Services) -> Processor:
    """Opus with its fast mode and its Priority Tier priced apart."""
    return opus_gateway(services, {
        "fast": {"input_per_million": 30, "output_per_million": 150},
        "priority": {"input_per_million": 6, "output_per_million": 30},
    })  # fmt: skip


def message(**usage: Any) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": OPUS,
            "content": [{"type": "text", "text": "refactored"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {**USAGE, **usage}}  # fmt: skip


def events(**usage: Any) -> list[bytes]:
    """Anthropic's stream, one event per chunk; message_start's usage names the speed."""
    start = {**message(**usage, output_tokens=1), "content": [], "stop_reason": None}
    return [
        sse({"type": "message_start", "message": start}),
        sse({"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}),
        sse({"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": "refactored"}}),
        sse({"type": "content_block_stop", "index": 0}),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": 100}}),
        sse({"type": "message_stop"}),
    ]  # fmt: skip


def messages_body(*, stream: bool = False) -> bytes:
    return orjson.dumps(
        {
            "model": OPUS,
            "max_tokens": 200,
            "stream": stream,
            "speed": "fast",
            "messages": [{"role": "user", "content": "Refactor this module"}],
        }
    )


async def ask_anthropic(gateway: Processor, answer: dict[str, Any]) -> None:
    await run_stream(gateway, [
        request_headers("/v1/messages", headers=ANTHROPIC_AUTH), request_body(messages_body()),
        response_headers(200, {"content-type": "application/json"}),
        response_body(orjson.dumps(answer)),
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("usage", "price", "logged"),
    [
        ({"speed": "fast", "service_tier": "standard"}, FAST, "fast"),
        # Fast mode is billed at its price whatever capacity served it.
        ({"speed": "fast", "service_tier": "priority"}, FAST, "fast"),
        # Fell back to standard speed: billed at standard rates, or at its tier's.
        ({"speed": "standard", "service_tier": "standard"}, STANDARD, "standard"),
        ({"speed": "standard", "service_tier": "priority"}, PRIORITY, "priority"),
        # What no API sends as a speed is not one.
        ({"speed": "FAST", "service_tier": "standard"}, STANDARD, "standard"),
        ({"speed": 1}, STANDARD, None),
    ],
)
async def test_a_message_is_billed_at_the_speed_that_served_it(
    gateway: Processor, services: Services, usage: dict[str, Any], price: Decimal, logged: Any
) -> None:
    await ask_anthropic(gateway, message(**usage))
    line = only_line(services)
    assert (cost(line), line["service_tier"], line["cost_priced"]) == (price, logged, True)


async def test_a_fast_stream_is_billed_at_the_fast_price(
    gateway: Processor, services: Services
) -> None:
    await play_sse(gateway, "/v1/messages", ANTHROPIC_AUTH, messages_body(stream=True),
                   events(speed="fast", service_tier="standard"))  # fmt: skip
    line = only_line(services)
    assert (cost(line), line["service_tier"], line["usage_reported"]) == (FAST, "fast", True)


async def test_a_fast_stream_cut_after_its_start_is_billed_at_the_fast_price(
    gateway: Processor, services: Services
) -> None:
    await play_sse(
        gateway, "/v1/messages", ANTHROPIC_AUTH, messages_body(stream=True),
        events(speed="fast", service_tier="standard")[:3], ended=False,
    )  # fmt: skip
    line = only_line(services)
    assert (line["usage_estimated"], line["service_tier"]) == (True, "fast")
    prompt, completion = int(line["prompt_tokens"]), int(line["completion_tokens"])
    assert prompt == 1000
    assert cost(line) == (prompt * Decimal(30) + completion * Decimal(150)) / 10**6


async def test_an_openai_client_of_fast_mode_is_billed_and_told_fast(
    gateway: Processor, services: Services
) -> None:
    answer = orjson.dumps(message(speed="fast", service_tier="standard"))
    answers = await ask_openai(gateway, "/anthropic/chat/completions", chat_body(OPUS), answer)
    line = only_line(services)
    assert (cost(line), line["service_tier"]) == (FAST, "fast")
    assert orjson.loads(client_body([answer], answers))["service_tier"] == "fast"


async def test_an_openai_client_of_a_fast_stream_is_billed_and_told_fast(
    gateway: Processor, services: Services
) -> None:
    chunks = events(speed="fast", service_tier="standard")
    answers = await play_sse(
        gateway, "/anthropic/chat/completions", OPENAI_AUTH,
        chat_body(OPUS, stream=True, stream_options={"include_usage": True}), chunks,
    )  # fmt: skip
    line = only_line(services)
    assert (cost(line), line["service_tier"]) == (FAST, "fast")
    received = data_of(client_body(chunks, answers))
    assert received and {chunk["service_tier"] for chunk in received} == {"fast"}


def test_a_fast_fallback_of_a_failover_chain_is_priced_fast_downstream() -> None:
    """A failover chain prices downstream, reading the attempt's translated stream as an
    OpenAI one: fast mode must reach it there, cut after its start too."""
    translator = StreamTranslator(include_usage=True, request_id="r", created=1)
    translated = [translator.feed(e, False) for e in events(speed="fast", service_tier="standard")]
    cut = ChunkStreamReader(hide_usage_chunk=True)
    cut.feed(translated[0], False)
    assert cut.service_tier == "fast"


async def test_without_a_fast_price_fast_mode_costs_the_models_price(
    services: Services,
) -> None:
    await ask_anthropic(opus_gateway(services, {}), message(speed="fast", service_tier="standard"))
    line = only_line(services)
    # Named, so an operator can find what to price: the line says "fast".
    assert (cost(line), line["service_tier"]) == (STANDARD, "fast")
