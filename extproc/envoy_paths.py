"""The request's path in Envoy's access log and span: the client's, as the gateway records it.

Envoy records the path the client sent, without its query and before any rewrite: the
first HTTP filter keeps it in filter state (``client_path_filter``). A client that put a
key in its path (settings swapped, ``/openai/<key>/chat/completions``; a Gemini SDK
given its key as the model) left it there, where the gateway's own log line shows the
segment as ``[redacted]`` (``stages.model_credentials``).

So the access log's ``path`` and the span's ``http.url`` are a CEL formatter
(``ENVOY_PATH``), in this order:

1. the path as the gateway recorded it, when the gateway found a credential in it (its
   ``io.aigw`` metadata's ``path``);
2. ``/[redacted]`` when the path Envoy received holds a well-known key shape
   (``credential_shapes.RE2_SHAPES``, searched by Envoy's RE2, off the gateway's event
   loop): a request the gateway never answered (Envoy refused it first, the gateway was
   unreachable), or a segment of a served request the gateway did not search. Envoy's
   CEL has no string replacement nor concatenation, so the whole path goes, not the
   segment;
3. otherwise the client's path as sent.

RE2 reads the path from a copy Envoy keeps as a string in metadata of its own
(``client_path_metadata_filter``): CEL's ``matches`` takes no filter state's bytes, and
the request's ``:path`` is the provider's by then.
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
# The same path with its query, as a string of Envoy's metadata, for RE2 alone: no
# record reads it whole. A namespace of its own, not the gateway's (which Envoy merges
# the gateway's answers into) nor one sent to the gateway.
CLIENT_PATH_NAMESPACE = "io.aigw.client"
# The key of the gateway's metadata that carries the path as recorded, when it found a
# credential in it (``RequestContext.recorded_path``).
PATH_METADATA_KEY = "path"
# What Envoy records of a path that holds a key shape the gateway did not hide.
REDACTED_PATH = f"/{REDACTED}"


def _envoy_path() -> str:
    """The CEL expression of the module docstring's three cases."""
    ours = f"metadata.filter_metadata['{METADATA_NAMESPACE}']"
    received = f"metadata.filter_metadata['{CLIENT_PATH_NAMESPACE}']['path']"
    # Up to the query (a key there is refused by the gateway, and no record shows the
    # query), standing apart from the letters and digits before it.
    shaped = " || ".join(
        f"{received}.matches('^[^?]*(^|[^A-Za-z0-9?]){shape}')" for shape in RE2_SHAPES
    )
    return (
        f"'{METADATA_NAMESPACE}' in metadata.filter_metadata"
        f" && '{PATH_METADATA_KEY}' in {ours} ? {ours}['{PATH_METADATA_KEY}']"
        f" : '{CLIENT_PATH_NAMESPACE}' in metadata.filter_metadata"
        f" && ({shaped}) ? '{REDACTED_PATH}'"
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
    """The HTTP filters that keep the client's path, first in the chain: in filter state
    without the query (``CLIENT_PATH_KEY``), and as metadata with it for RE2
    (``CLIENT_PATH_NAMESPACE``). Neither goes upstream."""
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
        {
            "name": "envoy.filters.http.header_to_metadata",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.filters.http.header_to_metadata.v3.Config",
                "request_rules": [
                    {
                        "header": ":path",
                        "on_header_present": {
                            "metadata_namespace": CLIENT_PATH_NAMESPACE,
                            "key": "path",
                            "type": "STRING",
                        },
                        "remove": False,
                    }
                ],
            },
        },
    ]
