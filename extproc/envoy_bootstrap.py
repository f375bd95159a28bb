"""Render Envoy's bootstrap from the gateway config: one source of truth for routes and providers.

The bootstrap is a plain dict in Envoy's v3 JSON/YAML shape, dumped as YAML by
``extproc render-envoy``; the committed ``envoy/envoy.yaml`` is the render of
``config/gateway.yaml`` with no environment set. It holds one listener whose HTTP
connection manager runs the gateway's ``ext_proc`` filter and then the router, a
cluster for the gateway itself (gRPC over HTTP/2, kept alive with PINGs), and one
cluster and one route per provider. The gateway picks a provider by setting the
``x-aigw-cluster`` header and clearing the route cache; requests it does not route
fall through to a 404, in the shape of the client's API (``_route_miss_mappers``).

Errors Envoy itself produces (upstream refused or timed out, body too large,
gateway unreachable or full) are rewritten into the error shape of the client's API,
the one the gateway's own errors take (OpenAI's, Anthropic's, Bedrock's, Google's),
so clients see one error format whoever refused them. The gateway names that API in
its first answer (dynamic metadata, ``headers.CLIENT_API_KEY``): by the time Envoy
replies, the request's path and headers may be the provider's.

Envoy's defaults suit short web requests; an LLM call lasts seconds to minutes and
may answer megabytes. So every cluster gets circuit breakers sized by
``envoy.max_concurrent_requests``, routes to a provider buffer answers up to
``envoy.max_response_body_bytes``, and a provider's timeout bounds the wait for its
answer to start, never the answer itself (docs/configuration.md, "What ends a call").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import yaml

from extproc import anthropic_models
from extproc.agents.envoy import add_agents, longest_agent_timeout_s
from extproc.config.egress_model import EgressConfig, bypassed
from extproc.config.loader import load_config
from extproc.config.model import (
    EnvoyConfig,
    GatewayConfig,
    ProviderConfig,
    RouteApi,
    cluster_name,
)
from extproc.envoy_body_limits import NO_CLUSTER_DETAILS, add_body_limit_routes
from extproc.envoy_failover import add_failover, longest_failover_wait_s
from extproc.envoy_paths import ENVOY_PATH, PATH_METADATA_KEY, client_path_filters
from extproc.envoy_replies import (
    BY_STATUS,
    FAILED_CODE,
    FAILED_MESSAGE,
    OVERLOADED_CODE,
    OVERLOADED_MESSAGE,
    REJECTED_CODE,
    REJECTED_MESSAGE,
    TOO_LARGE_DETAILS,
)
from extproc.envoy_tracing import add_tracing
from extproc.envoy_values import cel_string, duration, is_ip, metadata_response_headers
from extproc.errors import (
    BEDROCK_ERROR_TYPE_HEADER,
    RESPONSE_TOO_LARGE_MESSAGE,
    BadRequestError,
    GatewayError,
    GatewayTimeoutError,
    NotFoundError,
    ServiceUnavailableError,
    UpstreamError,
    anthropic_error_body,
    bedrock_exception,
    google_status,
)
from extproc.headers import (
    ABOUT_THE_CLIENT,
    BODY_HINTS_NAMESPACE,
    CLIENT_API_KEY,
    CLUSTER,
    METADATA_NAMESPACE,
    RATE_LIMIT_HEADERS,
    gateway_headers_added,
    provider_headers_removed,
)
from extproc.http_methods import ENVOY_METHOD, METHOD_METADATA_KEY
from extproc.transport_security import envoy_transport_socket, listener_transport_socket
from extproc.worker_endpoints import worker_addresses, worker_sockets

Json = dict[str, Any]

EXT_PROC_CLUSTER = "extproc"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEFAULT_CONFIG = "config/gateway.yaml"
# libyaml's emitter where PyYAML was built with it: the same bytes as the pure-Python
# one for a bootstrap, in a sixth of the CPU (every start of a stack renders one).
_SAFE_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# Headroom over the largest body the gateway accepts, so a body just over the limit
# still reaches the gateway and gets its own 413 instead of Envoy's; and over the
# largest body Envoy sends the gateway in one message, for the message's other fields.
BUFFER_SLACK_BYTES = 64 * 1024
# Envoy's default circuit breakers allow 1024 concurrent requests and 3 concurrent
# retries per cluster. An LLM call holds a request (and a gateway stream) open for
# seconds to minutes, so those would turn a busy minute into 503s, and silently skip
# failovers, long before any real limit. The default; _apply_limits gives every
# cluster the configured envoy.max_concurrent_requests.
MAX_CONCURRENT_REQUESTS = EnvoyConfig().max_concurrent_requests
EXT_PROC_CONNECT_TIMEOUT_S = 1.0
PROVIDER_CONNECT_TIMEOUT_S = 5.0
# Envoy's "no limit" for a route timeout.
NO_TIMEOUT = "0s"
# Keep-alive connections to providers are dropped before providers drop them.
PROVIDER_IDLE_TIMEOUT_S = 60.0
# The endpoint metadata key naming the egress proxy for Envoy's http_11_proxy socket.
HTTP11_PROXY_ADDRESS = "envoy.http11_proxy_transport_socket.proxy_address"
_HTTP11_PROXY_TRANSPORT = (
    "envoy.extensions.transport_sockets.http_11_proxy.v3.Http11ProxyUpstreamTransport"
)

_TYPE = "type.googleapis.com/"
_HEADER = (
    "# Generated by `extproc render-envoy` from the gateway config. Do not edit by hand:\n"
    "# change the config and render again.\n"
)

# Local replies: Envoy answers some requests itself (upstream refused, timed out,
# body over the buffer limit, gateway unreachable). Those must reach clients as
# OpenAI-shaped JSON. The gateway's own refusals (ext_proc ImmediateResponse) and
# the catch-all 404 are local replies too, but already carry that JSON with
# `content-type: application/json`, and must pass byte for byte.
#
# Mechanism: each mapper's filter is a CEL access-log filter that matches a local
# reply only when its response does not already declare JSON. Response flags
# (UF, UH, UT, ...) were the other candidate, but on Envoy 1.40 these replies
# carry no flag at all: 413 request_payload_too_large, 500 response_payload_too_large,
# 500 ext_proc_error_gRPC_error_14 (gateway down), 500 header_mutation_set_headers_failed;
# and every new failure mode would need a new entry. "Not JSON yet" covers them all
# and by construction never touches a reply that already is JSON. Consequence: the
# gateway must set `content-type: application/json` on every ImmediateResponse
# (without it Envoy labels the body text/plain, and this rewrites it). Checked
# against the real Envoy 1.40: an ImmediateResponse body arrives byte for byte, a
# refused upstream becomes a JSON 503, an upstream timeout a JSON 504, an unrouted
# path gets the JSON 404.
_NOT_JSON_YET = (
    "!('content-type' in response.headers"
    " && response.headers['content-type'].startsWith('application/json'))"
)
# A path no route serves: Envoy's catch-all 404 (``_not_found_route``), in the shape of
# the client's API (``_route_miss_mappers``).
ROUTE_MISS_CODE = "route_not_found"
ROUTE_MISS = NotFoundError("no route for this path", code=ROUTE_MISS_CODE)
_DIRECT_404 = "response.code_details == 'direct_response' && response.code == 404"
# The client's API as the gateway named it in its first answer (``CLIENT_API_KEY``).
_GATEWAY_METADATA = f"metadata.filter_metadata['{METADATA_NAMESPACE}']"
_GATEWAY_SAID = (
    f"('{METADATA_NAMESPACE}' in metadata.filter_metadata"
    f" && '{CLIENT_API_KEY}' in {_GATEWAY_METADATA})"
)
_CLIENT_API = f"{_GATEWAY_METADATA}['{CLIENT_API_KEY}']"
# Which client's API a request the gateway did not answer speaks, beside its path: the
# header its SDK sends on every call and OpenAI's never do (Anthropic's SDKs and Claude
# Code, the AWS SDKs, Google's Gen AI SDKs and Gemini CLI). A call the gateway does not
# route (Anthropic's ``/v1/messages/batches``, Bedrock's ApplyGuardrail, Gemini's file
# uploads) then gets a 404 its SDK reads, not OpenAI's. Never once the gateway has
# answered: it adds anthropic-version to an OpenAI client's request for Claude. First
# match wins: an AWS or Google SDK's path may be an Anthropic model's.
_SDK_HEADERS = (
    ("bedrock", "amz-sdk-invocation-id"),
    ("google", "x-goog-api-client"),
    ("anthropic", anthropic_models.CLIENT_HEADER),
)


def render_bootstrap(config: GatewayConfig) -> dict[str, Any]:
    """The whole Envoy bootstrap for one gateway config."""
    bootstrap: dict[str, Any] = {
        "admin": {"address": _socket_address(config.envoy.admin_address, config.envoy.admin_port)},
        "static_resources": {
            "listeners": [_listener(config)],
            "clusters": [_ext_proc_cluster(config)]
            + [_provider_cluster(provider, config.egress) for provider in config.providers],
        },
    }
    add_agents(bootstrap, config)
    add_failover(bootstrap, config, _ext_proc_filter(config))
    add_body_limit_routes(bootstrap, config, BUFFER_SLACK_BYTES)
    add_tracing(bootstrap, config)
    _apply_limits(bootstrap, config.envoy)
    return bootstrap


def _apply_limits(bootstrap: Json, envoy: EnvoyConfig) -> None:
    """The same concurrency and answer-size limits wherever a cluster or route came from
    (this module, failover chains, agent servers); a cluster with limits of its own (the
    trace collector's) keeps them."""
    resources = bootstrap["static_resources"]
    for cluster in resources["clusters"]:
        cluster.setdefault("circuit_breakers", _circuit_breakers(envoy.max_concurrent_requests))
    for listener in resources["listeners"]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        for route in manager["route_config"]["virtual_hosts"][0]["routes"]:
            # Routes to an upstream (not the catch-all 404): Envoy raises the stream's
            # buffer to this once the gateway picked the route, so a whole non-streamed
            # answer fits; at 1 MiB a long answer broke off or got a 500, uncounted.
            # A route with a limit of its own (envoy_body_limits) keeps it.
            if "route" in route:
                route.setdefault("request_body_buffer_limit", envoy.max_response_body_bytes)


def render_bootstrap_yaml(config: GatewayConfig) -> str:
    """The bootstrap as YAML: same config, same bytes."""
    body = yaml.dump(
        render_bootstrap(config),
        Dumper=_SAFE_DUMPER,
        sort_keys=False,
        default_flow_style=False,
        width=1000,
    )
    return _HEADER + body


def render_default(config_path: str | Path = DEFAULT_CONFIG) -> str:
    """What ``envoy/envoy.yaml`` holds: the default config rendered with no environment."""
    return render_bootstrap_yaml(load_config(config_path, environ={}))


# How long a graceful drain (``POST /drain_listeners?graceful``, which the Kubernetes
# pod's preStop sends as its shutdown begins) keeps Envoy's listener accepting
# connections while it tells each one to close after its request: the time the pod
# takes to leave the Service's endpoints, which is the gateway's own preStop sleep.
# Then the listener closes, and the streams still open finish on their connections.
DRAIN_TIME_S = 20


def envoy_command(
    config: GatewayConfig, bootstrap_path: str, envoy_binary: str = "envoy"
) -> list[str]:
    """The argv that starts Envoy on a rendered bootstrap. A drain closes every
    connection after its request at once (``immediate``): Envoy's default closes a
    growing share of them over ten minutes, too slow for a pod being stopped."""
    return [
        envoy_binary,
        "-c",
        bootstrap_path,
        "--concurrency",
        str(config.envoy.concurrency),
        "--log-level",
        "warn",
        "--disable-hot-restart",
        "--drain-strategy",
        "immediate",
        "--drain-time-s",
        str(DRAIN_TIME_S),
    ]


# --- listener -------------------------------------------------------------------


def _listener(config: GatewayConfig) -> Json:
    listener = _plain_listener(config)
    if config.envoy.listener_tls is not None:
        chain = listener["filter_chains"][0]
        chain["transport_socket"] = listener_transport_socket(config.envoy.listener_tls)
    return listener


def _plain_listener(config: GatewayConfig) -> Json:
    return {
        "name": "aigw",
        "address": _socket_address(config.envoy.listener_address, config.envoy.listener_port),
        # Envoy buffers the request body for ext_proc up to this limit, then answers 413.
        # The request is buffered before the gateway picks a provider, so under the
        # catch-all route, which keeps this limit; a provider's route raises it for the
        # answer (_apply_limits: Envoy 1.40 applies a route's request_body_buffer_limit
        # to the stream once the route is picked, answers included).
        "per_connection_buffer_limit_bytes": config.limits.max_request_body_bytes
        + BUFFER_SLACK_BYTES,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": _http_connection_manager(config),
                    }
                ]
            }
        ],
    }


