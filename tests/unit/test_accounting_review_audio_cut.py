"""A stream of speech cut or failed after its provider counted it is billed at the audio
price it was counted at.

Gemini counts a prompt's audio apart (``usageMetadata.promptTokensDetails``) and bills it
above text (2.5 Flash: $1.00 per million against $0.30), as OpenAI's audio models bill
``prompt_tokens_details.audio_tokens``. A stream whose answer the client did not wait for
(or that the provider failed mid-way) is charged the counts its provider had reported by
then, the rest estimated (``stages.partial_usage``). Those counts kept the prompt, its
cache hits and the output, and dropped their audio parts: the same 800 tokens of speech
were billed at the text price once the stream was cut, a third of what the provider
billed, while the log line said ``prompt_audio_tokens: 0``.

A spoken answer of OpenAI's audio models (``modalities: ["audio"]``) without its count
(cut before its usage chunk, or from a provider that reports none) was charged no
completion at all: its text is its ``audio.transcript``, which the estimate did not read.

Each test plays one request through the processor (real ext_proc messages, a real
Valkey for the quota and the rollup) and reads the four ledgers
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

from extproc.store.connection import StoreClient
from tests.unit.mock_vertex import gemini_on_mock_vertex
from tests.unit.test_accounting_review_streams import (
    DEFAULT_CONFIG,
    DONE,
    OPENAI_ERROR,
    OPENAI_KEY,
    SSE,
    USER,
    Answer,
    chat_chunk,
    data,
    ledgers,
    store,
)
from tests.unit.test_gemini_audio_pricing import FLASH_PRICE as FLASH_INPUT_PRICE

__all__ = ["store"]  # test_accounting_review_streams's fixture

GEMINI_KEY = {"x-goog-api-key": "team1-key"}
GEMINI_STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "x" * 40}]}]}
# Gemini 2.5 Flash's list prices per million tokens, with its price of spoken output.
FLASH_PRICE = {**FLASH_INPUT_PRICE, "audio_output_per_million": "10.00"}
# A recording to transcribe: 1,000 prompt tokens, 800 of them audio; 400 read from the
# cache, 300 of those audio.
PROMPT = {
    "promptTokenCount": 1000,
    "cachedContentTokenCount": 400,
    "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 200},
        {"modality": "AUDIO", "tokenCount": 800},
    ],
    "cacheTokensDetails": [
        {"modality": "TEXT", "tokenCount": 100},
        {"modality": "AUDIO", "tokenCount": 300},
    ],
}
# Uncached: 100 text tokens at 0.30, 500 audio at 1.00; cached: 100 text at 0.03, 300
# audio at 0.10.
PROMPT_COST = (
    100 * Decimal("0.30") + 500 * Decimal("1.00") + 100 * Decimal("0.03") + 300 * Decimal("0.10")
)
# "Hello there friend": 18 characters, 5 tokens estimated.
TRANSCRIPT = "Hello there friend"


@pytest.fixture
async def gemini(tmp_path: Path) -> AsyncIterator[str]:
    """The default config with Gemini's API and Gemini 2.5 Flash on the mock's Vertex AI,
    priced with its audio prices."""
    raw = yaml.safe_load(DEFAULT_CONFIG)
    async with gemini_on_mock_vertex(raw, tmp_path / "key.json", FLASH_PRICE) as config:
        yield config


def gemini_event(document: dict[str, Any]) -> bytes:
    """One event as Google writes it (CRLF line ends)."""
    return b"data: " + orjson.dumps(document) + b"\r\n\r\n"


def gemini_text(text: str, usage: dict[str, Any]) -> bytes:
    candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    return gemini_event(
        {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash"}
    )


GOOGLE_ERROR = gemini_event(
    {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
)


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


@pytest.mark.parametrize("ending", ["cut", "failed"])
async def test_a_gemini_stream_of_speech_cut_after_its_prompt_count_bills_the_audio_price(
    store: StoreClient, gemini: str, ending: str
) -> None:
    """Vertex's first event counts the prompt alone (no output count yet); the client
    hangs up after the transcript's first words, or Google fails the stream there. The
    prompt is billed as Google counted it, audio and cached audio at their prices, the
    output estimated from its text."""
    chunks = [gemini_text(TRANSCRIPT, PROMPT)]
    if ending == "failed":
        chunks.append(GOOGLE_ERROR)
    recorded = await ledgers(
        store,
        GEMINI_STREAM,
        GEMINI_KEY,
        GEMINI_BODY,
        Answer(chunks, SSE, ended=ending == "failed"),
        config=gemini,
    )
    recorded.agree()
    line = recorded.line
    assert line["usage_estimated"] is True
    counts = (line["prompt_tokens"], line["cached_tokens"], line["completion_tokens"])
    assert counts == (1000, 400, 5)
    assert (line["prompt_audio_tokens"], line["cached_audio_tokens"]) == (800, 300)
    assert cost(line) == (PROMPT_COST + 5 * Decimal("2.50")) / 10**6


async def test_a_gemini_speech_stream_failed_after_a_running_count_bills_its_audio_output(
    store: StoreClient, gemini: str
) -> None:
    """A TTS model's running count (Gemini counts as it goes) names 40 output tokens of
    speech; Google then fails the stream. The 40 counted tokens of speech are billed at the
    audio output price, as the same count at the stream's end is."""
    spoken = {
        **PROMPT,
        "candidatesTokenCount": 40,
        "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 40}],
    }
    candidate = {
        "content": {"role": "model", "parts": [{"inlineData": {"mimeType": "audio/pcm"}}]},
        "index": 0,
    }
    speech = gemini_event({"candidates": [candidate], "usageMetadata": spoken})
    recorded = await ledgers(
        store,
        GEMINI_STREAM,
        GEMINI_KEY,
        GEMINI_BODY,
        Answer([speech, GOOGLE_ERROR], SSE),
        config=gemini,
    )
    recorded.agree()
    line = recorded.line
    assert (line["completion_tokens"], line["completion_audio_tokens"]) == (40, 40)
    assert line["prompt_audio_tokens"] == 800
    assert cost(line) == (PROMPT_COST + 40 * Decimal("10.00")) / 10**6


