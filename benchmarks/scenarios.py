"""The things measured: how each scenario's processes start, and where to send load.

One fast upstream (an Envoy answering from a ``direct_response``) runs for the
whole run; each scenario starts its own front processes on fresh ports and stops
them before the next one starts, so idle processes do not share the cores:

- ``upstream``: the upstream alone, a reference showing it is not the bottleneck;
- ``a``: Envoy straight to the upstream, no ext_proc filter;
- ``b``: Envoy + the echo processor on all four phases;
- ``c``: Envoy + the real gateway with its default config (org API key auth,
  embedded Valkey, log lines to a file, metrics), started by ``extproc.devstack.LocalStack``;
- ``r``: (c)'s Envoy bootstrap and (c)'s answers, replayed by a processor that does
  no work (``benchmarks.replay_processor``): the floor of the gateway's protocol;
- ``prod``: issue #10's production pipeline (``benchmarks.configs.PROD``);
- ``d``: (c) with a JWT provider, the load presenting one RS256 token
  (verified once, then served from the token cache);
- ``e``: (c) with the request translated to Anthropic's Messages API and back;
- ``f``: (c) with three quota rules on every request;
- ``w1``/``w2``: the production pipeline with one and two worker processes
  (``server.workers``), at 16 connections only.

The streaming rows live in ``benchmarks.streaming``, the memory row in
``benchmarks.memory``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from benchmarks.configs import (
    GATEWAY_CONFIG,
    Json,
    Overlay,
    guard_available,
    prod_overlay,
    workers_available,
    workers_overlay,
    write_config,
)
from benchmarks.cpu import child_pids, process_cmdline, process_name
from benchmarks.envoy_configs import (
    CHAT_PATH,
    envoy_argv,
    front_bootstrap,
    upstream_bootstrap,
    write_bootstrap,
)
from benchmarks.load_generator import DEFAULT_AUTHORIZATION, check_guard_refuses
from benchmarks.processes import ProcessSet
from benchmarks.replay_processor import capture_answers, write_answers
from extproc.config.loader import load_config
from extproc.devstack import LocalStack, Ports, envoy_binary, free_port
from extproc.envoy_bootstrap import envoy_command, render_bootstrap_yaml

BENCH_ISSUER = "https://bench.aigw.local"
# Per key, per user and per group, all on the benchmark's key (team1: alice, engineering).
QUOTA_RULES: Json = {
    "quotas": {
        "rules": [
            {"name": "key-rpm", "subject": "api_key", "requests_per_minute": 100_000_000},
            {"name": "user-tpm", "subject": "user", "tokens_per_minute": 1_000_000_000_000},
            {
                "name": "group-month",
                "subject": "group",
                "token_quota": {
                    "limit": 1_000_000_000_000,
                    "period": "calendar_month",
                    "time_zone": "Europe/Berlin",
                },
            },
        ]
    }
}
# The /openai route takes the model from the path: an Anthropic model, so the
# OpenAI request is translated to Messages and the answer back.
TRANSLATED_PATH = "/openai/claude-3-5-haiku-latest"


@dataclass(frozen=True, slots=True)
class Target:
    """A running scenario: where to send requests, its Envoy admin, its processes."""

    base_url: str
    admin_url: str
    pids: dict[str, int]
    # What the load generator authenticates with (ignored where nothing checks it).
    authorization: str = DEFAULT_AUTHORIZATION
    # Where it posts (wrk's script sets the path; the URL's own path is not used).
    path: str = CHAT_PATH


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    start: Callable[[Path, Target], AbstractContextManager[Target]]
    # None: the run's --connections; otherwise these counts only.
    connections: tuple[int, ...] | None = None
    # Why the scenario cannot run in this checkout (None: it can).
    unavailable: Callable[[], str | None] = lambda: None
    # A check beyond the first 200 (None: passed), e.g. that the guard really runs.
    check: Callable[[Target], str | None] = lambda target: None


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
        yield front_envoy(processes, upstream, echo_port=None, pids={})


@contextmanager
def envoy_echo(workdir: Path, upstream: Target) -> Iterator[Target]:
    with ProcessSet(workdir) as processes:
        echo_port = free_port()
        argv = [sys.executable, "-m", "benchmarks.echo_processor", "--port", str(echo_port)]
        echo = processes.spawn("echo-processor", argv)
        processes.wait_for_port(echo_port)
        yield front_envoy(processes, upstream, echo_port, pids={"processor": echo.pid})


@contextmanager
def envoy_gateway(workdir: Path, upstream: Target) -> Iterator[Target]:
    """The gateway as ``make run`` starts it (org API keys), its mock provider on the upstream."""
    with run_gateway(workdir, upstream, GATEWAY_CONFIG, DEFAULT_AUTHORIZATION) as target:
        yield target


@contextmanager
def envoy_gateway_protocol(workdir: Path, upstream: Target) -> Iterator[Target]:
    """(c)'s Envoy bootstrap in front of a processor replaying (c)'s answers, doing nothing."""
    with ProcessSet(workdir) as processes:
        port, envoy_port, admin_port = free_port(), free_port(), free_port()
        env = {
            **os.environ,
            "EXTPROC_GRPC_ADDRESS": f"127.0.0.1:{port}",
            "ENVOY_LISTENER_PORT": str(envoy_port),
            "ENVOY_ADMIN_PORT": str(admin_port),
            "MOCK_LLM_ADDRESS": f"127.0.0.1:{_port_of(upstream)}",
            "LLM_PROVIDER": "mock",
            "ANTHROPIC_PROVIDER": "mock-anthropic",
        }
        config = load_config(GATEWAY_CONFIG, env)
        answers = workdir / "gateway-answers.json"
        write_answers(answers, capture_answers(config))
        argv = [sys.executable, "-m", "benchmarks.replay_processor", "--port", str(port)]
        replay = processes.spawn("replay-processor", [*argv, "--answers", str(answers)])
        processes.wait_for_port(port)
        bootstrap = workdir / "gateway-envoy.yaml"
        bootstrap.write_text(render_bootstrap_yaml(config), encoding="utf-8")
        envoy = processes.spawn("envoy", envoy_command(config, str(bootstrap), envoy_binary()))
        admin_url = f"http://127.0.0.1:{admin_port}"
        processes.wait_for_http(f"{admin_url}/ready")
        pids = {"envoy": envoy.pid, "processor": replay.pid, **upstream.pids}
        yield Target(f"http://127.0.0.1:{envoy_port}", admin_url, pids)


@contextmanager
def envoy_gateway_prod(workdir: Path, upstream: Target) -> Iterator[Target]:
    """Issue #10's production pipeline: API key, regex guard, one quota rule, metrics, log."""
    config = write_config(workdir / "gateway-prod.yaml", prod_overlay())
    with run_gateway(workdir, upstream, config, DEFAULT_AUTHORIZATION) as target:
        yield target