def _http_connection_manager(config: GatewayConfig) -> Json:
    hcm: Json = {
        "@type": _TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "aigw",
        "codec_type": "AUTO",
        "generate_request_id": True,
        # Clients get the id their log lines carry, without a header mutation per request.
        "always_set_request_id_in_response": True,
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "request_headers_timeout": "10s",
        # A non-streamed completion sends nothing until it is done, nor does a failover
        # while it waits out its attempts: the idle timer must outlast the longest wait
        # for an answer to start, or Envoy ends the call first (a 504). It also
        # ends a stream that falls silent for that long.
        "stream_idle_timeout": duration(_longest_request_s(config)),
        # Larger headers or more of them are refused by Envoy (431), before the gateway.
        "max_request_headers_kb": config.limits.max_request_headers_kb,
        "common_http_protocol_options": {
            "headers_with_underscores_action": "DROP_HEADER",
            "max_headers_count": config.limits.max_request_headers,
        },
        "local_reply_config": _local_reply_config(config),
        "early_header_mutation_extensions": [_strip_routing_header()],
        "route_config": _route_config(config),
        "http_filters": [
            *client_path_filters(),
            *_body_hints_filters(config),
            _ext_proc_filter(config),
            _router_filter(),
        ],
    }
    if config.envoy.access_log:
        hcm["access_log"] = _access_logs()
    return hcm


