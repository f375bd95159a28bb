"""Cohere Embed, the batch embedding models the mock serves on Bedrock's InvokeModel
(``POST .../model/{modelId}/invoke``, handled by ``bedrock_api.BedrockEndpoints.invoke``).

What a body may hold, from AWS's "Cohere Embed v3" and "Cohere Embed v4" parameter pages:

- ``cohere.embed-english-v3``, ``cohere.embed-multilingual-v3`` (1024 dimensions):
  ``texts`` (required, at most 96 strings of at most 2,048 characters), ``input_type``
  (required: ``search_document``, ``search_query``, ``classification`` or
  ``clustering``), ``truncate`` (``NONE``, ``START`` or ``END``), ``embedding_types``
  (``float``, ``int8``, ``uint8``, ``binary``, ``ubinary``).
- ``cohere.embed-v4:0`` (1536 dimensions by default): the same, with ``truncate`` one of
  ``NONE``, ``LEFT`` or ``RIGHT``, no length limit per text, ``output_dimension`` (256,
  512, 1024 or 1536) and ``max_tokens`` (an integer >= 1).

The mock embeds text alone: ``images`` and ``inputs`` are refused as any other key is,
every broken rule named the way Bedrock's schema check words it (``bedrock_embeddings``).

The answer is ``{"id", "embeddings", "response_type", "texts"}``: without
``embedding_types``, ``embeddings`` is the float vectors (``embeddings_floats``); with it,
an object with one entry per type asked (``embeddings_by_type``). Float vectors are the
ones the OpenAI surface answers with (``embeddings_api.embedding_vector``); the other
types are the mock's own quantisation of them: ``int8`` scales the largest component to
127, ``uint8`` is that plus 128, ``ubinary`` packs the signs (1 for positive) eight to a
byte, most significant first, and ``binary`` is those bytes minus 128. The body carries
no token count: Bedrock reports it in InvokeModel's ``X-Amzn-Bedrock-Input-Token-Count``
header, the sum of ``tokens.count_tokens`` over the texts.
"""

from __future__ import annotations

import uuid
from array import array
from dataclasses import dataclass
from typing import Any

from extproc.mock_llm.bedrock_embeddings import (
    extraneous_keys,
    json_object,
    refuse_violations,
    shown,
    wrong_type,
)
from extproc.mock_llm.embeddings_api import embedding_vector, text_key
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.tokens import count_tokens

COHERE_V3 = ("cohere.embed-english-v3", "cohere.embed-multilingual-v3")
COHERE_V4 = "cohere.embed-v4:0"
V3_DIMENSIONS = 1024
# v4's sizes, its default first.
V4_DIMENSIONS = (1536, 1024, 512, 256)
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")
MAX_TEXTS = 96
V3_MAX_CHARACTERS = 2048

_V3_KEYS = ("texts", "input_type", "truncate", "embedding_types")
_V4_KEYS = (*_V3_KEYS, "output_dimension", "max_tokens")
_V3_TRUNCATE = ("NONE", "START", "END")
_V4_TRUNCATE = ("NONE", "LEFT", "RIGHT")


@dataclass(frozen=True, slots=True)
class CohereRequest:
    texts: tuple[str, ...]
    dimensions: int
    # The types asked, in order; None when the body named none (``embeddings_floats``).
    embedding_types: tuple[str, ...] | None

    @property
    def input_tokens(self) -> int:
        return sum(count_tokens(text) for text in self.texts)


def is_cohere_embedding_model(model: str) -> bool:
    return model in COHERE_V3 or model == COHERE_V4


def _enum(doc: dict[str, Any], key: str, allowed: tuple[Any, ...]) -> list[str]:
    if key not in doc:
        return []
    value = doc[key]
    # Exact types: 256.0 equals 256 in Python, not in Bedrock's schema.
    if any(type(value) is type(option) and value == option for option in allowed):
        return []
    return [f"#/{key}: {shown(value)} is not a valid enum value"]


