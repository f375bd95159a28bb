"""The streaming rows: a 1,000-chunk SSE answer, Envoy direct vs through the gateway.

A fast SSE upstream (``benchmarks.sse_upstream``) runs for both rows. The
client sends requests one after the other on one keep-alive connection (after
two untimed ones), N of each kind:

- throughput: the upstream writes its 1,000 events as fast as it can; the
  client times the whole stream and counts the events and the transfer chunks
  that arrived (Envoy coalesces writes that arrive while it is busy, so
  "chunks" is what really arrived). Events per second is the stream's event
  count over the median stream time.
- time to first token (TTFT): the upstream pauses 20 ms after the first event
  (``x-bench-first-gap-ms``), as a model does between tokens, so the first event
  travels alone; TTFT is from writing the request to the first complete SSE
  event decoded at the client. Without the pause the first event would arrive
  with the bulk of the stream and TTFT would measure throughput.

The gateway row compares its TTFT and events/s with the direct row. The client
is a blocking socket and a feed-based parser (``benchmarks.http_wire``), so it
costs little next to Envoy and the gateway on the same two cores. Every
response is checked: status 200, the expected number of chunks, ``[DONE]`` at
the end and, on the first one, usage in the last chunk.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.configs import guard_available, stream_overlay, write_config
from benchmarks.cpu import CpuMeter
from benchmarks.envoy_admin import ext_proc_counters, messages_per_stream
from benchmarks.envoy_configs import CHAT_PATH
from benchmarks.http_wire import (
    ResponseReader,
    SseEvents,
    WireError,
    check_chat_stream,
    format_request,
)
from benchmarks.load_generator import DEFAULT_AUTHORIZATION, MODEL, request_headers
from benchmarks.processes import ProcessSet
from benchmarks.scenarios import Target, front_envoy, run_gateway
from benchmarks.sse_upstream import FIRST_GAP_HEADER
from extproc.devstack import free_port

WARMUP_REQUESTS = 2
# How long the upstream pauses after the first event in the TTFT requests.
FIRST_GAP_MS = 20.0
SOCKET_TIMEOUT_S = 30.0
_READ_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class StreamSample:
    ttft_s: float
    total_s: float
    events: int
    chunks: int


@dataclass(frozen=True, slots=True)
class StreamScenario:
    key: str
    title: str
    start: Callable[[Path, Target], AbstractContextManager[Target]]


@dataclass
class StreamRow:
    """One streaming scenario: its samples, or why there are none."""

    scenario: str
    title: str
    events_per_stream: int
    # Full-speed streams (throughput), and first-event times of paced ones (TTFT).
    samples: list[StreamSample] = field(default_factory=list)
    ttft_samples: list[float] = field(default_factory=list)
    failure: str | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    # ext_proc messages per full-speed stream: how many chunks the gateway processed.
    ext_proc_msgs_per_stream: float | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.samples) and bool(self.ttft_samples)

    @property
    def ttft_p50_ms(self) -> float:
        return 1000 * statistics.median(self.ttft_samples)

    @property
    def ttft_p90_ms(self) -> float:
        return 1000 * _quantile(self.ttft_samples, 0.9)

    @property
    def total_p50_ms(self) -> float:
        return 1000 * statistics.median(s.total_s for s in self.samples)

    @property
    def events_per_s(self) -> float:
        """Events (chunks + [DONE]) over the median stream time."""
        return (self.events_per_stream + 1) / (self.total_p50_ms / 1000)

    @property
    def chunks_p50(self) -> float:
        return statistics.median(s.chunks for s in self.samples)


def stream_body(model: str = MODEL) -> bytes:
    request = {
        "model": model,
        "messages": [{"role": "user", "content": "Stream a long answer, token by token."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return json.dumps(request).encode()


class StreamClient:
    """One keep-alive connection; ``request`` sends one streaming request and times it."""

    def __init__(self, base_url: str) -> None:
        address = urlsplit(base_url)
        self._socket = socket.create_connection(
            (address.hostname or "127.0.0.1", address.port or 80), timeout=SOCKET_TIMEOUT_S
        )
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, payload: bytes) -> tuple[StreamSample, SseEvents, dict[str, str]]:
        reader, events = ResponseReader(), SseEvents()
        error_body = b""
        first_event_at: float | None = None
        started = time.perf_counter()
        self._socket.sendall(payload)
        while not reader.complete:
            data = self._socket.recv(_READ_SIZE)
            if not data:
                raise WireError("connection closed before the response ended")
            body = reader.feed(data)
            if reader.status is not None and reader.status != 200:
                error_body += body
            elif body and events.feed(body) and first_event_at is None:
                first_event_at = time.perf_counter()
        ended = time.perf_counter()
        if reader.status != 200:
            raise WireError(f"HTTP {reader.status}: {error_body[:300]!r}")
        first = first_event_at if first_event_at is not None else ended
        sample = StreamSample(first - started, ended - started, events.count, reader.chunks)
        return sample, events, reader.headers


def measure_stream(
    scenario: StreamScenario,
    workdir: Path,
    upstream: Target,
    events: int,
    requests: int,
    first_gap_ms: float = FIRST_GAP_MS,
) -> StreamRow:
    row = StreamRow(scenario.key, scenario.title, events)
    _progress(f"starting {scenario.title}: 2 x {requests} streams of {events} chunks")
    try:
        with scenario.start(workdir, upstream) as target:
            headers = request_headers(target.authorization)
            full_speed = format_request("POST", target.path, headers, stream_body())
            gap = {**headers, FIRST_GAP_HEADER: f"{first_gap_ms:g}"}
            paced = format_request("POST", target.path, gap, stream_body())
            with StreamClient(target.base_url) as client:
                row.failure = _check_first(client, full_speed, paced, events)
                if row.failure is not None:
                    return row
                for _ in range(WARMUP_REQUESTS - 1):
                    client.request(full_speed)
                before = _counters(target.admin_url)
                with CpuMeter(target.pids, client="client") as meter:
                    for _ in range(requests):
                        sample, seen, _ = client.request(full_speed)
                        if seen.count < events + 1 or seen.leftover.strip():
                            row.failure = f"a stream had {seen.count} events, not {events + 1}"
                            return row
                        row.samples.append(sample)
                row.cpu = meter.shares
                row.ext_proc_msgs_per_stream = messages_per_stream(
                    before, _counters(target.admin_url)
                )
                for _ in range(requests):
                    sample, _, _ = client.request(paced)
                    row.ttft_samples.append(sample.ttft_s)
    except (RuntimeError, OSError, WireError) as error:
        row.failure = str(error).splitlines()[0] if str(error) else type(error).__name__
    return row


def _check_first(client: StreamClient, full_speed: bytes, paced: bytes, events: int) -> str | None:
    """Why the first answers are not what the row must measure (None: they are)."""
    _, first, _ = client.request(full_speed)
    failure = check_chat_stream(first, expected_chunks=events)
    if failure is not None:
        return f"first response: {failure}"
    _, seen, headers = client.request(paced)
    if FIRST_GAP_HEADER not in headers:
        return f"{FIRST_GAP_HEADER} did not reach the upstream: TTFT cannot be measured"
    return check_chat_stream(seen, expected_chunks=events)


def measure_streams(
    workdir: Path, scenarios: list[StreamScenario], events: int, requests: int, interval_ms: float
) -> list[StreamRow]:
    if not scenarios:
        return []
    try:
        with running_sse_upstream(workdir / "sse-upstream", events, interval_ms) as upstream:
            return [
                measure_stream(scenario, workdir / scenario.key, upstream, events, requests)
                for scenario in scenarios
            ]
    except (RuntimeError, OSError) as error:
        reason = f"could not start the SSE upstream: {str(error).splitlines()[0]}"
        return [StreamRow(s.key, s.title, events, failure=reason) for s in scenarios]


@contextmanager
def running_sse_upstream(workdir: Path, events: int, interval_ms: float) -> Iterator[Target]:
    port = free_port()
    with ProcessSet(workdir) as processes:
        argv = [sys.executable, "-m", "benchmarks.sse_upstream", "--port", str(port)]
        argv += ["--events", str(events), "--interval-ms", str(interval_ms)]
        upstream = processes.spawn("sse-upstream", argv)
        processes.wait_for_http(f"http://127.0.0.1:{port}/health")
        yield Target(f"http://127.0.0.1:{port}", "", {"sse-upstream": upstream.pid})


@contextmanager
def stream_direct(workdir: Path, upstream: Target) -> Iterator[Target]:
    with ProcessSet(workdir) as processes:
        yield front_envoy(processes, upstream, echo_port=None, pids={})


@contextmanager
def stream_gateway(workdir: Path, upstream: Target) -> Iterator[Target]:
    """The default config (usage counted from the stream), plus a response guard once guardrails
    exist; the mock provider is the SSE upstream."""
    config = write_config(workdir / "gateway-stream.yaml", stream_overlay())
    with run_gateway(workdir, upstream, config, DEFAULT_AUTHORIZATION, CHAT_PATH) as target:
        yield target


STREAM_SCENARIOS = (
    StreamScenario("sa", "(sa) stream, envoy direct", stream_direct),
    StreamScenario(
        "sg",
        "(sg) stream, gateway" + (" + guard" if guard_available() else " (no guard yet)"),
        stream_gateway,
    ),
)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _counters(admin_url: str) -> tuple[int, int]:
    return ext_proc_counters(admin_url) if admin_url else (0, 0)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
