"""Vertex's text embeddings priced per 1,000 characters are billed by the characters Vertex
counted.

Vertex bills ``text-embedding-005`` and ``text-multilingual-embedding-002`` per 1,000
input characters ($0.000025 online), not per token, and its ``:predict`` answer says how
many it billed (``metadata.billableCharacterCount``). A model's price may now be given in
that unit, ``input_per_thousand_characters``; before, the table could only price tokens,
so an operator had to guess a per-token equivalent that was wrong for every text whose
characters per token differ from the guess. Each request is played through the real
processor with the mock Vertex (``tests.unit.test_vertex_embeddings``'s setup).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
from tests.unit.conftest import MemoryLog
from tests.unit.test_vertex_embeddings import (
    EMBED_BATCH,
    VECTORS,
    prediction,
    translated,
    with_embedding_models,
)
from tests.unit.test_vertex_review import JSON, answered, vertex_gateway

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
# Vertex's online price of text-embedding-005 at the time of writing, and a token price
# for the answers that count no characters.
CHARACTER_PRICE = {
    "input_per_thousand_characters": "0.000025",
    "input_per_million": "0.10",
    "output_per_million": "0",
}


def per_character(raw: dict[str, Any]) -> None:
    with_embedding_models(raw)
    raw["pricing"]["models"]["vertex-embed"] = CHARACTER_PRICE


@pytest.fixture
async def processor(tmp_path: Path, access_log: MemoryLog) -> AsyncIterator[Processor]:
    async with vertex_gateway(tmp_path, access_log, per_character) as running:
        yield running


@pytest.fixture
def access_log() -> MemoryLog:
    return MemoryLog()


def answer(metadata: dict[str, Any]) -> bytes:
    predictions = [prediction(VECTORS[0], 4), prediction(VECTORS[1], 3)]
    return orjson.dumps({"predictions": predictions, "metadata": metadata})


async def test_an_embedding_is_billed_by_the_characters_vertex_counted(
    processor: Processor, access_log: MemoryLog
) -> None:
    reply = answer({"billableCharacterCount": 19})
    status, _, _ = await answered(processor, EMBED_BATCH, 200, JSON, [reply])
    assert status == 200
    [line] = access_log.lines()
    # The tokens are still the tokens; the bill is 19 characters at $0.000025 per 1,000.
    assert line["prompt_tokens"] == 7
    assert Decimal(str(line["cost_usd"])) == 19 * Decimal("0.000025") / 1000


async def test_an_answer_without_a_character_count_is_billed_by_its_tokens(
    processor: Processor, access_log: MemoryLog
) -> None:
    await answered(processor, EMBED_BATCH, 200, JSON, [answer({})])
    [line] = access_log.lines()
    assert Decimal(str(line["cost_usd"])) == 7 * Decimal("0.10") / 10**6


@pytest.mark.parametrize(
    ("count", "read"), [(19, 19), (19.0, 19), (-3, None), (True, None), ("19", None), (2.5, None)]
)
def test_the_character_count_is_read_as_a_count_or_not_at_all(count: Any, read: int) -> None:
    reply = answer({"billableCharacterCount": count})
    translator, _ = translated(reply)
    assert translator.usage.billable_characters == read


def priced_config(models: dict[str, Any]) -> GatewayConfig:
    """The default config with ``models`` priced (as the loader reads a file)."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["pricing"]["models"].update(models)
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {})


def test_a_table_without_a_character_price_bills_tokens_as_it_always_did() -> None:
    cfg = priced_config({"e": {"input_per_million": "0.10", "output_per_million": "0"}})
    usage = Usage(7, 0, 7, billable_characters=19)
    assert PriceTable(cfg.pricing).cost("e", usage).picousd == 7 * 100_000


@pytest.mark.parametrize(
    ("price", "message"),
    [("0.0000001", "at most 6 decimal places"), ("-1", "greater than or equal to 0")],
)
def test_a_bad_character_price_is_refused_naming_its_field(price: str, message: str) -> None:
    entry = {**CHARACTER_PRICE, "input_per_thousand_characters": price}
    with pytest.raises(ConfigError) as refused:
        priced_config({"vertex-embed": entry})
    [problem] = refused.value.problems
    assert "pricing.models.vertex-embed.input_per_thousand_characters" in problem
    assert message in problem
