"""What writing one request log line costs the event loop, per sink and design.

``python -m benchmarks.log_sink``: times ``AccessLog.write`` (encode + append
to the writer's deque; the background thread writes) against writing and flushing on the caller's
thread, as the gateway did before, for a file and for a pipe that a reader
drains. Then shows what a pipe nobody reads does to each: the synchronous
write blocks once the pipe is full; the queued one keeps returning.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.log_writer import LineWriter

LINES = 20_000
# A typical line: the schema's fields with realistic values (~900 bytes).
RECORD: dict[str, Any] = {
    "schema_version": 1,
    "timestamp": "2026-12-01T03:16:04.972Z",
    "request_id": "4d40833e-c4c0-93c2-af36-00fcadc777a2",
    "trace_id": "ba77999843292c7919984f47f6439e31",
    **{f"field_{i}": "value-" + "x" * 20 for i in range(30)},
}


def _per_call_us(write: Any) -> tuple[float, float]:
    samples = []
    for _ in range(LINES):
        started = time.perf_counter_ns()
        write(RECORD)
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.999)]


def _sync_writer(stream: IO[bytes]) -> Any:
    def write(record: dict[str, Any]) -> None:
        stream.write(orjson.dumps(record) + b"\n")
        stream.flush()

    return write


def _drained_pipe() -> tuple[IO[bytes], threading.Thread]:
    read_end, write_end = os.pipe()

    def drain() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            while pipe.read(1 << 16):
                pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return os.fdopen(write_end, "wb"), reader


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "requests.log"
        rows = []
        with path.open("ab") as file:
            rows.append(("file, synchronous write+flush", _per_call_us(_sync_writer(file))))
        log = AccessLog(stdout=False, file=str(path), max_bytes=50_000_000, backup_count=1)
        rows.append(("file, AccessLog (queued)", _per_call_us(log.write)))
        log.close()
        pipe, reader = _drained_pipe()
        rows.append(("pipe, synchronous write+flush", _per_call_us(_sync_writer(pipe))))
        pipe.close()
        reader.join()
        pipe, reader = _drained_pipe()
        writer = LineWriter(stdout=pipe)
        rows.append(
            (
                "pipe, LineWriter (queued)",
                _per_call_us(lambda r: writer.submit(orjson.dumps(r) + b"\n")),
            )
        )
        writer.close()
        pipe.close()
        reader.join()
    size = len(orjson.dumps(RECORD)) + 1
    print(f"{LINES} lines of {size} bytes; time per call on the caller's thread")
    print(f"{'sink':36} {'p50 us':>8} {'p99.9 us':>9}")
    for name, (p50, p999) in rows:
        print(f"{name:36} {p50:8.1f} {p999:9.1f}")

    # A pipe nobody reads (a stuck log shipper): how long do 500 writes take?
    read_end, write_end = os.pipe()
    stuck = os.fdopen(write_end, "wb")
    writer = LineWriter(stdout=stuck, queue_size=100)
    started = time.perf_counter()
    for _ in range(500):
        writer.submit(orjson.dumps(RECORD) + b"\n")
    queued_s = time.perf_counter() - started
    print(
        f"stuck pipe, queued: 500 submits took {queued_s * 1000:.1f} ms, "
        f"{writer.dropped} dropped (counted), the caller never blocked"
    )
    os.close(read_end)  # the writer thread's blocked write fails and it moves on
    writer.close(timeout_s=0.5)
    # The synchronous design on its own stuck pipe (non-blocking, to see where it stops).
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    blocked_after = 0
    for count in range(1, 10_000):
        try:
            os.write(write_end, orjson.dumps(RECORD) + b"\n")
        except BlockingIOError:
            blocked_after = count
            break
    print(
        f"stuck pipe, synchronous: write #{blocked_after} would block the event loop "
        "until someone reads"
    )
    os.close(read_end)
    os.close(write_end)


if __name__ == "__main__":
    main()
