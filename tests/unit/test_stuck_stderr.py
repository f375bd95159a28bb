"""A stderr nobody reads leaves the gateway answering.

The diagnostic log was written to stderr on the event loop: when stderr was a
pipe nobody read (a log shipper that stopped), the pipe filled, the next warning
blocked the loop, and every stream and health check of the process waited until
the pipe was read again. The process here serves with its stderr on a one-page
pipe the test stops reading; failed reloads (each logs an error) fill it until a
thread of the process is blocked writing to it. /healthz must still answer. A
fallback reader empties the pipe should the loop be the one blocked, so a failure
is an assertion, not a hung test.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from extproc.devstack import free_port, free_port_block
from tests.integration.conftest import wait_for
from tests.unit.test_reload_edges import SERVING

F_SETPIPE_SZ = 1031
# How long the fallback waits before reading the pipe again: only reached when the
# health check could not be answered while the pipe was full.
FALLBACK_S = 10.0


class StderrPipe:
    """The process's stderr, read only while ``reading`` is set."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        fcntl.fcntl(self.write_end, F_SETPIPE_SZ, 4096)  # one page: filled by ~20 lines
        self.reading = threading.Event()
        self.reading.set()
        self.text = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self.reading.wait():
            chunk = os.read(self.read_end, 65536)
            if not chunk:
                return
            self.text += chunk


def _writing_to_a_pipe(pid: int) -> bool:
    """Whether a thread of ``pid`` is blocked writing to a full pipe."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if "pipe_write" in (task / "wchan").read_text():
                return True
        except OSError:
            continue
    return False


def test_a_stderr_nobody_reads_leaves_the_gateway_answering(tmp_path: Path) -> None:
    http_port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        SERVING.format(
            grpc_port=free_port_block(1, avoid={http_port}),
            http_port=http_port,
            store_port=free_port_block(1, avoid={http_port}),
        )
    )
    healthz = f"http://127.0.0.1:{http_port}/healthz"
    stderr = StderrPipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "extproc", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=stderr.write_end,
    )
    os.close(stderr.write_end)
    fallback: threading.Timer | None = None
    try:

        def answers() -> bool:
            try:
                return httpx.get(healthz, timeout=5.0).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(answers, timeout_s=60.0), stderr.text.decode(errors="replace")
        # The log shipper stops reading; each refused reload logs an error line.
        stderr.reading.clear()
        config.write_text(config.read_text() + "not_a_section: {}\n")

        def blocked() -> bool:
            process.send_signal(signal.SIGHUP)
            return _writing_to_a_pipe(process.pid)

        assert wait_for(blocked, timeout_s=30.0), "stderr never filled"
        fallback = threading.Timer(FALLBACK_S, stderr.reading.set)
        fallback.start()
        answer = httpx.get(healthz, timeout=FALLBACK_S * 3)
        answered_while_full = not stderr.reading.is_set()
        assert answer.status_code == 200
        assert answered_while_full, "the health check waited for stderr to be read"
    finally:
        if fallback is not None:
            fallback.cancel()
        stderr.reading.set()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # Nothing said while stderr was full is lost (the queue holds thousands of lines).
    deadline = time.monotonic() + 5.0
    while b"config reload rejected" not in stderr.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"config reload rejected" in stderr.text
