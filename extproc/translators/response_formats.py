"""OpenAI's ``response_format`` read once for the translators that carry it to another
provider's structured output (``openai_anthropic``, ``openai_bedrock``).

OpenAI takes three types: ``text`` (the default), ``json_object`` (any JSON object) and
``json_schema``, whose ``json_schema`` member holds ``name``, ``description``, ``schema``
and ``strict``. ``read_response_format`` checks the shape as OpenAI does and refuses,
with a 400 naming the field, what OpenAI itself would refuse and a translation could
only drop: an unknown type (``{"type": "json"}``), a ``json_schema`` without a schema
object, a ``name`` or ``description`` that is not a string. Dropped, the client would
read prose where it asked for JSON and be billed for it; sent, the provider's 400 would
name a field the client never wrote.

What each provider does with the result is its translator's decision: Anthropic and
Converse both hold the answer to the schema whatever ``strict`` says (their decoding is
always constrained), and neither has a mode for "any JSON object".

``schema_to_hold`` is what both translations read: the ``json_schema`` to carry, and a
400 naming ``response_format`` for ``json_object``, the same on both. Neither provider
can take it: their structured outputs refuse a schema that leaves an object open (the
only schema "any JSON object" has), and sent without a constraint the answer is only as
JSON as the model chooses: Claude often wraps it in a Markdown fence or a sentence, and
the client's ``json.loads`` fails on an answer it was billed for, where OpenAI's
``json_object`` never answers anything but a JSON object. ``json_schema`` does what the
client asked, on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from extproc.errors import BadRequestError, quoted

__all__ = ["JsonSchemaFormat", "ResponseFormat", "read_response_format", "schema_to_hold"]

_TYPES = ("text", "json_object", "json_schema")
# How much of an unknown type the error quotes: it is the client's own input.
_QUOTED_CHARS = 40


@dataclass(frozen=True, slots=True)
class JsonSchemaFormat:
    """``response_format.json_schema``: the schema the answer must match, and what OpenAI
    sends beside it."""

    schema: dict[str, Any]
    name: str | None = None
    description: str | None = None
    # OpenAI's switch between constrained decoding (true) and best effort (false, None).
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """A checked ``response_format``: its type, and the schema when it is ``json_schema``."""

    type: str
    json_schema: JsonSchemaFormat | None = None


def read_response_format(value: Any) -> ResponseFormat | None:
    """The body's ``response_format``, checked; None when it names none (absent or null).

    Raises ``BadRequestError`` naming the offending field (``response_format.type``,
    ``response_format.json_schema.schema``...) for a shape OpenAI refuses too."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequestError(
            '\'response_format\' must be an object such as {"type": "json_schema", ...}',
            param="response_format",
        )
    kind = value.get("type")
    if kind not in _TYPES:
        shown = quoted(kind, _QUOTED_CHARS) if isinstance(kind, str) else "a non-string"
        raise BadRequestError(
            f"Invalid value for 'response_format.type': {shown}. Supported values are: "
            "'text', 'json_object' and 'json_schema'",
            param="response_format.type",
        )
    if kind != "json_schema":
        return ResponseFormat(kind)
    return ResponseFormat(kind, _json_schema(value.get("json_schema")))


def schema_to_hold(value: Any, provider: str) -> JsonSchemaFormat | None:
    """The schema a translated request asks ``provider`` to hold its answer to: the
    body's ``json_schema``; None for ``text`` or no ``response_format``.

    Raises ``BadRequestError`` for a malformed ``response_format``
    (``read_response_format``) and, naming ``response_format``, for ``json_object``,
    which neither translated provider has a mode for (the module's docstring says why).
    ``provider`` names what the client is told has no such mode (``Claude``,
    ``Bedrock``)."""
    response_format = read_response_format(value)
    if response_format is None:
        return None
    if response_format.type == "json_object":
        raise BadRequestError(
            f"response_format 'json_object' is not supported for {provider} models, which "
            "have no mode for any JSON object: send 'json_schema' with the object's schema "
            f"({provider}'s structured outputs), or, for a model without structured "
            "outputs, leave response_format out and ask for JSON in the prompt",
            param="response_format",
        )
    return response_format.json_schema


def _json_schema(spec: Any) -> JsonSchemaFormat:
    here = "response_format.json_schema"
    if not isinstance(spec, dict):
        raise BadRequestError(
            "response_format of type 'json_schema' needs a 'json_schema' object with the "
            "schema in 'json_schema.schema'",
            param=here,
        )
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise BadRequestError(
            "response_format 'json_schema' needs a JSON schema object in json_schema.schema: "
            "the provider constrains the answer to it",
            param=f"{here}.schema",
        )
    texts: dict[str, str | None] = {}
    for field in ("name", "description"):
        text = spec.get(field)
        if text is not None and not isinstance(text, str):
            raise BadRequestError(f"'{here}.{field}' must be a string", param=f"{here}.{field}")
        texts[field] = text
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise BadRequestError(f"'{here}.strict' must be a boolean", param=f"{here}.strict")
    return JsonSchemaFormat(schema, texts["name"], texts["description"], strict)