def _strip_routing_header() -> Json:
    """Only the gateway may pick a provider: drop a client-sent routing header.

    Otherwise a client could send ``x-aigw-cluster`` itself on a path the gateway
    lets through untouched and reach a provider directly. It has to go before the
    route is first picked, which the connection manager does before any HTTP filter
    runs (a header_mutation filter was too late: the cached route kept the forged
    header). ``internal_only_headers`` strips only for clients Envoy deems external,
    which hangs on ``internal_address_config`` (an empty ``cidr_ranges`` made
    loopback clients internal and kept the header); this applies to every client.
    """
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": _TYPE
            + "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            "mutations": [{"remove": CLUSTER}],
        },
    }


def _body_hints_filters(config: GatewayConfig) -> list[Json]:
    """Envoy reads the JSON body's ``model`` and ``stream`` before the gateway's first message.

    The gateway can then choose, in its answer to the request headers (the only
    answer Envoy takes a processing mode from), how to read the response: a
    non-streamed answer from a pass-through provider skips the response-headers
    message and comes whole, in one buffered body message (extproc.response_path).
    Only a hint: the gateway's own parse of the body decides everything else, and
    refuses a body whose two readings disagree. Without a JSON body (or when it
    does not parse) nothing is set and the request takes the usual path.
    """
    if not config.envoy.lean_responses:
        return []

    def rule(key: str) -> Json:
        return {
            "selectors": [{"key": key}],
            "on_present": {
                "metadata_namespace": BODY_HINTS_NAMESPACE,
                "key": key,
                "type": "PROTOBUF_VALUE",
            },
        }

    return [
        {
            "name": "envoy.filters.http.json_to_metadata",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
                "request_rules": {"rules": [rule("model"), rule("stream")]},
            },
        }
    ]


