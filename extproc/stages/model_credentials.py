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

A request that ends before its model is read (refused for its key, its method, its rate,
its body; or left by its client) never reaches that check, yet its log line records the
path: there, every segment of the path that holds a credential is shown as ``[redacted]``
(``redact_unread_path``). A client that swapped its settings on an ``/openai/<model>``
route sends its key in the path and a model name as its key, and is refused a 401 first.

A request served has its model's segment checked, and the request's own key looked for
anywhere in its path (``hide_own_key_in_path``, a substring test; percent-decoded only when
the path holds an escape Envoy left, a key's ``+`` or ``=``); its other segments are not
searched here: a served request is the common case. An agent call is looked at the same
way once authenticated, and a request no route serves, which the gateway writes no line
for, has the key of its standard headers looked for, for Envoy's records alone
(``hide_key_in_unrouted_path``). Envoy's access log and span get the path from the
gateway's first answer, the request's own key hidden and a path with a well-known key
shape anywhere ``/[redacted]`` (``envoy_request_record``; Envoy's RE2 for a request the
gateway never answered, ``envoy_paths``); whatever the gateway hides later, it hands
Envoy the path as recorded (``RequestContext.recorded_path``, the metadata's ``path``).
"""

from __future__ import annotations

from urllib.parse import unquote

from extproc.auth import credential_shapes
from extproc.context import RequestContext
from extproc.credential_cleaner import MIN_CREDENTIAL, echoed_credential
from extproc.errors import REDACTED, BadRequestError
from extproc.stages.authentication import presented_credential, standard_credential


def refuse_credential_in_model(ctx: RequestContext, model: str) -> None:
    """Refuse ``model`` when it holds a credential; the path that named it (the request
    log's ``path``) then shows the segment as ``[redacted]``."""
    what = credential_in(ctx, model)
    if what is None:
        return
    _record_path(ctx, _path_without(ctx.path, model))
    raise BadRequestError(
        f"'model' holds {what}, not a model name: remove it from the model "
        "(a key goes in 'Authorization: Bearer <key>' or 'x-api-key: <key>', never where "
        "it is logged or passed on), and rotate the key if it was sent to others",
        param="model",
        code="credential_in_model",
    )


def redact_unread_path(ctx: RequestContext) -> list[str]:
    """For a request refused or left before its model was read: the segments of its path
    that hold a credential, as the request log shows them, ``[redacted]``. Returns each
    such segment as sent and percent-decoded, for the log line's ``error_message``
    (``credential_cleaner.hide_in_logged_errors``): a refusal that names the path (405's
    "GET is not allowed on /openai/<key>") is the line's error_message, while the
    client, whose path it is, got it whole. Only such requests pay for the look (an
    accepted model was checked, its path with it).

    Looked at once: first when the refusal's answer is built, so that the metadata it
    carries to Envoy names the path as recorded; the request log asks again."""
    if ctx.path_credentials is not None:
        return ctx.path_credentials
    if ctx.model is not None or ctx.route is None or not (ctx.error or ctx.aborted):
        return []
    route_path, mark, query = ctx.path.partition("?")
    segments = route_path.split("/")
    held = [segment for segment in segments if segment and credential_in(ctx, unquote(segment))]
    ctx.path_credentials = [form for segment in held for form in {segment, unquote(segment)}]
    if held:
        cleaned = "/".join(REDACTED if s in held else s for s in segments)
        _record_path(ctx, cleaned + mark + query)
    return ctx.path_credentials


def hide_own_key_in_path(ctx: RequestContext) -> None:
    """For a request about to be served (an AI request, an agent call): the request's
    own key or token, wherever in its path the client put it, ``[redacted]`` in every
    record (the log line hides it too when written; Envoy's access log and span only
    through the metadata). One substring test: every served request pays it."""
    _hide_in_path(ctx, echoed_credential(ctx))


def hide_key_in_unrouted_path(ctx: RequestContext) -> None:
    """For a request no gateway route serves (Envoy answers its 404, and the gateway
    writes no line): the key or token it carries in the standard headers, wherever in
    its path, ``[redacted]`` in Envoy's access log and span. Envoy finds the well-known
    shapes by itself; a key of the config's own shape (``team1-key``) it cannot know."""
    credential = standard_credential(ctx)
    if credential is not None and len(credential) >= MIN_CREDENTIAL:
        _hide_in_path(ctx, credential)


def _hide_in_path(ctx: RequestContext, credential: str | None) -> None:
    """``credential``, as sent or percent-encoded, ``[redacted]`` in the recorded path."""
    if credential is None:
        return
    hidden = path_without_credential(ctx.path, credential)
    if hidden is not None:
        _record_path(ctx, hidden)


def path_without_credential(path: str, credential: str) -> str | None:
    """``path`` with ``credential``, as sent or percent-encoded, ``[redacted]``; None
    when it holds none."""
    if credential in path:
        return path.replace(credential, REDACTED)
    if "%" in path:
        # Envoy decodes escapes of letters, digits and -._~ alone (normalize_path): a
        # key's '+', '/' or '=' may come encoded (a base64 key as a client escapes it).
        route_path, mark, query = path.partition("?")
        segments = route_path.split("/")
        held = {s for s in segments if "%" in s and credential in unquote(s)}
        if held:
            cleaned = "/".join(REDACTED if s in held else s for s in segments)
            return cleaned + mark + query
    return None


def _record_path(ctx: RequestContext, path: str) -> None:
    """``path`` as the request's path in every record from here on."""
    ctx.path = path
    ctx.recorded_path = path.partition("?")[0]


def credential_in(ctx: RequestContext, model: str) -> str | None:
    """What credential ``model`` (or another name the request gives that is recorded, a
    header's value a quota counts) holds, in words that never quote it; None for none."""
    presented = presented_credential(ctx)
    if presented is not None and len(presented) >= MIN_CREDENTIAL and presented in model:
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
