"""Failover in the Envoy bootstrap: retries that move to the next provider, each attempt
translated and signed for its own provider.

For a model with fallbacks, the gateway routes to an aggregate cluster of the
providers' clusters, in order; Envoy retries on 429, 5xx, resets, timeouts and
connection failures before the first response byte, each retry moving to the
next cluster (``previous_priorities``). An ext_proc filter in the router's
upstream filter chain runs once per attempt: the gateway learns from the
endpoint's metadata which provider this attempt goes to, and translates the
client's request and the provider's answer for that provider. Everywhere else
that upstream filter is disabled per route, so traffic without failover pays
nothing for it.

A caller's access rules may keep it from some fallbacks. Envoy cannot leave
members out of a route's chain per request, so every chain is also rendered
without each combination of its fallbacks (2**n chains for n fallbacks), and
the gateway routes each request to the chain of the fallbacks its caller may
use: a fallback kept from the caller is never tried, and the last answer the
client gets comes from a model it may use.

An attempt's answer is read whole by its filter before it goes on. One larger than
``envoy.max_response_body_bytes`` never does: Envoy answers the client a 502
``response_too_large`` of its own instead, without waiting for the gateway's answer to
that attempt's response headers (the headers that name who answered are lost with it).
The provider billed that answer all the same. So each attempt also names itself in the
request's dynamic metadata when it sends its request (Envoy has that answer before the
provider gets the request, and the last attempt to send is the one that answered: an
answer that started is never retried), and Envoy's reply for an answer over the buffer
carries that name in the same headers, for the downstream filter to charge
(``stages.cut_answer``).

An attempt whose provider started an answer (its status below 400) is billed by that
provider even when its body is cut mid-way (a reset, a stall past the attempt's
timeout): for the router that answer had not started, so Envoy retries the next member
and only that one's answer reaches the downstream filter. So such an attempt is named
as started in the request's dynamic metadata at its response headers, under a key of
its own provider (``started_key``: a later attempt adds its name rather than
overwriting the earlier one's), and each failover route turns those names into the
response header ``STARTED`` (on a provider's answer and Envoy's own replies alike),
which the downstream filter charges and removes. Routes without failover add nothing.

Envoy itself writes that name, not the attempt's ext_proc filter: a small Lua filter
after it in the upstream chain (nearer the provider, so it sees the answer's headers
first) reads the status and the name the attempt wrote when it sent its request, and
writes the mark at once. The ext_proc filter's own answer to the response headers
comes a gRPC round trip later, and a provider that resets right after its headers (as
a crashed one does) ends the attempt before it: Envoy drops that answer, metadata
included (seen with Envoy 1.40, ``tests/integration/test_failover_cut_attempts.py``).
The ext_proc filter takes the name back when it turns the whole answer into an error
(``stages.attempt``); it has the whole body then, so nothing can cut it short.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from itertools import combinations
from typing import Any

from extproc.config.model import (
    GatewayConfig,
    ModelConfig,
    ProviderType,
    RouteApi,
    cluster_name,
    failover_chain_name,
)
from extproc.envoy_values import metadata_response_headers
from extproc.headers import (
    ABOUT_THE_CLIENT,
    ANSWERED_BY_MODEL,
    ANSWERED_BY_PROVIDER,
    ANSWERED_UPSTREAM_MODEL,
    ATTEMPTS_STARTED,
    CLUSTER,
    METADATA_NAMESPACE,
    gateway_headers_added,
    metadata_key,
    provider_headers_removed,
)

Json = dict[str, Any]
_TYPE = "type.googleapis.com/"
UPSTREAM_FILTER = "aigw.upstream_ext_proc"
# The Lua filter that names an attempt as started (STARTED), after UPSTREAM_FILTER.
STARTED_FILTER = "aigw.attempt_started"
# Sent by the per-attempt filter on its gRPC streams: the gateway serves them in attempt mode.
ATTEMPT_METADATA = "x-aigw-stream"
HOST_METADATA_ATTRIBUTE = "xds.upstream_host_metadata"
# The headers that name the chain member an attempt serves: on its answer, and, from the
# metadata the attempt wrote under their metadata_key, on Envoy's reply replacing it.
ANSWERED_HEADERS = (ANSWERED_BY_PROVIDER, ANSWERED_BY_MODEL, ANSWERED_UPSTREAM_MODEL)
# Envoy's response code details for an answer over the buffer (its local reply's mapper).
_TOO_LARGE_DETAILS = "response_payload_too_large"
# The failover attempts whose provider started an answer, as "<provider>," each, in
# chain order: added by a failover route for the downstream filter (stages.cut_answer),
# which removes it before the client sees the answer.
STARTED = ATTEMPTS_STARTED
# What ends each attempt's name in STARTED (provider names have no comma: config.model).
STARTED_SEPARATOR = ","
# The client APIs whose requests fail over: OpenAI's chat completions, Responses API
# (and its compaction), legacy text completions and embeddings, Anthropic's Messages API
# (Claude Code, the anthropic SDK; a Vertex client's rawPredict call is one once its path
# is read), Gemini's generateContent (google-genai, Gemini CLI, ADK) and Bedrock
# Runtime's Converse and InvokeModel (the AWS SDKs). Each attempt is translated from the
# client's API to its provider's and back, or passed to a provider of the client's own
# API with its own model in the path and its own credentials, so a chain serves any
# client API the gateway can send to every member it keeps
# (``backends.serves_client_api``; embeddings only to the same model elsewhere, whose
# vectors compare: ``backends.same_embeddings_model``); a token count, which generates
# nothing, goes to its model's provider alone. A Responses API request that builds on
# context one provider keeps (``previous_response_id``, ``conversation``, a stored
# ``prompt``) goes to the member of that provider alone (``stages.response_owner``):
# through the chain's pinned route (``pinned_cluster_name``) when it is a fallback's.
FAILOVER_APIS = frozenset(
    {
        RouteApi.OPENAI_CHAT,
        RouteApi.OPENAI_RESPONSES,
        RouteApi.OPENAI_RESPONSES_COMPACT,
        RouteApi.OPENAI_COMPLETIONS,
        RouteApi.OPENAI_EMBEDDINGS,
        RouteApi.ANTHROPIC_MESSAGES,
        RouteApi.GEMINI_GENERATE_CONTENT,
        RouteApi.BEDROCK_CONVERSE,
        RouteApi.BEDROCK_INVOKE,
    }
)


# Providers whose credentials are fetched over the network, and may be pending.
_FETCHED_CREDENTIALS = frozenset({ProviderType.BEDROCK, ProviderType.VERTEX})


def started_key(provider: str) -> str:
    """The metadata key under which an attempt on ``provider`` names itself as started:
    one per provider, so the attempts of one request each keep theirs (a chain has one
    member per provider)."""
    return f"{metadata_key(STARTED)}_by_{provider}"


# The primary's position among the members a chain may skip (0 is the first fallback).
PRIMARY = -1


def failover_cluster_name(model: str, skipped: Collection[int] = ()) -> str:
    """The aggregate cluster (and route) of ``model``'s chain, less the members at the
    ``skipped`` positions (0 is the first fallback, ``PRIMARY`` the primary)."""
    name = failover_chain_name(model)
    if skipped:
        # "-" is not in the slug's alphabet: no model's own name can end like this.
        name += "-without-" + "-".join(str(position + 1) for position in sorted(skipped))
    return name


def pinned_cluster_name(model: str, fallback: int) -> str:
    """The route of ``model``'s chain that sends a request to the fallback at position
    ``fallback`` (0 is the first) alone, through the per-attempt filter: a Responses API
    request continuing a response that fallback's provider stores."""
    return failover_chain_name(model) + f"-only-{fallback + 1}"


