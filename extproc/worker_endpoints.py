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


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What one worker process is: its index among ``workers``, and the shared store."""

    index: int
    workers: int
    # The store every worker shares (the supervisor starts the embedded one if needed).
    store_url: str
