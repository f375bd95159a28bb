"""A trace collector that is down or silent never holds up a request.

Tracing is Envoy's work: its OpenTelemetry tracer batches spans and exports them on
their own gRPC calls to the ``otel_collector`` cluster, beside the requests. So with
the collector refusing connections, or accepting them and never answering (a host
that vanished behind a load balancer, a collector stuck on its own backend), every
request is still answered, streams included, and logged with its trace id; Envoy
counts the failed exports and drops those spans (docs/logging.md, "Export"). The
export is asserted to have been tried, so the requests did run beside it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    REFUSED_PORT,
    GatewayLog,
    default_config,
    envoy_stat,
    running_stack,
    wait_for,
    write_config,
)

REQUESTS = 6


@contextmanager
def silent_collector() -> Iterator[int]:
    """A port that accepts connections and never answers on them: Envoy's HTTP/2
    preface and export calls go nowhere until their timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            held.append(connection)  # kept open, never read or written

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        listener.close()
        for connection in held:
            connection.close()
        thread.join(timeout=5)


@contextmanager
def stack_tracing_to(workdir: Path, port: int, **tracing: Any) -> Iterator[LocalStack]:
    config = default_config()
    # Every span exported at once, with a short wait for the collector's answer.
    config["telemetry"] = {
        "tracing": {"enabled": True, "otlp_endpoint": f"127.0.0.1:{port}",
                    "flush_interval_ms": 100, "min_flush_spans": 1, "export_timeout_s": 1,
                    **tracing},
    }  # fmt: skip
    with running_stack(workdir, write_config(workdir, config)) as stack:
        yield stack


@pytest.fixture(scope="module", params=["refused", "silent"])
def untraceable(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, LocalStack]]:
    workdir = tmp_path_factory.mktemp(f"collector-{request.param}")
    if request.param == "refused":
        with stack_tracing_to(workdir, REFUSED_PORT) as stack:
            yield request.param, stack
    else:
        with silent_collector() as port, stack_tracing_to(workdir, port) as stack:
            yield request.param, stack


def test_requests_are_answered_and_logged_while_exports_fail(
    untraceable: tuple[str, LocalStack],
) -> None:
    how, stack = untraceable
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)
    request_ids = []
    for index in range(REQUESTS):
        messages: list[Any] = [{"role": "user", "content": f"Hello {index}"}]
        if index % 2:
            streamed = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, stream=True
            )
            assert streamed.status_code == 200
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in streamed.parse() if chunk.choices
            )
            assert text
            request_ids.append(streamed.headers["x-request-id"])
        else:
            answered = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages
            )
            assert answered.status_code == 200
            assert answered.parse().choices[0].message.content
            request_ids.append(answered.headers["x-request-id"])

    log = GatewayLog(stack.gateway_log)
    for request_id in request_ids:
        [line] = log.for_request(request_id)
        assert line["http_status_code"] == 200
        assert line["trace_id"], line  # traced all the same; only the export failed
    # Envoy did try to export meanwhile: the requests above ran beside a failing
    # exporter, not before it started. A refused connection is counted as such; a
    # silent collector's calls end once export_timeout_s (1 s) passes. Before, they
    # stayed open for good: Envoy's exporter ignores the gRPC service's timeout, which
    # was all export_timeout_s set; the collector's cluster now bounds each call.
    tried = (
        "cluster.otel_collector.upstream_cx_connect_fail"
        if how == "refused"
        else "cluster.otel_collector.upstream_rq_max_duration_reached"
    )
    assert wait_for(lambda: envoy_stat(stack, tried) > 0, timeout_s=15.0), tried


def test_a_silent_collector_holds_at_most_max_exports_in_flight(tmp_path: Path) -> None:
    """Each export holds its spans until the collector answers or export_timeout_s
    passes. Here nothing answers for a minute, and every span is its own export: Envoy
    keeps two calls open, drops the other batches at once and counts them, and every
    request is answered meanwhile. Before, the collector's cluster had the limit of the
    providers' (10000 calls): that many batches held in Envoy's memory."""
    with (
        silent_collector() as port,
        stack_tracing_to(tmp_path, port, export_timeout_s=60, max_exports_in_flight=2) as stack,
    ):
        client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)
        for index in range(REQUESTS):
            answered = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"Hello {index}"}]
            )
            assert answered.status_code == 200
        # Over the limit of calls open on the connection (Envoy 1.40's HTTP/2 pool).
        dropped = "cluster.otel_collector.upstream_rq_active_overflow"
        assert wait_for(lambda: envoy_stat(stack, dropped) > 0, timeout_s=15.0)
        assert envoy_stat(stack, "cluster.otel_collector.upstream_rq_active") <= 2
        # A minute's export_timeout_s: no call has ended yet.
        assert envoy_stat(stack, "cluster.otel_collector.upstream_rq_max_duration_reached") == 0