def pinnable(config: GatewayConfig, model: ModelConfig) -> list[int]:
    """The fallback positions of ``model``'s chain a request can be pinned to: those on
    OpenAI-compatible providers, the only ones that store Responses API responses."""
    by_name = {each.name: each for each in config.models}
    return [
        position
        for position, name in enumerate(model.fallbacks)
        if config.provider(by_name[name].provider).type is ProviderType.OPENAI
    ]


def skippable(fallbacks: int) -> Iterator[tuple[int, ...]]:
    """Every set of fallback positions a caller's access rules may keep it from, none first."""
    for count in range(fallbacks + 1):
        yield from combinations(range(fallbacks), count)


def skippable_members(config: GatewayConfig, model: ModelConfig) -> Iterator[tuple[int, ...]]:
    """Every set of members a request of ``model``'s chain may go without: the fallbacks
    its caller's access rules keep it from (``skippable``) and, for a primary whose
    provider fetches its credentials (Bedrock, Vertex), the primary along with them while
    those credentials are pending (providers.credentials_pending), as long as a fallback
    is left."""
    fallbacks = len(model.fallbacks)
    yield from skippable(fallbacks)
    if config.provider(model.provider).type not in _FETCHED_CREDENTIALS:
        return
    for skipped in skippable(fallbacks):
        if len(skipped) < fallbacks:
            yield (PRIMARY, *skipped)


