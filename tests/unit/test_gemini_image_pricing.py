"""The pictures of Gemini's image models are billed at the image price, not the text price.

Gemini's image models (gemini-2.5-flash-image, gemini-3-pro-image-preview) answer a
picture among their text and count it in ``candidatesTokenCount``, its tokens named
apart in ``usageMetadata.candidatesTokensDetails`` (the ``IMAGE`` entry: 1,290 tokens
for a 1024x1024 image). Google bills them far above the text (2.5 Flash Image: $30 per
million against $2.50, about $0.039 a picture). Before, every completion token was
billed at the text output price: a picture cost a twelfth of Google's bill, in the log
line, the cost counter, the rollups and the report alike. A price entry may now carry
``image_output_per_million``; the log line, ``aigw_token_parts_total``, the rollup and
a cut stream's charge count the image part apart. A model without the price is billed
as before.

Each request is played through the real processor (real ext_proc messages) against the
mock Vertex; the stream tests read the four ledgers with a real Valkey
(``test_accounting_review_streams.ledgers``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc.config import ConfigError
from extproc.runtime import Services
from extproc.store.connection import StoreClient
from extproc.testing import request_body, request_headers, response_body, response_headers
from extproc.translators.gemini_gemini import usage_report
from tests.unit.mock_vertex import gemini_on_mock_vertex
from tests.unit.test_accounting_review_streams import (
    DEFAULT_CONFIG,
    SSE,
    Answer,
    ledgers,
    sample,
    store,
)
from tests.unit.test_gemini_audio_pricing import _pricing
from tests.unit.test_gemini_review import BODY, KEY, PREFIX, event, log_line, memory_services, play

# The mock Vertex fixture, re-exported so pytest finds it here.
from tests.unit.test_gemini_review import vertex as vertex

__all__ = ["store"]  # test_accounting_review_streams's fixture

FLASH = "gemini-2.5-flash"
# Gemini 2.5 Flash Image's list prices per million tokens at the time of writing (the
# test's model is named gemini-2.5-flash, the config's Gemini model).
IMAGE_PRICE = {
    "input_per_million": "0.30",
    "output_per_million": "2.50",
    "image_output_per_million": "30.00",
}
PRICING = {"models": {FLASH: IMAGE_PRICE}}
# A picture and a caption: 12 prompt tokens; 1,300 output tokens, 1,290 of them image.
USAGE = {
    "promptTokenCount": 12,
    "candidatesTokenCount": 1_300,
    "totalTokenCount": 1_312,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
    "candidatesTokensDetails": [
        {"modality": "TEXT", "tokenCount": 10},
        {"modality": "IMAGE", "tokenCount": 1_290},
    ],
}
# 12 prompt tokens at 0.30, 10 text tokens at 2.50, 1,290 image tokens at 30.00.
COST = (12 * Decimal("0.30") + 10 * Decimal("2.50") + 1_290 * Decimal("30.00")) / 10**6
# The same at the text price: what the picture cost before.
TEXT_COST = (12 * Decimal("0.30") + 1_300 * Decimal("2.50")) / 10**6
PICTURE = {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}


def answer(usage: dict[str, Any], parts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    parts = [{"text": "A cat on a mat."}, PICTURE] if parts is None else parts
    candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": FLASH}


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


async def generate(
    vertex: tuple[str, Path], pricing: dict[str, Any] = PRICING, *, stream: bool = False
) -> tuple[dict[str, Any], Services]:
    """The log line (and the services) of one generateContent answered with ``USAGE``,
    as one JSON answer or as a stream of two events (the caption, then the picture and
    the bill)."""
    services = memory_services()
    if stream:
        early = {**USAGE, "candidatesTokenCount": 4, "totalTokenCount": 16}
        del early["candidatesTokensDetails"]
        first = answer(early, [{"text": "A cat"}])
        del first["candidates"][0]["finishReason"]
        chunks = [event(first), event(answer(USAGE, [{"text": " on a mat."}, PICTURE]))]
        path, headers = f"{PREFIX}:streamGenerateContent?alt=sse", SSE
    else:
        chunks = [orjson.dumps(answer(USAGE))]
        path, headers = f"{PREFIX}:generateContent", {"content-type": "application/json"}
    last = len(chunks) - 1
    await play(
        vertex,
        [
            request_headers(path, headers=KEY),
            request_body(orjson.dumps(BODY)),
            response_headers(200, headers),
            *(response_body(chunk, end_of_stream=i == last) for i, chunk in enumerate(chunks)),
        ],
        services,
        pricing=pricing,
    )
    return log_line(services), services


@pytest.mark.parametrize("stream", [False, True], ids=["JSON answer", "stream"])
async def test_a_picture_is_billed_at_the_image_price(
    vertex: tuple[str, Path], stream: bool
) -> None:
    line, services = await generate(vertex, stream=stream)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 1_300)
    assert line["completion_image_tokens"] == 1_290
    assert line["completion_audio_tokens"] == 0
    assert cost(line) == COST
    # The metric counts the part as the log line does, with the line's labels.
    parts = sample(
        services, "aigw_token_parts_total", token_type="completion_image", model=line["model"]
    )
    assert parts == 1_290


async def test_a_model_without_an_image_price_bills_its_pictures_as_output(
    vertex: tuple[str, Path],
) -> None:
    """Today's behaviour, documented: the image part is still counted, and priced as
    output."""
    old = {FLASH: {k: v for k, v in IMAGE_PRICE.items() if "image" not in k}}
    line, _ = await generate(vertex, {"models": old})
    assert line["completion_image_tokens"] == 1_290
    assert cost(line) == TEXT_COST


@pytest.mark.parametrize(
    ("details", "image", "audio"),
    [
        ([{"modality": "IMAGE", "tokenCount": 1_290}], 1_290, 0),
        # Never more than the count it is part of.
        ([{"modality": "IMAGE", "tokenCount": 90_000}], 1_300, 0),
        # Nor more than the audio leaves of it: no token billed twice.
        (
            [{"modality": "AUDIO", "tokenCount": 1_000}, {"modality": "IMAGE", "tokenCount": 900}],
            300,
            1_000,
        ),
        # What is no count counts no image.
        ([{"modality": "IMAGE", "tokenCount": -5}], 0, 0),
        ([{"modality": "IMAGE", "tokenCount": "1290"}], 0, 0),
        ("IMAGE", 0, 0),
    ],
)
def test_the_image_count_read_is_a_part_of_the_candidates_count(
    details: Any, image: int, audio: int
) -> None:
    report = usage_report(
        {"promptTokenCount": 12, "candidatesTokenCount": 1_300, "candidatesTokensDetails": details}
    )
    assert report is not None
    assert (report.image_output, report.audio_output) == (image, audio)


def test_thinking_is_never_billed_as_a_picture() -> None:
    """Gemini 3 Pro Image thinks: its thoughts are output but not candidates, so the
    image part is bounded by the candidates alone."""
    report = usage_report(
        {
            "promptTokenCount": 12,
            "candidatesTokenCount": 1_290,
            "thoughtsTokenCount": 200,
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1_490}],
        }
    )
    assert report is not None
    assert (report.output, report.image_output) == (1_490, 1_290)


def test_the_long_context_entry_prices_images_when_the_model_does() -> None:
    long = {"above_input_tokens": 200000, "input_per_million": "0.60", "output_per_million": "5.00"}
    with pytest.raises(ConfigError) as refused:
        _pricing({FLASH: {**IMAGE_PRICE, "long_context": long}})
    [problem] = refused.value.problems
    assert f"pricing.models.{FLASH}.long_context" in problem
    assert "image_output_per_million" in problem


# --- a stream cut or failed after its count: the four ledgers agree -------------------------

GEMINI_STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
GOOGLE_ERROR = event(
    {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
)


@pytest.fixture
async def gemini(tmp_path: Path) -> AsyncIterator[str]:
    """The default config with Gemini's API and a Gemini model priced with its image
    price, on the mock's Vertex AI."""
    raw = yaml.safe_load(DEFAULT_CONFIG)
    async with gemini_on_mock_vertex(raw, tmp_path / "key.json", IMAGE_PRICE) as config:
        yield config


