"""OpenAI's audio tokens are billed at the audio prices, not the text prices.

OpenAI's audio chat models (gpt-audio, gpt-4o-audio-preview) bill a prompt's audio and a
spoken answer's audio far above text (gpt-audio: $32 and $64 per million audio tokens
against $2.50 and $10 of text), and their usage says how many of each count is audio:
``prompt_tokens_details.audio_tokens`` and ``completion_tokens_details.audio_tokens``.
Before, the gateway billed every token at the text prices: a spoken exchange cost an
eighth of OpenAI's bill. A price entry may now carry ``audio_input_per_million`` (the key
Gemini's audio input already used) and ``audio_output_per_million``; Gemini's TTS speech
(``candidatesTokensDetails``' AUDIO entry) is billed at the latter too.
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
from extproc.config.pricing_model import PricingConfig
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
from extproc.translators.gemini_gemini import usage_report
from extproc.translators.openai_openai import usage_from_object
from tests.unit.sse_play import only_line, play_sse

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
OPENAI_AUTH = {"authorization": "Bearer team1-key"}
AUDIO_MODEL = "gpt-audio"
# gpt-audio's list prices at the time of writing, per million tokens.
AUDIO_PRICE = {
    "input_per_million": "2.50",
    "output_per_million": "10.00",
    "audio_input_per_million": "32.00",
    "audio_output_per_million": "64.00",
}
# A spoken exchange: a 1,200-token prompt, 1,000 of it audio; a 300-token answer, 250 of
# it speech and 50 its transcript. OpenAI's usage as it writes it.
AUDIO_USAGE = {
    "prompt_tokens": 1_200,
    "completion_tokens": 300,
    "total_tokens": 1_500,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 1_000},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 250,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
# 200 text at 2.50 + 1,000 audio at 32 + 50 text at 10 + 250 audio at 64, per million.
AUDIO_COST = Decimal(200 * 2.5 + 1_000 * 32 + 50 * 10 + 250 * 64) / 10**6
# The same tokens at the text prices: what the gateway billed before.
TEXT_COST = Decimal(1_200 * 2.5 + 300 * 10) / 10**6
PROMPT = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is said here?"},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        ],
    }
]


def config(price: dict[str, Any] | None = AUDIO_PRICE) -> GatewayConfig:
    """The default config, serving gpt-audio from the mock provider at ``price``."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["models"].append({"name": AUDIO_MODEL, "provider": "mock"})
    if price is not None:
        raw["pricing"]["models"][AUDIO_MODEL] = price
    return parse_config(yaml.safe_dump(raw, sort_keys=False), "gateway.yaml", {})


@pytest.fixture
def gateway(services: Services) -> Processor:
    return processor_for(config(), services)


def body(*, stream: bool = False, **fields: Any) -> bytes:
    return orjson.dumps(
        {"model": AUDIO_MODEL, "messages": PROMPT, "modalities": ["text", "audio"],
         "audio": {"voice": "alloy", "format": "wav"}, "stream": stream, **fields}
    )  # fmt: skip


def spoken_answer(usage: dict[str, Any]) -> bytes:
    message = {"role": "assistant", "content": None, "refusal": None,
               "audio": {"id": "audio_1", "data": "UklGRg==", "expires_at": 2,
                         "transcript": "Someone says hello."}}  # fmt: skip
    return orjson.dumps(
        {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": AUDIO_MODEL,
         "choices": [{"index": 0, "message": message, "finish_reason": "stop",
                      "logprobs": None}],
         "usage": usage, "service_tier": "default"}
    )  # fmt: skip


def chunk(delta: dict[str, Any] | None, usage: Any = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    return b"data: " + orjson.dumps(
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
         "model": AUDIO_MODEL, "choices": choices, "usage": usage}
    ) + b"\n\n"  # fmt: skip


def spoken_stream(usage: dict[str, Any]) -> list[bytes]:
    """A spoken answer streamed as OpenAI streams one: the transcript in pieces, the
    data, the finish, the usage chunk last."""
    return [
        chunk({"role": "assistant", "content": None}),
        chunk({"audio": {"id": "audio_1", "transcript": "Someone says"}}),
        chunk({"audio": {"transcript": " hello."}}),
        chunk({"audio": {"data": "UklGRg==", "expires_at": 2}}),
        chunk({}),
        chunk(None, usage),
        b"data: [DONE]\n\n",
    ]


async def ask(gateway: Processor, answer: bytes) -> None:
    await run_stream(gateway, [
        request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(body()),
        response_headers(200, {"content-type": "application/json"}), response_body(answer),
    ])  # fmt: skip


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def counted_cost(services: Services) -> float | None:
    return services.metrics.registry.get_sample_value(
        "aigw_cost_usd_total",
        {"api_key_id": "team1", "user_id": "alice", "group_id": "engineering",
         "model": AUDIO_MODEL, "provider": "mock"},
    )  # fmt: skip


