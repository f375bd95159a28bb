"""The mock's text-to-speech models: OpenAI's ``POST /v1/audio/speech``.

The body is JSON: ``model``, ``input`` (at most 4,096 characters), ``voice``,
``instructions``, ``response_format`` (mp3, opus, aac, flac, wav, pcm), ``speed``,
``stream_format`` (``audio``, ``sse``). Deterministic:

- The audio (``spoken``): the format's first bytes (``MAGIC``, an MP3's ``ID3``, a WAV's
  ``RIFF``...) then ``voice|input`` in UTF-8, so a test reads what was "spoken". It is
  written in ``CHUNKS`` pieces, with the format's content type (``CONTENT_TYPES``).
- ``stream_format: sse`` (gpt-4o-mini-tts; tts-1 and tts-1-hd answer OpenAI's 400):
  one ``speech.audio.delta`` event per piece, its ``audio`` base64, then
  ``speech.audio.done`` with ``usage``: ``input_tokens`` the input's and instructions'
  tokens (``count_tokens``), ``output_tokens`` one per ``BYTES_PER_AUDIO_TOKEN`` bytes
  of audio (rounded up), ``total_tokens`` their sum.

Faults (``x-mock-fault``): ``status``, ``delay``, ``first_chunk_delay`` (seconds
between the status and the first piece), ``interval`` (seconds between pieces),
``reset_after`` (the connection dropped after that many pieces), ``no_usage``
(the done event without ``usage``); for ``stream_format: sse``, ``error_after`` (after
that many deltas, the ``error`` event ``STREAM_ERROR`` and the body's end),
``end_after`` (after that many deltas, the body's clean end, no done event) and
``garbage`` (every delta's ``audio`` not base64, the done event and its ``usage``
after them as usual).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.faults import Fault
from extproc.mock_llm.openai_api import error_response, precheck
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.tokens import count_tokens
from extproc.mock_llm.vertex_gemini import abort_connection

MAX_INPUT = 4096
MAGIC = {
    "mp3": b"ID3\x04\x00\x00",
    "opus": b"OggS\x00\x02",
    "aac": b"\xff\xf1\x50\x80",
    "flac": b"fLaC",
    "wav": b"RIFF\x24\x00\x00\x00WAVE",
    "pcm": b"\x00\x00",
}
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
CHUNKS = 4
# Made up, deterministic: one audio token per this many bytes of the mock's audio.
BYTES_PER_AUDIO_TOKEN = 2
_STREAM_FORMATS = ("audio", "sse")
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
# The error event of a failed speech stream (the error_after fault), as OpenAI's
# streams of events name it: type error, the error's fields under error.
STREAM_ERROR = {
    "type": "error",
    "error": {
        "message": "The server had an error while processing your request."
        " (injected by x-mock-fault)",
        "type": "server_error",
        "param": None,
        "code": "server_error",
    },
}
NOT_BASE64 = "not base64 (injected by x-mock-fault)"


def spoken(body: dict[str, Any]) -> bytes:
    """The mock's audio for a checked body."""
    fmt = body.get("response_format", "mp3")
    voice = str(body.get("voice", ""))
    return MAGIC[fmt] + f"{voice}|{body['input']}".encode()


def pieces(audio: bytes) -> list[bytes]:
    """The audio in ``CHUNKS`` pieces (fewer for a short one), in order."""
    size = -(-len(audio) // CHUNKS)
    return [audio[start : start + size] for start in range(0, len(audio), size)]


def speech_usage(body: dict[str, Any], audio: bytes) -> dict[str, int]:
    """The usage gpt-4o-mini-tts reports in its done event, as the mock counts it."""
    instructions = body.get("instructions")
    text = body["input"] + (instructions if isinstance(instructions, str) else "")
    prompt = count_tokens(text)
    output = -(-len(audio) // BYTES_PER_AUDIO_TOKEN)
    return {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}


def _refusal(body: Body) -> web.Response | None:
    """OpenAI's 400 for a body it would refuse."""
    parsed = body.json if body.is_json else None
    if not isinstance(parsed, dict):
        return error_response(400, "We could not parse the JSON body of your request.")
    model = parsed.get("model")
    if not isinstance(model, str) or not model:
        return error_response(400, "Missing required parameter: 'model'.", param="model")
    text = parsed.get("input")
    if not isinstance(text, str) or not text:
        return error_response(400, "Missing required parameter: 'input'.", param="input")
    if len(text) > MAX_INPUT:
        return error_response(
            400,
            f"Invalid 'input': string too long. Expected a string with maximum length "
            f"{MAX_INPUT}, but got a string with length {len(text)} instead.",
            param="input",
            code="string_above_max_length",
        )
    if parsed.get("response_format", "mp3") not in MAGIC:
        return error_response(
            400, "Invalid 'response_format'.", param="response_format", code="invalid_value"
        )
    stream_format = parsed.get("stream_format", "audio")
    if stream_format not in _STREAM_FORMATS:
        return error_response(400, "Invalid 'stream_format'.", param="stream_format")
    if stream_format == "sse" and model.startswith("tts-1"):
        return error_response(
            400,
            f"stream_format 'sse' is not supported for model '{model}'.",
            param="stream_format",
            code="unsupported_value",
        )
    return None


class SpeechEndpoint:
    """``POST .../audio/speech``."""

    def __init__(self, *, default_fault: Fault) -> None:
        self._default_fault = default_fault

    async def create(self, request: web.Request, body: Body) -> web.StreamResponse:
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        refused = _refusal(body)
        if refused is not None:
            return refused
        parsed: dict[str, Any] = body.json
        audio = spoken(parsed)
        sse = parsed.get("stream_format") == "sse"
        fmt = parsed.get("response_format", "mp3")
        headers = _SSE_HEADERS if sse else {"Content-Type": CONTENT_TYPES[fmt]}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        try:
            for sent, piece in enumerate(pieces(audio)):
                pause = fault.pause_before_event(sent, fault.interval_s or 0.0)
                if pause:
                    await asyncio.sleep(pause)
                if sent == fault.reset_after:
                    return abort_connection(request, response)
                if not sse:
                    await response.write(piece)
                    continue
                if sent == fault.error_after:
                    await response.write(b"data: " + orjson.dumps(STREAM_ERROR) + b"\n\n")
                    await response.write_eof()
                    return response
                if sent == fault.end_after:
                    await response.write_eof()
                    return response
                said = NOT_BASE64 if fault.garbage else base64.b64encode(piece).decode()
                delta = {"type": "speech.audio.delta", "audio": said}
                await response.write(b"data: " + orjson.dumps(delta) + b"\n\n")
            if sse:
                done: dict[str, Any] = {"type": "speech.audio.done"}
                if not fault.no_usage:
                    done["usage"] = speech_usage(parsed, audio)
                await response.write(b"data: " + orjson.dumps(done) + b"\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response
