"""Anthropic's Messages body as Vertex AI takes it for Claude (``rawPredict``).

Vertex reads Anthropic's Messages API with two differences, both in the request:
the model is named by the path, so the body has no ``model``, and the API version is
the body's ``anthropic_version``, ``vertex-2023-10-16`` (Vertex's one version), not a
header. A token count is the exception: its body names the model. Everything else goes
as the client (or the OpenAI translation) wrote it, ``stream`` included. The answers,
JSON and event stream alike, are Anthropic's own: the Anthropic readers read them.
"""

from __future__ import annotations

from typing import Any

# The API version Vertex takes for Claude.
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"


def messages_body(body: dict[str, Any]) -> dict[str, Any]:
    """The ``rawPredict`` body for a Messages body (``body`` is left as it is)."""
    prepared = {key: value for key, value in body.items() if key != "model"}
    prepared["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
    return prepared


def count_tokens_body(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """The ``count-tokens:rawPredict`` body: the count's body under Vertex's model id."""
    prepared = dict(body)
    prepared["model"] = upstream_model
    prepared["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
    return prepared