def models_with_fallbacks(config: GatewayConfig) -> list[ModelConfig]:
    return [model for model in config.models if model.fallbacks]


def attempt_timeout_s(config: GatewayConfig, model: ModelConfig) -> float:
    """Each attempt's wait for its answer to start on a route whose first member is
    ``model``: a chain's primary's timeout (Envoy has one per-try timeout per route),
    which is what a timeout failover is about; a pinned route's fallback's own."""
    return config.provider(model.provider).timeout_s or config.envoy.upstream_timeout_s


def longest_failover_wait_s(config: GatewayConfig) -> float:
    """The longest a failover may wait for an answer to start: every member's attempt
    timing out but the last. Nothing reaches the client meanwhile, so Envoy's stream
    idle timer must outlast it (envoy_bootstrap)."""
    return max(
        (
            (1 + len(model.fallbacks)) * attempt_timeout_s(config, model)
            for model in models_with_fallbacks(config)
        ),
        default=0.0,
    )


def add_failover(bootstrap: Json, config: GatewayConfig, ext_proc_filter: Json) -> None:
    """Extend a rendered bootstrap with what failover needs (nothing when unused)."""
    chains = models_with_fallbacks(config)
    if not chains:
        return
    by_name = {model.name: model for model in config.models}
    resources = bootstrap["static_resources"]
    for cluster in resources["clusters"]:
        provider = next((p for p in config.providers if cluster_name(p) == cluster["name"]), None)
        if provider is not None:
            # Tells the per-attempt filter which provider an attempt goes to.
            for locality in cluster["load_assignment"]["endpoints"]:
                for endpoint in locality["lb_endpoints"]:
                    # Beside, not over, other metadata (the egress proxy's address).
                    endpoint.setdefault("metadata", {})["filter_metadata"] = {
                        METADATA_NAMESPACE: {"provider": provider.name}
                    }
    manager = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    disabled = {
        UPSTREAM_FILTER: {
            "@type": _TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
            "disabled": True,
        },
        STARTED_FILTER: {
            "@type": _TYPE + "envoy.extensions.filters.http.lua.v3.LuaPerRoute",
            "disabled": True,
        },
    }
    for route in routes:
        route["typed_per_filter_config"] = disabled
    failover_routes = []
    for model in chains:
        members = [model.provider, *(by_name[name].provider for name in model.fallbacks)]
        for skipped in skippable_members(config, model):
            kept = [m for i, m in enumerate(members) if i - 1 not in skipped]
            clusters = [cluster_name(config.provider(name)) for name in kept]
            name = failover_cluster_name(model.name, skipped)
            resources["clusters"].append(_aggregate(name, clusters))
            failover_routes.append(
                _route(
                    name,
                    name,
                    kept,
                    _headers_removed(config, kept),
                    _headers_added(config, kept),
                    len(clusters),
                    attempt_timeout_s(config, model),
                )
            )
        for position in pinnable(config, model):
            # No aggregate: the one member's own cluster, tried once, and so waited for
            # as its provider says (a request naming that model would be): the primary's
            # timeout is the chain's, set to fail over soon, and would cut a long answer.
            fallback = by_name[model.fallbacks[position]]
            provider = config.provider(fallback.provider)
            pinned = pinned_cluster_name(model.name, position)
            failover_routes.append(
                _route(
                    pinned,
                    cluster_name(provider),
                    [provider.name],
                    list(provider_headers_removed(provider.type)),
                    gateway_headers_added(provider.type),
                    1,
                    attempt_timeout_s(config, fallback),
                )
            )
    # Before the catch-all 404, which is last.
    routes[-1:-1] = failover_routes
    manager["route_config"]["virtual_hosts"][0]["include_attempt_count_in_response"] = True
    _name_the_attempt_in_the_too_large_reply(manager["local_reply_config"]["mappers"])
    router = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.router")
    router["typed_config"]["upstream_http_filters"] = [
        _attempt_filter(ext_proc_filter),
        _started_filter(),
        {
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
            },
        },
    ]