async def test_an_openai_compatible_running_count_of_audio_survives_the_providers_error(
    store: StoreClient,
) -> None:
    """An OpenAI-compatible server that repeats its count on every chunk (vLLM's
    continuous_usage_stats, serving an audio model) counted 800 audio tokens of a 1,000
    token prompt, then failed the stream. The prompt's audio is billed at the model's
    audio price."""
    config = DEFAULT_CONFIG.replace(
        "gpt-4o-mini: {input_per_million: 0.15, cached_input_per_million: 0.075, "
        "output_per_million: 0.60}",
        "gpt-4o-mini: {input_per_million: 0.15, audio_input_per_million: 10.00, "
        "output_per_million: 0.60}",
    )
    assert config != DEFAULT_CONFIG
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 5,
        "total_tokens": 1005,
        "prompt_tokens_details": {"audio_tokens": 800},
    }
    running = data(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": TRANSCRIPT}, "finish_reason": None}],
            "usage": usage,
        }
    )
    body = {"model": "gpt-4o-mini", "stream": True, "messages": USER}
    recorded = await ledgers(
        store,
        "/v1/chat/completions",
        OPENAI_KEY,
        body,
        Answer([chat_chunk({"role": "assistant"}), running, OPENAI_ERROR, DONE], SSE),
        config=config,
    )
    recorded.agree()
    line = recorded.line
    assert (line["prompt_tokens"], line["prompt_audio_tokens"]) == (1000, 800)
    expected = 200 * Decimal("0.15") + 800 * Decimal("10.00") + 5 * Decimal("0.60")
    assert cost(line) == expected / 10**6


# --- a spoken answer without its count is estimated from its transcript --------------------

SPOKEN = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}
JSON = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
# The spoken reply's transcript: 29 characters, 8 tokens at one per four characters.
REPLY = ("Hello there friend", " more words")


async def test_a_spoken_stream_cut_before_its_count_is_charged_its_transcript(
    store: StoreClient,
) -> None:
    """An audio model's spoken answer streams no ``content``: each piece of it is a
    ``delta.audio.transcript``. The client hangs up before the usage chunk: the answer is
    estimated from the transcript it got, as a text answer is from its text (8 tokens, a
    floor of its speech). It was charged no completion at all."""
    chunks = [chat_chunk({"role": "assistant", "audio": {"id": "audio_1", "transcript": REPLY[0]}})]
    chunks.append(chat_chunk({"audio": {"transcript": REPLY[1]}}))
    body = {"model": "gpt-4o-mini", "stream": True, "messages": USER, **SPOKEN}
    recorded = await ledgers(
        store, "/v1/chat/completions", OPENAI_KEY, body, Answer(chunks, SSE, ended=False)
    )
    recorded.agree()
    line = recorded.line
    assert (line["outcome"], line["usage_estimated"]) == ("aborted", True)
    assert line["completion_tokens"] == 8


async def test_a_whole_spoken_answer_without_its_count_is_charged_its_transcript(
    store: StoreClient,
) -> None:
    """The same answer in one JSON body from a provider that reports no usage: its
    ``message.content`` is null, its text the ``audio.transcript``."""
    audio = {"id": "audio_1", "data": "AAAA", "expires_at": 1, "transcript": "".join(REPLY)}
    message = {"role": "assistant", "content": None, "audio": audio}
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
    }
    body = {"model": "gpt-4o-mini", "messages": USER, **SPOKEN}
    recorded = await ledgers(
        store, "/v1/chat/completions", OPENAI_KEY, body, Answer([orjson.dumps(answer)], JSON)
    )
    recorded.agree()
    line = recorded.line
    assert (line["outcome"], line["usage_estimated"]) == ("completed", True)
    assert line["completion_tokens"] == 8
