"""Whether a request asked for its answer's text to be JSON (a structured output).

A stream cannot tell from its first deltas that its text will be a JSON document, but the
request can: the client asked for one, and decodes the text it assembles. The stream guard
then reads that text as it reads streamed tool-call arguments (``stream.ArgumentsStream``),
so a mask keeps it JSON, as a whole answer's text is kept (``matching.onto_document``).

Where each API asks, in the client's body (the gateway's translations keep the ask):

- OpenAI chat: ``response_format`` of type ``json_schema`` or ``json_object``;
- Anthropic Messages (and Claude's InvokeModel body): ``output_config.format`` or the beta
  ``output_format`` of type ``json_schema``;
- Bedrock Converse: ``outputConfig.textFormat`` of type ``json_schema``;
- Gemini: ``generationConfig.responseMimeType`` ``application/json``, or a response schema
  (camelCase and snake_case alike).
"""

from __future__ import annotations

from typing import Any

from extproc.gemini_api import GENERATION_CONFIG, RESPONSE_SCHEMAS
from extproc.guardrails.gemini_text import spellings

_CHAT_JSON = frozenset(("json_schema", "json_object"))
_MIME_TYPES = ("responseMimeType", "response_mime_type")


def asks_for_json(body: dict[str, Any] | None) -> bool:
    """Whether the request ``body`` (any API's) asked for an answer whose text is JSON."""
    if not body:
        return False
    return (
        _typed(body.get("response_format"), _CHAT_JSON)
        or _typed(_get(body.get("output_config"), "format"), ("json_schema",))
        or _typed(body.get("output_format"), ("json_schema",))
        or _typed(_get(body.get("outputConfig"), "textFormat"), ("json_schema",))
        or _gemini_json(body)
    )


def _gemini_json(body: dict[str, Any]) -> bool:
    for config in spellings(body, GENERATION_CONFIG):
        if not isinstance(config, dict):
            continue
        for mime in spellings(config, _MIME_TYPES):
            if isinstance(mime, str) and mime.strip().lower() == "application/json":
                return True
        if any(config.get(name) is not None for names in RESPONSE_SCHEMAS for name in names):
            return True
    return False


def _typed(value: Any, types: tuple[str, ...] | frozenset[str]) -> bool:
    return isinstance(value, dict) and value.get("type") in types


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None
