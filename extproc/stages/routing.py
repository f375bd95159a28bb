"""Request headers: which route is this, is it AI traffic, and is it allowed in at all.

Paths that are not AI routes pass through untouched and skip every later phase,
so non-AI traffic costs one message.

A trailing slash never moves a request to another route: ``/openai/v1/embeddings/``
would otherwise be read as a chat completion by the ``/openai`` prefix, and
``/v1/responses/compact/`` as a stored response's id. When the path without its
trailing slashes is on another route, the client gets a 404 in that route's error
shape naming the path it meant (OpenAI answers such a path with a 404 too). Nor does
the case of its letters: ``/openai/v1/Embeddings`` gets the same 404, naming
``/openai/v1/embeddings``.

Routes may be kept to hosts (``routes[].hosts``: virtual hosts per provider or
team on one listener). The host decides first, as Envoy's virtual hosts and
Gateway API hostnames do: the routes naming the request's host exactly, then
those of the longest matching wildcard, then the routes without hosts; within
each, the exact path and then the longest prefix. A path the host's own routes
do not serve falls back to the next group, so ``/v1/models`` without a host
stays on every host.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from functools import lru_cache

from extproc import audio_api, headers, vertex_client_api
from extproc.agents.directory import AGENT_APIS
from extproc.config.model import INPUT_ONLY_APIS, RouteApi
from extproc.context import BodyHints, ModeOverride, PhaseOutput, RequestContext
from extproc.controller_routes import route_names
from extproc.converse_api import operation_api
from extproc.envoy_paths import PATH_METADATA_KEY
from extproc.errors import BadRequestError, MethodNotAllowedError, NotFoundError
from extproc.gemini_api import counts_tokens, gemini_call
from extproc.hosts import host_of
from extproc.http_methods import REGISTERED_METHODS
from extproc.images_api import refuse_unserved_path
from extproc.runtime import Route
from extproc.stages.body_headers import check_body_headers
from extproc.stages.chat_request import model_outside_body
from extproc.stages.method_names import recorded_method
from extproc.stages.model_credentials import hide_key_in_unrouted_path

SKIP_EVERYTHING = ModeOverride(
    skip_request_body=True, skip_response_headers=True, response_body="NONE"
)
# A pass-through answer is read from its body alone (extproc.response_path)...
LEAN_RESPONSE = ModeOverride(skip_response_headers=True, response_body="STREAMED")
# ...in one buffered message when the body hints say it is not streamed.
LEAN_BUFFERED = ModeOverride(skip_response_headers=True, response_body="BUFFERED")
# The full path: the response headers, then the body (streamed if the headers say so).
# Said in every AI request's first answer: Envoy reads no response by default, so that
# its replies to requests the gateway never saw (malformed HTTP) are not held.
FULL_RESPONSE = ModeOverride(response_body="BUFFERED")


class RoutingStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
        ctx.request_id = ctx.request_headers.get(headers.REQUEST_ID) or str(uuid.uuid4())
        # Before anything quotes it (a 405, the log line, Envoy's access log).
        ctx.method = recorded_method(ctx)
        route = _checked_route(ctx)
        if headers.CLUSTER in ctx.request_headers:
            # Only the gateway picks a provider. The gateway's own bootstrap strips a
            # client-sent routing header before any filter; under a Gateway API
            # controller it would reach a provider route directly, so refuse it, in the
            # error shape of the client's API (the route's).
            ctx.route = route
            raise BadRequestError(f"the {headers.CLUSTER} header is reserved for the gateway")
        if route is None:
            out.mode_override = SKIP_EVERYTHING
            # Not AI traffic, and no line of the gateway's: only Envoy's records name
            # it, and only rare requests come here.
            hide_key_in_unrouted_path(ctx)
            if ctx.recorded_path is not None:
                out.metadata = {PATH_METADATA_KEY: ctx.recorded_path}
            return
        vertex_call = None
        if route.api is RouteApi.BEDROCK_CONVERSE:
            api = operation_api(ctx.path)
            if api is not None:
                route = operation_route(route, api)
        elif route.api is RouteApi.GEMINI_GENERATE_CONTENT and counts_tokens(ctx.path):
            route = operation_route(route, RouteApi.GEMINI_COUNT_TOKENS)
        elif route.api is RouteApi.ANTHROPIC_VERTEX:
            vertex_call = vertex_client_api.served_call(ctx.path)
            if vertex_call is not None and vertex_call.counts_tokens:
                route = operation_route(route, RouteApi.ANTHROPIC_VERTEX_COUNT_TOKENS)
        ctx.route = route
        if ctx.method not in REGISTERED_METHODS:
            # Again: the route may read its key from a header of its own.
            ctx.method = recorded_method(ctx)
        # Before any change to the request: Envoy shapes its own replies by it.
        out.client_api = ctx.error_shape
        if route.api in AGENT_APIS:
            return  # extproc.agents takes it from here
        # The path without its query, which may carry a credential.
        path = ctx.path.partition("?")[0]
        if route.api is RouteApi.OPENAI_RESPONSES_STORED:
            # Not billed, any method its paths take: stages.stored_responses decides.
            out.mode_override = FULL_RESPONSE
            return
        if route.api is RouteApi.OPENAI_MODELS or route.api is RouteApi.AIGW_LIMITS:
            if ctx.method not in {"GET", "HEAD"}:
                if route.api is RouteApi.OPENAI_MODELS:
                    _refuse_gemini_call(ctx, route, path)
                raise MethodNotAllowedError(
                    f"{ctx.method} is not allowed on {path}", headers={"allow": "GET, HEAD"}
                )
            out.mode_override = FULL_RESPONSE
            return
        if ctx.method != "POST":
            raise MethodNotAllowedError(
                f"{ctx.method} is not allowed on {path}; use POST", headers={"allow": "POST"}
            )
        if route.api is RouteApi.OPENAI_IMAGES:
            # Variations (and unknown paths) are refused before their body is read.
            refuse_unserved_path(path, prefix_route=route.prefix is not None)
        if route.api is RouteApi.OPENAI_AUDIO:
            # Text-to-speech, or another path under a prefix route: refused at once.
            audio_api.refuse_unserved_path(path)
        ctx.accounted = True
        # The gateway reads the answer (usage, translation, guards): it must come
        # uncompressed, whatever the client's SDK accepts (httpx asks for gzip).
        out.remove_headers.append("accept-encoding")
        check_body_headers(ctx)
        named_model = route.forced_model or model_outside_body(ctx)
        answered_as = route
        if vertex_call is not None:
            # Answered as Anthropic's API answers (stages.chat_request makes the request
            # one), for the model Vertex's path names.
            answered_as = vertex_client_api.anthropic_route(route)
            named_model = named_model or vertex_call.model
        hints, hinted = ctx.body_hints, False
        if named_model is None and hints is not None:
            named_model, hinted = hints.model, True
        out.mode_override = FULL_RESPONSE
        if ctx.runtime.lean_response(answered_as, named_model):
            ctx.lean_response = True
            # Embeddings never stream (a body asking to is refused): one buffered answer.
            buffered = route.api in INPUT_ONLY_APIS or (hints is not None and hints.stream is False)
            out.mode_override = LEAN_BUFFERED if buffered else LEAN_RESPONSE
            if hints is not None and (hinted or buffered):
                # Envoy's reading chose the path: the gateway's parse must agree. Most
                # lean requests are chosen by all of it: the hints themselves, no copy.
                ctx.lean_from_hints = (
                    hints
                    if hinted and buffered and hints.stream is False
                    else BodyHints(hints.model if hinted else None, False if buffered else None)
                )


@lru_cache(maxsize=64)
def operation_route(route: Route, api: RouteApi) -> Route:
    """A route's twin for the requests of another operation than its API's own (Bedrock
    Runtime's InvokeModel and CountTokens, Gemini's countTokens): the same route (name,
    auth, guards, quotas), whose API reads that operation's body."""
    return replace(route, api=api)


