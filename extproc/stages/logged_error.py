"""The request log's ``error_message``: never a credential, whoever wrote the message.

A refusal may quote what the client sent (``request bodies with content-encoding '...'``,
``Invalid value for 'response_format.type': '...'``), and so may a provider's error (an
OpenAI-compatible server's 400 quotes the value it refused). A client that put its key
there, or any key or token, gets it back, which is its own to see; but the request log,
kept and read by whoever runs the gateway, recorded it too. The line's message is the
client's with this request's own key or token (whole, or a fragment of a random one:
``errors.without_secrets``) and anything shaped as a well-known credential
(``auth.credential_shapes``) shown as ``[redacted]``.
"""

from __future__ import annotations

from extproc.context import RequestContext
from extproc.errors import without_secrets
from extproc.stages.authentication import presented_credential


def hide_credentials_in_error(ctx: RequestContext) -> None:
    """Before the request log is written: the errors it will quote, without credentials.
    Only a request with an error pays for the look."""
    errors = [error for error in (ctx.error, ctx.stream_refusal) if error is not None]
    if not errors:
        return
    credential = presented_credential(ctx)
    known = () if credential is None else (credential,)
    for error in errors:
        error.message = without_secrets(error.message, known)
