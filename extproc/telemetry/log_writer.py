"""Writes request log lines off the event loop: stdout and/or a size-rotated file.

``LineWriter.submit`` only appends a finished line to a bounded deque; one
background thread drains it every few milliseconds and writes the lines. The
deque, not a ``queue.Queue``: an append takes no lock and wakes no thread, so
the event loop does not hand the GIL to the writer once per request (the
profile showed the queue's lock release among the costliest calls of a
request); the writer wakes on its own clock and takes whatever piled up. So a slow disk, a full
pipe (a log shipper that stopped reading stdout) or a file rotation never holds
up a request. If the sink stays stuck long enough for the queue to fill, new
lines are dropped and counted (``dropped``) instead of growing memory without
bound or stalling the gateway; usage itself is never lost that way, because
quotas and the usage rollups do not depend on the log.

Each line goes out in one ``write`` with its own flush, so lines of several
processes sharing one stdout stay whole (up to the pipe's atomic size, 4 KiB
on Linux, which a line without content stays under).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# How often the writer drains the lines: a log line lands at most this late.
DRAIN_INTERVAL_S = 0.01


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
    """A background thread that writes queued lines to stdout and/or a rotating file."""

    def __init__(
        self,
        *,
        stdout: IO[bytes] | None = None,
        file: RotatingFile | None = None,
        queue_size: int = 100_000,
    ) -> None:
        self._stdout = stdout
        self._file = file
        self._lines: deque[bytes] = deque()
        self._queue_size = queue_size
        self._stopping = threading.Event()
        # Lines refused because the queue was full (counted on the event loop's thread).
        self.dropped = 0
        # Lines a sink failed to take (counted on the writer thread).
        self.failed = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="aigw-request-log", daemon=True)
        self._thread.start()

    def submit(self, line: bytes) -> None:
        """Queue one line (never blocks); counts it as dropped when the queue is full."""
        if len(self._lines) < self._queue_size:
            self._lines.append(line)
        else:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "request log sink is not keeping up: %d lines dropped so far", self.dropped
                )

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the thread (waits at most ``timeout_s``)."""
        self._stopping.set()
        self._thread.join(timeout_s)
        if self._file is not None and not self._thread.is_alive():
            self._file.close()

    def _run(self) -> None:
        while True:
            stopping = self._stopping.wait(DRAIN_INTERVAL_S)
            lines = self._lines
            wrote = False
            while lines:
                self._write(lines.popleft())
                wrote = True
            if wrote and self._file is not None:
                self._flush_file()
            if stopping:
                return

    def _write(self, line: bytes) -> None:
        if self._stdout is not None:
            try:
                self._stdout.write(line)
                self._stdout.flush()
            except (OSError, ValueError):
                self.failed += 1
        if self._file is not None:
            try:
                self._file.write(line)
            except OSError:
                log.exception("request log file write failed")
                self.failed += 1
        self.written += 1

    def _flush_file(self) -> None:
        assert self._file is not None
        try:
            self._file.flush()
        except OSError:
            log.exception("request log file flush failed")


def default_stdout() -> IO[bytes]:
    return sys.stdout.buffer


def expand_path(path: str) -> str:
    """``{pid}`` in a log file name: one file per process when several share a host."""
    return path.replace("{pid}", str(os.getpid()))
