"""The request's HTTP method as the gateway records and repeats it.

Envoy passes a method of any token characters on over HTTP/2 (HTTP/1.1 requests with a
method Envoy does not know are refused by its codec before the gateway sees them), and
the gateway repeated it: in its 405 ("<method> is not allowed on /v1/chat/completions;
use POST"), its log line's ``method``, and Envoy's access log. A client whose settings
were swapped, or a library that takes a method from a misread variable, sent its key
there: an OpenAI project key as the method was written whole into both logs.

A method of the IANA HTTP method registry is recorded as sent, with no search (every
ordinary request). Any other is searched once per request, as a path segment is
(``model_credentials.credential_in``): this request's own key or token (letters of
either case: HTTP libraries upper-case a method), an org key of the config, a
well-known key shape (as sent, or lower-cased, as such a library would have sent the
shape). One that holds a credential is ``[redacted]`` for every reader: the client's
error, the log line, and Envoy's access log and span, which print the method the
gateway's first answer names (``envoy_request_record``).
"""

from __future__ import annotations

from extproc.context import RequestContext
from extproc.credential_cleaner import MIN_CREDENTIAL
from extproc.errors import REDACTED
from extproc.http_methods import REGISTERED_METHODS
from extproc.stages.authentication import presented_credential, standard_credential
from extproc.stages.model_credentials import credential_in


def recorded_method(ctx: RequestContext) -> str:
    """``ctx.method`` as the gateway may repeat it: ``[redacted]`` when it holds a
    credential (module docstring). Asked again once the route is known, whose own key
    header may hold the request's key."""
    method = ctx.method
    if method in REGISTERED_METHODS or not _holds_credential(ctx, method):
        return method
    return REDACTED


def _holds_credential(ctx: RequestContext, method: str) -> bool:
    # Before its route is known (a 404 quotes the method too), the standard headers'.
    presented = presented_credential(ctx) if ctx.route else standard_credential(ctx)
    own = presented is not None and len(presented) >= MIN_CREDENTIAL
    if own and presented.casefold() in method.casefold():  # type: ignore[union-attr]
        return True
    lowered = method.lower()
    return credential_in(ctx, method) is not None or (
        lowered != method and credential_in(ctx, lowered) is not None
    )
