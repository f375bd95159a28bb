"""deploy/: what an operator sees once the manifests run, checked on the built manifests.

The pod's shutdown must let open streams finish as docs/operations.md promises, and
the alerts of the PrometheusRule must watch the jobs the PodMonitor's targets get.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from extproc.config.loader import load_config

from .test_kubernetes import (
    BUILDS,
    CONFIG_PATH,
    RULES,
    Manifest,
    container,
    kustomize,
    one,
    volumes,
)

# `kubectl apply -n <namespace>`: the Prometheus Operator names a PodMonitor's job after it.
NAMESPACE = "ai"


@pytest.fixture(scope="module")
def deployment() -> Manifest:
    return one(kustomize("overlays/in-cluster-valkey"), "Deployment", "aigw")


@pytest.fixture(scope="module")
def pod_monitor() -> Manifest:
    return one(kustomize("monitoring"), "PodMonitor")


def pre_stop_script(deployment: Manifest, name: str) -> str:
    """A container's preStop, as the shell command line it amounts to."""
    command: list[str] = container(deployment, name)["lifecycle"]["preStop"]["exec"]["command"]
    if command[0] == "sleep":
        return " ".join(command)
    assert command[:2] == ["/bin/bash", "-c"], command
    return command[2]


def _pre_stop_sleep_s(deployment: Manifest, name: str) -> int:
    """How long a container's preStop holds it before its SIGTERM: its last sleep."""
    *_, sleep = re.findall(r"(?:^|[;&|]\s*)sleep (\d+)\s*$", pre_stop_script(deployment, name))
    return int(sleep)


def test_envoy_stays_up_while_the_gateway_drains_open_streams(deployment: Manifest) -> None:
    # Envoy ends every open connection the moment it gets SIGTERM (it has no drain of
    # its own on that signal): if it got it with the gateway, the streams the gateway
    # is draining for server.grace_period_s would be cut at once.
    grace_s = load_config(CONFIG_PATH, environ={}).server.grace_period_s
    gateway_done_s = _pre_stop_sleep_s(deployment, "gateway") + grace_s
    envoy_stop_s = _pre_stop_sleep_s(deployment, "envoy")
    assert envoy_stop_s >= gateway_done_s, (
        f"Envoy gets SIGTERM {envoy_stop_s} s into the shutdown, the gateway's open streams "
        f"may run until {gateway_done_s} s"
    )
    # ... and the kubelet does not kill the pod before either is through.
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > max(envoy_stop_s, gateway_done_s)


def test_envoy_tells_keep_alive_clients_to_leave_before_the_gateway_stops_taking_streams(
    deployment: Manifest,
) -> None:
    # The graceful drain the preStop starts on Envoy's admin port (the one the mounted
    # bootstrap listens on) must end, its listener closed, by the time the gateway gets
    # SIGTERM and takes no new stream: a request arriving later would fail.
    config = load_config(CONFIG_PATH, environ={})
    script = pre_stop_script(deployment, "envoy")
    assert f"/dev/tcp/127.0.0.1/{config.envoy.admin_port}" in script
    assert "POST /drain_listeners?graceful " in script
    args = container(deployment, "envoy")["args"]
    assert args[args.index("--drain-strategy") + 1] == "immediate"
    drain_s = int(args[args.index("--drain-time-s") + 1])
    assert drain_s <= _pre_stop_sleep_s(deployment, "gateway")


def _operator_job(monitor: Manifest, endpoint: Manifest) -> str:
    """The `job` label the Prometheus Operator gives an endpoint's targets: the
    PodMonitor's namespace/name, then the endpoint's own relabelings in order."""
    job = f"{NAMESPACE}/{monitor['metadata']['name']}"
    assert "jobLabel" not in monitor["spec"], "a pod label would name the job"
    for relabel in endpoint.get("relabelings", []):
        if relabel.get("targetLabel") != "job":
            continue
        # Only a constant job is understood here: no source labels, the default regex.
        assert relabel.get("action", "replace").lower() == "replace", relabel
        assert not relabel.get("sourceLabels") and "regex" not in relabel, relabel
        job = relabel["replacement"]
    return job


def _alert(name: str) -> dict[str, Any]:
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == name:
                    found: dict[str, Any] = rule
                    return found
    raise AssertionError(f"no alert {name}")


def test_the_gateway_down_alert_watches_the_pod_monitors_gateway_job(
    pod_monitor: Manifest,
) -> None:
    jobs = {
        endpoint["port"]: _operator_job(pod_monitor, endpoint)
        for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]
    }
    expr = _alert("AigwGatewayDown")["expr"]
    watched = re.fullmatch(r'up\{job="([^"]+)"\} == 0', expr.strip())
    assert watched, expr
    # Under the operator the alert must see the gateway's scrape failing, and only it:
    # Envoy's admin port being down is no "Prometheus cannot scrape the gateway".
    assert watched.group(1) == jobs["metrics"], (
        f"AigwGatewayDown watches job {watched.group(1)!r}; the PodMonitor's gateway "
        f"targets are job {jobs['metrics']!r}: the alert can never fire"
    )
    assert jobs["envoy-admin"] != jobs["metrics"]


