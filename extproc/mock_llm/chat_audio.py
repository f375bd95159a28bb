"""Audio in the mock's chat completions, as OpenAI's audio models (gpt-audio,
gpt-4o-audio-preview) answer it, with deterministic counts tests can predict.

- Audio in: each ``{"type": "input_audio", "input_audio": {"data": <base64>, ...}}``
  part of a message counts one audio prompt token per ``AUDIO_CHARS_PER_TOKEN``
  characters of its ``data``, rounded up, at least one. They are part of
  ``prompt_tokens`` and reported in ``prompt_tokens_details.audio_tokens``.
- Audio out: a request whose ``modalities`` holds ``"audio"`` is answered spoken: the
  message's ``content`` is null and its ``audio`` carries the reply as ``transcript``
  (and as ``data``, the reply's bytes in base64: the mock speaks no sound). Each reply
  piece counts ``AUDIO_TOKENS_PER_PIECE`` audio tokens beside its text token, all part
  of ``completion_tokens`` and the audio reported in
  ``completion_tokens_details.audio_tokens``, as OpenAI counts a spoken answer's
  transcript and speech. A stream sends each piece as ``delta.audio.transcript`` (the
  first with the audio's ``id``), then one delta with its ``data`` and ``expires_at``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

AUDIO_CHARS_PER_TOKEN = 100
AUDIO_TOKENS_PER_PIECE = 2
# How long OpenAI keeps a spoken answer for a follow-up turn to name, in seconds.
_AUDIO_KEPT_S = 3600


def audio_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """The audio tokens of the messages' ``input_audio`` parts (module doc)."""
    total = 0
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            audio = part.get("input_audio") if isinstance(part, dict) else None
            if part.get("type") == "input_audio" and isinstance(audio, dict):
                data = audio.get("data")
                size = len(data) if isinstance(data, str) else 0
                total += max(1, -(-size // AUDIO_CHARS_PER_TOKEN))
    return total


def asks_for_audio(doc: dict[str, Any]) -> bool:
    """Whether the request asks for a spoken answer (``modalities`` holds ``audio``)."""
    modalities = doc.get("modalities")
    return isinstance(modalities, list) and "audio" in modalities


def audio_output_tokens(pieces: int) -> int:
    """The audio tokens of a spoken answer of ``pieces`` reply pieces."""
    return AUDIO_TOKENS_PER_PIECE * pieces


def spoken_message(audio_id: str, transcript: str, created: int) -> dict[str, Any]:
    """A spoken answer's message, as OpenAI writes it."""
    return {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "audio": {
            "id": audio_id,
            "data": _data(transcript),
            "expires_at": created + _AUDIO_KEPT_S,
            "transcript": transcript,
        },
    }


def transcript_delta(audio_id: str, piece: str, first: bool) -> dict[str, Any]:
    """A stream's delta carrying one piece of the transcript."""
    audio: dict[str, Any] = {"transcript": piece}
    if first:
        audio = {"id": audio_id, **audio}
    return {"audio": audio}


def data_delta(transcript: str, created: int) -> dict[str, Any]:
    """A stream's delta carrying the spoken answer's data, after its transcript."""
    return {"audio": {"data": _data(transcript), "expires_at": created + _AUDIO_KEPT_S}}


def _data(transcript: str) -> str:
    return base64.b64encode(transcript.encode()).decode()
