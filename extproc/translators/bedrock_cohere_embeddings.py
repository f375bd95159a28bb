"""OpenAI embeddings <-> Bedrock InvokeModel with Cohere Embed (v3 and v4).

Cohere's embedding models on Bedrock (``cohere.embed-english-v3``,
``cohere.embed-multilingual-v3``, ``cohere.embed-v4:0``; also through a cross-region
inference profile, ``us.cohere.embed-v4:0``, or the ARN of either) take a batch:
``{"texts": [...], "input_type": ..., "embedding_types": ["float"]}`` in, one vector
per text out. What AWS's "Cohere Embed v3" and "Cohere Embed v4" parameter pages say,
and what this module does with it:

- ``texts``: 1 to 96 strings per call, and on v3 at most 2,048 characters each. OpenAI's
  ``input`` (one string or an array of strings) becomes ``texts``; more than 96 texts, a
  longer v3 text or token ids (Cohere takes text) are a 400 ``unsupported_input`` rather
  than several calls the client did not ask for, each billed.
- ``input_type`` is required and OpenAI has no such field: ``search_document`` (how a
  corpus is embedded for search, the most common use of a batch) unless the client sends
  one of Cohere's four values itself (the ``openai`` SDK's ``extra_body``); anything
  else is a 400 naming it.
- ``embedding_types: ["float"]`` is always asked, so the answer is read in one shape:
  ``{"embeddings": {"float": [[...], ...]}, "response_type": "embeddings_by_type"}``.
  An answer in the shape Bedrock gives without it (``"embeddings": [[...], ...]``,
  ``embeddings_floats``) is read too.
- ``dimensions`` becomes v4's ``output_dimension`` (256, 512, 1024 or 1536; Bedrock's
  refusal of another size reaches the client as a 400); v3's sizes are fixed, so
  ``dimensions`` on v3 is a 400 naming it.

Bedrock reports InvokeModel's input tokens in the ``X-Amzn-Bedrock-Input-Token-Count``
response header, which the translator is given from the response headers. Public
accounts disagree on whether Bedrock sends it for Cohere's models, so the count Cohere's
own API puts in its answer (``meta.billed_units.input_tokens``) is read when the header
is missing. Without either, the OpenAI answer has no ``usage`` and the request is
charged its estimate (``stages.response``), as a Titan answer without its count is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extproc.errors import BadRequestError
from extproc.providers.bedrock_model_ids import base_model_id
from extproc.translators.bedrock_embeddings import BufferedEmbeddings, is_vector
from extproc.translators.token_counts import header_token_count, token_count

# How the model part of a Cohere Embed model id starts (after the ARN and profile prefix).
COHERE_EMBED_PREFIX = "cohere.embed"
# v4's ids start so: the only Cohere Embed model with a choice of sizes.
V4_PREFIX = "cohere.embed-v4"
MAX_TEXTS = 96
V3_MAX_CHARACTERS = 2048
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
DEFAULT_INPUT_TYPE = "search_document"
# Where Bedrock reports an InvokeModel call's input tokens (header names arrive lowercased).
INPUT_TOKEN_COUNT_HEADER = "x-amzn-bedrock-input-token-count"


def is_cohere_model(model_id: str) -> bool:
    """Whether a Bedrock model id, inference profile id or ARN names Cohere Embed.

    An ARN that hides its model (an application inference profile, a provisioned model)
    does not: such a model is taken for Titan, the other embedding models translated."""
    return base_model_id(model_id).startswith(COHERE_EMBED_PREFIX)


def _is_v4(model_id: str) -> bool:
    return base_model_id(model_id).startswith(V4_PREFIX)


def input_texts(body: dict[str, Any], model_id: str) -> list[str]:
    """The texts Cohere embeds for an OpenAI embeddings body (already checked as OpenAI's);
    raises a 400 for what Cohere on Bedrock cannot take.

    Checked as soon as the model is known (``backends.check_pair``), so such a request
    is refused before the quota counts it, and again when translating."""
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise BadRequestError(
            "this model embeds text (Cohere Embed on Bedrock): send 'input' as a string or "
            "an array of strings, not token ids",
            param="input",
            code="unsupported_input",
        )
    if len(texts) > MAX_TEXTS:
        raise BadRequestError(
            f"this model embeds at most {MAX_TEXTS} texts per request (Cohere Embed on "
            f"Bedrock); 'input' has {len(texts)}: send them in batches of {MAX_TEXTS}",
            param="input",
            code="unsupported_input",
        )
    if not _is_v4(model_id):
        for index, text in enumerate(texts):
            if len(text) > V3_MAX_CHARACTERS:
                raise BadRequestError(
                    f"this model embeds texts of at most {V3_MAX_CHARACTERS:,} characters "
                    f"(Cohere Embed v3 on Bedrock); this one has {len(text):,}",
                    param="input" if isinstance(value, str) else f"input[{index}]",
                    code="unsupported_input",
                )
    return texts


def _input_type(body: dict[str, Any]) -> str:
    value = body.get("input_type")
    if value is None:
        return DEFAULT_INPUT_TYPE
    # Not a set lookup: a list or an object is no input type either (and is unhashable).
    if not isinstance(value, str) or value not in INPUT_TYPES:
        raise BadRequestError(
            f"'input_type' must be one of {', '.join(INPUT_TYPES)} (Cohere Embed's input "
            f"types; {DEFAULT_INPUT_TYPE} when not given)",
            param="input_type",
            code="invalid_value",
        )
    return value


def check_request(body: dict[str, Any], model_id: str) -> None:
    """Refuse, with a 400 naming the field, what Cohere Embed on Bedrock cannot serve."""
    input_texts(body, model_id)
    _input_type(body)
    if body.get("dimensions") is not None and not _is_v4(model_id):
        raise BadRequestError(
            "this model's vectors have a fixed size (Cohere Embed v3 on Bedrock): leave "
            "'dimensions' out, or use cohere.embed-v4:0, which takes 256, 512, 1024 or 1536",
            param="dimensions",
            code="unsupported_parameter",
        )


def translate_request(body: dict[str, Any], model_id: str) -> dict[str, Any]:
    """Cohere's InvokeModel body for an OpenAI embeddings body (already checked as OpenAI's)."""
    check_request(body, model_id)
    translated: dict[str, Any] = {
        "texts": input_texts(body, model_id),
        "input_type": _input_type(body),
        "embedding_types": ["float"],
    }
    if body.get("dimensions") is not None:
        translated["output_dimension"] = body["dimensions"]
    return translated


def input_token_count(headers: Mapping[str, str]) -> int | None:
    """Bedrock's count of the call's input tokens from the response headers; None when
    absent or not a whole number."""
    return header_token_count(headers.get(INPUT_TOKEN_COUNT_HEADER))


def texts_sent(body: dict[str, Any] | None) -> int:
    """How many vectors the answer must hold: one per text of the client's ``input``."""
    value = (body or {}).get("input")
    return len(value) if isinstance(value, list) else 1


