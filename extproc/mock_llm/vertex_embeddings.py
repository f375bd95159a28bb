"""Google's text embedding models on the mock's Vertex AI:
``POST .../publishers/google/models/{model}:predict`` (routed by ``vertex_api``, which
checks the token, project, region and fault first).

What a body may hold, from Vertex's text embeddings reference:

- ``instances``: a non-empty list of objects, each with ``content`` (a string) and
  optionally ``task_type`` (one of Vertex's task types) and ``title``; at most 250, and one
  for ``gemini-embedding-001``;
- ``parameters``: ``outputDimensionality`` (an integer from 1 to the model's size) and
  ``autoTruncate`` (a boolean, default true).

A text over the model's 2,048 tokens is cut to them (``truncated: true``, the count of the
tokens embedded) unless ``autoTruncate`` is false, which refuses it; a request over 20,000
tokens in all is refused. Refusals are Google's 400 ``INVALID_ARGUMENT``, naming the field.

The answer is ``{"predictions": [{"embeddings": {"values": [...], "statistics":
{"truncated": false, "token_count": N}}}], "metadata": {"billableCharacterCount": C}}``,
one prediction per instance, in order. Vectors are the ones the OpenAI surface answers
with (``embeddings_api.embedding_vector`` of the text), N is ``tokens.count_tokens``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from extproc.mock_llm.embeddings_api import embedding_vector, text_key
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.tokens import count_tokens
from extproc.mock_llm.vertex_gemini import InvalidArgumentError

PREDICT_CALL = re.compile(r"/publishers/google/models/(?P<model>[^/:]+):predict")
MAX_INSTANCES = 250
MAX_TEXT_TOKENS = 2048
MAX_REQUEST_TOKENS = 20_000
TASK_TYPES = (
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
)


@dataclass(frozen=True, slots=True)
class TextEmbeddingModel:
    dimensions: int
    max_instances: int


MODELS: dict[str, TextEmbeddingModel] = {
    "gemini-embedding-001": TextEmbeddingModel(3072, 1),
    "text-embedding-005": TextEmbeddingModel(768, MAX_INSTANCES),
    "text-embedding-004": TextEmbeddingModel(768, MAX_INSTANCES),
    "text-multilingual-embedding-002": TextEmbeddingModel(768, MAX_INSTANCES),
}


def is_text_embedding_model(model: str) -> bool:
    return model in MODELS


def _texts(doc: dict[str, Any], model: str) -> list[str]:
    instances = doc.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidArgumentError("instances: a non-empty list of instances is required.")
    limit = MODELS[model].max_instances
    if len(instances) > limit:
        raise InvalidArgumentError(
            f"instances: {model} takes at most {limit} instance(s) per request; "
            f"got {len(instances)}."
        )
    texts: list[str] = []
    for index, instance in enumerate(instances):
        content = instance.get("content") if isinstance(instance, dict) else None
        if not isinstance(content, str):
            raise InvalidArgumentError(f"instances[{index}].content: a string is required.")
        task_type = instance.get("task_type") if isinstance(instance, dict) else None
        if task_type is not None and task_type not in TASK_TYPES:
            raise InvalidArgumentError(
                f"instances[{index}].task_type: unknown task type {task_type!r}."
            )
        title = instance.get("title") if isinstance(instance, dict) else None
        if title is not None and not isinstance(title, str):
            raise InvalidArgumentError(f"instances[{index}].title: a string is required.")
        texts.append(content)
    return texts


def _parameters(doc: dict[str, Any], model: str) -> tuple[int, bool]:
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgumentError("parameters: an object is required.")
    size = MODELS[model].dimensions
    dimensions = parameters.get("outputDimensionality", size)
    if type(dimensions) is not int or not 1 <= dimensions <= size:
        raise InvalidArgumentError(
            f"parameters.outputDimensionality: {dimensions!r} is not supported by {model} "
            f"(1 to {size})."
        )
    truncate = parameters.get("autoTruncate", True)
    if not isinstance(truncate, bool):
        raise InvalidArgumentError("parameters.autoTruncate: a boolean is required.")
    return dimensions, truncate


def predict(model: str, body: Body, *, with_counts: bool = True) -> dict[str, Any]:
    """The answer to a text embeddings ``:predict`` call; raises ``InvalidArgumentError``
    for a body Vertex refuses. ``with_counts`` False leaves out each prediction's
    ``statistics`` (the ``no_usage`` fault: an answer that counts nothing)."""
    doc = body.json if body.is_json else None
    if not isinstance(doc, dict):
        raise InvalidArgumentError("Invalid JSON payload received.")
    texts = _texts(doc, model)
    dimensions, truncate = _parameters(doc, model)
    counts = [count_tokens(text) for text in texts]
    for index, count in enumerate(counts):
        if count > MAX_TEXT_TOKENS and not truncate:
            raise InvalidArgumentError(
                f"instances[{index}].content: the input has {count} tokens, over the "
                f"model's limit of {MAX_TEXT_TOKENS}; set autoTruncate to true to cut it."
            )
    embedded = [min(count, MAX_TEXT_TOKENS) for count in counts]
    if sum(embedded) > MAX_REQUEST_TOKENS:
        raise InvalidArgumentError(
            f"Unable to submit request because the input token count is {sum(embedded)} "
            f"but the model supports up to {MAX_REQUEST_TOKENS}. Reduce the input token "
            "count and try again."
        )
    predictions: list[dict[str, Any]] = []
    for text, count, tokens in zip(texts, counts, embedded, strict=True):
        embeddings: dict[str, Any] = {
            "values": embedding_vector(text_key(text), dimensions).tolist()
        }
        if with_counts:
            embeddings["statistics"] = {"truncated": count > MAX_TEXT_TOKENS, "token_count": tokens}
        predictions.append({"embeddings": embeddings})
    characters = sum(len(text) for text in texts)
    return {"predictions": predictions, "metadata": {"billableCharacterCount": characters}}
