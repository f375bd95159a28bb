"""What OpenAI's strict structured outputs refuse in a schema, as far as the mock checks.

A ``response_format`` of type ``json_schema`` with ``strict: true`` is compiled by OpenAI
before the model runs, and a schema it cannot compile is a 400. The mock checks the one
rule the gateway's guards could break: an ``enum`` lists each value once (a guard masking
two values alike would otherwise list ``<EMAIL>`` twice: ``guardrails.schema_enum``).
"""

from __future__ import annotations

from typing import Any

import orjson

# A schema nested deeper than this is not walked further (the mock's bound, not OpenAI's).
_MAX_DEPTH = 64


def strict_schema_error(response_format: Any) -> str | None:
    """Why OpenAI's strict mode refuses ``response_format``'s schema; None when it does not
    (or the request asks for no strict schema)."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or spec.get("strict") is not True:
        return None
    where = _repeated_enum(spec.get("schema"), (), 0)
    if where is None:
        return None
    name = spec.get("name")
    context = ", ".join(repr(step) for step in where)
    return (
        f"Invalid schema for response_format '{name}': In context=({context}), "
        "enum values must be unique."
    )


def _repeated_enum(value: Any, path: tuple[str, ...], depth: int) -> tuple[str, ...] | None:
    """Where, under ``value``, an ``enum`` lists a value twice; None when none does."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(value, dict):
        enum = value.get("enum")
        if isinstance(enum, list):
            seen = {orjson.dumps(entry, option=orjson.OPT_SORT_KEYS) for entry in enum}
            if len(seen) < len(enum):
                return path
        for key, member in value.items():
            found = _repeated_enum(member, (*path, str(key)), depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, member in enumerate(value):
            found = _repeated_enum(member, (*path, str(index)), depth + 1)
            if found is not None:
                return found
    return None
