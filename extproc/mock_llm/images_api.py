"""The mock's GPT Image model: OpenAI's Images API and the Responses API's image tool.

``POST .../images/generations`` answers as OpenAI's Images API does for its GPT Image
models: JSON ``{"created", "data": [{"b64_json"}...], "background", "output_format",
"quality", "size", "usage"}``, or with ``stream: true`` SSE events, for each of the
``n`` pictures, ``image_generation.partial_image`` (``partial_images`` of them, 0 to 3)
then ``image_generation.completed`` carrying that picture and its own usage (the
prompt read, one picture drawn: ``image_generation_usage(..., pictures=1)``). Checked as OpenAI
checks them: ``prompt`` (a non-empty string), ``model`` (a string; default
``DEFAULT_IMAGE_MODEL``), ``n`` (1 to 10), ``quality`` (``low``, ``medium``, ``high``,
``auto``), ``stream`` (a boolean), ``partial_images`` (0 to 3). Every picture is the same
tiny PNG (``PNG_BASE64``), whatever the size.

The usage is deterministic: ``input_tokens`` are the prompt's tokens (``count_tokens``),
all text (``input_tokens_details: {"text_tokens": N, "image_tokens": 0}``);
``output_tokens`` are ``OUTPUT_TOKENS[quality]`` per picture (OpenAI's count for a
1024x1024 picture; ``auto`` as ``medium``), all image (``output_tokens_details``).

``POST .../images/edits`` answers the same way for a ``multipart/form-data`` form (read
with the standard library's ``email`` parser, apart from the gateway's reader): its
text fields as above (``stream`` as ``true``/``false``), and one picture or more in
``image`` (``image[]``). Its usage adds ``EDIT_IMAGE_TOKENS`` input image tokens per
picture (``input_tokens_details.image_tokens``); its stream's events are
``image_edit.partial_image`` and ``image_edit.completed``. A form without a picture is
OpenAI's 400 naming ``image``.

The Responses API's ``image_generation`` tool (``responses_api``) draws one picture with
the same counts, its prompt being the reply text: ``image_generation_usage``.
"""

from __future__ import annotations

import base64
import time
import zlib
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
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
# The input image tokens of each picture given to edit (a 1024x1024 one, as OpenAI counts
# it at low input fidelity).
EDIT_IMAGE_TOKENS = 323
_PICTURE_FIELDS = ("image", "image[]")
_FORM_BOOLEANS = {"true": True, "false": False}
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


def image_generation_usage(
    prompt: str, quality: str = "auto", pictures: int = 1, given: int = 0
) -> dict[str, Any]:
    """The usage of drawing ``pictures`` from ``prompt`` (and ``given`` pictures to
    edit), as OpenAI reports it."""
    text = count_tokens(prompt)
    seen = EDIT_IMAGE_TOKENS * given
    drawn = output_tokens(quality) * pictures
    return {
        "input_tokens": text + seen,
        "input_tokens_details": {"text_tokens": text, "image_tokens": seen},
        "output_tokens": drawn,
        "output_tokens_details": {"text_tokens": 0, "image_tokens": drawn},
        "total_tokens": text + seen + drawn,
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


def _form(raw: bytes, content_type: str) -> tuple[dict[str, Any], int]:
    """An edit form's text fields (numbers and booleans read as OpenAI reads them) and
    its count of pictures to edit."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequestError("Invalid content type: expected multipart/form-data.")
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        raise InvalidRequestError("Could not parse multipart form.")
    doc: dict[str, Any] = {}
    pictures = 0
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if part.get_filename() is not None:
            pictures += name in _PICTURE_FIELDS
            continue
        value = payload.decode()
        if name in ("n", "partial_images") and value.isdigit():
            doc[name] = int(value)
        elif name == "stream":
            doc[name] = _FORM_BOOLEANS.get(value, value)
        else:
            doc[name] = value
    if not pictures:
        raise InvalidRequestError("Missing required parameter: 'image'.", param="image")
    return doc, pictures


def _parse(body: Body) -> dict[str, Any]:
    """The request's fields the mock answers by, checked; InvalidRequestError names one."""
    if not body.is_json or not isinstance(body.json, dict):
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be a JSON object."
        )
    return _checked(body.json)


def _checked(doc: dict[str, Any]) -> dict[str, Any]:
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
        return await self._draw(request, body, edit=False)

    async def edit(self, request: web.Request, body: Body) -> web.StreamResponse:
        """``POST .../images/edits``: a form, answered as a generation is."""
        return await self._draw(request, body, edit=True)

    async def _draw(self, request: web.Request, body: Body, *, edit: bool) -> web.StreamResponse:
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        given = 0
        try:
            if edit:
                doc, given = _form(body.raw, request.headers.get("Content-Type", ""))
                asked = _checked(doc)
            else:
                asked = _parse(body)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        usage = image_generation_usage(asked["prompt"], asked["quality"], asked["n"], given)
        fields = _picture_fields(asked["quality"])
        if asked["stream"]:
            kind = "image_edit" if edit else "image_generation"
            # Each picture's completed event reports that picture's usage.
            each = image_generation_usage(asked["prompt"], asked["quality"], 1, given)
            reported = None if fault.no_usage else each
            return await self._stream(request, asked, fields, reported, kind)
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
        kind: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        created = int(time.time())
        done: dict[str, Any] = {"b64_json": PNG_BASE64, "created_at": created}
        if usage is not None:
            done["usage"] = usage
        events: list[tuple[str, dict[str, Any]]] = []
        for _ in range(asked["n"]):
            events.extend(
                (
                    f"{kind}.partial_image",
                    {"b64_json": PNG_BASE64, "created_at": created, "partial_image_index": index},
                )
                for index in range(asked["partial_images"])
            )
            events.append((f"{kind}.completed", done))
        try:
            for event, data in events:
                payload = {"type": event, **data, **fields}
                await response.write(
                    b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
                )
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream
        return response
