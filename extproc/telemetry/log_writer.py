"""Writes request log lines off the event loop: stdout and/or a size-rotated file.

``LineWriter.submit`` only appends a finished line to a bounded deque per sink;
each sink has its own background thread that drains its deque every few
milliseconds and writes the lines. The deque, not a ``queue.Queue``: an append
takes no lock and wakes no thread, so the event loop does not hand the GIL to a
writer once per request (the profile showed the queue's lock release among the
costliest calls of a request); a writer wakes on its own clock and takes
whatever piled up. A writer that found nothing to write sleeps until a line
comes (the line that finds it asleep wakes it, at most once a drain interval):
one waking every 10 ms on an idle gateway cost 2% of a core. So a slow disk, a
full pipe (a log shipper that stopped reading stdout) or a file rotation never
holds up a request, and one stuck sink never holds up the other: the file,
often the audit copy, keeps being written while stdout is stuck. If a sink
stays stuck long enough for its queue to fill (``queue_size`` lines, or
``max_queued_bytes``: lines with prompt and completion text can be a megabyte
each), new lines are dropped for that sink and counted (``dropped``) instead of
growing memory without bound or stalling the gateway; usage itself is never
lost that way, because quotas and the usage rollups do not depend on the log.
Lines lost either way, dropped or refused by a failing write (a closed pipe, a
full disk), are handed to ``on_lost`` (the metric
``aigw_request_log_lost_lines_total``) and said on stderr at the first loss of
each kind and every 1000th.

On stdout, the lines a drain takes go out in as few ``write`` calls as keep
each line whole: whole lines are joined up to the pipe's atomic size (4 KiB on
Linux, ``select.PIPE_BUF``), so lines of several processes sharing one stdout
never interleave, and a longer line goes out alone, as before. One call per
line cost the writer thread ~19 us of CPU per request at 1,600 req/s; joined,
three lines of ~1.3 KB share one call.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# How often a writer drains its lines: a log line lands at most this late.
DRAIN_INTERVAL_S = 0.01
# Bytes of lines one sink may hold while it is stuck: about what the default
# queue_size holds of lines without content (100,000 of ~1.3 KB), so it bounds
# memory where lines with content are far larger, and changes nothing otherwise.
MAX_QUEUED_BYTES = 128 * 1024 * 1024
# Lines a writer takes from its queue at a time.
_BATCH_LINES = 256
# Said on stderr at the first line a sink lost, then at every this many.
_SAY_EVERY = 1000

# Told of lines a sink lost: (sink, reason, how many); reason is queue_full or write_error.
LostLines = Callable[[str, str, int], None]


class RotatingFile:
    """An append-only file that rotates by size: ``path`` -> ``path.1`` -> ... ``path.N``.

    Rotation happens before a line that would take the file past ``max_bytes``,
    so no line is ever split across two files. ``backup_count`` 0 keeps no old
    file (the file is truncated); ``max_bytes`` 0 never rotates.
    """

    def __init__(self, path: str | Path, *, max_bytes: int = 0, backup_count: int = 0) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._open()
        self._size = self._file.tell()

    def _open(self) -> IO[bytes]:
        return self.path.open("ab")

    def write(self, line: bytes) -> None:
        if self.max_bytes and self._size and self._size + len(line) > self.max_bytes:
            self.rotate()
        self._file.write(line)
        self._size += len(line)

    def flush(self) -> None:
        self._file.flush()

    def rotate(self) -> None:
        self._file.close()
        if self.backup_count > 0:
            for index in range(self.backup_count - 1, 0, -1):
                older = self._backup(index)
                if older.exists():
                    older.replace(self._backup(index + 1))
            if self.path.exists():
                self.path.replace(self._backup(1))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self._open()
        self._size = 0

    def _backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def close(self) -> None:
        self._file.close()


class LineWriter:
    """Writes queued lines to stdout and/or a rotating file, one thread per sink."""

    def __init__(
        self,
        *,
        stdout: IO[bytes] | None = None,
        file: RotatingFile | None = None,
        queue_size: int = 100_000,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        on_lost: LostLines | None = None,
    ) -> None:
        self._file = file
        # The file first: close() waits for the sinks in this order, and a stuck stdout
        # must not use up the wait that lets the file be flushed and closed.
        self._sinks: list[_SinkWriter] = []
        if file is not None:
            self._sinks.append(
                _SinkWriter("file", _FileSink(file), queue_size, max_queued_bytes, on_lost)
            )
        if stdout is not None:
            self._sinks.append(
                _SinkWriter("stdout", _StdoutSink(stdout), queue_size, max_queued_bytes, on_lost)
            )

    @property
    def dropped(self) -> int:
        """Lines a sink refused because its queue was full (a line refused by both
        sinks counts twice)."""
        return sum(sink.dropped for sink in self._sinks)

    @property
    def failed(self) -> int:
        """Lines a sink failed to take (a write error)."""
        return sum(sink.failed for sink in self._sinks)

    @property
    def written(self) -> int:
        """Lines every sink has taken (or failed to)."""
        return min((sink.written for sink in self._sinks), default=0)

    @property
    def queued_bytes(self) -> int:
        """Bytes of lines waiting, in the sink holding the most."""
        return max((sink.queued_bytes for sink in self._sinks), default=0)

    def submit(self, line: bytes) -> None:
        """Queue one line for every sink (never blocks)."""
        for sink in self._sinks:
            sink.submit(line)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the threads (waits at most ``timeout_s`` in all)."""
        for sink in self._sinks:
            sink.stop()
        deadline = time.monotonic() + timeout_s
        for sink in self._sinks:
            sink.join(max(0.0, deadline - time.monotonic()))
        file_sinks = [sink for sink in self._sinks if isinstance(sink.target, _FileSink)]
        if self._file is not None and not any(sink.alive for sink in file_sinks):
            self._file.close()


