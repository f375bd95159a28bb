"""The mock's speech-to-text models: OpenAI's ``/v1/audio/transcriptions`` and
``/v1/audio/translations``.

Both take a ``multipart/form-data`` form (read with the standard library's ``email``
parser, apart from the gateway's reader): the audio in ``file``, text fields ``model``,
``prompt``, ``response_format`` (``json``, ``text``, ``srt``, ``vtt``,
``verbose_json``), ``stream`` (``true``/``false``). Deterministic:

- What the mock "hears": the file's bytes as UTF-8 text when they are text (a test says
  what was spoken), else (a WAV, any binary audio) ``DEFAULT_TRANSCRIPT``.
- Its duration: a WAV's own (the ``wave`` module), else one second per
  ``BYTES_PER_SECOND`` of file.
- whisper-1 (any model named ``whisper...``) reports ``{"type": "duration", "seconds"}``
  (the duration rounded up to a whole second) in ``json`` and ``verbose_json``; a
  translation's ``json`` carries no usage, its ``verbose_json`` the ``duration``, as
  OpenAI's do. ``srt`` and ``vtt`` come from the segments (one per sentence, sharing the
  duration evenly); ``text`` is the text and a line end.
- the other models (gpt-4o-transcribe, gpt-4o-mini-transcribe) report tokens:
  ``input_tokens`` the audio's ``AUDIO_TOKENS_PER_SECOND`` a second (rounded up) plus
  the prompt's tokens, ``output_tokens`` the transcript's (``count_tokens``); they serve
  ``json`` and ``text`` only (others: OpenAI's 400), stream with ``stream=true``
  (``transcript.text.delta`` per word, then ``transcript.text.done`` with the usage), and
  translate nothing (OpenAI's 400).

Faults (``x-mock-fault``): ``status``, ``delay``, ``no_usage`` (the answer, or the done
event, without ``usage``).
"""

from __future__ import annotations

import io
import math
import re
import wave
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.faults import Fault
from extproc.mock_llm.openai_api import InvalidRequestError, error_response, precheck
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.tokens import count_tokens

DEFAULT_TRANSCRIPT = "Hello from the mock transcriber. The meeting starts now."
BYTES_PER_SECOND = 16_000
AUDIO_TOKENS_PER_SECOND = 10
_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_TOKEN_FORMATS = ("json", "text")
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_JSON_HEADERS = {"Content-Type": "application/json"}
_TEXT_HEADERS = {"Content-Type": "text/plain; charset=utf-8"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def heard(audio: bytes) -> str:
    """What the mock hears in ``audio``: its text when it is text, else the default."""
    if audio[:4] == b"RIFF":
        return DEFAULT_TRANSCRIPT
    try:
        text = audio.decode("utf-8").strip()
    except UnicodeDecodeError:
        return DEFAULT_TRANSCRIPT
    return text if text and text.isprintable() else DEFAULT_TRANSCRIPT


def duration_of(audio: bytes) -> float:
    """The audio's seconds: a WAV's own, else its size at ``BYTES_PER_SECOND``."""
    if audio[:4] == b"RIFF":
        try:
            with wave.open(io.BytesIO(audio)) as reader:
                frames, rate = int(reader.getnframes()), int(reader.getframerate())
                return round(frames / rate, 3)
        except (wave.Error, EOFError, ZeroDivisionError):
            pass
    return round(max(len(audio), 1) / BYTES_PER_SECOND, 3)


def is_whisper(model: str) -> bool:
    return model.startswith("whisper")


def token_usage(seconds: float, text: str, prompt: str) -> dict[str, Any]:
    """A gpt-4o transcribe model's usage, as OpenAI reports it."""
    audio = math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)
    prompt_tokens = count_tokens(prompt) if prompt else 0
    output = count_tokens(text)
    return {
        "type": "tokens",
        "input_tokens": audio + prompt_tokens,
        "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio},
        "output_tokens": output,
        "total_tokens": audio + prompt_tokens + output,
    }


def duration_usage(seconds: float) -> dict[str, Any]:
    """whisper-1's usage: the seconds of audio, rounded up to a whole one."""
    return {"type": "duration", "seconds": math.ceil(seconds)}


def segments(text: str, seconds: float) -> list[dict[str, Any]]:
    """One segment per sentence, sharing the duration evenly."""
    sentences = [match.strip() for match in _SENTENCE.findall(text) if match.strip()] or [text]
    each = seconds / len(sentences)
    return [
        {
            "id": index,
            "seek": 0,
            "start": round(index * each, 3),
            "end": round((index + 1) * each, 3),
            "text": " " + sentence,
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": -0.2,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.01,
        }
        for index, sentence in enumerate(sentences)
    ]


