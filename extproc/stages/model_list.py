"""``GET /v1/models`` and ``GET /v1/models/{model}``: answered by the gateway from the
config, without going upstream; in OpenAI's shape, or in Anthropic's for an Anthropic
client (``anthropic_models``).

Runs after authentication, so the list holds only what the caller may use: every
configured name (a model's own and each of its aliases) that the caller could
send on at least one route that serves it (chat, responses and their compaction, completions
or embeddings, by the model's ``kind`` and the provider types each API reaches), as the chat request
stage would decide it there (the route's provider and fixed model, the key's
``allowed_models`` and ``allowed_routes``, the access rules of that route).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import unquote

import orjson

from extproc import anthropic_models
from extproc.backends import provider_api
from extproc.config.model import (
    ANTHROPIC_VERTEX_APIS,
    ProviderType,
    RouteApi,
    route_takes_kind,
)
from extproc.context import Identity, PhaseOutput, RequestContext
from extproc.errors import ModelNotFoundError
from extproc.runtime import Route, Runtime, Upstream
from extproc.translators.anthropic_bedrock import may_run_claude

# The routes a model is used on: those that generate answers or embeddings.
# Count-tokens routes generate nothing, and agent routes name no model.
_USING_APIS = frozenset(
    {
        RouteApi.OPENAI_CHAT,
        RouteApi.ANTHROPIC_MESSAGES,
        RouteApi.ANTHROPIC_VERTEX,
        RouteApi.OPENAI_EMBEDDINGS,
        RouteApi.RERANK,
        RouteApi.OPENAI_RESPONSES,
        RouteApi.OPENAI_COMPLETIONS,
        RouteApi.OPENAI_RESPONSES_COMPACT,
        RouteApi.OPENAI_IMAGES,
        RouteApi.OPENAI_AUDIO,
        RouteApi.OPENAI_MODERATIONS,
    }
)
# The client APIs served by one provider type only (nothing translates to them).
_ONLY_PROVIDER = {
    RouteApi.ANTHROPIC_MESSAGES: ProviderType.ANTHROPIC,
    RouteApi.OPENAI_RESPONSES: ProviderType.OPENAI,
    RouteApi.OPENAI_COMPLETIONS: ProviderType.OPENAI,
    RouteApi.OPENAI_RESPONSES_COMPACT: ProviderType.OPENAI,
    RouteApi.OPENAI_IMAGES: ProviderType.OPENAI,
    RouteApi.OPENAI_AUDIO: ProviderType.OPENAI,
    RouteApi.OPENAI_MODERATIONS: ProviderType.OPENAI,
    RouteApi.RERANK: ProviderType.OPENAI,
}

# A path may be as long as Envoy's header limit: the error echoes no more than this.
_SHOWN_NAME = 256


class ModelListStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
        route = ctx.route
        if route is None or route.api is not RouteApi.OPENAI_MODELS:
            return
        created = int(ctx.started_wall)
        names = usable_names(ctx.runtime, ctx.identity)
        wanted = _model_in_path(route, ctx.path)
        anthropic = ctx.error_shape == "anthropic"  # an Anthropic client's call
        if wanted is None and anthropic:
            query = ctx.path.partition("?")[2]
            body = orjson.dumps(anthropic_models.page(names, query, created))
        elif wanted is None:
            models = [_model(name, created) for name in names]
            body = orjson.dumps({"object": "list", "data": models})
        elif wanted in names:
            describe = anthropic_models.entry if anthropic else _model
            body = orjson.dumps(describe(wanted, created))
        else:
            # As OpenAI answers a model the caller cannot use: one message whether it
            # is not configured or kept from this caller, so no key learns of others'.
            shown = wanted if len(wanted) <= _SHOWN_NAME else wanted[:_SHOWN_NAME] + "..."
            raise ModelNotFoundError(
                f"The model '{shown}' does not exist or you do not have access to it.",
                param="model",
            )
        out.answer = (200, body, {"content-type": "application/json"})


def _model(name: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": "aigw"}


def _model_in_path(route: Route, path: str) -> str | None:
    """The model ``<list>/{model}`` names (``models.retrieve``), None for the list itself.
    SDKs percent-encode the name (a fine-tuned model's colons, a ``/`` in
    ``meta-llama/Llama-3.3-70B``)."""
    path = path.partition("?")[0]
    base = (route.prefix if route.prefix is not None else route.path or "").rstrip("/")
    rest = path[len(base) :] if path.startswith(base) else ""
    name = unquote(rest.removeprefix("/").rstrip("/"))
    return name or None


def usable_names(runtime: Runtime, identity: Identity) -> list[str]:
    """The configured names ``identity`` may send, in config order, aliases after their model.

    A key allowed only ``haiku`` sees ``haiku``; a rule kept to one route hides its
    model only when no other route lets the caller use it."""
    routes = list(_using_routes(runtime, identity))
    names: list[str] = []
    for model in runtime.config.models:
        for name in (model.name, *model.aliases):
            canonical = None if name == model.name else model.name
            if any(_usable_on(runtime, identity, name, canonical, route) for route in routes):
                names.append(name)
    # A model group, after the models: where the caller may use one of its members.
    for group in runtime.groups.values():
        if any(_group_usable_on(runtime, identity, group.name, route) for route in routes):
            names.append(group.name)
    return names


def _group_usable_on(runtime: Runtime, identity: Identity, group: str, route: Route) -> bool:
    """Whether a request for the model group ``group`` on ``route`` would find a member
    (``stages.chat_request.choose_member``), by the group's kind and its members'."""
    if route.forced_model is not None and route.forced_model != group:
        return False
    kind = runtime.model_kind.get(group)
    if not route_takes_kind(route.api, kind):
        return False
    return any(
        _usable_on(runtime, identity, member, group, route, forced_checked=True)
        for member in runtime.group_members[group]
    )


def _using_routes(runtime: Runtime, identity: Identity) -> Iterator[Route]:
    """The routes that use a model and that the caller's key may use."""
    allowed = identity.allowed_routes
    for spec in runtime.config.routes:
        if spec.api not in _USING_APIS or (allowed and spec.name not in allowed):
            continue
        route = runtime.routes.named(spec.name)
        if route is not None:
            yield route


