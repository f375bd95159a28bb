"""Which requests can take the lean response path: no response-headers message.

Envoy sends the ext_proc server a blocking message for the response headers and
one for each response body chunk. For a pass-through answer (an OpenAI client to
an OpenAI-compatible provider, an Anthropic client to Anthropic) the gateway
never needs to change the response headers: it only reads the status and the
body (usage, the hidden usage chunk, masking). Such requests skip the headers
message, which the benchmark showed to be the most expensive of the four (the
response path then costs one round trip instead of two), and read everything
from the body messages:

- the status comes with the first body message as the ext_proc attribute
  ``response.code`` (``response.code_details`` tells the provider's answer from
  Envoy's own local reply);
- a non-streamed answer comes whole, in one BUFFERED body message (the response
  then costs one message instead of two); a stream, or an answer whose kind is
  not known yet, comes STREAMED, which serves a JSON answer (one or a few chunks,
  read whole at the end) as well as an event stream;
- the ``x-ratelimit-*`` headers (and an Anthropic client's ``anthropic-ratelimit-*``)
  are set by Envoy's routes from dynamic metadata that the quota stage returns with
  the request body, for both paths.

The choice must be made in the answer to the request headers (Envoy honours a
``mode_override`` only there), before the gateway has seen the body. Envoy's
``json_to_metadata`` filter reads the body's ``model`` and ``stream`` first and
sends them with the request headers (the body hints, ``envoy_bootstrap``). So a
request is lean when the model named by the route, path, header or query (else by
the hints) resolves to a provider of the client's own API with no failover chain;
without any of them, when every model and prefix the route can reach does. The
answer is BUFFERED when the hints say the client did not ask for a stream. Since
Envoy's reading chose the path, the gateway's own parse of the body must agree
with it (``ChatRequestStage``: a body read two ways is refused, 400
``ambiguous_body``). Translated providers (whose errors change status) and
failover chains (whose answers carry the attempt's provider in headers) keep the
full path.

A whole answer in one message leaves Envoy without its length: Envoy passes the
headers on before the body and drops ``content-length`` (the gateway could change
the body), so HTTP/1.1 clients get it chunked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from extproc.config.model import GatewayConfig, ProviderType, RouteApi
from extproc.envoy_failover import FAILOVER_APIS

if TYPE_CHECKING:
    from extproc.runtime import Route, Upstream

# The provider type whose API each client API passes through unchanged.
PASS_THROUGH: dict[RouteApi, ProviderType] = {
    RouteApi.OPENAI_CHAT: ProviderType.OPENAI,
    RouteApi.OPENAI_EMBEDDINGS: ProviderType.OPENAI,
    RouteApi.RERANK: ProviderType.OPENAI,
    RouteApi.OPENAI_RESPONSES: ProviderType.OPENAI,
    RouteApi.OPENAI_COMPLETIONS: ProviderType.OPENAI,
    RouteApi.OPENAI_RESPONSES_COMPACT: ProviderType.OPENAI,
    RouteApi.ANTHROPIC_MESSAGES: ProviderType.ANTHROPIC,
}
# Client APIs that reach other provider types than their own only translated to these
# (Anthropic's Messages API: Claude on Bedrock and on Vertex, whose errors are
# rewritten); a model of any other type is refused at the body, so it does not keep a
# route off the lean path.
_TRANSLATED_TO: dict[RouteApi, frozenset[ProviderType]] = {
    RouteApi.ANTHROPIC_MESSAGES: frozenset({ProviderType.BEDROCK, ProviderType.VERTEX}),
}
# Client APIs nothing translates to.
_UNTRANSLATED = frozenset(
    {
        RouteApi.ANTHROPIC_MESSAGES,
        RouteApi.OPENAI_RESPONSES,
        RouteApi.OPENAI_COMPLETIONS,
        RouteApi.OPENAI_RESPONSES_COMPACT,
    }
)


def lean_routes(config: GatewayConfig) -> frozenset[str]:
    """Routes on which every model a body can name is served as a pass-through."""
    if not config.envoy.lean_responses:
        return frozenset()
    providers = {provider.name: provider.type for provider in config.providers}
    with_fallbacks = {model.name for model in config.models if model.fallbacks}
    lean: set[str] = set()
    for route in config.routes:
        wanted = PASS_THROUGH.get(route.api)
        if wanted is None:
            continue
        reachable = {model.provider for model in config.models}
        reachable.update(prefix.provider for prefix in config.model_prefixes)
        if route.provider is not None:
            reachable = {route.provider}
        if route.api in _UNTRANSLATED:
            # Messages reach Anthropic and Claude on Bedrock; nothing translates to
            # Responses (compactions included) or text completions: other providers
            # are refused at the body.
            translated = _TRANSLATED_TO.get(route.api, frozenset())
            reachable = {
                name
                for name in reachable
                if providers[name] is wanted or providers[name] in translated
            }
        if any(providers[name] is not wanted for name in reachable):
            continue
        served = {m.name for m in config.models if m.provider in reachable}
        if route.api in FAILOVER_APIS and served & with_fallbacks:
            continue
        lean.add(route.name)
    return frozenset(lean)


def is_lean(
    config: GatewayConfig,
    route: Route,
    named_model: str | None,
    lean: frozenset[str],
    resolve: Callable[[str, Route], Upstream | None],
    failover: Mapping[str, object],
) -> bool:
    """Whether this request skips the response-headers message.

    ``named_model`` is the model the route, path, header or query names (None when
    only the body will); it wins over the body's, so it decides alone.
    """
    wanted = PASS_THROUGH.get(route.api)
    if wanted is None or not config.envoy.lean_responses:
        return False
    if named_model is None:
        return route.name in lean
    upstream = resolve(named_model, route)
    if upstream is None:
        return False  # refused at the body anyway
    if route.api in FAILOVER_APIS and named_model in failover:
        return False
    return upstream.provider.type is wanted
