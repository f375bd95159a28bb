"""The files rendered under deploy/: up to date, and every Envoy bootstrap valid for Envoy.

Like envoy/envoy.yaml, each rendered file must equal a fresh render of its
source (`make render-envoy` writes them), and the real Envoy binary must accept
every bootstrap the deploy files carry, including the one inside the
Kubernetes ConfigMap.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extproc.deploy_render import RENDERED, render_all

ROOT = Path(__file__).resolve().parents[2]
ENVOY = Path(sys.executable).parent / "envoy"
BOOTSTRAPS = sorted(path for path in RENDERED if path.name == "envoy.yaml")


def test_every_rendered_deploy_file_is_up_to_date() -> None:
    stale = [
        str(path)
        for path, text in render_all(ROOT).items()
        if not (ROOT / path).exists() or (ROOT / path).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"stale rendered files {stale}: run `make render-envoy` and commit them"


def test_the_deploy_files_carry_a_bootstrap_per_deployment() -> None:
    assert [str(path) for path in BOOTSTRAPS] == [
        "deploy/config/envoy.yaml",
        "deploy/kubernetes/base/envoy.yaml",
    ]


@pytest.mark.parametrize("bootstrap", BOOTSTRAPS, ids=str)
def test_envoy_accepts_the_bootstrap(bootstrap: Path) -> None:
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(ROOT / bootstrap), "--log-level", "error"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_the_kubernetes_pod_talks_to_the_gateway_over_the_shared_socket() -> None:
    bootstrap = yaml.safe_load((ROOT / "deploy/kubernetes/base/envoy.yaml").read_text())
    config = yaml.safe_load((ROOT / "deploy/kubernetes/base/gateway.yaml").read_text())
    [cluster] = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "extproc"]
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {"pipe": {"path": config["server"]["unix_socket"]}}