def envoy_gateway_workers(workers: int) -> Callable[[Path, Target], AbstractContextManager[Target]]:
    """The production pipeline served by ``workers`` processes (``server.workers``)."""

    @contextmanager
    def start(workdir: Path, upstream: Target) -> Iterator[Target]:
        config = write_config(workdir / f"gateway-workers-{workers}.yaml", workers_overlay(workers))
        with run_gateway(
            workdir, upstream, config, DEFAULT_AUTHORIZATION, workers=workers
        ) as target:
            yield target

    return start


@contextmanager
def envoy_gateway_jwt(workdir: Path, upstream: Target) -> Iterator[Target]:
    """The same gateway with a JWT provider added; the load presents one RS256 token."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench", alg="RS256", use="sig")
    (workdir / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    provider = {
        "name": "bench",
        "issuer": BENCH_ISSUER,
        "jwks": {"file": str(workdir / "jwks.json")},
        "algorithms": ["RS256"],
    }
    config = write_config(
        workdir / "gateway-jwt.yaml", Overlay({"auth": {"jwt_providers": [provider]}})
    )
    claims = {"iss": BENCH_ISSUER, "sub": "bench-user", "group": "bench", "exp": 2**31 - 1}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
    with run_gateway(workdir, upstream, config, f"Bearer {token}") as target:
        yield target


@contextmanager
def envoy_gateway_quotas(workdir: Path, upstream: Target) -> Iterator[Target]:
    """(c) with three quota rules that apply to every request (none ever refuses)."""
    config = write_config(workdir / "gateway-quotas.yaml", Overlay(QUOTA_RULES))
    with run_gateway(workdir, upstream, config, DEFAULT_AUTHORIZATION) as target:
        yield target


@contextmanager
def envoy_gateway_anthropic(workdir: Path, upstream: Target) -> Iterator[Target]:
    """(c) with the request sent to an Anthropic model: translated both ways."""
    with run_gateway(
        workdir, upstream, GATEWAY_CONFIG, DEFAULT_AUTHORIZATION, TRANSLATED_PATH
    ) as target:
        yield target


@contextmanager
def run_gateway(
    workdir: Path,
    upstream: Target,
    config: Path,
    authorization: str,
    path: str = CHAT_PATH,
    workers: int = 1,
) -> Iterator[Target]:
    """The gateway (``LocalStack``: server, embedded Valkey, Envoy) with ``config``, its
    ``mock`` provider pointed at ``upstream``; with ``workers``, that many worker processes."""
    fresh = Ports.free()
    # Every port its own: gateways of several rows run at once, and no listener of the
    # gateway may be shared (SO_REUSEPORT is off), the management API's included.
    ports = dataclasses.replace(fresh, mock=_port_of(upstream))
    # Models go to the provider "mock", served by the upstream: no mock-llm process
    # (real_provider="mock" says so to revisions without mock_llm, for A/B runs).
    options: dict[str, Any] = {
        "workdir": workdir, "ports": ports, "config_path": config, "real_provider": "mock"
    }  # fmt: skip
    fields = {f.name for f in dataclasses.fields(LocalStack)}
    if "mock_llm" in fields:
        options["mock_llm"] = False  # the upstream serves the mock's port
    if workers > 1 and "workers" in fields:
        # LocalStack picks a free block of ports for the workers (one port each).
        options["workers"] = workers
    stack = LocalStack(**options)
    try:
        stack.start()
        gateway_pid = stack.process("gateway").pid
        pids = {"envoy": stack.process("envoy").pid, "gateway": gateway_pid}
        pids |= gateway_children(gateway_pid) | upstream.pids
        yield Target(stack.base_url, stack.envoy_admin_url, pids, authorization, path)
    finally:
        stack.stop()


def gateway_children(gateway: int) -> dict[str, int]:
    """The gateway's child processes by role: its embedded store and, with
    ``server.workers``, its worker processes."""
    found: dict[str, int] = {}
    workers = 0
    for pid in child_pids(gateway):
        if "valkey" in process_name(pid):
            found.setdefault("valkey", pid)
        elif "resource_tracker" in process_cmdline(pid):
            continue  # multiprocessing's helper beside spawned workers: serves nothing
        else:
            workers += 1
            found[f"worker{workers}"] = pid
    return found


def _no_workers() -> str | None:
    if workers_available():
        return None
    return "server.workers is not in the config yet (issue #10 item 4, obs); skipped"


_PROD_TITLE = "(p) production" + ("" if guard_available() else " (no guard yet)")


def _guard_runs(target: Target) -> str | None:
    if not guard_available():
        return None
    return check_guard_refuses(target.base_url, target.authorization, target.path)


SCENARIOS = (
    Scenario("upstream", "upstream alone (ref)", upstream_alone),
    Scenario("a", "(a) envoy direct", envoy_direct),
    Scenario("b", "(b) envoy + echo ext_proc", envoy_echo),
    Scenario("c", "(c) gateway, default config", envoy_gateway),
    Scenario("r", "(r) (c)'s answers, no work", envoy_gateway_protocol),
    Scenario("prod", _PROD_TITLE, envoy_gateway_prod, check=_guard_runs),
    Scenario("d", "(d) gateway, JWT auth", envoy_gateway_jwt),
    Scenario("e", "(e) gateway, -> Anthropic", envoy_gateway_anthropic),
    Scenario("f", "(f) gateway, 3 quota rules", envoy_gateway_quotas),
    Scenario(
        "w1", "(w1) production, 1 worker", envoy_gateway_workers(1), (16,), _no_workers, _guard_runs
    ),
    Scenario(
        "w2",
        "(w2) production, 2 workers",
        envoy_gateway_workers(2),
        (16,),
        _no_workers,
        _guard_runs,
    ),
)


def front_envoy(
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
