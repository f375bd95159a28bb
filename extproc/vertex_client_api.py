"""Anthropic's Messages API at Vertex AI's paths, as clients of Vertex send it to the gateway.

Anthropic's SDKs' Vertex clients (``AnthropicVertex``) and Claude Code in its Vertex mode
(``CLAUDE_CODE_USE_VERTEX``) call Claude where Vertex serves it, with
``Authorization: Bearer <token>`` (here the gateway's key or a JWT). Under the base URL
they are given, ``.../projects/{project}/locations/{region}/publishers/anthropic/models/``
is followed by

- ``{model}:rawPredict``, or ``:streamRawPredict`` when the body asks for a stream: a
  Messages body without ``model`` (the path names it, ``@version`` and all; the SDK
  encodes a ``;`` in it) and with ``"anthropic_version": "vertex-2023-10-16"``;
- ``count-tokens:rawPredict``: a token count, whose body names the model.

This module reads such a path and turns the body into the Anthropic call it stands for:
the path's model written into it, Vertex's ``anthropic_version`` taken out (each provider
gets its own: none for Anthropic, Bedrock's, Vertex's). From then on the request is an
``anthropic_messages`` (or ``anthropic_count_tokens``) request, sent wherever those go.
The body's ``stream`` decides whether the answer streams, as on Anthropic's API; the
operation only echoes it. The client's project and region name where its Vertex would
have served the call: the gateway serves it from the model's provider (a ``vertex``
provider from its own project and region), so they are read for the path's shape alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from extproc.config.model import ANTHROPIC_VERTEX_APIS
from extproc.errors import NotFoundError
from extproc.runtime import Route

RAW_PREDICT = "rawPredict"
STREAM_RAW_PREDICT = "streamRawPredict"
# The path's model segment of a token count, which Vertex serves with rawPredict alone.
COUNT_TOKENS = "count-tokens"
PUBLISHER = "anthropic"
# The segments of a path, from its end: the keywords, and the names between them.
_KEYWORDS = ("projects", "locations", "publishers", "models")
_SEGMENTS = 2 * len(_KEYWORDS)
_SHAPE = "/projects/{project}/locations/{region}/publishers/anthropic/models/"
_NOT_SERVED = (
    "no Vertex AI endpoint for Claude at this path; expected <prefix>"
    f"{_SHAPE}{{model}}:{RAW_PREDICT} or :{STREAM_RAW_PREDICT}, or "
    f"{_SHAPE}{COUNT_TOKENS}:{RAW_PREDICT}"
)


@dataclass(frozen=True, slots=True)
class VertexCall:
    """What a Vertex path asks for: Claude's Messages API for ``model``, or a token count
    (whose model the body names: ``model`` is None)."""

    model: str | None
    counts_tokens: bool


def read_path(path: str) -> VertexCall:
    """The call a Vertex path (query and all) names, read from its end, so that any
    prefix serves (a route's own, a base URL ending in Google's ``/v1``, a controller's).

    Anything else is a 404 that says what is served: another publisher (Google's models
    speak Gemini's API, served by a gemini_generate_content route), another operation, a
    path of another shape. The model is decoded once; its own name is the route's to resolve.
    """
    segments = path.partition("?")[0].split("/")[-_SEGMENTS:]
    keywords, names = segments[0::2], segments[1::2]
    if len(segments) < _SEGMENTS or tuple(keywords) != _KEYWORDS or not all(names[:2]):
        raise NotFoundError(_NOT_SERVED)
    if unquote(names[2]) != PUBLISHER:
        raise NotFoundError(
            f"only Anthropic's models (publishers/{PUBLISHER}) are served at Vertex's paths "
            "here; call other models through Gemini's API or OpenAI's chat completions"
        )
    model, colon, operation = unquote(names[3]).rpartition(":")
    if not colon or not model or operation not in (RAW_PREDICT, STREAM_RAW_PREDICT):
        raise NotFoundError(_NOT_SERVED)
    if model == COUNT_TOKENS:
        if operation != RAW_PREDICT:
            raise NotFoundError(_NOT_SERVED)
        return VertexCall(None, counts_tokens=True)
    return VertexCall(model, counts_tokens=False)


def served_call(path: str) -> VertexCall | None:
    """The call a path names, or None for a path ``read_path`` refuses: the routing stage
    reads it before the body comes (a count takes its route's twin; a model named by the
    path chooses how the answer is read), and leaves the refusal to the body's phase, where
    every request of the route is checked, logged and counted alike."""
    try:
        return read_path(path)
    except NotFoundError:
        return None


@lru_cache(maxsize=64)
def anthropic_route(route: Route) -> Route:
    """The route as Anthropic's API serves it: the same route (name, auth, guards, quotas),
    whose API is the one its Vertex API stands for (``ANTHROPIC_VERTEX_APIS``)."""
    return replace(route, api=ANTHROPIC_VERTEX_APIS[route.api])


def as_anthropic_body(body: dict[str, Any], call: VertexCall) -> None:
    """Make ``body`` the Anthropic call ``call`` stands for, in place: the path's model
    named in it (over any the body names: the path is what Vertex serves), Vertex's API
    version taken out."""
    body.pop("anthropic_version", None)
    if call.model is not None:
        body["model"] = call.model