def _aggregate(name: str, clusters: list[str]) -> Json:
    return {
        "name": name,
        "connect_timeout": "5s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.aggregate",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": clusters,
            },
        },
    }


def _headers_removed(config: GatewayConfig, providers: list[str]) -> list[str]:
    """The account headers of every provider of a chain, for whichever answers."""
    removed: dict[str, None] = {}
    for name in providers:
        removed.update(dict.fromkeys(provider_headers_removed(config.provider(name).type)))
    return list(removed)


def _headers_added(config: GatewayConfig, providers: list[str]) -> tuple[str, ...]:
    """The rate-limit headers of every provider of a chain, for whichever answers."""
    added: dict[str, None] = {}
    for name in providers:
        added.update(dict.fromkeys(gateway_headers_added(config.provider(name).type)))
    return tuple(added)


def _route(
    name: str,
    cluster: str,
    providers: list[str],
    headers_removed: list[str],
    headers_added: tuple[str, ...],
    attempts: int,
    per_try_s: float,
) -> Json:
    """The route the gateway picks by ``name`` (its CLUSTER header) to ``cluster``."""
    return {
        "name": name,
        "match": {
            "prefix": "/",
            "headers": [{"name": CLUSTER, "string_match": {"exact": name}}],
        },
        "route": {
            "cluster": cluster,
            # No limit on the whole request: a route timeout runs to the answer's last
            # byte and would cut a stream still flowing. Each attempt is bounded until
            # its answer starts (per_try_timeout); a started answer runs to its end.
            "timeout": "0s",
            "retry_policy": {
                "retry_on": "5xx,reset,connect-failure,retriable-status-codes",
                "retriable_status_codes": [429],
                "num_retries": attempts - 1,
                "per_try_timeout": f"{per_try_s:g}s",
                "retry_priority": {
                    "name": "envoy.retry_priorities.previous_priorities",
                    "typed_config": {
                        "@type": _TYPE + "envoy.extensions.retry.priority.previous_priorities.v3"
                        ".PreviousPrioritiesConfig",
                        "update_frequency": 1,
                    },
                },
            },
        },
        "request_headers_to_remove": [CLUSTER, *ABOUT_THE_CLIENT],
        # As on a provider's own route (envoy_bootstrap._provider_route): the account's
        # id and limits are not the caller's, nor a redirect's location theirs to follow.
        "response_headers_to_remove": headers_removed,
        # Anthropic's names for the gateway's limits where Anthropic clients' requests
        # go (headers.gateway_headers_added).
        "response_headers_to_add": [
            _started_header(providers),
            *metadata_response_headers(headers_added),
        ],
    }


def _started_header(providers: list[str]) -> Json:
    """The attempts of the chain that started an answer: each member's name as its attempt
    wrote it (an absent one renders empty), on whatever answer the client gets, Envoy's
    502 after the last attempt was cut included. It overwrites any a provider sent; an
    empty one (no attempt started) is not added."""
    value = "".join(
        f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{started_key(provider)})%"
        for provider in providers
    )
    return {
        "header": {"key": STARTED, "value": value},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        "keep_empty_value": False,
    }


