"""The Envoy bootstraps the benchmark renders for itself.

Two shapes, both plain dicts in Envoy's v3 YAML shape:

- the fast upstream: an Envoy whose only route answers ``POST /v1/chat/completions``
  with a fixed OpenAI ``chat.completion`` (a ``direct_response``), so no Python
  provider sits on the measured path;
- the front proxy of scenarios (a) and (b): listener -> router -> that upstream,
  with, for (b), an ``ext_proc`` filter in front of the router that sends all four
  phases to the echo processor over HTTP/2.

Scenario (c) uses the gateway's own bootstrap (``extproc.envoy_bootstrap``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from extproc.devstack import envoy_binary

Json = dict[str, Any]

CHAT_PATH = "/v1/chat/completions"
ECHO_CLUSTER = "echo_processor"
UPSTREAM_CLUSTER = "upstream"
# Envoy runs one worker in every scenario, as in DESIGN.md's reference figures.
ENVOY_CONCURRENCY = 1
TIMEOUT_S = 10

_TYPE = "type.googleapis.com/"

# What the fast upstream answers: a complete non-streaming completion with usage,
# so the gateway's response phases do their real work (translate, count, log).
COMPLETION: Json = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1735689600,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Benchmarks measure; they do not judge."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 152, "completion_tokens": 9, "total_tokens": 161},
}
MESSAGES_PATH = "/v1/messages"
# The same answer as Anthropic's Messages API gives it, for the translated scenario.
MESSAGE: Json = {
    "id": "msg_bench",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-latest",
    "content": [{"type": "text", "text": "Benchmarks measure; they do not judge."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 152, "output_tokens": 9},
}


def upstream_bootstrap(port: int, admin_port: int) -> Json:
    """The fast upstream: a fixed OpenAI completion for POST /v1/chat/completions, a fixed
    Anthropic message for POST /v1/messages, 404 otherwise."""
    completion = json.dumps(COMPLETION, separators=(",", ":"))
    message = json.dumps(MESSAGE, separators=(",", ":"))
    routes = [
        {
            "name": "anthropic_message",
            "match": {
                "path": MESSAGES_PATH,
                "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
            },
            "direct_response": {"status": 200, "body": {"inline_string": message}},
            "response_headers_to_add": [_json_content_type()],
        },
        {
            "name": "chat_completion",
            "match": {
                "path": CHAT_PATH,
                "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
            },
            "direct_response": {"status": 200, "body": {"inline_string": completion}},
            "response_headers_to_add": [_json_content_type()],
        },
        {
            "name": "not_found",
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": "{}"}},
            "response_headers_to_add": [_json_content_type()],
        },
    ]
    # The buffer filter holds the request until its body is complete: a reply sent
    # before the request ends makes Envoy reset the stream, which on HTTP/1.1 closes
    # the proxy's connection and would add a TCP handshake to every request.
    filters = [_buffer_filter(), _router_filter()]
    return _bootstrap(admin_port, _listener("upstream", port, routes, filters), clusters=[])


def front_bootstrap(
    port: int, admin_port: int, upstream_port: int, echo_port: int | None = None
) -> Json:
    """Scenario (a), or with ``echo_port`` scenario (b): a proxy in front of the upstream."""
    route = {
        "name": "to_upstream",
        "match": {"prefix": "/"},
        "route": {"cluster": UPSTREAM_CLUSTER, "timeout": f"{TIMEOUT_S}s"},
    }
    clusters = [_static_cluster(UPSTREAM_CLUSTER, upstream_port, http2=False)]
    filters = [_router_filter()]
    if echo_port is not None:
        filters.insert(0, _ext_proc_filter())
        clusters.append(_static_cluster(ECHO_CLUSTER, echo_port, http2=True))
    return _bootstrap(admin_port, _listener("front", port, [route], filters), clusters)


def write_bootstrap(bootstrap: Json, path: Path) -> Path:
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False, width=1000), encoding="utf-8")
    return path


def envoy_argv(bootstrap_path: Path) -> list[str]:
    return [
        envoy_binary(),
        "-c",
        str(bootstrap_path),
        "--concurrency",
        str(ENVOY_CONCURRENCY),
        "--log-level",
        "warn",
        "--disable-hot-restart",
    ]


def _bootstrap(admin_port: int, listener: Json, clusters: list[Json]) -> Json:
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def _listener(name: str, port: int, routes: list[Json], filters: list[Json]) -> Json:
    manager = {
        "@type": _TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
        },
        "http_filters": filters,
    }
    return {
        "name": name,
        "address": _address(port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def _ext_proc_filter() -> Json:
    """The four blocking messages the gateway gets for a non-streaming request."""
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": ECHO_CLUSTER},
                "timeout": f"{TIMEOUT_S}s",
            },
            "failure_mode_allow": False,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_header_mode": "SEND",
                "response_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            "message_timeout": f"{TIMEOUT_S}s",
        },
    }


def _buffer_filter() -> Json:
    return {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 1024 * 1024,
        },
    }


def _router_filter() -> Json:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
    }


def _static_cluster(name: str, port: int, *, http2: bool) -> Json:
    protocol: Json = {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": protocol,
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }


def _json_content_type() -> Json:
    return {
        "header": {"key": "content-type", "value": "application/json"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }


def _address(port: int) -> Json:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}
