"""The mock's OpenAI embeddings endpoint (``POST .../embeddings``), and the vectors every
embeddings surface of the mock answers with (Bedrock's Titan too, ``bedrock_embeddings``).

Requests are checked as OpenAI checks them: ``model`` (any name, as chat completions take
any), ``input`` (a non-empty string, an array of non-empty strings, an array of token ids,
or an array of non-empty arrays of token ids; at most 2048 items), ``encoding_format``
("float", the default, or "base64") and ``dimensions`` (an integer >= 1, up to the model's
size; ``text-embedding-ada-002`` refuses it, as OpenAI does). Others (``user``) are ignored.

Sizes: ``text-embedding-3-small`` 1536, ``text-embedding-3-large`` 3072,
``text-embedding-ada-002`` 1536; any other model 1536, and ``dimensions`` up to 3072.

Usage: ``prompt_tokens`` = ``total_tokens`` = the sum over inputs of
``tokens.count_tokens(text)`` for a string and the number of ids for a token array; an
embedding has no per-request overhead and no completion.

Vectors (``embedding_vector``) are deterministic: the SHAKE-256 stream of the input, read
as little-endian signed 16-bit numbers, one per dimension, scaled to unit length and
rounded to float32. A shorter vector is the head of the longer one scaled back to unit
length, as text-embedding-3 shortens, and "float" and "base64" answers carry the same
float32 numbers (base64: their little-endian bytes, as OpenAI sends them).
"""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.faults import Fault
from extproc.mock_llm.openai_api import (
    InvalidRequestError,
    error_response,
    json_request,
    precheck,
)
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.tokens import count_tokens

MAX_INPUTS = 2048
ENCODING_FORMATS = ("float", "base64")

_JSON_HEADERS = {"Content-Type": "application/json"}
_GARBAGE = b'{"object": "list", "data": [{"embedding": this is not json'
_INT16_SCALE = 1 / 32768


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """An embedding model's vector size, and the most ``dimensions`` may ask for."""

    default_dimensions: int
    max_dimensions: int | None  # None: the model refuses ``dimensions``


MODELS: dict[str, EmbeddingModel] = {
    "text-embedding-3-small": EmbeddingModel(1536, 1536),
    "text-embedding-3-large": EmbeddingModel(3072, 3072),
    "text-embedding-ada-002": EmbeddingModel(1536, None),
}
# Chat completions answer for any model name, so embeddings do too: sized like
# text-embedding-3-small, shortened up to the largest size OpenAI offers.
UNKNOWN_MODEL = EmbeddingModel(1536, 3072)

# One input: a text, or the token ids of one text.
Input = str | list[int]


# --- Vectors -------------------------------------------------------------------------------------


def text_key(text: str) -> bytes:
    return b"text\x00" + text.encode("utf-8", errors="surrogatepass")


def tokens_key(tokens: list[int]) -> bytes:
    # Apart from texts, so the ids [1, 2] and the text "1,2" get different vectors.
    return b"tokens\x00" + ",".join(map(str, tokens)).encode()


def embedding_vector(key: bytes, dimensions: int, *, normalize: bool = True) -> array[float]:
    """The input's vector as float32 numbers: of unit length, or with ``normalize=False``
    the raw components in [-1, 1) (Titan's ``normalize: false``)."""
    raw = array("h", hashlib.shake_256(key).digest(2 * dimensions))
    if sys.byteorder == "big":
        raw.byteswap()  # the same vector on any machine
    length = math.hypot(*raw)
    if not normalize:
        scale = _INT16_SCALE
    elif length:
        scale = 1 / length
    else:
        # All components zero (a one-dimension vector may draw it): still a unit vector.
        return array("f", [1.0] + [0.0] * (dimensions - 1))
    return array("f", [x * scale for x in raw])


def float32_base64(vector: array[float]) -> str:
    """A vector as OpenAI's base64 encoding: its float32 numbers' little-endian bytes."""
    if sys.byteorder == "big":
        vector = array("f", vector)
        vector.byteswap()
    return base64.b64encode(vector.tobytes()).decode("ascii")


# --- Requests ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    model: str
    inputs: list[Input]
    encoding_format: str
    dimensions: int

    def prompt_tokens(self) -> int:
        return sum(count_tokens(x) if isinstance(x, str) else len(x) for x in self.inputs)


def _invalid_input(message: str, code: str = "invalid_type") -> InvalidRequestError:
    return InvalidRequestError(f"Invalid 'input': {message}", "input", code)