def _texts_violations(doc: dict[str, Any], v4: bool) -> list[str]:
    if "texts" not in doc:
        return ["#: required key [texts] not found"]
    texts = doc["texts"]
    if not isinstance(texts, list):
        return [wrong_type("texts", "JSONArray", texts)]
    violations = []
    if len(texts) > MAX_TEXTS:
        violations.append(f"#/texts: expected maximum item count: {MAX_TEXTS}, found: {len(texts)}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            violations.append(wrong_type(f"texts/{index}", "String", text))
        elif not v4 and len(text) > V3_MAX_CHARACTERS:
            violations.append(
                f"#/texts/{index}: expected maxLength: {V3_MAX_CHARACTERS}, actual: {len(text)}"
            )
    return violations


def _types_violations(doc: dict[str, Any]) -> list[str]:
    types = doc.get("embedding_types", ["float"])
    if not isinstance(types, list):
        return [wrong_type("embedding_types", "JSONArray", types)]
    if not types:
        return ["#/embedding_types: expected minimum item count: 1, found: 0"]
    return [
        f"#/embedding_types/{i}: {shown(kind)} is not a valid enum value"
        for i, kind in enumerate(types)
        if kind not in EMBEDDING_TYPES
    ]


def _max_tokens_violations(doc: dict[str, Any]) -> list[str]:
    if "max_tokens" not in doc:
        return []
    value = doc["max_tokens"]
    if type(value) is not int:
        return [wrong_type("max_tokens", "Integer", value)]
    return [] if value >= 1 else [f"#/max_tokens: {value} is not greater or equal to 1"]


def parse_cohere_request(model: str, body: Body) -> CohereRequest:
    """The request of a Cohere Embed model (its id without a profile prefix); raises
    MalformedInputError."""
    doc = json_object(body)
    v4 = model == COHERE_V4
    violations = _texts_violations(doc, v4)
    if "input_type" not in doc:
        violations.append("#: required key [input_type] not found")
    violations += _enum(doc, "input_type", INPUT_TYPES)
    violations += _enum(doc, "truncate", _V4_TRUNCATE if v4 else _V3_TRUNCATE)
    violations += _types_violations(doc)
    if v4:
        violations += _enum(doc, "output_dimension", V4_DIMENSIONS)
        violations += _max_tokens_violations(doc)
    refuse_violations(violations + extraneous_keys(doc, _V4_KEYS if v4 else _V3_KEYS))
    types = doc.get("embedding_types")
    return CohereRequest(
        tuple(doc["texts"]),
        doc.get("output_dimension", V4_DIMENSIONS[0]) if v4 else V3_DIMENSIONS,
        # dict.fromkeys: a type asked twice is answered once.
        tuple(dict.fromkeys(types)) if types is not None else None,
    )


def _int8(vector: array[float]) -> list[int]:
    largest = max((abs(x) for x in vector), default=0.0) or 1.0
    return [round(x / largest * 127) for x in vector]


def _ubinary(vector: array[float]) -> list[int]:
    bits = [int(x > 0) for x in vector]
    return [
        int("".join(map(str, bits[at : at + 8])).ljust(8, "0"), 2) for at in range(0, len(bits), 8)
    ]


def _typed(vector: array[float], kind: str) -> list[Any]:
    if kind == "float":
        return vector.tolist()
    if kind == "int8":
        return _int8(vector)
    if kind == "uint8":
        return [x + 128 for x in _int8(vector)]
    packed = _ubinary(vector)
    return packed if kind == "ubinary" else [x - 128 for x in packed]


def cohere_answer(req: CohereRequest) -> dict[str, Any]:
    """InvokeModel's answer body (its token count goes in a header, not here)."""
    vectors = [embedding_vector(text_key(text), req.dimensions) for text in req.texts]
    embeddings: Any
    if req.embedding_types is None:
        response_type, embeddings = "embeddings_floats", [v.tolist() for v in vectors]
    else:
        response_type = "embeddings_by_type"
        embeddings = {kind: [_typed(v, kind) for v in vectors] for kind in req.embedding_types}
    return {
        "id": str(uuid.uuid4()),
        "embeddings": embeddings,
        "response_type": response_type,
        "texts": list(req.texts),
    }