# Distinct hosts (the request's ``:authority``) whose exact routes are kept per config.
_KNOWN_PATHS = 1024


def _checked_route(ctx: RequestContext) -> Route | None:
    """The request's route (``_route``), its path's slash and case twins refused.

    A path that is an exact route's own, as SDKs send (``/v1/chat/completions``), is
    found in one lookup from the second request on: the host tables, the twin checks and
    the path's splits (about 4 us) give the same answer for every request of that host and
    path. Only configured paths are kept (never a path a client made up, which may name a
    key where a model goes), for at most ``_KNOWN_PATHS`` hosts."""
    path = ctx.path.partition("?")[0]
    known = ctx.runtime.known_paths
    key = (host_of(ctx.request_headers) if ctx.runtime.host_routes is not None else "", path)
    if not ctx.attributes:
        found = known.get(key)
        if found is not None:
            return found
    route = _route(ctx)
    _refuse_slash_twin(ctx, route)
    _refuse_case_twin(ctx)
    if (
        route is not None
        and route.path == path
        and not ctx.attributes
        and len(known) < _KNOWN_PATHS
    ):
        known[key] = route
    return route


def _route(ctx: RequestContext) -> Route | None:
    """The route a controller's attributes name (Envoy Gateway), else the host's and path's."""
    table = ctx.runtime.routes
    if ctx.attributes:
        for name in route_names(ctx.attributes):
            found = table.named(name)
            if found is not None:
                return found
    return _path_route(ctx, ctx.path)