class EmbeddingTranslator(BufferedEmbeddings):
    """A Cohere Embed answer, buffered, rewritten as OpenAI's embeddings list."""

    unreadable = "the provider's answer could not be read as Cohere's embeddings"

    def __init__(
        self, *, model: str, base64_vectors: bool, texts: int, input_tokens: int | None
    ) -> None:
        super().__init__(model=model, base64_vectors=base64_vectors, input_tokens=input_tokens)
        self._texts = texts

    def read(self, parsed: Any) -> tuple[list[list[float]], int | None] | None:
        vectors = _vectors(parsed)
        # One vector per text sent, or the answer cannot be told apart from another's.
        if vectors is None or len(vectors) != self._texts:
            return None
        tokens = self._input_tokens
        return vectors, tokens if tokens is not None else _billed_input_tokens(parsed)


def _billed_input_tokens(parsed: Any) -> int | None:
    """The input tokens Cohere's own answer bills (``meta.billed_units.input_tokens``);
    None when it has none."""
    meta = parsed.get("meta") if isinstance(parsed, dict) else None
    units = meta.get("billed_units") if isinstance(meta, dict) else None
    return token_count(units.get("input_tokens")) if isinstance(units, dict) else None


def _vectors(parsed: Any) -> list[list[float]] | None:
    """The float vectors of either shape of Cohere's answer, else None."""
    embeddings = parsed.get("embeddings") if isinstance(parsed, dict) else None
    if isinstance(embeddings, dict):
        embeddings = embeddings.get("float")  # embeddings_by_type
    if not isinstance(embeddings, list) or not all(is_vector(v) for v in embeddings):
        return None
    return embeddings
