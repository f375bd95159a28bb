"""Tracing in the Envoy bootstrap: Envoy's OpenTelemetry tracer, spans tagged by the gateway.

With ``telemetry.tracing.enabled``, the rendered connection manager traces requests
with ``envoy.tracers.opentelemetry`` and exports spans over OTLP/gRPC to the
collector at ``otlp_endpoint`` (a cluster of its own). The request's span gets
one custom tag per gateway attribute (``extproc.telemetry.span_attributes``),
read from the dynamic metadata the gateway returns in the ``io.aigw`` namespace.
Custom tags are applied when the span finishes, so they see the metadata of every
answer Envoy applied until then, merged key by key: after a whole response, that of
its last message (usage, finish reasons); when the client hangs up or the provider
resets mid-stream, Envoy finishes the span at once and reads no later answer, which
is why a running stream's answers carry its usage so far (``extproc.stages.telemetry``).

Envoy also passes the trace context on: upstream to the provider (``traceparent``)
and to the gateway on its ext_proc stream, which is how the gateway's log line
gets the ``trace_id``.
"""

from __future__ import annotations

from typing import Any

from extproc.config.model import GatewayConfig
from extproc.config.telemetry_model import TracingConfig
from extproc.envoy_paths import ENVOY_URL, MAX_PATH_TAG_LENGTH
from extproc.envoy_values import duration, is_ip
from extproc.headers import METADATA_NAMESPACE
from extproc.http_methods import ENVOY_METHOD
from extproc.telemetry.span_attributes import CONTENT_ATTRIBUTES, SPAN_ATTRIBUTES

Json = dict[str, Any]
_TYPE = "type.googleapis.com/"
COLLECTOR_CLUSTER = "otel_collector"
COLLECTOR_CONNECT_TIMEOUT_S = 2.0


def add_tracing(bootstrap: Json, config: GatewayConfig) -> None:
    """Turn on tracing in a rendered bootstrap (nothing when tracing is off)."""
    tracing = config.telemetry.tracing
    if not tracing.enabled:
        return
    resources = bootstrap["static_resources"]
    resources["clusters"].append(collector_cluster(tracing))
    for listener in resources["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] == "envoy.filters.network.http_connection_manager":
                    network_filter["typed_config"]["tracing"] = hcm_tracing(tracing)
    # Envoy batches spans; these runtime keys set how often and how many.
    layers = bootstrap.setdefault("layered_runtime", {}).setdefault("layers", [])
    layers.append(
        {
            "name": "aigw_tracing",
            "static_layer": {
                "tracing.opentelemetry.flush_interval_ms": tracing.flush_interval_ms,
                "tracing.opentelemetry.min_flush_spans": tracing.min_flush_spans,
            },
        }
    )


def hcm_tracing(tracing: TracingConfig) -> Json:
    """The connection manager's ``tracing`` block."""
    attributes = SPAN_ATTRIBUTES + (CONTENT_ATTRIBUTES if tracing.capture_content else ())
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _TYPE + "envoy.config.trace.v3.OpenTelemetryConfig",
                # No timeout here: Envoy's OpenTelemetry exporter sends each batch with
                # request options of its own and ignores the service's; the collector's
                # cluster bounds each call instead (collector_cluster).
                "grpc_service": {"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}},
                "service_name": tracing.service_name,
            },
        },
        # Envoy's sampling percentages. Envoy 1.40 applies random_sampling to a request with a
        # client's sampled traceparent too (at 0 it exported none): the trace id is kept,
        # the span is not always exported.
        "random_sampling": {"value": tracing.sampling_percent},
        # The share of requests with an `x-client-trace-id` header that Envoy traces
        # whatever `random_sampling` decided (Envoy's default: all of them). Any client may
        # send one, so it would export a span for each of its requests past
        # `sampling_percent`: the collector's load is the operator's to decide.
        "client_sampling": {"value": 0.0},
        "overall_sampling": {"value": 100.0},
        # One span per upstream attempt (retries and failover show up as such).
        "spawn_upstream_span": True,
        "max_path_tag_length": MAX_PATH_TAG_LENGTH,
        "custom_tags": [_url_tag(), _method_tag()]
        + [_metadata_tag(name, key) for name, key in attributes],
    }


def _method_tag() -> Json:
    # Envoy's own http.method is the method as sent, a key a client sent there too: the
    # tag set when the span finishes replaces it (as http.url's does).
    return {"tag": "http.method", "value": ENVOY_METHOD}


def _url_tag() -> Json:
    # A client may put a key in the query string (the gateway refuses the request) or
    # its path: the span would keep the URL as sent. The path as the access log's.
    return {"tag": "http.url", "value": ENVOY_URL}


def _metadata_tag(name: str, key: str) -> Json:
    # Kind `request`: the stream's dynamic metadata, where ext_proc puts what the
    # gateway returns. A key the gateway did not set leaves the attribute out.
    return {
        "tag": name,
        "metadata": {
            "kind": {"request": {}},
            "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": key}]},
        },
    }


def collector_cluster(tracing: TracingConfig) -> Json:
    """The OTLP/gRPC collector: HTTP/2, resolved by DNS unless given as an IP."""
    host, _, port_text = tracing.otlp_endpoint.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    static = is_ip(host)
    exports = tracing.max_exports_in_flight
    cluster: Json = {
        "name": COLLECTOR_CLUSTER,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": duration(COLLECTOR_CONNECT_TIMEOUT_S),
        # Envoy sends each batch and forgets it: the call holds its spans until the
        # collector answers or export_timeout_s passes. Under the limit every other
        # cluster gets (envoy.max_concurrent_requests, 10000 calls that last minutes), a
        # collector that accepts and never answers held up to 10000 batches, prompts and
        # completions among them with capture_content: Envoy's memory, not the
        # collector's. Past this many, a batch is dropped at once and counted.
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": exports,
                    "max_pending_requests": exports,
                    "max_requests": exports,
                    "max_retries": 0,
                    "track_remaining": True,
                }
            ]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
                # Each export call ends export_timeout_s after it began, answered or not
                # (counted in upstream_rq_max_duration_reached). The gRPC service's
                # timeout, set before, was never applied: Envoy's exporter sends without
                # one, and a silent collector held every call open for good.
                "common_http_protocol_options": {
                    "max_stream_duration": duration(tracing.export_timeout_s)
                },
            }
        },
        "load_assignment": {
            "cluster_name": COLLECTOR_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": host,
                                        "port_value": int(port_text),
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if not static:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster
