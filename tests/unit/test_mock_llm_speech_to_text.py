"""The mock's speech-to-text models, read with the official openai client: every response
format of transcriptions and translations, the gpt-4o transcribe models' stream, and
OpenAI's refusals (docs/mock-llm.md#openais-speech-to-text)."""

from __future__ import annotations

import io
import math
import wave

import openai
import pytest
from openai import AsyncOpenAI

from extproc.mock_llm import count_tokens
from extproc.mock_llm.audio_api import DEFAULT_TRANSCRIPT

SAID = "We ship on Friday. Alice owns the release."
# 32,000 bytes at the mock's 16,000 a second: two seconds.
SPOKEN = SAID.encode().ljust(32_000)


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A silent mono 16-bit WAV of ``seconds``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


async def test_a_gpt4o_transcription_reports_tokens(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("talk.txt", SPOKEN)
    )
    assert answer.text == SAID
    usage = answer.usage
    assert usage is not None and usage.type == "tokens"
    assert usage.input_tokens == 20  # two seconds at ten tokens a second
    assert usage.input_token_details.audio_tokens == 20
    assert usage.output_tokens == count_tokens(SAID)


async def test_whisper_reports_seconds_rounded_up(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.audio.transcriptions.create(
        model="whisper-1", file=("meeting.wav", wav(2.5))
    )
    assert answer.text == DEFAULT_TRANSCRIPT
    assert answer.usage is not None and answer.usage.type == "duration"
    assert answer.usage.seconds == 3


async def test_whisper_answers_every_format(openai_client: AsyncOpenAI) -> None:
    file = ("meeting.wav", wav(4))
    text = await openai_client.audio.transcriptions.create(
        model="whisper-1", file=file, response_format="text"
    )
    assert text == DEFAULT_TRANSCRIPT + "\n"
    srt = await openai_client.audio.transcriptions.create(
        model="whisper-1", file=file, response_format="srt"
    )
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,000\nHello from the mock transcriber.\n")
    vtt = await openai_client.audio.transcriptions.create(
        model="whisper-1", file=file, response_format="vtt"
    )
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n")
    verbose = await openai_client.audio.transcriptions.create(
        model="whisper-1", file=file, response_format="verbose_json"
    )
    assert verbose.duration == 4 and len(verbose.segments or []) == 2
    assert verbose.usage is not None and verbose.usage.seconds == 4


async def test_a_translation_carries_its_duration_only_in_verbose_json(
    openai_client: AsyncOpenAI,
) -> None:
    plain = await openai_client.audio.translations.create(
        model="whisper-1", file=("talk.txt", SPOKEN)
    )
    assert plain.text == SAID
    assert "usage" not in plain.model_dump()
    verbose = await openai_client.audio.translations.create(
        model="whisper-1", file=("talk.txt", SPOKEN), response_format="verbose_json"
    )
    assert verbose.duration == 2


async def test_a_gpt4o_stream_ends_with_the_usage(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("talk.txt", SPOKEN), stream=True
    )
    events = [event async for event in stream]
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == SAID
    done = events[-1]
    assert done.type == "transcript.text.done" and done.text == SAID
    assert done.usage is not None
    assert done.usage.input_tokens == math.ceil(2 * 10)
    assert done.usage.output_tokens == count_tokens(SAID)


async def test_refusals_are_openais(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="not compatible"):
        await openai_client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("talk.txt", SPOKEN), response_format="srt"
        )
    with pytest.raises(openai.BadRequestError, match="translations"):
        await openai_client.audio.translations.create(
            model="gpt-4o-transcribe", file=("talk.txt", SPOKEN)
        )
