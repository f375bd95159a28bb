"""Where each worker of ``extproc serve --workers N`` serves ext_proc.

Envoy keeps one HTTP/2 connection per endpoint of the ext_proc cluster and puts
every stream on it, so N processes sharing one port (SO_REUSEPORT) would see
one connection land on one of them and carry all the traffic. Each worker
therefore gets its own endpoint, worker ``i`` at port ``base + i`` (and
``<unix_socket>.<i>`` when a socket is configured), and the rendered Envoy
bootstrap lists them all so Envoy balances streams round robin. This module is
the one source of truth for that numbering (the server binds, the renderer lists).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from extproc.store.spool import move_lines

if TYPE_CHECKING:
    from extproc.config.model import GatewayConfig


def worker_address(address: str, index: int) -> str:
    """``host:port`` of worker ``index`` for the base ``host:port``."""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + index}"


def worker_socket(path: str, index: int, workers: int) -> str:
    """The unix socket of worker ``index``; a single process keeps the configured path."""
    return path if workers == 1 else f"{path}.{index}"


def worker_addresses(address: str, workers: int) -> tuple[str, ...]:
    return tuple(worker_address(address, index) for index in range(workers))


def worker_sockets(path: str, workers: int) -> tuple[str, ...]:
    return tuple(worker_socket(path, index, workers) for index in range(workers))


def listening_ports(config: GatewayConfig, workers: int) -> frozenset[int]:
    """The TCP ports the gateway's processes listen on: ext_proc (each of ``workers``
    one port up from the last), HTTP and the management API. The embedded store,
    started before any of them is bound, must not take one."""
    server = config.server
    addresses = [
        *worker_addresses(server.grpc_address, workers),
        server.http_address,
        config.management.address,
    ]
    ports = (address.rpartition(":")[2] for address in addresses)
    return frozenset(int(port) for port in ports if port.isdigit())


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What one worker process is: its index among ``workers``, and the shared store."""

    index: int
    workers: int
    # The store every worker shares (the supervisor starts the embedded one if needed).
    store_url: str


def spool_dir(base: str, role: WorkerRole | None) -> Path:
    """Where a process spools what the store could not take: one directory per worker
    (a restarted worker takes over its predecessor's), so that each replays its own
    and none waits on another's spool lock."""
    return Path(base) if role is None else Path(base) / f"worker-{role.index}"


def gather_spools(base: str, workers: int) -> None:
    """Before the workers start: hand spooled batches no worker would replay (left by a
    single process, or by workers beyond the current count) to the one that will.

    The spools' batch ids make a replay count once wherever it happens.
    """
    root = Path(base)
    keep = spool_dir(base, WorkerRole(0, workers, "")) if workers > 1 else root
    strays = [] if keep == root else list(root.glob("*.jsonl"))
    for directory in root.glob("worker-*"):
        index = directory.name.removeprefix("worker-")
        if workers == 1 or not index.isdigit() or int(index) >= workers:
            strays += list(directory.glob("*.jsonl"))
    for stray in strays:
        move_lines(stray, keep / stray.name)
