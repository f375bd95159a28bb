"""What a request's headers say about its body, checked before the body comes.

Shared by the AI routes (stages.routing) and the agent routes (agents.routing): both
read the body as it comes, under the route's size limit (``routes[].max_request_body_bytes``,
or ``limits.max_request_body_bytes``), checked here by the declared length and by
``check_body_size`` on the body itself.
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
    size = content_length(length)
    if size is None:
        raise BadRequestError("content-length is not a number")
    check_body_size(ctx, size)


def request_body_limit(ctx: RequestContext) -> int:
    """The largest body the request's route takes: its own limit, or the global one."""
    route = ctx.route
    if route is not None and route.max_request_body_bytes is not None:
        return route.max_request_body_bytes
    return ctx.runtime.config.limits.max_request_body_bytes


def check_body_size(ctx: RequestContext, size: int) -> None:
    """A 413 for a body over the route's limit, naming the limit and whose it is: an
    operator reading a client's report must tell the route's from the global one."""
    limit = request_body_limit(ctx)
    if size <= limit:
        return
    route = ctx.route
    owner = f"route {route.name!r}" if route is not None else "this gateway"
    raise PayloadTooLargeError(
        f"request body of {size} bytes is over the limit of {limit} bytes of {owner}"
    )
