"""JSON answers for requests that ask for them with OpenAI's ``response_format``.

Evaluations (``make eval``) check that a model answers JSON only; the mock must
then answer JSON too, deterministically:

- ``{"type": "json_object"}``: ``{"reply": "<the usual mock reply>"}``.
- ``{"type": "json_schema", "json_schema": {"schema": S}}``: an instance of S built
  from it: every property of an object, the first of an ``enum``/``const``/``anyOf``
  /``oneOf``, ``minimum`` (else 0) for numbers, ``true``, one item per array (or
  ``minItems``), and the mock reply for strings. A ``$ref`` to a place in the same
  schema (``#/$defs/Line``, as pydantic writes nested models) is followed: the providers
  take such schemas, and an SDK's ``parse`` would fail on the string left in its place.
Anything else (``text``, no ``response_format``): None, the usual text reply.
"""

from __future__ import annotations

from typing import Any

import orjson

_MAX_DEPTH = 16


def json_reply(response_format: Any, text: str) -> str | None:
    """The reply's JSON text, or None when the request did not ask for JSON."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return orjson.dumps({"reply": text}).decode()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return orjson.dumps(instance(schema if isinstance(schema, dict) else {}, text)).decode()
    return None


def instance(
    schema: dict[str, Any], text: str, depth: int = 0, root: dict[str, Any] | None = None
) -> Any:
    """A value that satisfies the simple JSON Schema ``schema``; ``root`` is the whole
    schema its ``$ref`` pointers point into (``schema`` itself when None)."""
    if depth > _MAX_DEPTH:
        return None
    root = schema if root is None else root
    target = _referenced(schema.get("$ref"), root)
    if target is not None:
        # The depth bound stops a recursive schema (a tree of nodes) too.
        return instance(target, text, depth + 1, root)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and isinstance(options[0], dict):
            return instance(options[0], text, depth + 1, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {
            name: instance(sub if isinstance(sub, dict) else {}, text, depth + 1, root)
            for name, sub in properties.items()
        }
    if kind == "array":
        items = schema.get("items")
        count = schema.get("minItems")
        count = count if isinstance(count, int) and count > 0 else 1
        item = instance(items if isinstance(items, dict) else {}, text, depth + 1, root)
        return [item] * count
    if kind in ("number", "integer"):
        minimum = schema.get("minimum")
        value = minimum if isinstance(minimum, int | float) else 0
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


def _referenced(ref: Any, root: dict[str, Any]) -> dict[str, Any] | None:
    """The subschema a local ``$ref`` (a JSON pointer after ``#``) names in ``root``; None
    for no ``$ref``, one to another document, or one that names nothing."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    found: Any = root
    for token in ref[1:].split("/")[1:]:
        # JSON pointer escapes: ~1 is "/", ~0 is "~" (in that order).
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(found, dict):
            found = found.get(key)
        elif isinstance(found, list) and key.isdigit() and int(key) < len(found):
            found = found[int(key)]
        else:
            return None
    return found if isinstance(found, dict) else None
