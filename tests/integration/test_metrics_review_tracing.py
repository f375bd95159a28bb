"""Review of the request spans through the real Envoy: gen_ai attributes, an error
status on failed requests, and no credential (API key or JWT) in any attribute.

A receiver of its own (the shared one keeps attributes only): it also keeps each
span's status and kind, which is what Jaeger's "error" filter and Tempo's
``status = error`` search read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import orjson
import pytest
from openai import APIError, OpenAI
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from extproc.devstack import LocalStack, free_port
from tests.integration.conftest import running_stack, write_config
from tests.integration.otlp_receiver import _scope_spans, _value
from tests.integration.test_tracing import traced_config

# OTLP Status.code values.
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
JWT_SECRET = "metrics-review-shared-secret-0123456789abcdef"
JWT_ISSUER = "https://idp.metrics-review.example"
API_KEY = "team1-key"


@dataclass(frozen=True)
class Span:
    name: str
    kind: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, port: int) -> None:
        self.port = port
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(  # noqa: N802 - the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        found = [
            Span(
                name=span.name,
                kind=span.kind,
                status_code=span.status.code,
                status_message=span.status.message,
                attributes={a.key: _value(a.value) for a in span.attributes},
            )
            for resource_spans in request.resource_spans
            for scope_spans in _scope_spans(resource_spans)
            for span in scope_spans.spans
        ]
        with self.lock:
            self.spans.extend(found)
        return trace_service_pb2.ExportTraceServiceResponse()

    def request_span(self, request_id: str, timeout_s: float = 20.0) -> Span:
        """The server span Envoy made for one request (tagged with its x-request-id)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                for span in self.spans:
                    if (
                        span.attributes.get("guid:x-request-id") == request_id
                        and span.name == "ingress"
                    ):
                        return span
            time.sleep(0.05)
        raise AssertionError(f"no span for request {request_id}")

    def all_text(self) -> str:
        with self.lock:
            return repr([(span.name, span.status_message, span.attributes) for span in self.spans])


@contextmanager
def collector_on(port: int) -> Iterator[_Collector]:
    collector = _Collector(port)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield collector
    finally:
        server.stop(grace=None)


def review_config(workdir: Path, port: int) -> dict[str, Any]:
    # test_tracing's traced stack (spans exported at once, content not captured, the
    # quota rule), with a JWT provider.
    config = traced_config(workdir, f"127.0.0.1:{port}", content=False)
    config["auth"]["jwt_providers"] = [
        {
            "name": "review",
            "issuer": JWT_ISSUER,
            "audiences": ["aigw"],
            "shared_secret": JWT_SECRET,
            "algorithms": ["HS256"],
        }
    ]
    return config


@pytest.fixture(scope="module")
def collector() -> Iterator[_Collector]:
    with collector_on(free_port()) as found:
        yield found


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, collector: _Collector) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("traced-review")
    config = write_config(workdir, review_config(workdir, collector.port))
    with running_stack(workdir, config) as stack:
        yield stack


def token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": JWT_ISSUER, "aud": "aigw", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


def post(stack: LocalStack, credential: str, **headers: str) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {credential}",
            **headers,
        },
        timeout=30.0,
    )


def stream_with_fault(stack: LocalStack, fault: str) -> str:
    """A streamed chat whose provider fails as ``fault`` says; the request id."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=API_KEY, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        stream=True,
        messages=[{"role": "user", "content": "Stream a few words please"}],
        extra_headers={"x-mock-fault": fault},
    ) as response:
        request_id: str = response.headers["x-request-id"]
        assert response.status_code == 200
        # The SDK raises on the provider's error event: the client saw a failure.
        with pytest.raises(APIError):
            list(response.parse())
    return request_id


def test_a_provider_error_inside_a_stream_marks_the_span_as_failed(
    traced: LocalStack, collector: _Collector
) -> None:
    """The 200 had left when the provider failed: only the gateway knows, and Jaeger's
    error search must still find the request."""
    span = collector.request_span(stream_with_fault(traced, "error_after=2"))
    assert span.attributes["http.status_code"] == "200"
    assert span.status_code == STATUS_ERROR, span
    assert span.attributes["error.type"] == "server_error"
    assert span.attributes["aigw.error_type"] == "server_error"
    assert span.attributes["gen_ai.request.model"] == "gpt-4o-mini"


def test_a_provider_5xx_is_an_error_and_client_side_refusals_are_not(
    traced: LocalStack, collector: _Collector
) -> None:
    """OpenTelemetry's HTTP server conventions: 5xx is the server's failure; a 4xx is
    the client's (bad key, quota used up) and leaves the status unset, with the reason
    in aigw.error_type."""
    upstream = post(traced, API_KEY, **{"x-mock-fault": "status=500"})
    unauthenticated = post(traced, "not-a-key")
    assert post(traced, API_KEY, **{"x-test-budget": "spent"}).status_code == 200
    over_quota = post(traced, API_KEY, **{"x-test-budget": "spent"})
    assert [r.status_code for r in (upstream, unauthenticated, over_quota)] == [500, 401, 429]

    failed = collector.request_span(upstream.headers["x-request-id"])
    assert failed.status_code == STATUS_ERROR
    assert failed.attributes["error.type"] == "500"
    assert failed.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    for response, reason in ((unauthenticated, "authentication_error"),
                             (over_quota, "rate_limit_error")):  # fmt: skip
        span = collector.request_span(response.headers["x-request-id"])
        assert span.status_code == STATUS_UNSET, span
        assert "error.type" not in span.attributes
        assert span.attributes["aigw.error_type"] == reason


def test_a_jwt_callers_span_names_the_caller_and_no_span_holds_a_credential(
    traced: LocalStack, collector: _Collector
) -> None:
    jwt_token = token(sub="carol", group="research")
    answered = post(traced, jwt_token)
    assert answered.status_code == 200
    usage = answered.json()["usage"]
    by_key = post(traced, API_KEY)
    assert by_key.status_code == 200
    refused = post(traced, jwt_token + "x")
    assert refused.status_code == 401

    span = collector.request_span(answered.headers["x-request-id"])
    attributes = span.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == answered.json()["model"]
    assert int(attributes["gen_ai.usage.input_tokens"]) == usage["prompt_tokens"]
    assert int(attributes["gen_ai.usage.output_tokens"]) == usage["completion_tokens"]
    assert (attributes["aigw.user_id"], attributes["aigw.group_id"]) == ("carol", "research")
    assert attributes["aigw.auth_method"] == "jwt"
    assert "aigw.api_key_id" not in attributes
    assert span.status_code == STATUS_UNSET
    for response in (by_key, refused):
        collector.request_span(response.headers["x-request-id"])
    # Every span of every request, Envoy's own tags included (the upstream and the
    # ext_proc spans too): no org key, JWT or provider key, nor a piece of one.
    text = collector.all_text()
    for secret in (API_KEY, jwt_token, jwt_token.split(".")[2], "mock-provider-key", JWT_SECRET):
        assert secret not in text
