"""A small OTLP/gRPC trace receiver: what Jaeger or an OpenTelemetry Collector would get.

Speaks the real ``opentelemetry.proto.collector.trace.v1.TraceService`` over
gRPC, keeps every span it is sent, and lets a test wait for the span of one
request (Envoy tags it ``guid:x-request-id``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from extproc.devstack import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    service_name: str | None
    # OTLP Status.code: 0 unset, 1 ok, 2 error (what an "error" search reads).
    status_code: int = 0


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _scope_spans(resource_spans: Any) -> Any:
    """The spans' groups, whichever copy of the OTLP types Python imported.

    xds-protos ships an older copy of the OpenTelemetry protos in the same package
    folder as opentelemetry-proto, and which one a fresh install ends up with
    depends on the install order. The older one names field 2 of ResourceSpans
    ``instrumentation_library_spans``, the newer ``scope_spans``: same number, same
    wire format, so both read what Envoy sends.
    """
    if "scope_spans" in resource_spans.DESCRIPTOR.fields_by_name:
        return resource_spans.scope_spans
    return resource_spans.instrumentation_library_spans


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, spans: list[ReceivedSpan], lock: threading.Lock) -> None:
        self._spans = spans
        self._lock = lock

    def Export(  # noqa: N802 - the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in _scope_spans(resource_spans):
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            service_name=resource.get("service.name"),
                            status_code=span.status.code,
                        )
                    )
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request_span(self, request_id: str, timeout_s: float = 20.0) -> ReceivedSpan:
        """The server span Envoy made for the request with this x-request-id."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for span in self.spans:
                    if span.attributes.get("guid:x-request-id") == request_id:
                        return span
            time.sleep(0.05)
        raise AssertionError(f"no span for request {request_id} within {timeout_s}s")

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver(free_port())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
        _TraceService(receiver.spans, receiver._lock), server
    )
    server.add_insecure_port(receiver.endpoint)
    server.start()
    try:
        yield receiver
    finally:
        server.stop(grace=None)