def _ext_proc_filter(config: GatewayConfig) -> Json:
    metadata: Json = {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}}
    if config.envoy.lean_responses:
        metadata["forwarding_namespaces"] = {"untyped": [BODY_HINTS_NAMESPACE]}
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER},
                # One stream lives as long as its request, streamed answers included,
                # which no timeout bounds. Envoy 1.40 did not end a stream at this
                # timeout (a 2 s stream outlived a 1 s one); each message is bounded
                # by message_timeout.
                "timeout": duration(_longest_request_s(config)),
            },
            "failure_mode_allow": config.envoy.failure_mode_allow,
            # The response is read only when the gateway's request-headers answer asks
            # for it (mode_override: routing.FULL_RESPONSE, the lean path's modes, the
            # agents'): a reply Envoy makes for a request that never reached the gateway
            # (431 for headers too large, 400 for malformed HTTP) must not wait for an
            # answer, or the connection, which Envoy then closes, carries none at all.
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SKIP",
                "request_body_mode": "BUFFERED",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            # The gateway streams SSE responses, skips the response headers of
            # pass-through requests and every later phase of non-AI traffic.
            "allow_mode_override": True,
            # Sent with the first response message: the lean path's status.
            "response_attributes": ["response.code", "response.code_details"],
            "message_timeout": duration(config.envoy.message_timeout_ms / 1000),
            # Usage and identity the gateway returns, for the access log and tracers.
            # ...and the body hints Envoy read (_body_hints_filters), with the request headers.
            "metadata_options": metadata,
            # Envoy's defaults already let the gateway rewrite :path, set x-aigw-cluster
            # and provider credentials, and remove the client's authorization; they keep
            # host/:authority/:method/:scheme and x-envoy-* out of reach. These rules
            # also apply to ImmediateResponse headers (retry-after, x-ratelimit-*), so
            # they stay permissive; a rejected mutation fails loudly rather than silently.
            "mutation_rules": {"disallow_is_error": True},
        },
    }


def _router_filter() -> Json:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
    }


def _access_logs() -> list[Json]:
    """One JSON line per request, written by one of two loggers that differ in where
    the line's ``method`` and ``path`` come from.

    A request the gateway answered: from the metadata of its first answer, printed as
    they are (``envoy_request_record``: the method and path as the gateway records
    them, a credential in either hidden). Picked by Envoy's metadata filter, a map
    lookup: Envoy's CEL formatters cost about 25 us of its CPU per request.

    Any other (Envoy refused it first, a local reply, the gateway unreachable): the CEL
    formatters, which read the request itself (``http_methods.ENVOY_METHOD``,
    ``envoy_paths.ENVOY_PATH``).
    """
    answered = {
        "matcher": {
            "filter": METADATA_NAMESPACE,
            "path": [{"key": PATH_METADATA_KEY}],
            "value": {"present_match": True},
        },
        "match_if_key_not_found": False,
    }
    # A string the gateway named matches no null: only a request without one is logged
    # here (Envoy's metadata filter has no inversion of its own).
    unanswered = {
        "matcher": {
            "filter": METADATA_NAMESPACE,
            "path": [{"key": PATH_METADATA_KEY}],
            "value": {"null_match": {}},
        },
        "match_if_key_not_found": True,
    }
    return [
        _access_log(
            answered, method=_metadata(METHOD_METADATA_KEY), path=_metadata(PATH_METADATA_KEY)
        ),
        _access_log(unanswered, method=ENVOY_METHOD, path=ENVOY_PATH),
    ]


def _metadata(key: str) -> str:
    return f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{key})%"


def _access_log(metadata_filter: Json, method: str, path: str) -> Json:
    return {
        "name": "envoy.access_loggers.stdout",
        "filter": {"metadata_filter": metadata_filter},
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {
                "json_format": {
                    "start_time": "%START_TIME%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    # The active span's trace id (null when tracing is off).
                    "trace_id": "%TRACE_ID%",
                    # A method outside the registry that holds a credential reads
                    # [redacted] (stages.method_names, http_methods).
                    "method": method,
                    # The path the client sent, without its query (a client may put a
                    # key there: refused by the gateway, yet Envoy would log the URL as
                    # sent), a segment that holds a credential hidden (envoy_paths).
                    "path": path,
                    "response_code": "%RESPONSE_CODE%",
                    "response_flags": "%RESPONSE_FLAGS%",
                    "response_code_details": "%RESPONSE_CODE_DETAILS%",
                    "duration_ms": "%DURATION%",
                    "upstream_cluster": "%UPSTREAM_CLUSTER%",
                    "upstream_host": "%UPSTREAM_HOST%",
                    "bytes_received": "%BYTES_RECEIVED%",
                    "bytes_sent": "%BYTES_SENT%",
                    **{
                        key: _metadata(key)
                        for key in (
                            "route",
                            "provider",
                            "model",
                            # A model group's member that served (null without one).
                            "group_member",
                            # What the provider said answered (a dated snapshot of
                            # the name sent; null for Bedrock, which names none).
                            "response_model",
                            "prompt_tokens",
                            "completion_tokens",
                            "total_tokens",
                            "api_key_id",
                            "user_id",
                            "group_id",
                            "auth_method",
                            # The tier that priced the request (null when none was named).
                            "service_tier",
                            # What the request cost, exact like the gateway's log line.
                            "cost_usd",
                        )
                    },
                }
            },
        },
    }