def _usable_on(
    runtime: Runtime,
    identity: Identity,
    name: str,
    canonical: str | None,
    route: Route,
    forced_checked: bool = False,
) -> bool:
    """Whether a request for ``name`` on ``route`` would pass the model checks
    (``forced_checked``: a group's member, whose group the route's own model is)."""
    if not forced_checked and route.forced_model is not None and route.forced_model != name:
        return False  # the route sends its own model, whatever the client names
    kind = runtime.model_kind.get(name)
    if not route_takes_kind(route.api, kind):
        return False  # an embeddings model on a chat route, or the other way round
    upstream = runtime.resolve_upstream(name, route)
    if upstream is None:
        return False
    # A Vertex client's call is served as Anthropic's (extproc.vertex_client_api).
    api = ANTHROPIC_VERTEX_APIS.get(route.api, route.api)
    only = _ONLY_PROVIDER.get(api)
    if only is not None and _api_of(upstream, api) is not only:
        return False  # Anthropic's API only by Anthropic providers, Responses by OpenAI's
    return runtime.access.denial(identity, name, route.name, canonical) is None


def _api_of(upstream: Upstream, api: RouteApi) -> ProviderType:
    """The API ``upstream``'s model speaks to the route's: its provider's type, but
    Claude on Vertex (``backends.provider_api``) and on Bedrock (a model id that names
    Claude, or an ARN that hides its model) speak Anthropic's Messages API."""
    kind = upstream.provider.type
    if api is RouteApi.ANTHROPIC_MESSAGES and kind is ProviderType.VERTEX:
        return provider_api(upstream)
    if api is RouteApi.ANTHROPIC_MESSAGES and kind is ProviderType.BEDROCK:
        claude = may_run_claude(upstream.upstream_model)
        return ProviderType.ANTHROPIC if claude else kind
    return kind
