"""Gemini's audio input is billed at the audio price, not the text price.

Gemini bills the audio of a prompt above its text, images and video (2.5 Flash: $1.00
per million audio tokens against $0.30), and cached audio above cached text ($0.10
against $0.03); its ``usageMetadata.promptTokensDetails`` gives the prompt's tokens per
modality, ``cacheTokensDetails`` the cache hits'. A model's price may carry
``audio_input_per_million`` and ``cached_audio_input_per_million``. Before, every prompt
token was billed at the text price: a transcription request cost a third of its bill.
Each request is played through the real processor against the mock Vertex (Gemini's
API), its answer shaped as Google writes it; each test reads the request's log line.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc.chargeback.pricing import PriceTable
from extproc.config import ConfigError, parse_config
from extproc.config.pricing_model import PricingConfig
from extproc.context import Usage
from extproc.runtime import Services
from extproc.testing import request_body, request_headers, response_body, response_headers
from extproc.translators.gemini_gemini import usage_report
from tests.unit.test_gemini_review import BODY, KEY, PREFIX, log_line, memory_services, play

# The mock Vertex fixture, re-exported so pytest finds it here.
from tests.unit.test_gemini_review import vertex as vertex

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
FLASH = "gemini-2.5-flash"
# Gemini 2.5 Flash's list prices at the time of writing, per million tokens.
FLASH_PRICE = {
    "input_per_million": "0.30",
    "cached_input_per_million": "0.03",
    "audio_input_per_million": "1.00",
    "cached_audio_input_per_million": "0.10",
    "output_per_million": "2.50",
}
PRICING = {"models": {FLASH: FLASH_PRICE}}

# A transcription: 10,000 prompt tokens, 8,000 of them audio; 4,000 read from the cache,
# 3,000 of those audio; 500 output tokens.
USAGE = {
    "promptTokenCount": 10_000,
    "cachedContentTokenCount": 4_000,
    "candidatesTokenCount": 500,
    "totalTokenCount": 10_500,
    "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 2_000},
        {"modality": "AUDIO", "tokenCount": 8_000},
    ],
    "cacheTokensDetails": [
        {"modality": "TEXT", "tokenCount": 1_000},
        {"modality": "AUDIO", "tokenCount": 3_000},
    ],
}
# Uncached: 1,000 text at 0.30, 5,000 audio at 1.00; cached: 1,000 text at 0.03, 3,000
# audio at 0.10; 500 output at 2.50.
COST = (
    1_000 * Decimal("0.30")
    + 5_000 * Decimal("1.00")
    + 1_000 * Decimal("0.03")
    + 3_000 * Decimal("0.10")
    + 500 * Decimal("2.50")
) / 10**6


def answer(usage: dict[str, Any]) -> dict[str, Any]:
    candidate = {
        "content": {"role": "model", "parts": [{"text": "Transcript: hello"}]},
        "finishReason": "STOP",
    }
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": FLASH}


async def generate(
    vertex: tuple[str, Path],
    usage: dict[str, Any],
    pricing: dict[str, Any] = PRICING,
    services: Services | None = None,
) -> dict[str, Any]:
    """The log line of one generateContent answering with ``usage`` (through ``services``,
    else a fresh in-memory set)."""
    services = memory_services() if services is None else services
    await play(
        vertex,
        [
            request_headers(f"{PREFIX}:generateContent", headers=KEY),
            request_body(orjson.dumps(BODY)),
            response_headers(200),
            response_body(orjson.dumps(answer(usage))),
        ],
        services,
        pricing=pricing,
    )
    return log_line(services)


async def test_audio_is_billed_at_the_audio_prices(vertex: tuple[str, Path]) -> None:
    line = await generate(vertex, USAGE)
    assert (line["prompt_tokens"], line["cached_tokens"]) == (10_000, 4_000)
    assert Decimal(str(line["cost_usd"])) == COST


async def test_an_answer_without_modality_counts_is_billed_as_text(
    vertex: tuple[str, Path],
) -> None:
    bare = {k: v for k, v in USAGE.items() if not k.endswith("TokensDetails")}
    line = await generate(vertex, bare)
    expected = (6_000 * Decimal("0.30") + 4_000 * Decimal("0.03") + 500 * Decimal("2.50")) / 10**6
    assert Decimal(str(line["cost_usd"])) == expected


async def test_a_table_without_audio_prices_bills_as_it_always_did(
    vertex: tuple[str, Path],
) -> None:
    old = {FLASH: {k: v for k, v in FLASH_PRICE.items() if "audio" not in k}}
    line = await generate(vertex, USAGE, {"models": old})
    expected = (6_000 * Decimal("0.30") + 4_000 * Decimal("0.03") + 500 * Decimal("2.50")) / 10**6
    assert Decimal(str(line["cost_usd"])) == expected


@pytest.mark.parametrize(
    ("details", "cache_details", "audio", "cached_audio"),
    [
        ([{"modality": "AUDIO", "tokenCount": 8_000}], None, 8_000, 0),
        # Never more than the count it is part of.
        ([{"modality": "AUDIO", "tokenCount": 90_000}], None, 10_000, 0),
        (
            [{"modality": "AUDIO", "tokenCount": 2_000}],
            [{"modality": "AUDIO", "tokenCount": 3_000}],
            2_000,
            2_000,
        ),
        # What is no count counts no audio.
        ([{"modality": "AUDIO", "tokenCount": -5}], None, 0, 0),
        ([{"modality": "AUDIO", "tokenCount": True}], None, 0, 0),
        ("AUDIO", None, 0, 0),
        ([["AUDIO", 5]], None, 0, 0),
    ],
)
def test_the_audio_counts_read_are_parts_of_their_counts(
    details: Any, cache_details: Any, audio: int, cached_audio: int
) -> None:
    usage: dict[str, Any] = {
        "promptTokenCount": 10_000,
        "cachedContentTokenCount": 4_000,
        "candidatesTokenCount": 1,
        "promptTokensDetails": details,
    }
    if cache_details is not None:
        usage["cacheTokensDetails"] = cache_details
    report = usage_report(usage)
    assert report is not None
    assert (report.audio, report.cached_audio) == (audio, cached_audio)


def test_audio_counts_cannot_bill_more_tokens_than_the_prompt_has() -> None:
    table = PriceTable(PricingConfig.model_validate(PRICING))
    # A report whose cached audio is above its cache hits: each part within the other.
    usage = Usage(100, 0, 100, 10, audio_tokens=500, cached_audio_tokens=50)
    # 10 cached audio at 0.10, 90 audio at 1.00.
    assert table.cost(FLASH, usage).picousd == 10 * 100_000 + 90 * 1_000_000


def test_the_long_context_entry_prices_audio_when_the_model_does() -> None:
    long = {"above_input_tokens": 200000, "input_per_million": "0.60",
            "cached_input_per_million": "0.06", "output_per_million": "5.00"}  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        _pricing({FLASH: {**FLASH_PRICE, "long_context": long}})
    [problem] = refused.value.problems
    assert f"pricing.models.{FLASH}.long_context" in problem
    assert "audio_input_per_million" in problem


def test_an_audio_price_beside_a_cached_price_needs_a_cached_audio_price() -> None:
    entry = {k: v for k, v in FLASH_PRICE.items() if k != "cached_audio_input_per_million"}
    with pytest.raises(ConfigError) as refused:
        _pricing({FLASH: entry})
    [problem] = refused.value.problems
    assert f"pricing.models.{FLASH}" in problem
    assert "cached_audio_input_per_million" in problem


def _pricing(models: dict[str, Any]) -> PricingConfig:
    """The default config's pricing with ``models``, as the loader reads it."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["pricing"]["models"].update(models)
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {}).pricing
