"""The things measured: how each scenario's processes start, and where to send load.

One fast upstream (an Envoy answering from a ``direct_response``) runs for the
whole run; each scenario starts its own front processes on fresh ports and stops
them before the next one starts, so idle processes do not share the cores:

- ``upstream``: the upstream alone, a reference showing it is not the bottleneck;
- ``a``: Envoy straight to the upstream, no ext_proc filter;
- ``b``: Envoy + the echo processor on all four phases;
- ``c``: Envoy + the real gateway with its default config (embedded Valkey,
  log lines to a file, metrics), started by ``extproc.devstack.LocalStack``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cpu import child_pids
from benchmarks.envoy_configs import (
    envoy_argv,
    front_bootstrap,
    upstream_bootstrap,
    write_bootstrap,
)
from benchmarks.processes import ProcessSet
from extproc.devstack import LocalStack, Ports, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
GATEWAY_CONFIG = REPO_ROOT / "config" / "gateway.yaml"


@dataclass(frozen=True, slots=True)
class Target:
    """A running scenario: where to send requests, its Envoy admin, its processes."""

    base_url: str
    admin_url: str
    pids: dict[str, int]


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    start: Callable[[Path, Target], AbstractContextManager[Target]]


@contextmanager
def running_upstream(workdir: Path) -> Iterator[Target]:
    """The fast upstream every scenario forwards to."""
    port, admin_port = free_port(), free_port()
    with ProcessSet(workdir) as processes:
        path = write_bootstrap(upstream_bootstrap(port, admin_port), workdir / "upstream.yaml")
        envoy = processes.spawn("upstream-envoy", envoy_argv(path))
        admin_url = f"http://127.0.0.1:{admin_port}"
        processes.wait_for_http(f"{admin_url}/ready")
        yield Target(f"http://127.0.0.1:{port}", admin_url, {"upstream": envoy.pid})


@contextmanager
def upstream_alone(workdir: Path, upstream: Target) -> Iterator[Target]:
    yield upstream


@contextmanager
def envoy_direct(workdir: Path, upstream: Target) -> Iterator[Target]:
    with ProcessSet(workdir) as processes:
        yield _front_envoy(processes, upstream, echo_port=None, pids={})


@contextmanager
def envoy_echo(workdir: Path, upstream: Target) -> Iterator[Target]:
    with ProcessSet(workdir) as processes:
        echo_port = free_port()
        argv = [sys.executable, "-m", "benchmarks.echo_processor", "--port", str(echo_port)]
        echo = processes.spawn("echo-processor", argv)
        processes.wait_for_port(echo_port)
        yield _front_envoy(processes, upstream, echo_port, pids={"processor": echo.pid})


@contextmanager
def envoy_gateway(workdir: Path, upstream: Target) -> Iterator[Target]:
    """The gateway as ``make run`` starts it, its mock provider pointed at the upstream."""
    fresh = Ports.free()
    ports = Ports(fresh.envoy, fresh.envoy_admin, fresh.grpc, fresh.http, _port_of(upstream))
    # real_provider="mock": no mock-llm process, models still go to the provider "mock".
    stack = LocalStack(
        workdir=workdir, ports=ports, config_path=GATEWAY_CONFIG, real_provider="mock"
    )
    try:
        stack.start()
        gateway = stack.process("gateway").pid
        pids = {"envoy": stack.process("envoy").pid, "gateway": gateway, **upstream.pids}
        for valkey in child_pids(gateway)[:1]:  # the embedded store, when the gateway runs one
            pids["valkey"] = valkey
        yield Target(stack.base_url, stack.envoy_admin_url, pids)
    finally:
        stack.stop()


SCENARIOS = (
    Scenario("upstream", "upstream alone (ref)", upstream_alone),
    Scenario("a", "(a) envoy direct", envoy_direct),
    Scenario("b", "(b) envoy + echo ext_proc", envoy_echo),
    Scenario("c", "(c) envoy + gateway", envoy_gateway),
)


def _front_envoy(
    processes: ProcessSet, upstream: Target, echo_port: int | None, pids: dict[str, int]
) -> Target:
    port, admin_port = free_port(), free_port()
    bootstrap = front_bootstrap(port, admin_port, _port_of(upstream), echo_port)
    path = write_bootstrap(bootstrap, processes.workdir / "envoy.yaml")
    envoy = processes.spawn("envoy", envoy_argv(path))
    admin_url = f"http://127.0.0.1:{admin_port}"
    processes.wait_for_http(f"{admin_url}/ready")
    return Target(
        f"http://127.0.0.1:{port}", admin_url, {"envoy": envoy.pid, **pids, **upstream.pids}
    )


def _port_of(target: Target) -> int:
    return int(target.base_url.rpartition(":")[2])
