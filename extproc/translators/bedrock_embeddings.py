"""OpenAI embeddings <-> Bedrock InvokeModel with Amazon Titan text embeddings.

Titan (``amazon.titan-embed-text-v2:0``, ``amazon.titan-embed-text-v1``) embeds one
text per call: ``{"inputText": ..., "dimensions": ...}`` in, ``{"embedding": [...],
"inputTextTokenCount": N}`` out. So an OpenAI request is translated when its
``input`` is one text (a string, or an array holding one string); a batch or token
ids are a 400 rather than several calls the client did not ask for, each billed on
its own. ``dimensions`` passes through (v2 takes 256, 512 or 1024; Bedrock refuses
others, and v1 refuses it: its refusal reaches the client as a 400). Titan's vectors
are normalised by default, as OpenAI's are.

The answer becomes OpenAI's list of one embedding, its usage Titan's token count, else
Bedrock's ``X-Amzn-Bedrock-Input-Token-Count`` header. That header, read before the
body, also bills an answer cut before its body (``counted_usage``, ``stages.cut_answer``):
an embedding generates nothing, so the input count is the whole bill. A
client asking for ``base64`` (the ``openai`` SDK does unless told otherwise) gets
the vector as OpenAI encodes it: little-endian float32 bytes in base64.
"""

from __future__ import annotations

import base64
import struct
from typing import Any
from urllib.parse import quote

import orjson

from extproc.context import Usage
from extproc.errors import BadRequestError, GatewayError
from extproc.translators.token_counts import token_count
from extproc.translators.unreadable_answers import UnreadableAnswerError, replaced_answer

# Characters of a model id or ARN kept as they are in the path (":" is quoted, as
# the Converse path does).
_PATH_SAFE = "-._~"


def request_path(model_id: str) -> str:
    """The InvokeModel path for a model id or ARN, e.g. ``/model/a.b-v2%3A0/invoke``."""
    return f"/model/{quote(model_id, safe=_PATH_SAFE)}/invoke"


def input_text(body: dict[str, Any]) -> str:
    """The one text Titan embeds for an OpenAI embeddings body (already checked as
    OpenAI's); a batch or token ids are a 400 ``unsupported_input``.

    Checked as soon as the model is known (``backends.check_pair``), so such
    a request is refused before the quota counts it, and again when translating."""
    value = body.get("input")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str):
        raise BadRequestError(
            "this model embeds one text per request (Amazon Titan on Bedrock): send "
            "'input' as one string",
            param="input",
            code="unsupported_input",
        )
    return value


def translate_request(body: dict[str, Any]) -> dict[str, Any]:
    """Titan's request for an OpenAI embeddings body (already checked as OpenAI's)."""
    translated: dict[str, Any] = {"inputText": input_text(body)}
    if body.get("dimensions") is not None:
        translated["dimensions"] = body["dimensions"]
    return translated


class BufferedEmbeddings:
    """A Bedrock embeddings answer, buffered, rewritten as OpenAI's embeddings list; each
    model family reads its own answer in ``read`` (Titan's below, Cohere's in
    ``bedrock_cohere_embeddings``)."""

    # What the client's 502 says when the answer cannot be read as the model's.
    unreadable = "the provider's answer could not be read as Bedrock's embeddings"

    def __init__(
        self, *, model: str, base64_vectors: bool, input_tokens: int | None = None
    ) -> None:
        self.usage: Usage | None = None
        # Bedrock's count of the input from the answer's headers (None: none came): the
        # whole bill of an answer cut before its body, which the gateway never reads.
        self._input_tokens = input_tokens
        self.counted_usage = (
            None if input_tokens is None else Usage(input_tokens, 0, input_tokens, 0)
        )
        self.response_model: str | None = None  # Bedrock does not say which model answered
        # The client's status once an answer could not be read as the model's
        # (unreadable_answers), and the request's error.
        self.status: int | None = None
        self.error: GatewayError | None = None
        self.answer: Any = None
        self._model = model
        self._base64 = base64_vectors
        self._parts: list[bytes] = []

    def read(self, parsed: Any) -> tuple[list[list[float]], int | None] | None:
        """The vectors, in order, and the input tokens the answer reports (None: none);
        None when the answer is not the model's."""
        raise NotImplementedError

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if not end_of_stream:
            return b""
        body, self._parts = b"".join(self._parts), []
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        found = self.read(parsed)
        if found is None:
            replaced = replaced_answer(parsed, self.unreadable)
            self.error = replaced.recorded
            self.status = replaced.shown.status
            return replaced.shown.body()
        vectors, tokens = found
        if tokens is not None:
            # Read first: the provider billed it, even should its vectors not be sendable.
            self.usage = Usage(tokens, 0, tokens, 0)
        try:
            data = [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": base64_vector(vector) if self._base64 else vector,
                }
                for index, vector in enumerate(vectors)
            ]
        except (OverflowError, struct.error):
            # A number past float32's range has no base64 (float32) encoding.
            self.error = UnreadableAnswerError(self.unreadable)
            self.status = self.error.status
            return self.error.body()
        answer: dict[str, Any] = {"object": "list", "data": data, "model": self._model}
        if tokens is not None:
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return orjson.dumps(answer)


class EmbeddingTranslator(BufferedEmbeddings):
    """A Titan answer: one vector and its token count (``inputTextTokenCount``)."""

    unreadable = "the provider's answer could not be read as a Titan embedding"

    def read(self, parsed: Any) -> tuple[list[list[float]], int | None] | None:
        vector = parsed.get("embedding") if isinstance(parsed, dict) else None
        if not is_vector(vector):
            return None
        assert isinstance(parsed, dict) and isinstance(vector, list)
        # Titan's own count, which its client reads as usage, else Bedrock's header.
        counted = token_count(parsed.get("inputTextTokenCount"))
        return [vector], counted if counted is not None else self._input_tokens


def is_vector(value: Any) -> bool:
    """Whether ``value`` is a list of numbers (booleans are not)."""
    return isinstance(value, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    )


def base64_vector(vector: list[float]) -> str:
    """OpenAI's ``base64`` encoding: the vector as little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
