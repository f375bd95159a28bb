"""OpenAI embeddings <-> Vertex AI's text embeddings (``:predict``).

Google's text embedding models on Vertex (``gemini-embedding-001``, ``text-embedding-005``,
``text-multilingual-embedding-002``) are called at
``publishers/google/models/{model}:predict`` with one instance per text:
``{"instances": [{"content": ...}], "parameters": {"outputDimensionality": N,
"autoTruncate": false}}``; the answer holds one prediction per instance, in order:
``{"predictions": [{"embeddings": {"values": [...], "statistics": {"token_count": N,
"truncated": false}}}]}``. What Vertex's text embeddings reference says, and what this
module does with it:

- ``input``: a string or an array of strings becomes the instances. Token ids are a 400
  ``unsupported_input`` (Vertex embeds text). ``gemini-embedding-001`` takes one instance
  per request: an array of several is a 400 naming ``input`` rather than several calls
  the client did not ask for, each billed, as for Titan on Bedrock. The other models take
  up to 250 texts (more is a 400 here); their limit of 20,000 tokens per request is
  Vertex's to enforce, its 400 reaching the client in OpenAI's shape.
- ``dimensions`` becomes ``outputDimensionality``; a size the model does not offer is
  Vertex's 400.
- ``autoTruncate`` is always false. Vertex's default cuts a text longer than the model's
  2,048 tokens and embeds the rest; OpenAI refuses such an input, and a client storing
  the vector of a text it did not know was cut would be misled. Vertex's 400 says so.
- ``task_type`` (Vertex's own field, which OpenAI lacks; the ``openai`` SDK sends it with
  ``extra_body``) goes with each instance when one of Vertex's values, else is a 400
  naming it. ``title``, Vertex's too, the title of the documents embedded, goes with
  each instance as well: a string, and only with ``RETRIEVAL_DOCUMENT``, the one task
  type Vertex applies it to (else a 400 naming it, rather than a title dropped without a
  word). ``user`` and ``encoding_format`` are OpenAI's alone.

The answer becomes OpenAI's list; ``base64`` vectors are encoded as the Bedrock path
encodes them (little-endian float32). The prompt tokens are the sum of the predictions'
``statistics.token_count`` (``tokenCount`` in the reference's JSON name, read too). An
answer without a count for every text reports no usage: the request is charged the
input's estimate (``stages.response``), as a Titan answer without its count is.

Vertex bills its older text embedding models (``text-embedding-005``,
``text-multilingual-embedding-002``) per 1,000 characters, not per token: the answer's
``metadata.billableCharacterCount`` is read into the usage (``billable_characters``),
which a price per character (``input_per_thousand_characters``) bills.
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequestError
from extproc.translators.bedrock_embeddings import BufferedEmbeddings, is_vector
from extproc.translators.token_counts import struct_token_count

# Models that take one instance per request (Vertex's reference says so of this one).
ONE_INSTANCE_PREFIX = "gemini-embedding"
MAX_INSTANCES = 250
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
# The one task type a ``title`` applies to.
TITLED_TASK_TYPE = "RETRIEVAL_DOCUMENT"


def _takes_one_instance(model: str) -> bool:
    return model.removeprefix("google/").startswith(ONE_INSTANCE_PREFIX)


def input_texts(body: dict[str, Any], model: str) -> list[str]:
    """The texts Vertex embeds for an OpenAI embeddings body (already checked as OpenAI's);
    raises a 400 for what the model cannot take.

    Checked as soon as the model is known (``backends.check_pair``), so such a request is
    refused before the quota counts it, and again when translating."""
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise BadRequestError(
            "this model embeds text (Google's text embeddings on Vertex AI): send 'input' "
            "as a string or an array of strings, not token ids",
            param="input",
            code="unsupported_input",
        )
    if len(texts) > 1 and _takes_one_instance(model):
        raise BadRequestError(
            f"this model embeds one text per request ({model} on Vertex AI); 'input' has "
            f"{len(texts)}: send them one per request",
            param="input",
            code="unsupported_input",
        )
    if len(texts) > MAX_INSTANCES:
        raise BadRequestError(
            f"this model embeds at most {MAX_INSTANCES} texts per request (Vertex AI); "
            f"'input' has {len(texts)}: send them in batches of {MAX_INSTANCES}",
            param="input",
            code="unsupported_input",
        )
    return texts


def texts_sent(body: dict[str, Any]) -> int:
    """How many texts the request sent (``input_texts`` refused it otherwise), which is
    how many predictions Vertex answers with."""
    value = body.get("input")
    return len(value) if isinstance(value, list) else 1


def _task_type(body: dict[str, Any]) -> str | None:
    value = body.get("task_type")
    # Not a set lookup: a list or an object is no task type either (and is unhashable).
    if value is not None and not (isinstance(value, str) and value in TASK_TYPES):
        raise BadRequestError(
            f"'task_type' must be one of {', '.join(TASK_TYPES)} (Vertex AI's task types)",
            param="task_type",
            code="invalid_value",
        )
    return value


def _title(body: dict[str, Any], task_type: str | None) -> str | None:
    value = body.get("title")
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequestError(
            "'title' must be a string (the title of the documents in 'input')",
            param="title",
            code="invalid_value",
        )
    if task_type != TITLED_TASK_TYPE:
        raise BadRequestError(
            f"'title' goes with 'task_type' {TITLED_TASK_TYPE} alone (Vertex AI applies "
            "a title to documents to retrieve): send that task type, or no title",
            param="title",
            code="invalid_value",
        )
    return value


def check_request(body: dict[str, Any], model: str) -> None:
    """Refuse, with a 400 naming the field, what Vertex's text embeddings cannot serve."""
    input_texts(body, model)
    _title(body, _task_type(body))


def translate_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Vertex's ``:predict`` body for an OpenAI embeddings body (already checked as
    OpenAI's)."""
    task_type = _task_type(body)
    title = _title(body, task_type)
    instances: list[dict[str, str]] = []
    for text in input_texts(body, model):
        instance = {"content": text}
        if task_type is not None:
            instance["task_type"] = task_type
        if title is not None:
            instance["title"] = title
        instances.append(instance)
    parameters: dict[str, Any] = {"autoTruncate": False}
    if body.get("dimensions") is not None:
        parameters["outputDimensionality"] = body["dimensions"]
    return {"instances": instances, "parameters": parameters}


class EmbeddingTranslator(BufferedEmbeddings):
    """A Vertex ``:predict`` answer: one prediction per text sent, each with its vector
    and its token count."""

    unreadable = "the provider's answer could not be read as Vertex AI's text embeddings"

    def __init__(self, *, model: str, base64_vectors: bool, texts: int) -> None:
        super().__init__(model=model, base64_vectors=base64_vectors)
        self._texts = texts
        # The characters Vertex bills (metadata.billableCharacterCount), once read.
        self._characters: int | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        shown = super().feed(chunk, end_of_stream)
        if self.usage is not None:
            self.usage.billable_characters = self._characters
        return shown

    def read(self, parsed: Any) -> tuple[list[list[float]], int | None] | None:
        metadata = parsed.get("metadata") if isinstance(parsed, dict) else None
        if isinstance(metadata, dict):
            # A Struct's number may be written as a float (9.0).
            self._characters = struct_token_count(metadata.get("billableCharacterCount"))
        predictions = parsed.get("predictions") if isinstance(parsed, dict) else None
        # One per text, in order: another count would pair a vector with the wrong text.
        if not isinstance(predictions, list) or len(predictions) != self._texts:
            return None
        vectors: list[list[float]] = []
        counts: list[int | None] = []
        for prediction in predictions:
            embeddings = prediction.get("embeddings") if isinstance(prediction, dict) else None
            if not isinstance(embeddings, dict):
                return None
            values = embeddings.get("values")
            if not is_vector(values):
                return None
            assert isinstance(values, list)
            vectors.append(values)
            counts.append(_token_count(embeddings.get("statistics")))
        if any(count is None for count in counts):
            return vectors, None
        return vectors, sum(count for count in counts if count is not None)


def _token_count(statistics: Any) -> int | None:
    """A prediction's ``token_count``: an integer, though a number in a Struct may be
    written as a float (``6.0``); None when absent or not a count."""
    if not isinstance(statistics, dict):
        return None
    return struct_token_count(statistics.get("token_count", statistics.get("tokenCount")))