def _name_the_attempt_in_the_too_large_reply(mappers: list[Json]) -> None:
    """Envoy's reply to an answer over the buffer names the attempt last sent, which is
    the one whose answer it dropped; a request without failover has no such metadata,
    and an empty value adds no header. The reply comes in each client API's shape (its
    Bedrock, Google and Anthropic twins match those APIs' clients), and each names it:
    those clients fail over too."""
    found = [mapper for mapper in mappers if _TOO_LARGE_DETAILS in _expression(mapper)]
    if not any("request.path" not in _expression(mapper) for mapper in found):
        raise ValueError(f"the bootstrap has no local reply for {_TOO_LARGE_DETAILS}")
    named = [
        {
            "header": {
                "key": name,
                "value": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{metadata_key(name)})%",
            },
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "keep_empty_value": False,
        }
        for name in ANSWERED_HEADERS
    ]
    for mapper in found:
        # After what the reply adds already (Bedrock's exception name).
        mapper["headers_to_add"] = [*mapper.get("headers_to_add", []), *named]


def _expression(mapper: Json) -> str:
    """The CEL condition of a local reply mapper (envoy_bootstrap._error_mapper)."""
    condition: str = mapper["filter"]["extension_filter"]["typed_config"]["expression"]
    return condition


# The Lua filter's script: on an answer below 400, the attempt's provider (the name it
# wrote when it sent its request, ANSWERED_BY_PROVIDER's metadata) names itself under
# started_key. Nothing for a request without that name: no attempt of the gateway's.
_STARTED_SCRIPT = """
function envoy_on_response(handle)
  local status = tonumber(handle:headers():get(":status"))
  if status == nil or status >= 400 then
    return
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  local named = metadata:get("{namespace}")
  local provider = named and named["{provider_key}"]
  if type(provider) ~= "string" or provider == "" then
    return
  end
  metadata:set("{namespace}", "{started_prefix}" .. provider, provider .. "{separator}")
end
"""


def started_script() -> str:
    """The Lua code that names an attempt as started (what Envoy runs, for tests)."""
    return (
        _STARTED_SCRIPT.replace("{namespace}", METADATA_NAMESPACE)
        .replace("{provider_key}", metadata_key(ANSWERED_BY_PROVIDER))
        .replace("{started_prefix}", started_key(""))
        .replace("{separator}", STARTED_SEPARATOR)
    )


def _started_filter() -> Json:
    return {
        "name": STARTED_FILTER,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": started_script()},
        },
    }


def _attempt_filter(downstream: Json) -> Json:
    typed = dict(downstream["typed_config"])
    service = dict(typed["grpc_service"])
    service["initial_metadata"] = [{"key": ATTEMPT_METADATA, "value": "attempt"}]
    typed["grpc_service"] = service
    typed["request_attributes"] = [HOST_METADATA_ATTRIBUTE]
    # Never past a gateway that did not answer, whatever envoy.failure_mode_allow says:
    # Envoy replays the attempt before's header changes into the next attempt, so an
    # attempt let through unprocessed went to the next provider with the previous
    # provider's credential (and a body not translated for it). It could serve nothing;
    # failed, it is one more failed attempt of the chain.
    typed["failure_mode_allow"] = False
    # The attempt filter may set :authority (each provider has its own host).
    typed["mutation_rules"] = {"allow_all_routing": True, "disallow_is_error": True}
    # Only to name the attempt for Envoy's reply to an answer over the buffer, and as
    # started (stages.attempt); the metadata goes to the request's, where that reply and
    # the failover route read it.
    typed["metadata_options"] = {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}}
    # Every attempt's answer is read and translated (its request headers answer sets no
    # mode); a reply Envoy makes before any filter saw the request never reaches here.
    typed["processing_mode"] = {
        **typed["processing_mode"],
        "response_header_mode": "SEND",
        "response_body_mode": "BUFFERED",
    }
    return {"name": UPSTREAM_FILTER, "typed_config": typed}
