"""The request's own key or token, never repeated in an error or the log line.

A client may send its key where the gateway repeats what it was sent: a message's role
or a ``service_tier`` its refusal quotes ("messages with role '...' cannot be sent to
this model"), a JSON-RPC method or tool name the log line records as sent. (A key where
the model goes is refused outright, before the name is recorded: ``model_credentials``.)
The error would then show it to whatever logs the client's errors, and the log line
(whose ``error_message`` repeats the error) to everyone who reads the gateway's log.

So the credential the request presented is replaced by ``[redacted]`` in the message of
an error the gateway answers (``hide_in_error``), and anywhere in the request's log line
(``AccessLog.write`` is given ``echoed_credential``). A value shorter than
``MIN_CREDENTIAL`` is left alone: it could be part of another word by chance, and the
config takes no key that short.
"""

from __future__ import annotations

from extproc.context import RequestContext
from extproc.errors import REDACTED, GatewayError
from extproc.stages.authentication import presented_credential

# The config's least key length (``auth.api_keys``).
MIN_CREDENTIAL = 8


def echoed_credential(ctx: RequestContext) -> str | None:
    """The key or token the request presented, when long enough to be looked for."""
    presented = presented_credential(ctx)
    return presented if presented is not None and len(presented) >= MIN_CREDENTIAL else None


def hide_in_error(ctx: RequestContext, error: GatewayError) -> None:
    """Replace the request's credential in ``error``'s message (what the client reads
    and the log line's ``error_message``)."""
    credential = echoed_credential(ctx)
    if credential is not None and credential in error.message:
        error.message = error.message.replace(credential, REDACTED)