def _stamp(seconds: float, mark: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{mark}{millis:03d}"


def subtitles(parts: list[dict[str, Any]], srt: bool) -> str:
    lines = [] if srt else ["WEBVTT", ""]
    for index, part in enumerate(parts, 1):
        if srt:
            lines.append(str(index))
        mark = "," if srt else "."
        lines.append(f"{_stamp(part['start'], mark)} --> {_stamp(part['end'], mark)}")
        lines.extend((part["text"].strip(), ""))
    return "\n".join(lines) + "\n"


def _form(raw: bytes, content_type: str) -> tuple[dict[str, str], bytes | None]:
    """The form's text fields and its ``file``'s bytes."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequestError("Invalid content type: expected multipart/form-data.")
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        raise InvalidRequestError("Could not parse multipart form.")
    fields: dict[str, str] = {}
    audio = None
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if part.get_filename() is not None:
            if name == "file":
                audio = payload
            continue
        fields.setdefault(name, payload.decode())
    return fields, audio


class AudioEndpoint:
    """``POST .../audio/transcriptions`` and ``.../audio/translations``."""

    def __init__(self, *, default_fault: Fault) -> None:
        self._default_fault = default_fault

    async def transcribe(self, request: web.Request, body: Body) -> web.StreamResponse:
        return await self._serve(request, body, translation=False)

    async def translate(self, request: web.Request, body: Body) -> web.StreamResponse:
        return await self._serve(request, body, translation=True)

    async def _serve(
        self, request: web.Request, body: Body, *, translation: bool
    ) -> web.StreamResponse:
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        try:
            fields, audio = _form(body.raw, request.headers.get("Content-Type", ""))
            asked = _checked(fields, audio, translation)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        assert audio is not None
        text = heard(audio)
        seconds = duration_of(audio)
        model, response_format = asked["model"], asked["response_format"]
        whisper = is_whisper(model)
        if whisper:
            usage: dict[str, Any] | None = duration_usage(seconds)
        else:
            usage = token_usage(seconds, text, fields.get("prompt", ""))
        if fault.no_usage:
            usage = None
        if asked["stream"] and not whisper:
            return await self._stream(request, text, usage)
        if response_format == "text":
            return web.Response(body=(text + "\n").encode(), headers=_TEXT_HEADERS)
        parts = segments(text, seconds)
        if response_format in ("srt", "vtt"):
            shown = subtitles(parts, srt=response_format == "srt")
            return web.Response(body=shown.encode(), headers=_TEXT_HEADERS)
        answer: dict[str, Any] = {"text": text}
        if response_format == "verbose_json":
            answer = {
                "task": "translate" if translation else "transcribe",
                "language": "english",
                "duration": seconds,
                "text": text,
                "segments": parts,
            }
        if usage is not None and not translation:
            answer["usage"] = usage
        return web.Response(body=orjson.dumps(answer), headers=_JSON_HEADERS)

    @staticmethod
    async def _stream(
        request: web.Request, text: str, usage: dict[str, Any] | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        words = text.split(" ")
        events: list[dict[str, Any]] = [
            {"type": "transcript.text.delta", "delta": word if not index else " " + word}
            for index, word in enumerate(words)
        ]
        done: dict[str, Any] = {"type": "transcript.text.done", "text": text}
        if usage is not None:
            done["usage"] = usage
        events.append(done)
        try:
            for event in events:
                await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response


def _checked(fields: dict[str, str], audio: bytes | None, translation: bool) -> dict[str, Any]:
    model = fields.get("model")
    if not model:
        raise InvalidRequestError("Missing required parameter: 'model'.", param="model")
    if audio is None:
        raise InvalidRequestError("Missing required parameter: 'file'.", param="file")
    response_format = fields.get("response_format", "json")
    if response_format not in _FORMATS:
        raise InvalidRequestError(
            f"Invalid 'response_format': expected one of {', '.join(_FORMATS)}.",
            param="response_format",
            code="invalid_value",
        )
    whisper = is_whisper(model)
    if translation and not whisper:
        raise InvalidRequestError(
            f"Model '{model}' is not supported for translations; use whisper-1.",
            param="model",
            code="invalid_value",
        )
    if not whisper and response_format not in _TOKEN_FORMATS:
        raise InvalidRequestError(
            f"response_format '{response_format}' is not compatible with model '{model}'. "
            "Use 'json' or 'text' instead.",
            param="response_format",
            code="unsupported_value",
        )
    stream = fields.get("stream", "false").lower()
    if stream not in ("true", "false"):
        raise InvalidRequestError("Invalid 'stream': expected a boolean.", param="stream")
    return {"model": model, "response_format": response_format, "stream": stream == "true"}
