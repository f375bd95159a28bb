"""OpenAI's text-to-speech API (``POST /v1/audio/speech``): what a valid request is, what
it is billed by and what the quota reserves for it.

The body is JSON: ``model`` (tts-1, tts-1-hd, gpt-4o-mini-tts), ``input`` (the text to
speak, at most ``MAX_INPUT_CHARACTERS``), ``voice``, ``instructions`` (gpt-4o-mini-tts),
``response_format`` (``FORMATS``: mp3 by default), ``speed`` and ``stream_format``
(``audio``, the default: the audio file's bytes; ``sse``: ``speech.audio.delta`` events
of base64 audio, then ``speech.audio.done`` with the usage). The gateway checks the
fields that decide what it counts and sends the body on under the provider's name for
the model; the answer's bytes reach the client as they came.

**Billed per character.** tts-1 and tts-1-hd are billed per character of ``input``,
which the gateway knows exactly from the request; their answer (the audio alone, and
OpenAI does not stream them as events) reports nothing. So the characters are the usage:
counted as prompt tokens, one a character (``billable_characters`` too, which the price
table's ``input_per_thousand_characters`` bills), no completion tokens.

**Billed by tokens.** gpt-4o-mini-tts is billed by tokens (text in, audio out), and
reports them only in a stream's ``speech.audio.done`` event: its raw audio answer
carries none. So the gateway asks the provider for the events (``provider_body``:
``stream_format: sse``) whatever the client asked; a client that asked for the raw
audio gets the audio the ``speech.audio.delta`` events carry, decoded
(``translators.openai_speech``), which is what OpenAI would have sent it.

**Quota.** A token limit reserves the characters of ``input`` as prompt tokens (exactly
the bill of tts-1 and tts-1-hd; about four times gpt-4o-mini-tts' text tokens, which the
answer's usage settles) and, for a model billed by tokens, ``audio_allowance``: the
audio it may write, ``AUDIO_TOKENS_PER_CHARACTER`` output tokens a character of
``input`` at normal speed, more at a slower one (at OpenAI's estimate of $0.015 a
minute at $12 per million tokens, 1,250 tokens a minute, and about 900 characters
spoken a minute, it is 1.4 a character).
"""

from __future__ import annotations

import math
from typing import Any

from extproc.errors import BadRequestError

# The last segment of the path of text-to-speech (``/v1/audio/speech``).
SPEECH = "speech"
# OpenAI refuses a longer input.
MAX_INPUT_CHARACTERS = 4096
# The audio formats OpenAI writes, and the content type of each.
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MP3 = "mp3"
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
AUDIO = "audio"
SSE = "sse"
STREAM_FORMATS = (AUDIO, SSE)
# OpenAI's models billed per character of their input, which stream no events and report
# nothing: tts-1 and tts-1-hd (and their dated versions). Every other speech model
# (gpt-4o-mini-tts) bills tokens, reported only in an SSE stream's speech.audio.done.
_PER_CHARACTER_MODELS = ("tts-1",)
# The audio output tokens the quota reserves per character of input (the docstring).
AUDIO_TOKENS_PER_CHARACTER = 2
# OpenAI's range of speed.
_SLOWEST, _FASTEST = 0.25, 4.0


def is_speech(endpoint: str) -> bool:
    """Whether the audio endpoint (the path's last segment) is text-to-speech."""
    return endpoint == SPEECH


