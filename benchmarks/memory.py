"""The memory row: resident memory per gateway worker with many keys, rules and subjects.

Issue #10 item 5: at most 150 MB per worker with 10,000 API keys, 1,000 limit
rules and 10,000 distinct subjects seen. The gateway starts with the default
config plus ``benchmarks.configs.memory_overlay`` (10,000 keys given as SHA-256
digests, each its own user, in 999 groups; one request limit per group and one
token limit per key, all far above the load), then gets one request from each of
N distinct keys (N = 10,000 by default), so every key, user and group is seen
once: by authentication, by the quota rules (a counter per subject in Redis),
by the metrics' identity labels and by the log line. RSS (``VmRSS``) of every
gateway process except the embedded Valkey is read from /proc before and after.

The load comes from a small asyncio client over raw sockets (a few keep-alive
connections, ``benchmarks.http_wire``), because wrk sends one fixed request;
every answer must be a 200, or the row fails.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.configs import memory_key, memory_overlay, write_config
from benchmarks.cpu import CpuMeter, resident_bytes
from benchmarks.envoy_configs import CHAT_PATH
from benchmarks.http_wire import ResponseReader, WireError, format_request
from benchmarks.load_generator import check_one_request, request_body, request_headers
from benchmarks.scenarios import Target, run_gateway

KEYS = 10_000
RULES = 1_000
SUBJECTS = 10_000
CONNECTIONS = 8
MB = 1024 * 1024
_READ_SIZE = 64 * 1024


@dataclass
class MemoryRow:
    title: str
    keys: int
    rules: int
    subjects: int
    # process name -> resident bytes, when ready and after the load
    rss_ready: dict[str, int] = field(default_factory=dict)
    rss_after: dict[str, int] = field(default_factory=dict)
    # the same, private memory only (RssAnon): what a second worker adds
    anon_after: dict[str, int] = field(default_factory=dict)
    requests_per_s: float | None = None
    failure: str | None = None
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.rss_after)

    @property
    def max_rss_mb(self) -> float:
        """The largest worker's RSS after the load, in MiB."""
        return max(self.rss_after.values()) / MB

    @property
    def max_rss_ready_mb(self) -> float:
        return max(self.rss_ready.values()) / MB if self.rss_ready else 0.0

    @property
    def max_anon_mb(self) -> float:
        return max(self.anon_after.values()) / MB if self.anon_after else 0.0


@dataclass
class DriveResult:
    requests: int
    seconds: float
    statuses: Counter[int]
    first_failure: str | None


def measure_memory(
    workdir: Path, upstream: Target, subjects: int = SUBJECTS, keys: int = KEYS, rules: int = RULES
) -> MemoryRow:
    title = f"(m) {keys:,} keys, {rules:,} rules, {subjects:,} subjects"
    row = MemoryRow(title, keys, rules, subjects)
    _progress(f"starting {title}")
    try:
        config = write_config(workdir / "gateway-memory.yaml", memory_overlay(keys, rules))
        first_key = f"Bearer {memory_key(0)}"
        with run_gateway(workdir, upstream, config, first_key) as target:
            failure = check_one_request(target.base_url, first_key, target.path)
            if failure is not None:
                row.failure = f"first request: {failure}"
                return row
            gateway = _gateway_processes(target)
            row.rss_ready = _rss(gateway)
            _progress(f"  {subjects:,} requests, each with another key")
            with CpuMeter(target.pids, client="client") as meter:
                result = asyncio.run(drive_distinct_keys(target.base_url, subjects))
            row.cpu = meter.shares
            row.rss_after = _rss(gateway)
            row.anon_after = _rss(gateway, "RssAnon")
            row.requests_per_s = result.requests / result.seconds if result.seconds else None
            if result.first_failure is not None:
                bad = sum(n for status, n in result.statuses.items() if status != 200)
                row.failure = f"{bad} of {result.requests} not 200; first: {result.first_failure}"
            elif len(row.rss_after) < len(gateway):
                row.failure = "a gateway process exited during the load"
    except (RuntimeError, OSError, ValueError) as error:
        row.failure = str(error).splitlines()[0] if str(error) else type(error).__name__
    return row


async def drive_distinct_keys(
    base_url: str, count: int, connections: int = CONNECTIONS, path: str = CHAT_PATH
) -> DriveResult:
    """``count`` requests, the i-th with memory key i, over ``connections`` keep-alive
    connections."""
    address = urlsplit(base_url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    body = request_body()
    indexes = iter(range(count))
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for index in indexes:
                headers = request_headers(f"Bearer {memory_key(index)}")
                writer.write(format_request("POST", path, headers, body))
                status, answer = await _read_response(reader)
                statuses[status] += 1
                if status != 200 and not failures:
                    failures.append(f"HTTP {status} for key {index}: {answer[:200]!r}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    seconds = time.perf_counter() - started
    return DriveResult(sum(statuses.values()), seconds, statuses, failures[0] if failures else None)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    response = ResponseReader()
    body = bytearray()
    while not response.complete:
        data = await reader.read(_READ_SIZE)
        if not data:
            raise WireError("connection closed before the response ended")
        body += response.feed(data)
    assert response.status is not None
    return response.status, bytes(body)


def _gateway_processes(target: Target) -> dict[str, int]:
    """The gateway's own processes (the server, its workers), not Envoy, Valkey, upstream."""
    names = ("gateway", *(name for name in target.pids if name.startswith("worker")))
    return {name: target.pids[name] for name in names}


def _rss(pids: dict[str, int], field: str = "VmRSS") -> dict[str, int]:
    found = {name: resident_bytes(pid, field) for name, pid in pids.items()}
    return {name: rss for name, rss in found.items() if rss is not None}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
