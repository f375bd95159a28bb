"""`server.workers` / `--workers N`: one ext_proc endpoint per worker, all in Envoy's cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extproc.cli import build_parser
from extproc.config.model import GatewayConfig
from extproc.envoy_bootstrap import EXT_PROC_CLUSTER, render_bootstrap, render_bootstrap_yaml
from extproc.worker_endpoints import WorkerRole, gather_spools, spool_dir
from tests.unit.test_envoy_bootstrap import assert_envoy_accepts


def config(envoy: dict[str, Any] | None = None, **server: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "server": server,
            "envoy": envoy or {},
            "providers": [{"name": "mock", "base_url": "http://127.0.0.1:8089/v1"}],
            "models": [{"name": "m", "provider": "mock"}],
        }
    )


def ext_proc_endpoints(gateway: GatewayConfig) -> tuple[str, list[dict[str, Any]]]:
    clusters = render_bootstrap(gateway)["static_resources"]["clusters"]
    cluster = next(c for c in clusters if c["name"] == EXT_PROC_CLUSTER)
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    return cluster.get("lb_policy", "ROUND_ROBIN"), [e["endpoint"]["address"] for e in endpoints]


def test_each_worker_gets_its_own_port_and_envoy_balances_over_all() -> None:
    policy, addresses = ext_proc_endpoints(config(grpc_address="127.0.0.1:50051", workers=3))
    assert policy == "ROUND_ROBIN"
    assert [a["socket_address"]["port_value"] for a in addresses] == [50051, 50052, 50053]


def test_workers_behind_a_dns_name_keep_the_name() -> None:
    gateway = config(workers=2, envoy={"ext_proc_address": "gateway:50051"})
    _, addresses = ext_proc_endpoints(gateway)
    assert [(a["socket_address"]["address"], a["socket_address"]["port_value"])
            for a in addresses] == [("gateway", 50051), ("gateway", 50052)]  # fmt: skip


def test_workers_on_a_unix_socket_get_one_socket_each() -> None:
    _, addresses = ext_proc_endpoints(config(unix_socket="/run/aigw/extproc.sock", workers=2))
    assert addresses == [
        {"pipe": {"path": "/run/aigw/extproc.sock.0"}},
        {"pipe": {"path": "/run/aigw/extproc.sock.1"}},
    ]
    _, single = ext_proc_endpoints(config(unix_socket="/run/aigw/extproc.sock"))
    assert single == [{"pipe": {"path": "/run/aigw/extproc.sock"}}]


def test_envoy_accepts_a_bootstrap_with_workers(tmp_path: Path) -> None:
    assert_envoy_accepts(render_bootstrap_yaml(config(workers=4)), tmp_path)


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_the_worker_count_is_checked(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", value])
    assert "--workers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers"):
        config(workers=int(value) if value.isdigit() else 0)


def test_workers_from_the_command_line() -> None:
    assert build_parser().parse_args(["serve", "--workers", "4"]).workers == 4
    assert build_parser().parse_args(["serve"]).workers is None


def test_each_worker_spools_alone_and_leftovers_reach_a_worker(tmp_path: Path) -> None:
    base = tmp_path / "spool"
    (base / "worker-3").mkdir(parents=True)
    (base / "usage.jsonl").write_bytes(b'{"id": "single"}\n')
    (base / "worker-3" / "usage.jsonl").write_bytes(b'{"id": "old-worker-3"}\n')
    (base / "worker-1").mkdir()
    (base / "worker-1" / "quota.jsonl").write_bytes(b'{"id": "worker-1"}\n')
    assert spool_dir(str(base), WorkerRole(1, 2, "redis://x")) == base / "worker-1"
    assert spool_dir(str(base), None) == base
    gather_spools(str(base), 2)
    # Worker 0 replays what a single process and a worker beyond the count left.
    assert (base / "worker-0" / "usage.jsonl").read_bytes().splitlines() == [
        b'{"id": "single"}',
        b'{"id": "old-worker-3"}',
    ]
    assert (base / "worker-1" / "quota.jsonl").exists()
    assert not (base / "usage.jsonl").exists()
    # Back to one process: it takes every worker's leftovers.
    gather_spools(str(base), 1)
    assert sorted(path.name for path in base.glob("*.jsonl")) == ["quota.jsonl", "usage.jsonl"]
    assert len((base / "usage.jsonl").read_bytes().splitlines()) == 2
    assert not list(base.glob("worker-*/*.jsonl"))