def check_speech_body(body: dict[str, Any]) -> None:
    """A 400 in OpenAI's shape for a body OpenAI would refuse in a way that changes what
    the gateway counts: no text, too long a text, an unknown format."""
    text = body.get("input")
    if not isinstance(text, str) or not text:
        raise BadRequestError(
            "'input' is required: the text to generate audio for, a string", param="input"
        )
    if len(text) > MAX_INPUT_CHARACTERS:
        raise BadRequestError(
            f"'input' is {len(text):,} characters long; the maximum is {MAX_INPUT_CHARACTERS:,}",
            param="input",
            code="string_above_max_length",
        )
    asked = body.get("response_format", MP3)
    if asked not in FORMATS:
        raise BadRequestError(
            f"'response_format' must be one of {', '.join(FORMATS)}", param="response_format"
        )
    stream_format = body.get("stream_format", AUDIO)
    if stream_format not in STREAM_FORMATS:
        raise BadRequestError(
            f"'stream_format' must be one of {', '.join(STREAM_FORMATS)}",
            param="stream_format",
        )
    speed = body.get("speed", 1.0)
    if (
        isinstance(speed, bool)
        or not isinstance(speed, (int, float))
        or not _SLOWEST <= speed <= _FASTEST
    ):
        # The audio reserved depends on it (slower speech, more audio): a value the
        # provider would refuse is refused before the quota, as OpenAI refuses it.
        raise BadRequestError(
            f"'speed' must be a number from {_SLOWEST} to {_FASTEST}", param="speed"
        )
    if "stream" in body:
        # Not OpenAI's field here: a stream is asked with stream_format, and the
        # gateway reads the answer by it.
        raise BadRequestError(
            "text-to-speech takes no 'stream'; ask for events with stream_format: sse",
            param="stream",
        )


def characters(body: dict[str, Any]) -> int:
    """The characters of ``input``: what tts-1 and tts-1-hd are billed by."""
    text = body.get("input")
    return len(text) if isinstance(text, str) else 0


def reports_tokens(model: str, upstream_model: str) -> bool:
    """Whether a speech model bills tokens, reported in an SSE stream only: every one but
    tts-1's family, which bills characters. Known by the gateway's name for the model
    (``model``) as well as the provider's: a deployment under a name of its own (Azure's
    `my-voice`) is billed as the model the gateway names. A model neither names as
    tts-1's is asked for the events, so that one misnamed fails loudly (the provider's
    400 for events it cannot stream) rather than being billed per character, far below
    its tokens' price."""
    return not (
        model.startswith(_PER_CHARACTER_MODELS) or upstream_model.startswith(_PER_CHARACTER_MODELS)
    )


def refuse_unserved_stream(
    shown: str, model: str, upstream_model: str, body: dict[str, Any]
) -> None:
    """Refuse events asked of a model billed per character: OpenAI streams none from
    tts-1 and tts-1-hd (its 400, before any quota). ``shown``: the name the refusal
    names (the client's: a model group's)."""
    if body.get("stream_format") == SSE and not reports_tokens(model, upstream_model):
        raise BadRequestError(
            f"stream_format 'sse' is not supported by '{shown}'; leave it out or send "
            "stream_format: audio",
            param="stream_format",
        )


def provider_body(body: dict[str, Any], model: str, upstream_model: str) -> dict[str, Any] | None:
    """The body the provider is sent in place of the client's (under its name for the
    model): events asked of a model billed by tokens, whose usage they alone carry; None
    where the client's does."""
    if not reports_tokens(model, upstream_model) or body.get("stream_format") == SSE:
        return None
    return {**body, "model": upstream_model, "stream_format": SSE}


def client_wants_events(body: dict[str, Any]) -> bool:
    """Whether the client asked for the event stream rather than the raw audio."""
    return body.get("stream_format") == SSE


def audio_allowance(body: dict[str, Any], model: str, upstream_model: str) -> int:
    """The audio output tokens the quota reserves: none for a model billed per character."""
    if not reports_tokens(model, upstream_model):
        return 0
    # A number from _SLOWEST to _FASTEST: check_speech_body refused any other.
    speed = float(body.get("speed", 1.0))
    return math.ceil(characters(body) * AUDIO_TOKENS_PER_CHARACTER / speed)


def content_type(body: dict[str, Any]) -> str:
    """The content type of the audio the client asked for."""
    asked = body.get("response_format", MP3)
    return CONTENT_TYPES.get(asked, CONTENT_TYPES[MP3]) if isinstance(asked, str) else ""
