"""Anthropic's Messages body as Vertex AI takes it for Claude (``rawPredict``).

Vertex reads Anthropic's Messages API with two differences, both in the request:
the model is named by the path, so the body has no ``model``, and the API version is
the body's ``anthropic_version``, ``vertex-2023-10-16`` (Vertex's one version), not a
header. A token count is the exception: its body names the model, by its name alone
(count-tokens answers "claude-sonnet-4-5@20250929 is not supported for token counting").
Everything else goes as the client (or the OpenAI translation) wrote it, ``stream``
included, but the beta flags a provider's ``anthropic_betas`` leaves out (``kept_betas``:
Vertex refuses a flag it does not know). The answers, JSON and event stream alike, are
Anthropic's own, read by the Anthropic readers, but for one event Vertex adds to the
stream, ``vertex_event`` (its usage by price tier), which no client of Anthropic's API
expects: ``EventStreamReader`` leaves it out.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson

from extproc.translators import anthropic_anthropic
from extproc.translators.sse import EVENT_END, event_data, lf_lines

# The API version Vertex takes for Claude.
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
# Vertex's own event in Claude's stream: no event type of Anthropic's API.
VERTEX_EVENT = "vertex_event"


def messages_body(body: dict[str, Any]) -> dict[str, Any]:
    """The ``rawPredict`` body for a Messages body (``body`` is left as it is)."""
    prepared = {key: value for key, value in body.items() if key != "model"}
    prepared["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
    return prepared


def count_tokens_body(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """The ``count-tokens:rawPredict`` body: the count's body under the model's name,
    without the ``@version`` of Vertex's id."""
    prepared = dict(body)
    prepared["model"] = upstream_model.partition("@")[0]
    prepared["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
    return prepared


def kept_betas(beta_header: str | None, allowed: Collection[str]) -> str:
    """The client's ``anthropic-beta`` flags Vertex takes (``allowed``: the provider's
    ``anthropic_betas``), comma-separated; empty when none is left. Vertex refuses a
    request naming a flag it does not know, and Anthropic's clients (Claude Code) send
    flags only Anthropic's own API knows."""
    flags = [flag.strip() for flag in (beta_header or "").split(",") if flag.strip()]
    return ",".join(flag for flag in dict.fromkeys(flags) if flag in allowed)


class EventStreamReader(anthropic_anthropic.EventStreamReader):
    """Claude's stream from ``streamRawPredict``, read as Anthropic's own, without the
    ``vertex_event`` events Vertex adds: a client of Anthropic's API knows only its event
    types (the Vercel AI SDK fails the whole stream on another). The client gets the
    stream in whole events (Anthropic's reader forwards only those), so such an event is
    left out wherever the chunks fall."""

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        shown = super().feed(chunk, end_of_stream)
        events = chunk if shown is None else shown
        if VERTEX_EVENT.encode() in events:
            events, _ = lf_lines(events, False)  # the provider's bytes, whole events
            kept = [e for e in events.split(EVENT_END) if e and not _vertex_own(e)]
            events = b"".join(event + EVENT_END for event in kept)
        return None if events is chunk else events


def _vertex_own(event: bytes) -> bool:
    try:
        data = orjson.loads(event_data(event))
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("type") == VERTEX_EVENT
