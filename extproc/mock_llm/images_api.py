"""The mock's GPT Image model: OpenAI's Images API and the Responses API's image tool.

``POST .../images/generations`` answers as OpenAI's Images API does for its GPT Image
models: JSON ``{"created", "data": [{"b64_json"}...], "background", "output_format",
"quality", "size", "usage"}``, or with ``stream: true`` SSE events
``image_generation.partial_image`` (``partial_images`` of them, 0 to 3) then
``image_generation.completed`` carrying the picture and the usage. Checked as OpenAI
checks them: ``prompt`` (a non-empty string), ``model`` (a string; default
``DEFAULT_IMAGE_MODEL``), ``n`` (1 to 10), ``quality`` (``low``, ``medium``, ``high``,
``auto``), ``stream`` (a boolean), ``partial_images`` (0 to 3). Every picture is the same
tiny PNG (``PNG_BASE64``), whatever the size.

The usage is deterministic: ``input_tokens`` are the prompt's tokens (``count_tokens``),
all text (``input_tokens_details: {"text_tokens": N, "image_tokens": 0}``);
``output_tokens`` are ``OUTPUT_TOKENS[quality]`` per picture (OpenAI's count for a
1024x1024 picture; ``auto`` as ``medium``), all image (``output_tokens_details``).

The Responses API's ``image_generation`` tool (``responses_api``) draws one picture with
the same counts, its prompt being the reply text: ``image_generation_usage``.
"""

from __future__ import annotations

import base64
import time
import zlib
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.faults import Fault
from extproc.mock_llm.openai_api import (
    InvalidRequestError,
    error_response,
    precheck,
)
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.tokens import count_tokens

# The image model a request that names none draws with.
DEFAULT_IMAGE_MODEL = "gpt-image-1"
# OpenAI's output tokens of one 1024x1024 picture at each quality.
OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
_DEFAULT_QUALITY = "medium"
_QUALITIES = (*OUTPUT_TOKENS, "auto")
_MAX_PICTURES = 10
_MAX_PARTIAL_IMAGES = 3
_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _png() -> bytes:
    """A 1x1 white PNG, built rather than pasted so that its bytes are checked."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\xff\xff")
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG_BASE64 = base64.b64encode(_png()).decode()


def output_tokens(quality: str) -> int:
    """One picture's output tokens at ``quality`` (``auto`` as medium)."""
    return OUTPUT_TOKENS.get(quality, OUTPUT_TOKENS[_DEFAULT_QUALITY])


def image_generation_usage(prompt: str, quality: str = "auto", pictures: int = 1) -> dict[str, Any]:
    """The usage of drawing ``pictures`` from ``prompt``, as OpenAI reports it."""
    text = count_tokens(prompt)
    drawn = output_tokens(quality) * pictures
    return {
        "input_tokens": text,
        "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
        "output_tokens": drawn,
        "output_tokens_details": {"text_tokens": 0, "image_tokens": drawn},
        "total_tokens": text + drawn,
    }


def _bounded(doc: dict[str, Any], name: str, default: int, most: int, least: int) -> int:
    value = doc.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
        raise InvalidRequestError(
            f"Invalid '{name}': expected an integer from {least} to {most}.",
            param=name,
            code="invalid_value",
        )
    return value


def _parse(body: Body) -> dict[str, Any]:
    """The request's fields the mock answers by, checked; InvalidRequestError names one."""
    if not body.is_json or not isinstance(body.json, dict):
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be a JSON object."
        )
    doc: dict[str, Any] = body.json
    prompt = doc.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequestError("Missing required parameter: 'prompt'.", param="prompt")
    model = doc.get("model", DEFAULT_IMAGE_MODEL)
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("Invalid 'model': expected a string.", param="model")
    quality = doc.get("quality") or "auto"
    if quality not in _QUALITIES:
        raise InvalidRequestError(
            f"Invalid 'quality': expected one of {', '.join(_QUALITIES)}.",
            param="quality",
            code="invalid_value",
        )
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("Invalid 'stream': expected a boolean.", param="stream")
    return {
        "prompt": prompt,
        "model": model,
        "n": _bounded(doc, "n", 1, _MAX_PICTURES, 1),
        "quality": quality,
        "stream": stream,
        "partial_images": _bounded(doc, "partial_images", 0, _MAX_PARTIAL_IMAGES, 0),
    }


def _picture_fields(quality: str) -> dict[str, Any]:
    """The fields every answer and event names the picture by."""
    shown = _DEFAULT_QUALITY if quality == "auto" else quality
    return {"background": "opaque", "output_format": "png", "quality": shown, "size": "1024x1024"}


class ImagesEndpoint:
    """``POST .../images/generations``. Faults (``x-mock-fault``): ``status``, ``delay``,
    ``no_usage`` (the answer, or the completed event, without ``usage``)."""

    def __init__(self, *, default_fault: Fault) -> None:
        self._default_fault = default_fault

    async def generate(self, request: web.Request, body: Body) -> web.StreamResponse:
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        try:
            asked = _parse(body)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        usage = image_generation_usage(asked["prompt"], asked["quality"], asked["n"])
        fields = _picture_fields(asked["quality"])
        if asked["stream"]:
            return await self._stream(request, asked, fields, None if fault.no_usage else usage)
        answer: dict[str, Any] = {
            "created": int(time.time()),
            "data": [{"b64_json": PNG_BASE64} for _ in range(asked["n"])],
            **fields,
        }
        if not fault.no_usage:
            answer["usage"] = usage
        return web.Response(body=orjson.dumps(answer), headers=_JSON_HEADERS)

    @staticmethod
    async def _stream(
        request: web.Request,
        asked: dict[str, Any],
        fields: dict[str, Any],
        usage: dict[str, Any] | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        created = int(time.time())
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "image_generation.partial_image",
                {"b64_json": PNG_BASE64, "created_at": created, "partial_image_index": index},
            )
            for index in range(asked["partial_images"])
        ]
        done: dict[str, Any] = {"b64_json": PNG_BASE64, "created_at": created}
        if usage is not None:
            done["usage"] = usage
        events.append(("image_generation.completed", done))
        try:
            for kind, data in events:
                payload = {"type": kind, **data, **fields}
                await response.write(
                    b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
                )
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream
        return response
