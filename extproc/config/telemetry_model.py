"""Config of the request log (``telemetry.log``) and of tracing (``telemetry.tracing``).

The log is written by the gateway itself (``extproc.telemetry.access_log``); traces are
produced by Envoy's OpenTelemetry tracer, which the rendered bootstrap turns on
(``extproc.envoy_tracing``), with span attributes the gateway hands Envoy as
dynamic metadata. Reference: docs/logging.md and docs/configuration.md.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from extproc.config.section import Section as _Section
from extproc.config.service_urls import host_problem


class LogConfig(_Section):
    """Where request lines go, how the file rotates, and whether text is written."""

    stdout: bool = True
    file: str | None = None
    # Rotate the file when the next line would take it past max_bytes; keep this
    # many old files (file.1 is the newest). 0 max_bytes: never rotate.
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=0)
    backup_count: int = Field(default=5, ge=0, le=1000)
    # Lines waiting for the writer thread; past this, new lines are dropped and
    # counted rather than stalling requests behind a stuck sink.
    queue_size: int = Field(default=100_000, gt=0)
    # Prompt and completion text in the line (after guardrail masking). Off by
    # default: it is personal data and it makes lines large.
    include_content: bool = False
    # Text longer than this (characters, per field) is cut and marked truncated.
    max_content_chars: int = Field(default=32_768, gt=0)

    @field_validator("file")
    @classmethod
    def _empty_is_none(cls, file: str | None) -> str | None:
        return file or None


class TracingConfig(_Section):
    """Envoy's OpenTelemetry tracer: spans over OTLP/gRPC, tagged with gen_ai attributes."""

    enabled: bool = False
    # The OTLP/gRPC collector (Jaeger, Tempo, an OpenTelemetry Collector), HOST:PORT.
    otlp_endpoint: str = "127.0.0.1:4317"
    # Share of requests whose spans Envoy exports, a client's sampled traceparent
    # included (Envoy keeps its trace id either way). 100 traces everything.
    sampling_percent: float = Field(default=100.0, ge=0.0, le=100.0)
    service_name: str = Field(default="aigw", min_length=1)
    # Prompt and completion text as span attributes (after guardrail masking).
    capture_content: bool = False
    # How long Envoy waits for the collector on one export.
    export_timeout_s: float = Field(default=5.0, gt=0)
    # Export calls Envoy keeps open to the collector at once; past it a batch is dropped
    # at once (cluster.otel_collector.upstream_rq_active_overflow). What bounds the spans
    # Envoy holds while a collector takes connections and never answers.
    max_exports_in_flight: int = Field(default=256, ge=1, le=10_000)
    # Envoy exports finished spans in batches: every flush_interval_ms, or as soon
    # as min_flush_spans are waiting (Envoy's defaults: 5000 ms, 5 spans).
    flush_interval_ms: int = Field(default=5000, gt=0)
    min_flush_spans: int = Field(default=5, gt=0)

    @field_validator("otlp_endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if "://" in value or not sep or not host or not port.isdigit():
            raise ValueError("must be HOST:PORT of an OTLP/gRPC collector (no scheme)")
        if not 0 < int(port) < 65536:
            raise ValueError("port must be between 1 and 65535")
        # Rendered as the collector cluster's address: a user and password (or a space)
        # sat in the bootstrap and Envoy resolved a name that is none.
        if (problem := host_problem(host)) is not None:
            raise ValueError(problem)
        return value
