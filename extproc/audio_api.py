"""OpenAI's speech-to-text APIs: what a valid form is, what it may cost, and which format
the gateway asks the provider for.

A transcription (``POST /v1/audio/transcriptions``: whisper-1, gpt-4o-transcribe,
gpt-4o-mini-transcribe) or a translation into English (``POST /v1/audio/translations``:
whisper-1) is a ``multipart/form-data`` form: the audio in ``file`` (25 MB at most at
OpenAI) and text fields (``model``, ``language``, ``prompt``, ``response_format``,
``temperature``, ``timestamp_granularities[]``, ``include[]``, ``stream``,
``chunking_strategy``). The gateway reads the text fields with the form reader
(``multipart_form.read_form``: the file is located, never copied), checks the ones that
decide what it counts (``model``, ``file``, ``response_format``, ``stream``) and sends
the form on byte for byte, only the fields it changes spliced in (the provider's name for
the model, a prompt a guard masked, the response format below).

**Never lost usage.** OpenAI reports the usage in its JSON answers only: a transcription's
``json`` and ``verbose_json`` carry ``usage`` (``{"type": "tokens", "input_tokens",
"input_token_details": {"audio_tokens", "text_tokens"}, "output_tokens",
"total_tokens"}`` for the gpt-4o transcribe models, ``{"type": "duration", "seconds"}``
for whisper-1), a translation's ``verbose_json`` its ``duration`` (its ``json`` carries
none), and a stream its ``transcript.text.done`` event. The ``text``, ``srt`` and ``vtt``
answers carry nothing to bill. So the gateway asks the provider for a JSON format that
carries the bill and renders the client's format from it (``provider_format``,
``translators.openai_audio``):

- ``text`` -> ``json`` on a transcription (every model serves it and it carries the
  usage), ``verbose_json`` on a translation; the client gets the text and a line end, as
  OpenAI's ``text`` answer is;
- ``srt`` and ``vtt`` -> ``verbose_json`` (whisper-1 alone serves these formats, and it
  serves ``verbose_json``); the client gets the subtitles rendered from its
  ``segments``, numbered and timed as OpenAI writes them;
- a translation's ``json`` -> ``verbose_json``, the client getting ``{"text"}``;
- ``json``, ``verbose_json`` (and ``diarized_json``) on a transcription, and
  ``verbose_json`` on a translation: asked as they came.

A stream (``stream=true``, the gpt-4o transcribe models) is passed through, its
``transcript.text.done`` event read for the usage. Whisper-1 ignores ``stream``, and a
JSON answer to a request that asked for a stream is read as JSON.

**Duration usage.** Whisper-1 is billed per minute of audio, not per token: its usage's
seconds are billed at the model's ``audio_input_per_minute`` price, and counted for the
token counters, limits and reports as ``AUDIO_TOKENS_PER_SECOND`` (10) audio prompt
tokens per second (one per tenth of a second, rounded up): the rate at which OpenAI's
gpt-4o models read audio, so a minute weighs on a token limit alike whichever model
heard it.

**Quota.** The audio's length is unknown until the provider answers (the gateway does not
decode it): the quota reserves ``estimated_seconds`` of it from the file's size, one
second per ``BYTES_PER_SECOND`` (16,000: 128 kbit/s, a common MP3 or M4A recording's
rate; a WAV's seconds are more bytes, a low-rate Opus' fewer), as audio prompt tokens at
the rate above, and the transcript it may write, ``COMPLETION_TOKENS_PER_SECOND`` (4)
tokens per second (fast speech is about 3 words a second). The answer's usage settles
both.

Text-to-speech (``/v1/audio/speech``) is served on the same routes: its JSON body,
billing and quota are ``speech_api``'s. Any other path under a prefix route naming
``openai_audio`` is refused with a 404 (``refuse_unserved_path``).
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequestError, NotFoundError
from extproc.multipart_form import INVALID_MULTIPART, FormFile, MultipartForm, shown
from extproc.speech_api import SPEECH, characters

# Under the provider's API path (``/v1`` for OpenAI).
TRANSCRIPTIONS = "transcriptions"
TRANSLATIONS = "translations"
_SERVED = (TRANSCRIPTIONS, TRANSLATIONS, SPEECH)
# The form's one file field: the audio.
FILE_FIELD = "file"
# The formats OpenAI answers in.
JSON = "json"
TEXT = "text"
SRT = "srt"
VTT = "vtt"
VERBOSE_JSON = "verbose_json"
DIARIZED_JSON = "diarized_json"
_TRANSCRIPTION_FORMATS = (JSON, TEXT, SRT, VERBOSE_JSON, VTT, DIARIZED_JSON)
_TRANSLATION_FORMATS = (JSON, TEXT, SRT, VERBOSE_JSON, VTT)
_BOOLEANS = {"true": True, "false": False}
# The quota's estimate of the audio and of its transcript (the module docstring).
BYTES_PER_SECOND = 16_000
AUDIO_TOKENS_PER_SECOND = 10
COMPLETION_TOKENS_PER_SECOND = 4
# A prompt of text guiding the model: OpenAI reads 224 tokens of it for whisper-1.
_CHARS_PER_TOKEN = 4


def endpoint_of(path: str) -> str:
    """The endpoint ``path`` asks for (its last segment: transcriptions, translations)."""
    return path.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


def upstream_path(path: str) -> str:
    """The provider's path of the endpoint ``path`` asks for, under its API prefix."""
    return f"/audio/{endpoint_of(path)}"


