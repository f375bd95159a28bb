"""Titan text embeddings, the models the mock serves on Bedrock's InvokeModel
(``POST .../model/{modelId}/invoke``, handled by ``bedrock_api.BedrockEndpoints.invoke``)
beside Cohere Embed (``bedrock_cohere_embeddings``, which shares the schema-check wording
below: ``json_object``, ``refuse_violations``...).

What a body may hold, from AWS's "Amazon Titan Embeddings Text" parameters page:

- ``amazon.titan-embed-text-v2:0``: ``inputText`` (required, a non-empty string),
  ``dimensions`` (1024, the default, 512 or 256), ``normalize`` (a boolean, default true),
  ``embeddingTypes`` (a non-empty list of "float" and "binary", default ["float"]).
- ``amazon.titan-embed-text-v1``: ``inputText`` only; 1536 dimensions.

Any other key is refused, and every broken rule is named, the way Bedrock's schema check
words it: ``Malformed input request: #: required key [inputText] not found#: extraneous
key [texts] is not permitted, please reformat your input and try again.``

The answer is ``{"embedding": [...], "inputTextTokenCount": N}``, plus for v2
``"embeddingsByType"`` with one entry per type asked ("float": the same numbers as
``embedding``; "binary": 1 for each positive component, else 0). Vectors are the ones the
OpenAI surface answers with (``embeddings_api.embedding_vector``); ``normalize: false``
gives the same direction at another length. N is ``tokens.count_tokens(inputText)``, also
sent in InvokeModel's ``X-Amzn-Bedrock-Input-Token-Count`` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from extproc.mock_llm.embeddings_api import embedding_vector, text_key
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.tokens import count_tokens

TITAN_V2 = "amazon.titan-embed-text-v2:0"
TITAN_V1 = "amazon.titan-embed-text-v1"
V2_DIMENSIONS = (1024, 512, 256)
V1_DIMENSIONS = 1536
EMBEDDING_TYPES = ("float", "binary")
# The response headers in which InvokeModel reports usage and timing.
INPUT_TOKEN_COUNT_HEADER = "X-Amzn-Bedrock-Input-Token-Count"
INVOCATION_LATENCY_HEADER = "X-Amzn-Bedrock-Invocation-Latency"

_V2_KEYS = ("inputText", "dimensions", "normalize", "embeddingTypes")
_V1_KEYS = ("inputText",)
# How Bedrock's schema check names a JSON value's type.
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "Boolean"),
    (int, "Integer"),
    (float, "BigDecimal"),
    (str, "String"),
    (list, "JSONArray"),
    (dict, "JSONObject"),
)


class MalformedInputError(ValueError):
    """A body Bedrock refuses as malformed; the message is Bedrock's, whole."""


@dataclass(frozen=True, slots=True)
class TitanRequest:
    text: str
    dimensions: int
    normalize: bool
    # The types of v2's embeddingsByType, in the order asked; None for v1, which has none.
    embedding_types: tuple[str, ...] | None

    @property
    def input_tokens(self) -> int:
        return count_tokens(self.text)


def is_titan_embedding_model(model: str) -> bool:
    return model in (TITAN_V2, TITAN_V1)


def type_name(value: object) -> str:
    if value is None:
        return "Null"
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), "Object")


def shown(value: object) -> str:
    """A value as an enum violation shows it: strings bare, others as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def wrong_type(key: str, expected: str, value: object) -> str:
    return f"#/{key}: expected type: {expected}, found: {type_name(value)}"


def _input_text_violations(doc: dict[str, Any]) -> list[str]:
    if "inputText" not in doc:
        return ["#: required key [inputText] not found"]
    text = doc["inputText"]
    if not isinstance(text, str):
        return [wrong_type("inputText", "String", text)]
    if not text:
        return ["#/inputText: expected minLength: 1, actual: 0"]
    return []


def _v2_option_violations(doc: dict[str, Any]) -> list[str]:
    violations: list[str] = []
    dimensions = doc.get("dimensions", V2_DIMENSIONS[0])
    # Whole numbers only: 256.0 equals 256 in Python, not in Bedrock's schema.
    if type(dimensions) is not int or dimensions not in V2_DIMENSIONS:
        violations.append(f"#/dimensions: {shown(dimensions)} is not a valid enum value")
    normalize = doc.get("normalize", True)
    if not isinstance(normalize, bool):
        violations.append(wrong_type("normalize", "Boolean", normalize))
    types = doc.get("embeddingTypes", ["float"])
    if not isinstance(types, list):
        violations.append(wrong_type("embeddingTypes", "JSONArray", types))
    elif not types:
        violations.append("#/embeddingTypes: expected minimum item count: 1, found: 0")
    else:
        violations += [
            f"#/embeddingTypes/{i}: {shown(kind)} is not a valid enum value"
            for i, kind in enumerate(types)
            if kind not in EMBEDDING_TYPES
        ]
    return violations


def json_object(body: Body) -> dict[str, Any]:
    """The body as the JSON object InvokeModel's schema check wants; raises
    MalformedInputError for anything else."""
    if not body.is_json or not isinstance(body.json, dict):
        found = type_name(body.json) if body.is_json else "text that is not JSON"
        raise MalformedInputError(
            f"Malformed input request: #: expected type: JSONObject, found: {found}, "
            "please reformat your input and try again."
        )
    doc: dict[str, Any] = body.json
    return doc


def extraneous_keys(doc: dict[str, Any], allowed: tuple[str, ...]) -> list[str]:
    return [f"#: extraneous key [{key}] is not permitted" for key in doc if key not in allowed]


def refuse_violations(violations: list[str]) -> None:
    """Raise MalformedInputError naming every broken rule, as Bedrock words it; nothing
    when there is none."""
    if violations:
        raise MalformedInputError(
            f"Malformed input request: {''.join(violations)}, "
            "please reformat your input and try again."
        )


def parse_titan_request(model: str, body: Body) -> TitanRequest:
    """The request of a Titan text embeddings model; raises MalformedInputError."""
    doc = json_object(body)
    allowed = _V2_KEYS if model == TITAN_V2 else _V1_KEYS
    violations = _input_text_violations(doc)
    if model == TITAN_V2:
        violations += _v2_option_violations(doc)
    refuse_violations(violations + extraneous_keys(doc, allowed))
    if model != TITAN_V2:
        return TitanRequest(doc["inputText"], V1_DIMENSIONS, True, None)
    # dict.fromkeys: a type asked twice is answered once.
    types = tuple(dict.fromkeys(doc.get("embeddingTypes", ["float"])))
    return TitanRequest(
        doc["inputText"], doc.get("dimensions", V2_DIMENSIONS[0]), doc.get("normalize", True), types
    )


def titan_answer(req: TitanRequest, *, with_usage: bool) -> dict[str, Any]:
    """InvokeModel's answer body; without ``inputTextTokenCount`` for the ``no_usage`` fault."""
    vector = embedding_vector(text_key(req.text), req.dimensions, normalize=req.normalize)
    floats = vector.tolist()
    answer: dict[str, Any] = {"embedding": floats}
    if with_usage:
        answer["inputTextTokenCount"] = req.input_tokens
    if req.embedding_types is not None:
        by_type: dict[str, list[Any]] = {}
        for kind in req.embedding_types:
            by_type[kind] = floats if kind == "float" else [int(x > 0) for x in floats]
        answer["embeddingsByType"] = by_type
    return answer
