"""The mock answers audio chat requests as OpenAI's audio models do (``chat_audio``): an
``input_audio`` part counts audio prompt tokens, ``modalities: ["text", "audio"]`` gets a
spoken answer whose speech counts audio completion tokens, and the usage says how many of
each count is audio, so the gateway's audio pricing can be tested end to end."""

from __future__ import annotations

from typing import Any

from openai import AsyncOpenAI

from extproc.mock_llm.chat_audio import AUDIO_CHARS_PER_TOKEN, AUDIO_TOKENS_PER_PIECE
from extproc.mock_llm.tokens import count_tokens, prompt_tokens

# 250 characters of base64: three audio tokens at 100 characters each, rounded up.
DATA = "A" * 250
AUDIO_TOKENS = 3
MESSAGES: list[Any] = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Transcribe this"},
            {"type": "input_audio", "input_audio": {"data": DATA, "format": "wav"}},
        ],
    }
]
REPLY = "Mock reply to: Transcribe this"


def test_the_rule_is_the_documented_one() -> None:
    assert -(-len(DATA) // AUDIO_CHARS_PER_TOKEN) == AUDIO_TOKENS


async def test_audio_in_counts_audio_prompt_tokens(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.chat.completions.create(model="gpt-audio", messages=MESSAGES)
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens == prompt_tokens(MESSAGES) + AUDIO_TOKENS
    assert usage.prompt_tokens_details.audio_tokens == AUDIO_TOKENS
    # Not asked to speak: a text answer, no audio in its count.
    assert answer.choices[0].message.content == REPLY
    assert usage.completion_tokens == count_tokens(REPLY)


async def test_a_spoken_answer_counts_its_speech(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.chat.completions.create(
        model="gpt-audio",
        messages=MESSAGES,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
    )
    message = answer.choices[0].message
    assert message.content is None and message.audio is not None
    assert message.audio.transcript == REPLY
    usage = answer.usage
    assert usage is not None and usage.completion_tokens_details is not None
    pieces = count_tokens(REPLY)
    assert usage.completion_tokens == pieces * (1 + AUDIO_TOKENS_PER_PIECE)
    assert usage.completion_tokens_details.audio_tokens == pieces * AUDIO_TOKENS_PER_PIECE
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_a_spoken_stream_sends_the_transcript_and_the_same_usage(
    openai_client: AsyncOpenAI,
) -> None:
    whole = await openai_client.chat.completions.create(
        model="gpt-audio", messages=MESSAGES, modalities=["text", "audio"]
    )
    stream = await openai_client.chat.completions.create(
        model="gpt-audio",
        messages=MESSAGES,
        modalities=["text", "audio"],
        stream=True,
        stream_options={"include_usage": True},
    )
    transcript, ids, usage = [], set(), None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            audio = choice.delta.model_dump().get("audio") or {}
            transcript.append(audio.get("transcript") or "")
            ids.add(audio.get("id"))
    assert "".join(transcript) == REPLY
    # The audio's id comes once, with the transcript's first piece.
    assert len(ids - {None}) == 1
    assert usage is not None and whole.usage is not None
    assert usage.model_dump() == whole.usage.model_dump()
