"""The request's path in Envoy's access log and span: the client's, as the gateway records it.

Envoy records the path the client sent, without its query and before any rewrite: the
first HTTP filter keeps it in filter state (``client_path_filters``). A client that put
a key in its path (settings swapped, ``/openai/<key>/chat/completions``; a Gemini SDK
given its key as the model) left it there, where the gateway's own log line shows the
segment as ``[redacted]`` (``stages.model_credentials``).

A request the gateway answered has its path named in the gateway's ``io.aigw``
metadata (``PATH_METADATA_KEY``, ``envoy_request_record``), which Envoy prints as it
is. For the others (Envoy refused the request first, a local reply, the gateway
unreachable) the access log's ``path`` is a CEL formatter (``ENVOY_PATH``), which the
span's ``http.url`` reads for every request (``ENVOY_URL``), in this order:

1. the path the gateway named (a request it answered: CEL stops there);
2. ``/[redacted]`` when the path Envoy received holds a well-known key shape
   (``credential_shapes.RE2_SHAPES``, searched by Envoy's RE2 in ``request.path``,
   still the client's when the gateway never answered). Envoy's CEL has no string
   replacement nor concatenation, so the whole path goes, not the segment;
3. otherwise the client's path as sent.
"""

from __future__ import annotations

from typing import Any

from extproc.auth.credential_shapes import RE2_SHAPES
from extproc.errors import REDACTED
from extproc.headers import METADATA_NAMESPACE

Json = dict[str, Any]
_TYPE = "type.googleapis.com/"
# The request's path as the client sent it, without its query string: kept in filter
# state by the first HTTP filter, before the gateway rewrites :path for the provider
# (/v1/messages for Claude asked on /v1/chat/completions). Envoy's PATH(ORIG_OR_PATH)
# reads x-envoy-original-path, which would also reach the provider, and a Vertex
# client's path names its own project.
CLIENT_PATH_KEY = "io.aigw.client_path"
# The key of the gateway's metadata that carries the path as recorded: in its first
# answer (``envoy_request_record``), and again when it hides a credential in it later
# (``RequestContext.recorded_path``).
PATH_METADATA_KEY = "path"
# What Envoy records of a path that holds a key shape the gateway did not hide.
REDACTED_PATH = f"/{REDACTED}"


def _envoy_path() -> str:
    """The CEL expression of the module docstring's three cases."""
    ours = f"metadata.filter_metadata['{METADATA_NAMESPACE}']"
    # Up to the query (a key there is refused by the gateway, and no record shows the
    # query), standing apart from the letters and digits before it. Read only when the
    # gateway never answered, so ``request.path`` is still the client's.
    shaped = " || ".join(
        f"request.path.matches('^[^?]*(^|[^A-Za-z0-9?]){shape}')" for shape in RE2_SHAPES
    )
    return (
        f"'{METADATA_NAMESPACE}' in metadata.filter_metadata"
        f" && '{PATH_METADATA_KEY}' in {ours} ? {ours}['{PATH_METADATA_KEY}']"
        f" : ({shaped}) ? '{REDACTED_PATH}'"
        f" : filter_state['{CLIENT_PATH_KEY}']"
    )


# Envoy's access log ``path``.
ENVOY_PATH = f"%CEL({_envoy_path()})%"
# Prompts and completions can be long; Envoy cuts the URL tag, never these.
MAX_PATH_TAG_LENGTH = 256
# Envoy's own `http.url` is scheme://authority + path *with* the query, and no tracing
# option drops the query. A custom tag of the same name is set after it when the span
# finishes and replaces it, so this is what the collector gets. By then the provider
# route has rewritten :authority to the provider's host: Envoy keeps the client's in
# x-envoy-original-host.
ENVOY_URL = (
    "%REQ(X-FORWARDED-PROTO)%://%REQ(X-ENVOY-ORIGINAL-HOST?:AUTHORITY)%"
    f"%CEL({_envoy_path()}):{MAX_PATH_TAG_LENGTH}%"
)


def client_path_filters() -> list[Json]:
    """The HTTP filter that keeps the client's path without the query in filter state
    (``CLIENT_PATH_KEY``), first in the chain; it does not go upstream. Read only for a
    request the gateway never answered, and by the span's URL."""
    return [
        {
            "name": "envoy.filters.http.set_filter_state",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.filters.http.set_filter_state.v3.Config",
                "on_request_headers": [
                    {
                        "object_key": CLIENT_PATH_KEY,
                        "factory_key": "envoy.string",
                        "format_string": {"text_format_source": {"inline_string": "%PATH(NQ)%"}},
                    }
                ],
            },
        },
    ]