# --- local replies ----------------------------------------------------------------


# Envoy's own replies, as (condition, error type, code, message, status set, the status
# the client gets), first match wins; rendered in OpenAI's error shape, and before them
# in Bedrock's, Google's and Anthropic's for those APIs' clients (``_client_condition``).
_LocalReply = tuple[str | None, str, str, str, int | None, int]


def _local_replies() -> list[_LocalReply]:
    replies: list[_LocalReply] = [
        # A circuit breaker is full (envoy.max_concurrent_requests): on the gateway's
        # own cluster Envoy answered a 500 (ext_proc_error_gRPC_error_14{...overflow}),
        # on a provider's a 503 blaming the provider; it is the gateway at its limit,
        # a 503 worth retrying.
        (
            "response.code >= 500 && response.code_details.contains('overflow')",
            ServiceUnavailableError.error_type,
            OVERLOADED_CODE,
            OVERLOADED_MESSAGE,
            ServiceUnavailableError.status,
            ServiceUnavailableError.status,
        ),
        # No gateway process answers (stopped, restarting, not started yet): Envoy's
        # 500 (ext_proc_error_gRPC_error_14, UNAVAILABLE) would read as the gateway
        # failing on the request; it is the gateway unreachable, a 503 worth retrying
        # once a replica is back. After the overflow mapper, whose details start alike.
        (
            "response.code == 500"
            " && response.code_details.startsWith('ext_proc_error_gRPC_error_14')",
            ServiceUnavailableError.error_type,
            "gateway_unavailable",
            "the gateway is not reachable; retry shortly",
            ServiceUnavailableError.status,
            ServiceUnavailableError.status,
        ),
        # An answer larger than envoy.max_response_body_bytes, caught before its
        # headers left (Envoy's 500): the provider's answer cannot be delivered.
        (
            f"response.code_details == '{TOO_LARGE_DETAILS}'",
            UpstreamError.error_type,
            "response_too_large",
            RESPONSE_TOO_LARGE_MESSAGE,
            UpstreamError.status,
            UpstreamError.status,
        ),
        # The gateway itself did not answer within envoy.message_timeout_ms
        # (Envoy's details: ext_proc_error_per-message_timeout_exceeded); without this,
        # the 504 would blame the provider.
        (
            "response.code == 504 && response.code_details.startsWith('ext_proc_error')",
            GatewayTimeoutError.error_type,
            "gateway_timeout",
            "the gateway did not answer in time",
            None,
            GatewayTimeoutError.status,
        ),
        # A path under a route of its own body limit that the gateway did not route
        # (a host no route serves it on): its buffer route (envoy_body_limits) finds no
        # cluster named; the catch-all's 404, not a generic rejection.
        (
            f"response.code == 404 && response.code_details == '{NO_CLUSTER_DETAILS}'",
            ROUTE_MISS.error_type,
            ROUTE_MISS_CODE,
            ROUTE_MISS.message,
            None,
            ROUTE_MISS.status,
        ),
    ]
    replies += [
        (f"response.code == {error.status}", error.error_type, code, message, None, error.status)
        for error, code, message in BY_STATUS
    ]
    replies.append(
        (
            "response.code < 500",
            BadRequestError.error_type,
            REJECTED_CODE,
            REJECTED_MESSAGE,
            None,
            BadRequestError.status,
        )
    )
    replies.append(
        (
            None,
            GatewayError.error_type,
            FAILED_CODE,
            FAILED_MESSAGE,
            None,
            GatewayError.status,
        )
    )
    return replies


def _local_reply_config(config: GatewayConfig) -> Json:
    replies = _local_replies()
    mappers = _route_miss_mappers(config)
    # Each API's twins before OpenAI's, which match any request.
    for shape, _ in _SDK_HEADERS:
        client = _client_condition(config, shape)
        mappers += [_shaped_error_mapper(reply, shape, client) for reply in replies]
    mappers += [
        _error_mapper(condition, error_type, code, message, status)
        for condition, error_type, code, message, status, _ in replies
    ]
    return {"mappers": mappers}


def _route_miss_mappers(config: GatewayConfig) -> list[Json]:
    """The catch-all 404 in the shape of the client's API (``_client_condition``).
    Before every other mapper: the 404 is JSON already, which those leave alone."""
    mappers = []
    for shape, _ in _SDK_HEADERS:
        condition = f"{_DIRECT_404} && {_client_condition(config, shape)}"
        mapper: Json = {
            "filter": _cel_filter(condition),
            "body_format_override": {"json_format": orjson.loads(ROUTE_MISS.body(shape))},
        }
        if shape == "bedrock":
            mapper["headers_to_add"] = [_bedrock_exception_header(ROUTE_MISS.status)]
        mappers.append(mapper)
    return mappers


