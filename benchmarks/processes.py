"""Start, watch and stop the processes the benchmark owns (Envoys, the echo processor).

Every process is stopped through its own ``Popen`` object (SIGTERM, then SIGKILL
after a grace period), also when the run fails or is interrupted, because a
``ProcessSet`` is a context manager. Output goes to one log file per process in
the run's work directory.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 30.0


class ProcessSet:
    """Processes started for one scenario; stopped together, newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[IO[bytes]] = []

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        self._logs.append(log)
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._processes.append((name, process))
        return process

    def check_alive(self) -> None:
        for name, process in self._processes:
            if process.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def wait_for_http(self, url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        self._wait(lambda: _answers_200(url), url, timeout_s)

    def wait_for_port(self, port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        self._wait(lambda: _accepts(port), f"127.0.0.1:{port}", timeout_s)

    def _wait(self, ready: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout_s}s; see {self.workdir}")
            time.sleep(0.05)

    def stop(self) -> None:
        for _, process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self._processes):
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False