def test_the_pod_monitors_jobs_are_the_compose_scrape_jobs(pod_monitor: Manifest) -> None:
    # One set of rules and one dashboard for both: the jobs have the same names.
    scrape = yaml.safe_load((RULES.parent / "prometheus.yml").read_text())["scrape_configs"]
    compose_jobs = {job["job_name"] for job in scrape}
    for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
        assert _operator_job(pod_monitor, endpoint) in compose_jobs, endpoint["port"]


def _label_selectors(manifest: Manifest) -> list[tuple[str, dict[str, str]]]:
    """Every label selector of a manifest that names which pods it means, by where."""
    spec = manifest.get("spec", {})
    kind = manifest["kind"]
    found: list[tuple[str, dict[str, str]]] = []
    if kind == "Service" and "selector" in spec:
        found.append(("spec.selector", spec["selector"]))
    if "selector" in spec and "matchLabels" in spec["selector"]:
        found.append(("spec.selector", spec["selector"]["matchLabels"]))
    if kind == "NetworkPolicy":
        found.append(("spec.podSelector", spec["podSelector"]["matchLabels"]))
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer:
                    found.append(("ingress.from", peer["podSelector"]["matchLabels"]))
    pod = spec.get("template", {}).get("spec", {})
    for constraint in pod.get("topologySpreadConstraints", []):
        found.append(("topologySpreadConstraints", constraint["labelSelector"]["matchLabels"]))
    return found


@pytest.mark.parametrize("build", BUILDS)
def test_every_selector_names_the_gateways_own_pods(build: str) -> None:
    # `component: store` or `component: gateway` alone would also pick another app's
    # pods in the namespace: its store would take the gateway's traffic, its pods
    # would pass the store's NetworkPolicy.
    for manifest in kustomize(build):
        for where, labels in _label_selectors(manifest):
            if "app.kubernetes.io/component" in labels:
                assert labels.get("app.kubernetes.io/name") == "aigw", (
                    f"{manifest['kind']} {manifest['metadata']['name']} {where}: {labels}"
                )


# Valkey's size units (case-insensitive: "mb" is 2**20 bytes, "m" 10**6) and Kubernetes'.
_VALKEY_UNITS = {"": 1, "k": 1000, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
_K8S_UNITS = {"": 1, "K": 1000, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _bytes(size: str, units: dict[str, int]) -> int:
    found = re.fullmatch(r"(\d+)([a-zA-Z]*)", size)
    assert found, size
    return int(found.group(1)) * units[found.group(2)]


def test_the_in_cluster_valkey_refuses_writes_before_its_container_is_killed() -> None:
    # Without --maxmemory, noeviction never applies: the data grows to the container's
    # limit, the kernel kills Valkey, and each restart reloads the same AOF into the same
    # limit. With it, a full store answers OOM, which the gateway handles as an outage.
    statefulset = one(kustomize("overlays/in-cluster-valkey"), "StatefulSet", "aigw-valkey")
    valkey = container(statefulset, "valkey")
    args: list[str] = valkey["args"]
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert options["--maxmemory-policy"] == "noeviction"
    assert "--maxmemory" in options, "the store's data is bounded only by the OOM killer"
    cap = _bytes(options["--maxmemory"].lower(), _VALKEY_UNITS)
    limit = _bytes(valkey["resources"]["limits"]["memory"], _K8S_UNITS)
    # Room left for the AOF rewrite's copy-on-write, client buffers and fragmentation.
    assert 0 < cap <= limit * 2 // 3, (options["--maxmemory"], limit)


# What one worker's metric files take per API key and model it counted: measured at
# 4.2 MiB for 500 keys x 10 models (tokens_consumed_total's two series and the cost's),
# rounded up; twice that for prometheus_client's files growing by doubling.
_METRICS_PER_KEY_AND_MODEL = 1 << 10


def test_the_workers_metric_files_live_on_a_volume_sized_for_them(deployment: Manifest) -> None:
    # With server.workers > 1 they defaulted to /tmp, a 64Mi emptyDir: 8 workers counting
    # 500 keys x 10 models outgrow it, and the kubelet evicts the pod.
    config = load_config(CONFIG_PATH, environ={})
    directory = config.telemetry.metrics.multiprocess_dir
    assert directory is not None, "the workers' metric files would go to /tmp"
    gateway = container(deployment, "gateway")
    [mount] = [
        m
        for m in gateway["volumeMounts"]
        if (directory.rstrip("/") + "/").startswith(m["mountPath"].rstrip("/") + "/")
    ]
    # Under the mount or the mount itself: the supervisor empties the directory of its
    # workers' files and keeps it (tests/unit/test_worker_metric_files.py).
    assert mount["mountPath"] != "/tmp" and not mount.get("readOnly", False)
    # Writable by the pod's non-root user on the read-only root file system.
    pod = deployment["spec"]["template"]["spec"]
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    empty_dir = volumes(deployment)[mount["name"]]["emptyDir"]
    # On disk: a memory-backed volume would count against the container's memory limit.
    assert empty_dir.get("medium", "") == ""
    needed = 2 * _METRICS_PER_KEY_AND_MODEL * 500 * 10 * 8
    assert _bytes(empty_dir["sizeLimit"], _K8S_UNITS) >= needed
