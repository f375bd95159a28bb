"""The request log line and the span count a request's audio tokens apart.

Audio is billed at its own prices (OpenAI's audio models: $32 and $64 per million audio
tokens against $2.50 and $10 of text; Gemini's audio input above text), so a line whose
counts held audio only within ``prompt_tokens`` and ``completion_tokens`` had a
``cost_usd`` that no reading of its counts gave: nobody could check it. The line now has
``prompt_audio_tokens``, ``cached_audio_tokens`` and ``completion_audio_tokens`` on every
path that reads them (a JSON answer, a stream's usage chunk, Gemini's modality counts),
and the span ``aigw.usage.audio_*`` when there are any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from google.protobuf.json_format import MessageToDict

from extproc.headers import METADATA_NAMESPACE
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.telemetry.span_attributes import SPAN_ATTRIBUTES
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.sse_play import only_line, play_sse
from tests.unit.test_gemini_audio_pricing import USAGE as GEMINI_USAGE
from tests.unit.test_gemini_audio_pricing import generate
from tests.unit.test_gemini_review import vertex
from tests.unit.test_openai_audio_pricing import (
    AUDIO_USAGE,
    OPENAI_AUTH,
    body,
    gateway,
    spoken_answer,
    spoken_stream,
)

__all__ = ["gateway", "vertex"]  # fixtures of the audio pricing tests

AUDIO_FIELDS = ("prompt_audio_tokens", "cached_audio_tokens", "completion_audio_tokens")


def audio_counts(line: dict[str, Any]) -> tuple[int, int, int]:
    prompt, cached, completion = (line[name] for name in AUDIO_FIELDS)
    return prompt, cached, completion


def span_metadata(answers: list[Any]) -> dict[str, Any]:
    """The ``io.aigw`` metadata Envoy holds once the request ends: each answer's merged
    into it key by key, as Envoy does."""
    merged: dict[str, Any] = {}
    for answer in answers:
        fields = answer.dynamic_metadata.fields
        if METADATA_NAMESPACE in fields:  # `in`, never an index: that would insert it
            merged.update(MessageToDict(fields[METADATA_NAMESPACE].struct_value))
    return merged


async def test_a_spoken_answer_s_audio_is_on_the_line_and_the_span(
    gateway: Processor, services: Services
) -> None:
    answers = await run_stream(gateway, [
        request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(body()),
        response_headers(200, {"content-type": "application/json"}),
        response_body(spoken_answer(AUDIO_USAGE)),
    ])  # fmt: skip

    line = only_line(services)
    # Before: no audio field on the line; its cost_usd, 8x the text price of its counts.
    assert audio_counts(line) == (1_000, 0, 250)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1_200, 300)
    metadata = span_metadata(answers)
    assert (metadata["prompt_audio_tokens"], metadata["completion_audio_tokens"]) == (1_000, 250)
    assert "cached_audio_tokens" not in metadata  # 0: left out, as on most requests


@pytest.mark.parametrize("client_wants_usage", [True, False])
async def test_a_spoken_stream_s_audio_is_read_from_its_usage_chunk(
    gateway: Processor, services: Services, client_wants_usage: bool
) -> None:
    options = {"stream_options": {"include_usage": True}} if client_wants_usage else {}

    answers = await play_sse(
        gateway,
        "/v1/chat/completions",
        OPENAI_AUTH,
        body(stream=True, **options),
        spoken_stream(AUDIO_USAGE),
    )

    assert audio_counts(only_line(services)) == (1_000, 0, 250)
    metadata = span_metadata(answers)
    assert (metadata["prompt_audio_tokens"], metadata["completion_audio_tokens"]) == (1_000, 250)


async def test_a_text_answer_counts_no_audio_and_tags_none(
    gateway: Processor, services: Services
) -> None:
    text_usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    answer = orjson.dumps(
        {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-audio",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                      "finish_reason": "stop"}],
         "usage": text_usage}
    )  # fmt: skip

    answers = await run_stream(gateway, [
        request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(body()),
        response_headers(200, {"content-type": "application/json"}), response_body(answer),
    ])  # fmt: skip

    assert audio_counts(only_line(services)) == (0, 0, 0)
    assert not set(AUDIO_FIELDS) & set(span_metadata(answers))


async def test_gemini_s_audio_and_cached_audio_are_on_the_line(
    vertex: tuple[str, Path],
) -> None:
    line = await generate(vertex, GEMINI_USAGE)

    assert audio_counts(line) == (8_000, 3_000, 0)
    assert (line["prompt_tokens"], line["cached_tokens"]) == (10_000, 4_000)


async def test_gemini_s_speech_is_the_completion_s_audio(vertex: tuple[str, Path]) -> None:
    speech = {
        "promptTokenCount": 20,
        "candidatesTokenCount": 400,
        "totalTokenCount": 420,
        "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 400}],
    }

    line = await generate(vertex, speech)

    assert audio_counts(line) == (0, 0, 400)


def test_every_audio_count_has_its_span_attribute() -> None:
    # The bootstrap's custom tags are rendered from this table: a key without a row here
    # would be sent to Envoy and never reach the span.
    tagged = {key: name for name, key in SPAN_ATTRIBUTES}
    assert [tagged.get(key) for key in AUDIO_FIELDS] == [
        "aigw.usage.audio_input_tokens",
        "aigw.usage.cached_audio_input_tokens",
        "aigw.usage.audio_output_tokens",
    ]
