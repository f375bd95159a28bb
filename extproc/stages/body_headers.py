"""What a request's headers say about its body, checked before the body comes.

Shared by the AI routes (stages.routing) and the agent routes (agents.routing): both
read the body's JSON as it comes, under one size limit.
"""

from __future__ import annotations

from extproc.context import RequestContext
from extproc.envoy_messages import content_length
from extproc.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError


def check_body_headers(ctx: RequestContext) -> None:
    """Refuse a compressed body, and one whose declared length is over the limit."""
    encoding = ctx.request_headers.get("content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        # The stages read the body's JSON as it comes; a compressed one would be
        # refused as "not JSON", naming a parser's complaint about its bytes.
        raise UnsupportedMediaTypeError(
            f"request bodies with content-encoding {encoding.strip()!r} are not accepted;"
            " send the JSON uncompressed"
        )
    length = ctx.request_headers.get("content-length")
    if length is None:
        return
    limit = ctx.runtime.config.limits.max_request_body_bytes
    size = content_length(length)
    if size is None:
        raise BadRequestError("content-length is not a number")
    if size > limit:
        raise PayloadTooLargeError(
            f"request body of {size} bytes is over the limit of {limit} bytes"
        )