def _path_route(ctx: RequestContext, path: str) -> Route | None:
    """The route the request's host and ``path`` are on."""
    hosts = ctx.runtime.host_routes
    if hosts is None:
        return ctx.runtime.routes.resolve(path)
    return hosts.resolve(host_of(ctx.request_headers), path)


def _refuse_slash_twin(ctx: RequestContext, route: Route | None) -> None:
    """A 404 for a path whose trailing slash put it on another route than the path
    without it (or on none): the client meant that route's API, and would otherwise
    get another API's answer (a chat completion's 400 to an embeddings call), another
    API's error shape, or a stored response named ``compact``."""
    path = ctx.path.partition("?")[0]
    if not path.endswith("/"):
        return
    meant = path.rstrip("/")
    if not meant:
        return
    twin = _path_route(ctx, meant)
    if twin is None or twin == route:
        return
    ctx.route = twin  # its error shape: the API the client meant
    raise NotFoundError(
        f"no route for {ctx.method} {path}; did you mean {meant} (without the trailing slash)?",
        code="route_not_found",
    )


def _refuse_case_twin(ctx: RequestContext) -> None:
    """A 404 for a path whose letters' case put it on a less specific route than the
    path spelled as configured (or on none): ``/openai/v1/Embeddings`` was read as a
    chat completion by the ``/openai`` prefix (a 400 "'messages' is required" for an
    embeddings body), ``/openai/v1/Models`` was told to use POST. Paths are
    case-sensitive (Envoy's route matching, the providers' APIs): the client gets the
    path it meant, in the error shape of that route's API."""
    path = ctx.path.partition("?")[0]
    spelled = path.rstrip("/") or path  # a trailing slash never keeps a miscased path
    hosts = ctx.runtime.host_routes
    if hosts is None:
        twin = ctx.runtime.routes.case_twin(spelled)
    else:
        twin = hosts.case_twin(host_of(ctx.request_headers), spelled)
    if twin is None:
        return
    meant, ctx.route = twin  # its error shape: the API the client meant
    raise NotFoundError(
        f"no route for {ctx.method} {path}; did you mean {meant} (paths are case-sensitive)?",
        code="route_not_found",
    )


def _refuse_gemini_call(ctx: RequestContext, route: Route, path: str) -> None:
    """A 404 in Google's shape for a call of Gemini's API that landed on the OpenAI
    model list's path: google-genai without ``api_version`` posts to
    ``/v1/models/{model}:generateContent``, the list's ``/v1/models/{model}``, and got
    OpenAI's 405. The message names where this gateway serves Gemini's API, if
    anywhere (a Gemini route on the list's own path takes these calls before the list
    does, so they never come here)."""
    call = gemini_call(path)
    if call is None:
        return
    model, operation = call
    ctx.route = operation_route(route, RouteApi.GEMINI_GENERATE_CONTENT)  # Google's shape
    served = sorted(
        {
            spec.path_prefix.rstrip("/")
            for spec in ctx.runtime.config.routes
            if spec.api is RouteApi.GEMINI_GENERATE_CONTENT and spec.path_prefix
        }
    )
    listed = route.path or route.prefix
    said = f"{ctx.method} {path} is a Gemini API call on {listed}, OpenAI's model list here"
    if not served:
        raise NotFoundError(f"{said}; this gateway serves no Gemini API route")
    where = " or ".join(f"{prefix}/{model}:{operation}" for prefix in served)
    versions = [prefix.split("/")[1] for prefix in served if prefix.count("/") == 2]
    hint = (
        f" (google-genai: HttpOptions(api_version={versions[0]!r}))"
        if versions and all(prefix.endswith("/models") for prefix in served)
        else ""
    )
    raise NotFoundError(f"{said}; use {where}{hint}")