def _client_condition(config: GatewayConfig, shape: str) -> str:
    """A request whose client speaks the API shaped ``shape``: as the gateway said in
    its first answer (``CLIENT_API_KEY``), else (no answer: the gateway down, slow or
    full, a body over the buffer before it answered, a path it does not route) by the
    request as the client sent it, which nothing has changed yet: its SDK's header
    (``_SDK_HEADERS``) or a path under a prefix route of that API (reached by the
    catch-all when a dead gateway was let past, ``failure_mode_allow``). Never by the
    request alone once the gateway answered: it may be the provider's by then."""
    header = dict(_SDK_HEADERS)[shape]
    prefixes = {
        "bedrock": _converse_prefixes(config),
        "google": _route_prefixes(config, RouteApi.GEMINI_GENERATE_CONTENT),
        "anthropic": _route_prefixes(config, RouteApi.ANTHROPIC_VERTEX),
    }[shape]
    sent = f"'{header}' in request.headers"
    if prefixes:
        sent = f"{sent} || {_on_paths(prefixes)}"
    return f"({_GATEWAY_SAID} ? {_CLIENT_API} == '{shape}' : ({sent}))"


def _converse_prefixes(config: GatewayConfig) -> list[str]:
    """The path prefixes of Converse routes, whose clients (AWS SDKs) read errors in
    Bedrock's shape: the message at the top, the exception's name in a header."""
    return _route_prefixes(config, RouteApi.BEDROCK_CONVERSE)


def _route_prefixes(config: GatewayConfig, api: RouteApi) -> list[str]:
    """The path prefixes of the routes of one API."""
    return sorted(
        {
            route.path_prefix.rstrip("/")
            for route in config.routes
            if route.api is api and route.path_prefix
        }
    )


def _on_paths(prefixes: list[str]) -> str:
    """A request on a path under one of ``prefixes``."""
    on_path = " || ".join(
        f"request.path.startsWith({cel_string(prefix + '/')})" for prefix in prefixes
    )
    return f"({on_path})"


def _shaped_error_mapper(reply: _LocalReply, shape: str, client: str) -> Json:
    """Envoy's reply to a client of the API shaped ``shape`` (``client``:
    ``_client_condition``), in that API's error shape: AWS SDKs read the message at the
    top and raise the exception named in ``x-amzn-errortype``, Google's read
    ``error.status``, Anthropic's SDKs and Claude Code ``error.type``."""
    condition, _, code, message, status, answered = reply
    where = client if condition is None else f"{condition} && {client}"
    mapper = _error_mapper(where, "", code, message, status)
    if shape == "bedrock":
        mapper["body_format_override"] = {"json_format": {"message": message, "code": code}}
        mapper["headers_to_add"] = [_bedrock_exception_header(answered)]
    elif shape == "google":
        error = {"code": answered, "message": message, "status": google_status(answered)}
        mapper["body_format_override"] = {"json_format": {"error": error}}
    else:
        anthropic = orjson.loads(anthropic_error_body(message, answered))
        mapper["body_format_override"] = {"json_format": anthropic}
    return mapper


def _bedrock_exception_header(status: int) -> Json:
    """The exception AWS SDKs raise for an error of ``status`` (``x-amzn-errortype``)."""
    return {
        "header": {"key": BEDROCK_ERROR_TYPE_HEADER, "value": bedrock_exception(status)},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }


def _error_mapper(
    condition: str | None, error_type: str, code: str, message: str, status: int | None = None
) -> Json:
    """Envoy's reply matching ``condition`` as OpenAI's error JSON (with ``status``, if set)."""
    expression = _NOT_JSON_YET if condition is None else f"{condition} && {_NOT_JSON_YET}"
    mapper: Json = {"filter": _cel_filter(expression)}
    if status is not None:
        mapper["status_code"] = status
    mapper["body_format_override"] = {"json_format": _openai_error(message, error_type, code)}
    return mapper


def _cel_filter(expression: str) -> Json:
    """A local reply mapper's filter: the CEL ``expression`` on the request and reply."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


def _openai_error(message: str, error_type: str, code: str) -> Json:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


# --- routes -----------------------------------------------------------------------


def _route_config(config: GatewayConfig) -> Json:
    routes = [_provider_route(config, provider) for provider in config.providers]
    routes.append(_not_found_route())
    return {
        "name": "aigw",
        "virtual_hosts": [
            {
                "name": "aigw",
                "domains": ["*"],
                "routes": routes,
                "response_headers_to_add": _rate_limit_headers(),
            }
        ],
    }


def _rate_limit_headers() -> list[Json]:
    """OpenAI's x-ratelimit-* headers, from what the quota stage returned as metadata.

    Set by Envoy rather than by a response-headers answer, so that pass-through
    requests can skip that message (extproc.response_path); a request no rule
    applies to has no such metadata, and an empty value adds no header.
    """
    return metadata_response_headers(RATE_LIMIT_HEADERS)


def _provider_route(config: GatewayConfig, provider: ProviderConfig) -> Json:
    cluster = cluster_name(provider)
    return {
        "name": cluster,
        "match": {
            "prefix": "/",
            "headers": [{"name": CLUSTER, "string_match": {"exact": cluster}}],
        },
        "route": {
            "cluster": cluster,
            # A route timeout runs until the answer's last byte: it cut streams that
            # were still flowing (a long reasoning answer). None here; the provider's
            # timeout bounds each attempt until its answer starts (Envoy ignores a
            # per-try timeout once the response has started), a 504 when it expires.
            "timeout": NO_TIMEOUT,
            "host_rewrite_literal": provider.authority,
            # Only failures where the provider never saw the request: a completion
            # is neither idempotent nor free to run twice.
            "retry_policy": {
                "retry_on": "connect-failure,reset-before-request",
                "num_retries": 1,
                "per_try_timeout": duration(_upstream_timeout_s(config, provider)),
            },
        },
        "request_headers_to_remove": [CLUSTER, *ABOUT_THE_CLIENT],
        # The provider's own x-ratelimit-* (and anthropic-ratelimit-*, the account's
        # id) describe the organisation's account, not the caller's limits: removed,
        # so the client sees the gateway's (added at the virtual host from the quota
        # stage's metadata) or none. A redirect's location too, on the lean path as
        # well, whose headers the gateway never reads: an SDK followed it past the
        # gateway with the client's key (headers.REDIRECT_HEADERS).
        "response_headers_to_remove": list(provider_headers_removed(provider.type)),
        # Anthropic's names for the same limits, where Anthropic clients' requests go
        # (headers.gateway_headers_added). Envoy removes a route's headers before it adds
        # them: the provider's own anthropic-ratelimit-* never reach the client.
        **_added(gateway_headers_added(provider.type)),
    }


def _added(names: tuple[str, ...]) -> Json:
    """A route's ``response_headers_to_add`` for ``names``, or nothing (no empty list)."""
    return {"response_headers_to_add": metadata_response_headers(names)} if names else {}