# The most a write to a pipe takes whole, never interleaved with another writer's.
ATOMIC_WRITE_BYTES = getattr(select, "PIPE_BUF", 4096)


class _StdoutSink:
    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        # Why the last failed write failed, for the warning that says lines were lost.
        self.last_error: str | None = None

    def write_lines(self, lines: list[bytes]) -> int:
        """Write ``lines``, returning how many of them failed."""
        failed = 0
        for chunk in _atomic_chunks(lines):
            try:
                self._stream.write(b"".join(chunk))
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                failed += len(chunk)
        return failed


def _atomic_chunks(lines: list[bytes]) -> list[list[bytes]]:
    """``lines`` in order, grouped so each group is one line or at most
    ``ATOMIC_WRITE_BYTES`` long: written in one call each, no line is split."""
    chunks: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and size + len(line) > ATOMIC_WRITE_BYTES:
            chunks.append(current)
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append(current)
    return chunks


class _FileSink:
    def __init__(self, file: RotatingFile) -> None:
        self._file = file
        self.last_error: str | None = None

    def write_lines(self, lines: list[bytes]) -> int:
        """Write ``lines`` (buffered, flushed once), returning how many failed. The
        failures are said by the sink's writer, counted: a traceback per line would
        flood stderr while the disk stays full."""
        failed = 0
        for line in lines:
            try:
                self._file.write(line)
            except OSError as exc:
                self.last_error = str(exc) or type(exc).__name__
                failed += 1
        try:
            self._file.flush()
        except OSError:
            log.exception("request log file flush failed")
        return failed


class _SinkWriter:
    """One sink's bounded queue and the thread that drains it.

    The queue is bounded by lines and by bytes. Its byte count is two counters, each
    moved by one thread only (bytes in by the submitter, bytes out by the writer), so
    no lock is taken and no update is lost.
    """

    def __init__(
        self,
        name: str,
        target: _StdoutSink | _FileSink,
        queue_size: int,
        max_bytes: int,
        on_lost: LostLines | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self._on_lost = on_lost
        self._lines: deque[bytes] = deque()
        self._queue_size = queue_size
        self._max_bytes = max_bytes
        self._bytes_in = 0
        self._bytes_out = 0
        self._stopping = threading.Event()
        # Set by a submit that finds the writer asleep on an empty queue (``_asleep``).
        self._wake = threading.Event()
        self._asleep = False
        # Lines refused because the queue was full (counted on the submitting thread).
        self.dropped = 0
        # Lines the sink failed to take (counted on the writer thread).
        self.failed = 0
        self.written = 0
        self._thread = threading.Thread(
            target=self._run, name=f"aigw-request-log-{name}", daemon=True
        )
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        return self._bytes_in - self._bytes_out

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, line: bytes) -> None:
        size = len(line)
        if len(self._lines) < self._queue_size and self.queued_bytes + size <= self._max_bytes:
            self._bytes_in += size
            self._lines.append(line)
            if self._asleep:
                # After the append: a writer that falls asleep sees the line, or is
                # woken for it (_run).
                self._asleep = False
                self._wake.set()
            return
        self.dropped += 1
        if self._on_lost is not None:
            self._on_lost(self.name, "queue_full", 1)
        if self.dropped == 1 or self.dropped % _SAY_EVERY == 0:
            log.warning(
                "request log %s is not keeping up: %d lines dropped so far",
                self.name, self.dropped,
            )  # fmt: skip

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            if not self._lines:
                self._sleep_until_a_line()
            stopping = self._stopping.wait(DRAIN_INTERVAL_S)
            queued = self._lines
            while queued:
                # A bounded batch: a huge backlog is written (and its bytes given back
                # to the queue's budget) in steps, not all held twice at once.
                batch = [queued.popleft() for _ in range(min(len(queued), _BATCH_LINES))]
                failed = self.target.write_lines(batch)
                if failed:
                    self._count_failed(failed)
                self._bytes_out += sum(map(len, batch))
                self.written += len(batch)
            if stopping:
                return

    def _sleep_until_a_line(self) -> None:
        """Wait, using no CPU, for a submit (or stop) to wake this writer. Asleep is
        said before the queue is looked at again: a line appended before that look is
        seen, one appended after it finds the writer asleep and wakes it."""
        self._wake.clear()
        self._asleep = True
        if self._lines or self._stopping.is_set():
            self._asleep = False
            return
        self._wake.wait()
        self._asleep = False

    def _count_failed(self, failed: int) -> None:
        before = self.failed
        self.failed += failed
        if self._on_lost is not None:
            self._on_lost(self.name, "write_error", failed)
        if before == 0 or before // _SAY_EVERY != self.failed // _SAY_EVERY:
            log.warning(
                "request log %s: writes are failing (%s): %d lines lost so far",
                self.name, self.target.last_error, self.failed,
            )  # fmt: skip


def default_stdout() -> IO[bytes]:
    return sys.stdout.buffer


def expand_path(path: str) -> str:
    """``{pid}`` in a log file name: one file per process when several share a host."""
    return path.replace("{pid}", str(os.getpid()))