def _is_token_id(value: object) -> bool:
    # bool is an int subclass; `true` is not token 1.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _token_array(value: list[Any]) -> list[int]:
    if not value:
        raise _invalid_input("a token array must not be empty.", "empty_array")
    if not all(_is_token_id(token) for token in value):
        raise _invalid_input("token ids must be integers >= 0.")
    return value


def parse_inputs(value: object) -> list[Input]:
    """``input`` as a list of inputs, each a text or one text's token ids."""
    if value is None:
        raise InvalidRequestError(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    if isinstance(value, str):
        if not value:
            raise _invalid_input("expected a non-empty string.", "empty_string")
        return [value]
    if not isinstance(value, list):
        raise _invalid_input("expected a string or an array of strings or token ids.")
    if not value:
        raise _invalid_input("expected a non-empty array.", "empty_array")
    if len(value) > MAX_INPUTS:
        raise _invalid_input(
            f"array too long. Expected an array with maximum length {MAX_INPUTS}, "
            f"but got an array with length {len(value)} instead.",
            "array_above_max_length",
        )
    if all(isinstance(item, str) for item in value):
        if not all(value):
            raise _invalid_input("the strings of an array must not be empty.", "empty_string")
        return list(value)
    if all(isinstance(item, list) for item in value):
        return [_token_array(item) for item in value]
    if all(isinstance(item, int) for item in value):
        return [_token_array(value)]
    raise _invalid_input("an array must hold only strings, only token ids or only token arrays.")


def _dimensions(doc: dict[str, Any], model: str) -> int:
    spec = MODELS.get(model, UNKNOWN_MODEL)
    value = doc.get("dimensions")
    if value is None:
        return spec.default_dimensions
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequestError(
            f"Invalid 'dimensions': expected an integer >= 1, got {value!r}.",
            "dimensions",
            "invalid_value",
        )
    if spec.max_dimensions is None:
        # OpenAI's own words (with param null there).
        raise InvalidRequestError(
            "This model does not support specifying dimensions.", "dimensions"
        )
    if value > spec.max_dimensions:
        raise InvalidRequestError(
            f"Invalid 'dimensions': {model} has at most {spec.max_dimensions} dimensions,"
            f" got {value}.",
            "dimensions",
            "invalid_value",
        )
    return value


def parse_embeddings_request(body: Body) -> EmbeddingsRequest:
    """Validate the fields the mock relies on; everything else is accepted and ignored."""
    doc, model = json_request(body)
    inputs = parse_inputs(doc.get("input"))
    encoding = doc.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in ENCODING_FORMATS:
        raise InvalidRequestError(
            f"Invalid 'encoding_format': expected 'float' or 'base64', got {encoding!r}.",
            "encoding_format",
            "invalid_value",
        )
    return EmbeddingsRequest(model, inputs, encoding, _dimensions(doc, model))


# --- Answers -------------------------------------------------------------------------------------


def answer_document(req: EmbeddingsRequest, *, with_usage: bool) -> dict[str, Any]:
    """OpenAI's answer, ``usage`` last as OpenAI writes it (the gateway reads it from the tail)."""
    data = []
    for index, item in enumerate(req.inputs):
        key = text_key(item) if isinstance(item, str) else tokens_key(item)
        vector = embedding_vector(key, req.dimensions)
        encoded = float32_base64(vector) if req.encoding_format == "base64" else vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    document: dict[str, Any] = {"object": "list", "data": data, "model": req.model}
    if with_usage:
        tokens = req.prompt_tokens()
        document["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return document


def _abort(request: web.Request) -> web.StreamResponse:
    """Drop the connection so the client sees a reset instead of an answer."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp still wants a response object; sending it fails quietly on the closed transport.
    return web.Response(status=500)


class EmbeddingsEndpoint:
    """``POST .../embeddings``; one instance per mock application.

    Faults (``x-mock-fault``) as chat completions take them without a stream: ``status``
    (OpenAI's error bodies), ``delay``, ``reset_after`` (the connection dropped),
    ``garbage``; and ``no_usage``, an answer without ``usage``. Others do nothing here.
    """

    def __init__(self, *, default_fault: Fault) -> None:
        self._default_fault = default_fault

    async def create(self, request: web.Request, body: Body) -> web.StreamResponse:
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        try:
            req = parse_embeddings_request(body)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        if fault.reset_after is not None:
            return _abort(request)
        if fault.garbage:
            return web.Response(body=_GARBAGE, headers=_JSON_HEADERS)
        document = answer_document(req, with_usage=not fault.no_usage)
        return web.Response(body=orjson.dumps(document), headers=_JSON_HEADERS)
