"""`server.workers` / `--workers N`: one ext_proc endpoint per worker, all in Envoy's cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from extproc.cli import build_parser
from extproc.config.model import GatewayConfig
from extproc.envoy_bootstrap import EXT_PROC_CLUSTER, render_bootstrap, render_bootstrap_yaml

ENVOY = Path(sys.executable).parent / "envoy"


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
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(render_bootstrap_yaml(config(workers=4)), encoding="utf-8")
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(bootstrap), "--log-level", "warn"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


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