async def test_a_spoken_exchange_is_billed_at_the_audio_prices(
    gateway: Processor, services: Services
) -> None:
    await ask(gateway, spoken_answer(AUDIO_USAGE))
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1_200, 300)
    assert cost(line) == AUDIO_COST and line["cost_priced"] is True
    # Eight times what the text prices made of it; the counter says what the line says.
    assert AUDIO_COST > 8 * TEXT_COST
    assert counted_cost(services) == float(AUDIO_COST)


@pytest.mark.parametrize("client_wants_usage", [True, False])
async def test_a_spoken_stream_is_billed_at_the_audio_prices(
    gateway: Processor, services: Services, client_wants_usage: bool
) -> None:
    options = {"stream_options": {"include_usage": True}} if client_wants_usage else {}
    chunks = spoken_stream(AUDIO_USAGE)
    answers = await play_sse(
        gateway, "/v1/chat/completions", OPENAI_AUTH, body(stream=True, **options), chunks
    )
    line = only_line(services)
    assert (cost(line), line["usage_reported"]) == (AUDIO_COST, True)
    assert counted_cost(services) == float(AUDIO_COST)
    # The transcript reaches the client as it came.
    assert b'"transcript":" hello."' in client_body(chunks, answers)


async def test_a_table_without_audio_prices_bills_as_it_always_did(services: Services) -> None:
    text_only = {"input_per_million": "2.50", "output_per_million": "10.00"}
    await ask(processor_for(config(text_only), services), spoken_answer(AUDIO_USAGE))
    assert cost(only_line(services)) == TEXT_COST


async def test_an_answer_without_audio_counts_is_billed_as_text(
    gateway: Processor, services: Services
) -> None:
    bare = {k: v for k, v in AUDIO_USAGE.items() if not k.endswith("_details")}
    await ask(gateway, spoken_answer(bare))
    assert cost(only_line(services)) == TEXT_COST


@pytest.mark.parametrize(
    ("details", "audio_in", "audio_out"),
    [
        # More audio than the count it is part of: never more than that count.
        ({"prompt_tokens_details": {"audio_tokens": 5_000},
          "completion_tokens_details": {"audio_tokens": 900}}, 1_200, 300),
        # No counts: JSON's true, a negative count, a string, a details list.
        ({"prompt_tokens_details": {"audio_tokens": True},
          "completion_tokens_details": {"audio_tokens": -4}}, 0, 0),
        ({"prompt_tokens_details": {"audio_tokens": "1000"},
          "completion_tokens_details": [{"audio_tokens": 250}]}, 0, 0),
        ({"prompt_tokens_details": None, "completion_tokens_details": None}, 0, 0),
    ],
)  # fmt: skip
def test_odd_audio_counts_are_read_within_their_counts(
    details: dict[str, Any], audio_in: int, audio_out: int
) -> None:
    usage = usage_from_object({**AUDIO_USAGE, **details})
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (1_200, 300)
    assert (usage.audio_tokens, usage.audio_output_tokens) == (audio_in, audio_out)


def test_gemini_speech_is_read_as_audio_output() -> None:
    # A Gemini TTS answer: its candidates are speech; thinking, if any, is text.
    report = usage_report({
        "promptTokenCount": 12, "candidatesTokenCount": 400, "thoughtsTokenCount": 30,
        "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 400}],
    })  # fmt: skip
    assert report is not None
    usage = report.usage()
    assert (usage.completion_tokens, usage.audio_output_tokens) == (430, 400)
    # A count above the candidates' is held to them.
    odd = usage_report({
        "promptTokenCount": 12, "candidatesTokenCount": 10,
        "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 400}],
    })  # fmt: skip
    assert odd is not None and odd.usage().audio_output_tokens == 10


def test_gemini_speech_is_billed_at_the_audio_output_price() -> None:
    # The test's own prices: text out at 2.50, speech at 10.00 per million.
    table = PriceTable(PricingConfig.model_validate({"models": {"tts": {
        "input_per_million": "0.50", "output_per_million": "2.50",
        "audio_output_per_million": "10.00"}}}))  # fmt: skip
    report = usage_report({
        "promptTokenCount": 12, "candidatesTokenCount": 400, "thoughtsTokenCount": 30,
        "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 400}],
    })  # fmt: skip
    assert report is not None
    cost = table.cost("tts", report.usage())
    assert cost.usd == (12 * Decimal("0.50") + 30 * Decimal("2.50") + 400 * Decimal(10)) / 10**6


def test_a_long_context_must_repeat_the_audio_output_price() -> None:
    long = {"above_input_tokens": 200_000, "input_per_million": "5", "output_per_million": "20"}
    with pytest.raises(ValueError, match="audio_output_per_million"):
        PricingConfig.model_validate(
            {"models": {AUDIO_MODEL: {**AUDIO_PRICE, "audio_input_per_million": None,
                                      "long_context": long}}}
        )  # fmt: skip


def test_an_audio_output_price_finer_than_a_picodollar_is_refused_naming_it() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["pricing"]["models"]["gpt-4o"]["audio_output_per_million"] = "64.0000001"
    with pytest.raises(ConfigError, match=r"gpt-4o\.audio_output_per_million"):
        parse_config(yaml.safe_dump(raw), "gateway.yaml", {})
