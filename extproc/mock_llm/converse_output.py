"""The mock's reading of Converse's structured output, ``outputConfig``.

Bedrock's service model: ``outputConfig`` is an object whose ``textFormat`` (optional) holds
``type`` (required, the enum ``json_schema``) and ``structure`` (required, a union with
exactly one member, ``jsonSchema``); ``jsonSchema`` holds ``schema`` (required, a string:
the JSON schema as JSON text) and the optional strings ``name`` and ``description``.
``outputConfig.effort`` (a string) is taken and not read here. A request that breaks one
of these is refused as Bedrock refuses it, a ValidationException naming the member; so is
a ``schema`` that is not the JSON text of an object (Bedrock checks the schema before it
compiles it; the words here are the mock's).

The answer of a request with a schema is JSON built from it (``json_reply.instance``),
as the mock answers OpenAI's ``response_format`` and Anthropic's ``output_config``. Every
model takes a schema here; Bedrock offers structured outputs on some models only and
refuses the others with a ValidationException.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["OutputConfigError", "output_schema"]


class OutputConfigError(Exception):
    """A malformed ``outputConfig``: the member that breaks a constraint (None when the
    message names it) and the constraint, in AWS's words."""

    def __init__(self, path: str | None, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def output_schema(config: object) -> dict[str, Any] | None:
    """The JSON schema the answer must match, None when the request sets none; raises
    ``OutputConfigError`` for a malformed ``outputConfig``."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise OutputConfigError("outputConfig", "Member must be an object")
    effort = config.get("effort")
    if effort is not None and not isinstance(effort, str):
        raise OutputConfigError("outputConfig.effort", "Member must be a string")
    text_format = config.get("textFormat")
    if text_format is None:
        return None
    here = "outputConfig.textFormat"
    if not isinstance(text_format, dict):
        raise OutputConfigError(here, "Member must be an object")
    if text_format.get("type") != "json_schema":
        raise OutputConfigError(f"{here}.type", "Member must satisfy enum value set: [json_schema]")
    structure = text_format.get("structure")
    if structure is None:
        raise OutputConfigError(f"{here}.structure", "Member must not be null")
    if not isinstance(structure, dict) or list(structure) != ["jsonSchema"]:
        raise OutputConfigError(
            f"{here}.structure", "Member must be an object with exactly one of jsonSchema"
        )
    return _schema(structure["jsonSchema"], f"{here}.structure.jsonSchema")


def _schema(definition: object, here: str) -> dict[str, Any]:
    if not isinstance(definition, dict):
        raise OutputConfigError(here, "Member must be an object")
    for field in ("name", "description"):
        if definition.get(field) is not None and not isinstance(definition[field], str):
            raise OutputConfigError(f"{here}.{field}", "Member must be a string")
    text = definition.get("schema")
    if text is None:
        raise OutputConfigError(f"{here}.schema", "Member must not be null")
    if not isinstance(text, str):
        # Converse takes the schema as JSON text: an SDK that sends the object itself is
        # refused, as Bedrock refuses it.
        raise OutputConfigError(f"{here}.schema", "Member must be a string")
    try:
        schema = orjson.loads(text)
    except orjson.JSONDecodeError:
        schema = None
    if not isinstance(schema, dict):
        raise OutputConfigError(
            None, f"The JSON schema in {here}.schema is not valid: it must be a JSON object."
        )
    return schema
