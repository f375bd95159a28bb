"""Text that may quote what a client sent, cleaned of credentials for whoever reads it.

A refusal may quote what the client sent (a message's role, a ``service_tier``, a
``content-encoding`` header, the path of a 405), and so may a provider's error (an
OpenAI-compatible server's 400 quotes the value it refused); the log line records some
values as sent (an agent call's JSON-RPC method and tool). A client that swapped its
settings put its key there, and another key or token may come with a pasted value.

Who reads the text decides what it may show, and each reader is served at its moment:

- The client, in the error it gets, when the error is raised (``hide_in_error``): the
  key or token this request presented is ``[redacted]`` (whatever logs the client's
  errors would keep it), but a value of a well-known key's shape that the client sent
  itself it gets back as sent: its own to see, and the error says what was wrong with
  it (a value that must not be quoted even to its sender goes through
  ``errors.quoted`` where it is quoted).
- Whoever runs the gateway, in the request's log line and the metrics, once the
  request is over (``hide_in_logged_errors``; the unread path of ``model_credentials``;
  an agent call's names, ``recorded_name``, and its tool's label, ``holds_credential``):
  this request's key or token, whole or a fragment of a random one, any other
  credential the caller found in the text, and anything of a well-known key's shape or
  a fragment as providers quote one (``errors.without_secrets``,
  ``auth.credential_shapes``).

``cleaned`` is the one function behind both; a new place that quotes client text calls
it (or one of the helpers here) for its reader. Only a request with something to hide
pays for the look: the client's reader runs on refusals alone, the log's on a request
that ends with an error, and an accepted chat request reads none of it.

A value shorter than ``MIN_CREDENTIAL`` is never looked for: it could be part of
another word by chance, and the config takes no key that short.
"""

from __future__ import annotations

from collections.abc import Iterable

from extproc.auth import credential_shapes
from extproc.context import RequestContext
from extproc.errors import REDACTED, GatewayError, without_secrets
from extproc.stages.authentication import presented_credential

# The config's least key length (``auth.api_keys``); ``errors.without_secrets`` looks
# for no shorter secret either.
MIN_CREDENTIAL = 8


def echoed_credential(ctx: RequestContext) -> str | None:
    """The key or token the request presented, when long enough to be looked for."""
    presented = presented_credential(ctx)
    return presented if presented is not None and len(presented) >= MIN_CREDENTIAL else None


def cleaned(
    text: str, credential: str | None, *, shapes_shown: bool, also: Iterable[str] = ()
) -> str:
    """``text`` without the request's ``credential`` and the credentials in ``also``.

    ``shapes_shown``: the text goes back to the client that sent it, which may see the
    well-known shapes it sent itself; each credential is hidden where it is shown whole.
    Otherwise the text is for anyone else: fragments of a random credential and every
    well-known shape, the looser forms providers quote included, go too."""
    # The longest first: one may hold another (a path's segment, the key inside it).
    secrets = sorted(
        (s for s in (credential, *also) if s is not None and len(s) >= MIN_CREDENTIAL),
        key=len,
        reverse=True,
    )
    if not shapes_shown:
        return without_secrets(text, secrets)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def holds_credential(value: str, credential: str | None) -> bool:
    """Whether ``value`` (a name a client gave) holds the request's ``credential`` or
    anything of a well-known key's shape: such a value is shown to no one but its
    sender, not even in part."""
    if credential is not None and credential in value:
        return True
    return credential_shapes.kind(value) is not None


def recorded_name(value: str | None) -> str | None:
    """A name the log line records as the client sent it (an agent call's method or
    tool), with anything of a well-known key's shape ``[redacted]`` in it. The request's
    own key the line hides wherever it is (``AccessLog.write``). Only the whole shapes:
    the looser forms ``cleaned`` hides in words would take a name's own parts
    (``pk_lookup``)."""
    if value is None:
        return None
    return credential_shapes.redacted(value, REDACTED)


def hide_in_error(ctx: RequestContext, error: GatewayError) -> None:
    """When ``error`` is raised: its message and its ``param`` as the client may read
    them (a refusal names a field the client named, an edit form's, in both)."""
    credential = echoed_credential(ctx)
    if credential is None:
        return
    if credential in error.message:
        error.message = cleaned(error.message, credential, shapes_shown=True)
    if error.param is not None and credential in error.param:
        error.param = cleaned(error.param, credential, shapes_shown=True)


def hide_in_logged_errors(ctx: RequestContext, also: Iterable[str] = ()) -> None:
    """Before the request log is written: the errors it will quote (its
    ``error_message``), as whoever reads the log may see them. ``also``: other
    credentials found in what the request sent (the path's, ``model_credentials``)."""
    errors = [error for error in (ctx.error, ctx.stream_refusal) if error is not None]
    if not errors:
        return
    credential = echoed_credential(ctx)
    for error in errors:
        error.message = cleaned(error.message, credential, shapes_shown=False, also=also)
