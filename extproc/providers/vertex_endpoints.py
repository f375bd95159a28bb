"""The paths of Vertex AI's endpoints the gateway calls, under a provider's project and region.

Vertex serves each model under ``/v1/projects/{project}/locations/{region}``:

- Claude (Anthropic's models) through Anthropic's Messages API as Vertex takes it:
  ``publishers/anthropic/models/{model}:rawPredict`` (a JSON answer) and
  ``:streamRawPredict`` (Anthropic's event stream), the model in the path; token counts
  at ``publishers/anthropic/models/count-tokens:rawPredict``, the model in the body;
- every other model (Gemini, the Model Garden's open models) through its
  OpenAI-compatible chat completions, ``endpoints/openapi/chat/completions``, the model
  in the body as Vertex names it (``google/gemini-2.5-flash``);
- Google's own models also through Gemini's API, for clients that speak it:
  ``publishers/google/models/{model}:generateContent``, ``:streamGenerateContent``
  (``?alt=sse``) and ``:countTokens``, the model in the path without its publisher;
- Google's text embedding models (``gemini-embedding-001``, ``text-embedding-005``...)
  through their ``:predict`` method, under the same publisher path.

Which is Claude is read from the provider's name for the model: Vertex names Anthropic's
models ``claude-...`` (``claude-sonnet-4-5@20250929``).
"""

from __future__ import annotations

from urllib.parse import quote

from extproc.config.model import GcpConfig

# What a model id keeps unescaped in the path: Vertex's ids are letters, digits, "-", "."
# and the "@" before a version. Anything else (a "/" of a client's model name on a
# catch-all route) is escaped, so it cannot reach another path.
_PATH_SAFE = "-._~@"
_CLAUDE = "claude-"
# What Google's text embedding models have in their names (``gemini-embedding-001``,
# ``text-embedding-005``, ``textembedding-gecko@003``); the multimodal one takes another
# body (``text``, ``image``, ``video``) and is not served.
_EMBEDDING = "embedding"
_MULTIMODAL = "multimodalembedding"
_GOOGLE = "google"
# Gemini's streamed operation, which answers Server-Sent Events only when asked.
_STREAM_GENERATE_CONTENT = "streamGenerateContent"


def is_claude(upstream_model: str) -> bool:
    """Whether Vertex serves ``upstream_model`` through Anthropic's Messages API."""
    return upstream_model.startswith(_CLAUDE)


def location_path(gcp: GcpConfig) -> str:
    """``/v1/projects/{project}/locations/{region}``: where the provider's models live."""
    return f"/v1/projects/{gcp.project}/locations/{gcp.region}"


def claude_messages_path(gcp: GcpConfig, upstream_model: str, *, stream: bool) -> str:
    """Claude's Messages endpoint on Vertex: ``rawPredict``, or ``streamRawPredict``."""
    method = "streamRawPredict" if stream else "rawPredict"
    model = quote(upstream_model, safe=_PATH_SAFE)
    return f"{location_path(gcp)}/publishers/anthropic/models/{model}:{method}"


def claude_count_tokens_path(gcp: GcpConfig) -> str:
    """Claude's token count on Vertex (the model named in the body)."""
    return f"{location_path(gcp)}/publishers/anthropic/models/count-tokens:rawPredict"


def openai_chat_path(gcp: GcpConfig) -> str:
    """Vertex's OpenAI-compatible chat completions, for every model but Claude."""
    return f"{location_path(gcp)}/endpoints/openapi/chat/completions"


def is_google_model(upstream_model: str) -> bool:
    """Whether ``upstream_model`` is one of Google's own models (Gemini, Gemma), which
    Vertex serves through Gemini's API: named bare (``gemini-2.5-flash``) or with its
    publisher, as the OpenAI-compatible endpoint names it (``google/gemini-2.5-flash``)."""
    publisher, slash, _ = upstream_model.partition("/")
    return (publisher == _GOOGLE if slash else True) and not is_claude(upstream_model)


def google_model_name(upstream_model: str) -> str:
    """``upstream_model`` without the ``google/`` publisher the OpenAI-compatible
    endpoint names Google's models with: the name in Vertex's publisher paths, so
    ``google/text-embedding-005`` and ``text-embedding-005`` are one model."""
    return upstream_model.removeprefix(_GOOGLE + "/")


def openai_model_name(upstream_model: str) -> str:
    """The name Vertex's OpenAI-compatible endpoint takes: ``publisher/model``. A bare
    name is one of Google's (as Gemini's API and ``:predict`` read it), which the
    endpoint refuses without its ``google/`` publisher."""
    if "/" in upstream_model:
        return upstream_model
    return f"{_GOOGLE}/{upstream_model}"


def gemini_path(gcp: GcpConfig, upstream_model: str, operation: str) -> str:
    """Gemini's API on Vertex for one of Google's models: ``generateContent``,
    ``streamGenerateContent`` (as Server-Sent Events) or ``countTokens``."""
    model = quote(google_model_name(upstream_model), safe=_PATH_SAFE)
    path = f"{location_path(gcp)}/publishers/google/models/{model}:{operation}"
    return path + "?alt=sse" if operation == _STREAM_GENERATE_CONTENT else path


def is_text_embedding_model(upstream_model: str) -> bool:
    """Whether ``upstream_model`` is one of Google's text embedding models, which Vertex
    serves through ``:predict`` (named bare or with the ``google/`` publisher)."""
    return is_embedding_model(upstream_model) and not google_model_name(upstream_model).startswith(
        _MULTIMODAL
    )


def is_embedding_model(upstream_model: str) -> bool:
    """Whether ``upstream_model`` is one of Google's embedding models, the multimodal one
    (which the gateway does not serve) included."""
    return is_google_model(upstream_model) and _EMBEDDING in google_model_name(upstream_model)


def predict_path(gcp: GcpConfig, upstream_model: str) -> str:
    """The ``:predict`` method of one of Google's models: its text embeddings."""
    return gemini_path(gcp, upstream_model, "predict")