def _not_found_route() -> Json:
    """The catch-all 404, in OpenAI's shape (``_route_miss_mappers`` give it others)."""
    body = ROUTE_MISS.body().decode()
    return {
        "name": "not_found",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": body}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def _upstream_timeout_s(config: GatewayConfig, provider: ProviderConfig) -> float:
    return provider.timeout_s or config.envoy.upstream_timeout_s


def _longest_request_s(config: GatewayConfig) -> float:
    """The longest a request may wait for its answer to start: the slowest provider, or
    the slowest failover chain's attempts, plus the gateway's own turns."""
    slowest = max(
        max(_upstream_timeout_s(config, p) for p in config.providers),
        longest_agent_timeout_s(config),
        longest_failover_wait_s(config),
    )
    return slowest + config.envoy.request_slack_s


# --- clusters ---------------------------------------------------------------------


def _ext_proc_cluster(config: GatewayConfig) -> Json:
    # `server.workers` processes each serve on their own endpoint (one HTTP/2
    # connection per endpoint: a shared port would not spread streams).
    workers = config.server.workers
    if config.server.unix_socket:
        sockets = worker_sockets(config.server.unix_socket, workers)
        addresses: list[Json] = [{"pipe": {"path": path}} for path in sockets]
        discovery = "STATIC"
    else:
        # Several gateway processes (replicas sharing one store): Envoy balances
        # the ext_proc streams, one per HTTP request, across them.
        targets = config.envoy.ext_proc_addresses or worker_addresses(
            config.envoy.ext_proc_address or config.server.grpc_address, workers
        )
        hosts = [_split_host_port(target) for target in targets]
        addresses = [_socket_address(_reachable(host), port) for host, port in hosts]
        discovery = "STATIC" if all(is_ip(_reachable(h)) for h, _ in hosts) else "STRICT_DNS"
    cluster: Json = {
        "name": EXT_PROC_CLUSTER,
        "type": discovery,
        "connect_timeout": duration(EXT_PROC_CONNECT_TIMEOUT_S),
        "typed_extension_protocol_options": _protocol_options(
            {"http2_protocol_options": {"connection_keepalive": _keepalive(config)}}
        ),
        # Envoy sends a buffered body to the gateway in one message. Larger than this
        # connection's buffer, Envoy 1.40 crashed (SIGSEGV) when the message came from a
        # failover attempt's filter (an answer of 1 MiB, the default, and a bit).
        "per_connection_buffer_limit_bytes": _largest_body_bytes(config) + BUFFER_SLACK_BYTES,
        "load_assignment": {
            "cluster_name": EXT_PROC_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": address}} for address in addresses]}
            ],
        },
    }
    if discovery != "STATIC":
        # "localhost" may resolve to ::1 first while the gateway listens on 127.0.0.1.
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if config.server.tls is not None:
        host = _reachable(
            _split_host_port(config.envoy.ext_proc_address or config.server.grpc_address)[0]
        )
        cluster["transport_socket"] = envoy_transport_socket(config.server.tls, host)
    return cluster


def _keepalive(config: GatewayConfig) -> Json:
    """HTTP/2 PINGs on each connection to the gateway.

    A connection that sits idle between requests can be dropped silently on the
    way (a NAT, conntrack, a load balancer's idle timeout) or outlive a gateway
    host that vanished; without pings Envoy finds out only when the next
    request's messages go nowhere, and that request fails or hangs until TCP
    gives up. An unanswered ping closes the connection, and the next request
    opens a fresh one. The gateway's server permits these pings
    (extproc.server.keepalive_permission); Envoy adds up to 15% jitter to the
    interval, never less.
    """
    keepalive = config.server.keepalive
    return {"interval": duration(keepalive.interval_s), "timeout": duration(keepalive.timeout_s)}


