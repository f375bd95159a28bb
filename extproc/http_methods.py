"""HTTP methods: the registered ones, and the method Envoy's access log and span record.

A method outside the IANA registry may hold a key a client sent there by mistake
(``stages.method_names``): Envoy records it as the gateway does (``ENVOY_METHOD``).
"""

from __future__ import annotations

from extproc.errors import REDACTED
from extproc.headers import METADATA_NAMESPACE

# The IANA HTTP Method Registry (RFC 9110 and the WebDAV, versioning and other methods
# registered since), as of 2026. Recorded as sent everywhere, the gateway's search and
# Envoy's metadata read skipped.
REGISTERED_METHODS = frozenset(
    {
        "ACL", "BASELINE-CONTROL", "BIND", "CHECKIN", "CHECKOUT", "CONNECT", "COPY",
        "DELETE", "GET", "HEAD", "LABEL", "LINK", "LOCK", "MERGE", "MKACTIVITY",
        "MKCALENDAR", "MKCOL", "MKREDIRECTREF", "MKWORKSPACE", "MOVE", "OPTIONS",
        "ORDERPATCH", "PATCH", "POST", "PRI", "PROPFIND", "PROPPATCH", "PUT", "QUERY",
        "REBIND", "REPORT", "SEARCH", "TRACE", "UNBIND", "UNCHECKOUT", "UNLINK", "UNLOCK",
        "UPDATE", "UPDATEREDIRECTREF", "VERSION-CONTROL",
    }
)  # fmt: skip

# The key of the gateway's metadata that carries a method outside the registry, as the
# gateway records it (``recorded_method``).
METHOD_METADATA_KEY = "method"


def _envoy_method() -> str:
    """Envoy's access log and span ``method``: a registered method as sent; another,
    as the gateway recorded it in its metadata; without that metadata (a request the
    gateway never answered: not reachable, or not AI traffic) ``[redacted]``, as Envoy
    alone cannot tell a key from a method."""
    listed = ", ".join(f"'{method}'" for method in sorted(REGISTERED_METHODS))
    ours = f"metadata.filter_metadata['{METADATA_NAMESPACE}']"
    return (
        f"%CEL(request.method in [{listed}] ? request.method"
        f" : '{METADATA_NAMESPACE}' in metadata.filter_metadata"
        f" && '{METHOD_METADATA_KEY}' in {ours}"
        f" ? {ours}['{METHOD_METADATA_KEY}'] : '{REDACTED}')%"
    )


ENVOY_METHOD = _envoy_method()