def refuse_unserved_path(path: str) -> None:
    """Refuse an audio path the gateway does not serve with a 404 naming what is."""
    if endpoint_of(path) in _SERVED:
        return
    shown_path = path.partition("?")[0]
    raise NotFoundError(
        f"no audio endpoint at {shown_path}; transcriptions are served at "
        "/v1/audio/transcriptions, translations at /v1/audio/translations and "
        "text-to-speech at /v1/audio/speech",
        code="route_not_found",
    )


def audio_body(form: MultipartForm, path: str) -> dict[str, Any]:
    """The form's text fields as the body the gateway checks and counts (``stream`` a
    boolean where its text reads so), a 400 for a form without its audio file, with a
    file in another field, or with a format or stream the endpoint does not take."""
    body: dict[str, Any] = dict(form.fields)
    stream = body.get("stream")
    if isinstance(stream, str) and stream.strip().lower() in _BOOLEANS:
        body["stream"] = _BOOLEANS[stream.strip().lower()]
    elif stream is not None:
        raise BadRequestError("'stream' must be true or false", param="stream")
    for part in form.files:
        if part.name != FILE_FIELD:
            quoted = shown(part.name)
            raise BadRequestError(
                f"the form has a file in its field '{quoted}'; the audio goes in 'file', "
                "and the other fields are text",
                param=quoted,
                code=INVALID_MULTIPART,
            )
    if FILE_FIELD in form.fields:
        raise BadRequestError(
            "'file' must be the audio file itself (a file part with a filename), not text",
            param=FILE_FIELD,
        )
    files = audio_files(form)
    if not files:
        raise BadRequestError(
            "'file' is required: the audio to transcribe or translate, as a file part "
            "of the multipart/form-data form",
            param=FILE_FIELD,
        )
    if len(files) > 1:
        raise BadRequestError("the form gives 'file' more than once", param=FILE_FIELD)
    endpoint = endpoint_of(path)
    served = _TRANSLATION_FORMATS if endpoint == TRANSLATIONS else _TRANSCRIPTION_FORMATS
    asked = body.get("response_format", JSON)
    if asked not in served:
        raise BadRequestError(
            f"'response_format' must be one of {', '.join(served)}",
            param="response_format",
        )
    if body.get("stream") is True and endpoint == TRANSLATIONS:
        raise BadRequestError(
            "translations do not stream; send stream=false or leave it out", param="stream"
        )
    return body


def audio_files(form: MultipartForm) -> list[FormFile]:
    """The form's audio files (its ``file`` parts)."""
    return [part for part in form.files if part.name == FILE_FIELD]


def client_format(body: dict[str, Any]) -> str:
    """The response format the client asked for (``json`` when it names none)."""
    asked = body.get("response_format")
    return asked if isinstance(asked, str) and asked else JSON


def provider_format(path: str, body: dict[str, Any]) -> str:
    """The response format the gateway asks the provider for: one whose answer carries
    the bill (the module docstring says which and why)."""
    asked = client_format(body)
    translation = endpoint_of(path) == TRANSLATIONS
    if asked in (SRT, VTT):
        return VERBOSE_JSON
    if translation:
        return VERBOSE_JSON
    if asked == TEXT:
        return JSON
    return asked


def estimated_seconds(form: MultipartForm) -> int:
    """The audio's seconds as the quota estimates them from the file's size."""
    size = sum(part.size for part in audio_files(form))
    return max(-(-size // BYTES_PER_SECOND), 1)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """The text prompt's tokens (one per four characters); the audio's are added from
    the form (``audio_prompt_tokens``). Text-to-speech's: one per character of its
    ``input``, as tts-1 and tts-1-hd are billed (``speech_api``)."""
    if "input" in body:
        return characters(body)
    prompt = body.get("prompt")
    text = prompt if isinstance(prompt, str) else ""
    return -(-len(text) // _CHARS_PER_TOKEN)


def audio_prompt_tokens(form: MultipartForm) -> int:
    """The audio prompt tokens the quota reserves for the form's file."""
    return estimated_seconds(form) * AUDIO_TOKENS_PER_SECOND


def transcript_allowance(form: MultipartForm | None) -> int:
    """The completion tokens the quota reserves for the transcript."""
    if form is None:
        return COMPLETION_TOKENS_PER_SECOND
    return estimated_seconds(form) * COMPLETION_TOKENS_PER_SECOND


def seconds_as_tokens(seconds: float) -> int:
    """A duration's audio prompt tokens, as the counters and limits count them."""
    # One token per tenth of a second (AUDIO_TOKENS_PER_SECOND), rounded up.
    return -(-round(max(seconds, 0.0) * 1000) // 100)
