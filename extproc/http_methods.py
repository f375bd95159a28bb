"""HTTP methods: the registered ones, and the method Envoy's access log and span record.

A method outside the IANA registry may hold a key a client sent there by mistake
(``stages.method_names``). The gateway names every request's method as it records it in
its first answer (``envoy_request_record``), which Envoy prints; a request the gateway
never answered has its method read by a CEL formatter (``ENVOY_METHOD``).
"""

from __future__ import annotations

from extproc.errors import REDACTED
from extproc.headers import METADATA_NAMESPACE

# The IANA HTTP Method Registry (RFC 9110 and the WebDAV, versioning and other methods
# registered since), as of 2026. Recorded as sent everywhere, the gateway's search
# skipped.
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

# The key of the gateway's metadata that carries the method as the gateway records it
# (``recorded_method``): in its first answer (``envoy_request_record``).
METHOD_METADATA_KEY = "method"


def _envoy_method() -> str:
    """Envoy's span ``method``, and its access log's for a request the gateway never
    answered: the method the gateway named (CEL stops there); without it (not
    reachable, Envoy refused the request first) a registered method as sent, and any
    other ``[redacted]``, as Envoy alone cannot tell a key from a method."""
    listed = ", ".join(f"'{method}'" for method in sorted(REGISTERED_METHODS))
    ours = f"metadata.filter_metadata['{METADATA_NAMESPACE}']"
    return (
        f"%CEL('{METADATA_NAMESPACE}' in metadata.filter_metadata"
        f" && '{METHOD_METADATA_KEY}' in {ours} ? {ours}['{METHOD_METADATA_KEY}']"
        f" : request.method in [{listed}] ? request.method : '{REDACTED}')%"
    )


ENVOY_METHOD = _envoy_method()