@pytest.mark.parametrize("ending", ["whole", "cut", "failed"])
async def test_every_ledger_bills_a_counted_picture_at_the_image_price(
    store: StoreClient, gemini: str, ending: str
) -> None:
    """The picture comes with a running count that names it (1,290 image tokens of
    1,300); the stream then ends with its bill, is cut by the client, or is failed by
    Google. However it ended, the log line, tokens_consumed_total and
    aigw_token_parts_total, the rollup and the quota hold the counted picture, billed at
    the image price (before, a cut or failed stream dropped the image part, and every
    stream billed the picture at the text price)."""
    running = answer(USAGE)
    del running["candidates"][0]["finishReason"]
    chunks = [event(running)]
    if ending == "whole":
        chunks.append(event(answer(USAGE, [{"text": ""}])))
    if ending == "failed":
        chunks.append(GOOGLE_ERROR)
    body = {"contents": [{"role": "user", "parts": [{"text": "Draw a cat."}]}]}
    recorded = await ledgers(
        store,
        GEMINI_STREAM,
        {"x-goog-api-key": "team1-key"},
        body,
        Answer(chunks, SSE, ended=ending != "cut"),
        config=gemini,
    )
    recorded.agree()
    line = recorded.line
    assert (line["completion_tokens"], line["completion_image_tokens"]) == (1_300, 1_290)
    assert recorded.image == (1_290, 1_290)
    assert cost(line) == COST