def _provider_cluster(provider: ProviderConfig, egress: EgressConfig) -> Json:
    name = cluster_name(provider)
    proxy = egress_proxy(provider.host, egress)
    if proxy is not None:
        return proxied_cluster(
            name,
            (provider.host, provider.port, provider.tls),
            proxy,
            PROVIDER_IDLE_TIMEOUT_S,
        )
    cluster: Json = {
        "name": name,
        "type": "STATIC" if is_ip(provider.host) else "LOGICAL_DNS",
        "connect_timeout": duration(PROVIDER_CONNECT_TIMEOUT_S),
        "typed_extension_protocol_options": _protocol_options(
            {"http_protocol_options": {}},
            common={"idle_timeout": duration(PROVIDER_IDLE_TIMEOUT_S)},
        ),
        "load_assignment": _load_assignment(name, _socket_address(provider.host, provider.port)),
    }
    if not is_ip(provider.host):
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if provider.tls:
        cluster["transport_socket"] = _upstream_tls(provider.host)
    return cluster


def egress_proxy(host: str, egress: EgressConfig) -> tuple[str, int] | None:
    """The proxy's address (IP, port) Envoy reaches ``host`` through, or None."""
    if egress.proxy_url is None or bypassed(host, egress.no_proxy):
        return None
    # The config refuses a proxy named by host name or with credentials when a
    # destination of Envoy's goes through it (egress_problems): what is left is
    # http://IP:port.
    hostpart = egress.proxy_url.get_secret_value().partition("://")[2].rpartition("@")[2]
    parts = urlsplit(f"http://{hostpart}")
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def proxied_cluster(
    name: str,
    destination: tuple[str, int, bool],
    proxy: tuple[str, int],
    idle_timeout_s: float,
) -> Json:
    """A cluster that reaches ``destination`` (host, port, TLS) through the egress proxy:
    a provider, or an agent server (``agents.envoy``).

    Envoy's http_11_proxy transport socket dials the proxy named in the endpoint's
    metadata and sends ``CONNECT <hostname>:<port>``: the endpoint's ``hostname`` is the
    destination's, so the proxy resolves it (Envoy needs no outside DNS) and its host
    rules see the name. The endpoint's own address is never dialled: it carries the
    destination's port, and the proxy's IP as a placeholder where the destination's host
    is a name. An IP destination gets no ``hostname``: Envoy then names the address
    itself, bracketed when it is IPv6 (``CONNECT [fd00::7]:443``), where the hostname
    would go out bare (``fd00::7:443``, which no proxy parses). Inside the tunnel the
    cluster's TLS (or plain HTTP) goes on as it would directly."""
    host, port, tls = destination
    proxy_host, proxy_port = proxy
    if is_ip(host):
        target: Json = {"address": _socket_address(host, port)}
    else:
        target = {"hostname": host, "address": _socket_address(proxy_host, port)}
    endpoint: Json = {
        "endpoint": target,
        "metadata": {
            "typed_filter_metadata": {
                HTTP11_PROXY_ADDRESS: {
                    "@type": _TYPE + "envoy.config.core.v3.Address",
                    **_socket_address(proxy_host, proxy_port),
                }
            }
        },
    }
    inner = (
        _upstream_tls(host)
        if tls
        else {
            "name": "envoy.transport_sockets.raw_buffer",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
            },
        }
    )
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": duration(PROVIDER_CONNECT_TIMEOUT_S),
        "typed_extension_protocol_options": _protocol_options(
            {"http_protocol_options": {}},
            common={"idle_timeout": duration(idle_timeout_s)},
        ),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [endpoint]}],
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.http_11_proxy",
            "typed_config": {
                "@type": _TYPE + _HTTP11_PROXY_TRANSPORT,
                "transport_socket": inner,
            },
        },
    }


def _upstream_tls(host: str) -> Json:
    # Verify the provider's certificate chain against the system CAs and its name
    # against the host we dial; SNI only for names (an IP literal is not valid SNI).
    san = {"san_type": "IP_ADDRESS" if is_ip(host) else "DNS", "matcher": {"exact": host}}
    context: Json = {
        "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    }
    if not is_ip(host):
        context["sni"] = host
    context["common_tls_context"] = {
        # HTTP/1.1 to providers: every provider API speaks it.
        "alpn_protocols": ["http/1.1"],
        "validation_context": {
            "trusted_ca": {"filename": CA_BUNDLE},
            "match_typed_subject_alt_names": [san],
        },
    }
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _protocol_options(explicit: Json, common: Json | None = None) -> Json:
    options: Json = {
        "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": explicit,
    }
    if common:
        options["common_http_protocol_options"] = common
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options}


def _circuit_breakers(limit: int = MAX_CONCURRENT_REQUESTS) -> Json:
    # Retries are failovers (envoy_failover): every call in flight may be failing over
    # at once when a provider goes down. Over the limit Envoy skips the retry and the
    # client gets the failed attempt's error. Remaining capacity shows in Envoy's stats
    # (cluster.<name>.circuit_breakers.default.remaining_rq, ...).
    return {
        "thresholds": [
            {
                "max_connections": limit,
                "max_pending_requests": limit,
                "max_requests": limit,
                "max_retries": limit,
                "track_remaining": True,
            }
        ]
    }


def _largest_body_bytes(config: GatewayConfig) -> int:
    """The largest body Envoy hands the gateway: a request (of the route that takes the
    largest) or a buffered answer."""
    return max(config.largest_request_body_bytes(), config.envoy.max_response_body_bytes)


def _load_assignment(cluster: str, address: Json) -> Json:
    return {
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    }


# --- small helpers ------------------------------------------------------------------


def _socket_address(host: str, port: int) -> Json:
    return {"socket_address": {"address": host, "port_value": port}}


def _split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _reachable(host: str) -> str:
    """A wildcard bind address names no peer: Envoy dials the loopback instead."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
