"""A credential where the model's name goes: refused, and never written down.

The model a request names (in its body, its path, a header or the query) is recorded
everywhere: the request log's ``model``, Envoy's access log and the span (from the
gateway's metadata), a ``model`` label of the metrics when a route sends any name on
(``model_prefixes``, a route's ``provider``), and the 404 for a model no one serves, with
its log line's ``error_message``. A client that swapped its settings (``OPENAI_MODEL``
set to the key) put its key in all of them, and, on a route that sends any name on, in
the provider's request and logs too.

Refused like a credential in the query (``authentication``): a 400 in the client API's
shape that names what the model holds, never the value, before the name is recorded. A
model holds a credential when it holds this request's own key or token, an org key the
config holds (another team's, pasted by mistake), or anything shaped as a well-known
key or token (``auth.credential_shapes``).
"""

from __future__ import annotations

from urllib.parse import unquote

from extproc.auth import credential_shapes
from extproc.context import RequestContext
from extproc.errors import REDACTED, BadRequestError
from extproc.stages.authentication import presented_credential

# As for the query: shorter, a credential could be part of a model's name by chance.
_MIN_CREDENTIAL = 8


def refuse_credential_in_model(ctx: RequestContext, model: str) -> None:
    """Refuse ``model`` when it holds a credential; the path that named it (the request
    log's ``path``) then shows the segment as ``[redacted]``."""
    what = _credential_in(ctx, model)
    if what is None:
        return
    ctx.path = _path_without(ctx.path, model)
    raise BadRequestError(
        f"'model' holds {what}, not a model name: remove it from the model "
        "(a key goes in 'Authorization: Bearer <key>' or 'x-api-key: <key>', never where "
        "it is logged or passed on), and rotate the key if it was sent to others",
        param="model",
        code="credential_in_model",
    )


def _credential_in(ctx: RequestContext, model: str) -> str | None:
    """What credential ``model`` holds, in words that never quote it; None for none."""
    presented = presented_credential(ctx)
    if presented is not None and len(presented) >= _MIN_CREDENTIAL and presented in model:
        return "this request's API key or token"
    runtime = ctx.runtime
    if model in runtime.plain_model_names:
        return None  # the config's own model name: checked for the rest once, at load
    if runtime.api_keys.lookup(model.strip()) is not None:
        return "an API key of this gateway"
    return credential_shapes.kind(model)


def _path_without(path: str, model: str) -> str:
    """``path`` with the segment that named ``model`` (percent-encoded or not) replaced."""
    route_path, mark, query = path.partition("?")
    segments = [
        REDACTED if segment and model in (segment, unquote(segment)) else segment
        for segment in route_path.split("/")
    ]
    return "/".join(segments) + mark + query
