"""Every rendered file the deploy/ tree carries, and how to render it again.

One list says which config renders which file: the Envoy bootstraps of the
docker-compose stack and the Kubernetes pod, the Gateway API attachments, and
the PrometheusRule that carries deploy/prometheus/rules to the Prometheus
Operator. ``make render-envoy`` writes them (``python -m extproc.deploy_render``)
and a test checks that the committed files equal a fresh render.

Configs are rendered with no environment set, like envoy/envoy.yaml: a value
taken from the environment at run time never changes the rendered files.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from extproc.config.loader import load_config
from extproc.envoy_bootstrap import render_bootstrap_yaml
from extproc.gateway_api import CONTROLLERS, render_file

COMPOSE_CONFIG = Path("deploy/config/gateway.yaml")
KUBERNETES_CONFIG = Path("deploy/kubernetes/base/gateway.yaml")
PROMETHEUS_RULES = Path("deploy/prometheus/rules")
PROMETHEUS_RULE = Path("deploy/kubernetes/monitoring/prometheusrule.yaml")
_RULE_HEADER = (
    "# Generated from deploy/prometheus/rules/*.yml by `make render-envoy`. Do not edit\n"
    "# by hand: change the rule files (promtool tests them) and render again.\n"
)


def _bootstrap(config: Path) -> Callable[[Path], str]:
    return lambda root: render_bootstrap_yaml(load_config(root / config, environ={}))


def _attachments(controller: Any) -> Callable[[Path], str]:
    return lambda root: render_file(root / KUBERNETES_CONFIG, controller)


def prometheus_rule(root: Path) -> str:
    """A PrometheusRule holding every group of every rule file, file by file, in order."""
    groups: list[Any] = []
    for path in sorted((root / PROMETHEUS_RULES).glob("*.yml")):
        groups += (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("groups", [])
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "aigw"},
        "spec": {"groups": groups},
    }
    return _RULE_HEADER + yaml.safe_dump(manifest, sort_keys=False, width=1000)


RENDERED: dict[Path, Callable[[Path], str]] = {
    COMPOSE_CONFIG.with_name("envoy.yaml"): _bootstrap(COMPOSE_CONFIG),
    KUBERNETES_CONFIG.with_name("envoy.yaml"): _bootstrap(KUBERNETES_CONFIG),
    **{
        Path(f"deploy/kubernetes/gateway-api/{controller}/attachments.yaml"): _attachments(
            controller
        )
        for controller in CONTROLLERS
    },
    PROMETHEUS_RULE: prometheus_rule,
}


def render_all(root: Path) -> dict[Path, str]:
    return {path: render(root) for path, render in RENDERED.items()}


def main(argv: list[str] | None = None) -> int:
    root = Path(argv[0] if argv else ".")
    for path, text in render_all(root).items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
