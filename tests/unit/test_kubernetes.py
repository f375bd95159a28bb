"""deploy/kubernetes, built by `kubectl kustomize` as an operator applies it.

Every build must succeed; core kinds must validate against the Kubernetes schema
(kubernetes-validate); custom resources must fit the field trees of their APIs
(crd_fields.py); and the pieces must agree with each other and with the gateway
config: ports, probes, mounts, the Unix socket, the store, Secrets, the
Envoy command line, the Gateway API references.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from extproc.config.loader import load_config
from extproc.envoy_bootstrap import envoy_command
from extproc.gateway_api import EXTPROC_PORT

from . import crd_fields

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
CONFIG_PATH = KUBERNETES / "base" / "gateway.yaml"
BUILDS = (
    "overlays/in-cluster-valkey",
    "overlays/external-redis",
    "gateway-api/envoy-gateway",
    "gateway-api/kgateway",
    "monitoring",
)
# The oldest Kubernetes minor the manifests are checked against.
KUBERNETES_VERSION = "1.30"
CORE_GROUPS = ("v1", "apps/v1", "policy/v1", "networking.k8s.io/v1")
RULES = ROOT / "deploy" / "prometheus" / "rules"
SECRETS = {"aigw-provider-keys", "aigw-org-keys", "aigw-admin", "aigw-redis"}

Manifest = dict[str, Any]


def kustomize(directory: str) -> list[Manifest]:
    binary = shutil.which("kubectl")
    assert binary, "kubectl is needed (apt-get install kubectl; .ci/run does)"
    result = subprocess.run(
        [binary, "kustomize", str(KUBERNETES / directory)],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def built() -> dict[str, list[Manifest]]:
    return {directory: kustomize(directory) for directory in BUILDS}


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(deployment: Manifest, name: str) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found: Manifest = next(c for c in containers if c["name"] == name)
    return found


def mounts(deployment: Manifest, name: str) -> dict[str, str]:
    """Mount path -> volume name, for one container."""
    return {m["mountPath"]: m["name"] for m in container(deployment, name)["volumeMounts"]}


def volumes(deployment: Manifest) -> dict[str, Manifest]:
    return {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}


def test_core_kinds_validate_against_the_kubernetes_schema(
    built: dict[str, list[Manifest]],
) -> None:
    checked = 0
    for directory, manifests in built.items():
        for manifest in manifests:
            if manifest["apiVersion"] not in CORE_GROUPS:
                continue
            try:
                kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{directory}: {manifest['kind']}: {exc.message} at {exc.path}")
            checked += 1
    assert checked >= 20


def test_custom_resources_fit_their_apis(built: dict[str, list[Manifest]]) -> None:
    seen = set()
    for directory, manifests in built.items():
        for manifest in manifests:
            if manifest["apiVersion"] in CORE_GROUPS:
                continue
            seen.add(manifest["kind"])
            assert not crd_fields.check(manifest), (directory, crd_fields.check(manifest))
    assert {
        "Gateway", "HTTPRoute", "BackendTLSPolicy", "EnvoyExtensionPolicy", "ClientTrafficPolicy",
        "GatewayExtension", "TrafficPolicy", "BackendConfigPolicy", "Backend", "PodMonitor",
        "PrometheusRule", "BackendTrafficPolicy", "ListenerPolicy",
    } <= seen  # fmt: skip


def test_the_field_check_catches_a_misplaced_field() -> None:
    policy = {
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyExtensionPolicy",
        "metadata": {"name": "aigw"},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g"}],
            # allowModeOverride belongs under processingMode; attributes must be known.
            "extProc": [
                {
                    "backendRefs": [{"name": "aigw", "port": 50051}],
                    "allowModeOverride": True,
                    "processingMode": {"request": {"attributes": ["xds.cluster_name"]}},
                }
            ],
        },
    }
    problems = crd_fields.check(policy)
    assert any("allowModeOverride: unknown field" in p for p in problems)
    assert any("xds.cluster_name" in p for p in problems)


def test_envoy_and_the_gateway_share_a_pod_and_a_unix_socket(
    built: dict[str, list[Manifest]],
) -> None:
    config = load_config(CONFIG_PATH, environ={})
    deployment = one(built["overlays/in-cluster-valkey"], "Deployment", "aigw")
    socket_dir = str(Path(config.server.unix_socket or "").parent)
    assert mounts(deployment, "envoy")[socket_dir] == mounts(deployment, "gateway")[socket_dir]
    assert "emptyDir" in volumes(deployment)[mounts(deployment, "envoy")[socket_dir]]
    # Same user: Envoy needs write permission on the socket the gateway creates.
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "runAsUser" in pod["securityContext"]
    for name in ("envoy", "gateway"):
        assert "runAsUser" not in container(deployment, name).get("securityContext", {})


def test_envoy_runs_the_rendered_bootstrap_from_its_configmap(
    built: dict[str, list[Manifest]],
) -> None:
    manifests = built["overlays/in-cluster-valkey"]
    deployment = one(manifests, "Deployment", "aigw")
    envoy = container(deployment, "envoy")
    config = load_config(CONFIG_PATH, environ={})
    assert envoy["command"] + envoy["args"] == envoy_command(config, "/etc/envoy/envoy.yaml")
    volume = volumes(deployment)[mounts(deployment, "envoy")["/etc/envoy"]]
    configmap = one(manifests, "ConfigMap", volume["configMap"]["name"])
    assert configmap["data"]["envoy.yaml"] == (KUBERNETES / "base" / "envoy.yaml").read_text()
    assert envoy["image"].startswith("envoyproxy/envoy:v1.40.")


def test_the_gateway_reads_its_config_keys_and_token_from_mounts(
    built: dict[str, list[Manifest]],
) -> None:
    manifests = built["overlays/in-cluster-valkey"]
    deployment = one(manifests, "Deployment", "aigw")
    gateway = container(deployment, "gateway")
    mounted = mounts(deployment, "gateway")
    config_file = gateway["args"][gateway["args"].index("--config") + 1]
    volume = volumes(deployment)[mounted[str(Path(config_file).parent)]]
    configmap = one(manifests, "ConfigMap", volume["configMap"]["name"])
    assert configmap["data"][Path(config_file).name] == CONFIG_PATH.read_text()
    config = load_config(CONFIG_PATH, environ={})
    assert config.auth.api_key_directory in mounted
    [token] = config.management.admin_tokens
    assert str(Path(token.token_file or "").parent) in mounted
    keys = volumes(deployment)[mounted[config.auth.api_key_directory]]["secret"]
    admin = volumes(deployment)[mounted[str(Path(token.token_file or "").parent)]]["secret"]
    assert (keys["secretName"], admin["secretName"]) == ("aigw-org-keys", "aigw-admin")
    # Secret files: no access for other users (docs/security.md).
    assert keys["defaultMode"] == admin["defaultMode"] == 0o440
    # The spool must be writable on a read-only root file system.
    assert any(config.store.spool_dir.startswith(path + "/") for path in mounted)
    for name in ("envoy", "gateway"):
        security = container(deployment, name)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert container(deployment, name)["resources"]["requests"]


def test_probes_ask_the_gateway_and_envoy_on_named_ports(
    built: dict[str, list[Manifest]],
) -> None:
    config = load_config(CONFIG_PATH, environ={})
    deployment = one(built["overlays/in-cluster-valkey"], "Deployment", "aigw")
    ports = {
        (c["name"], p["name"]): p["containerPort"]
        for c in deployment["spec"]["template"]["spec"]["containers"]
        for p in c["ports"]
    }
    assert ports[("gateway", "metrics")] == int(config.server.http_address.rsplit(":", 1)[1])
    assert ports[("envoy", "http")] == config.envoy.listener_port
    assert ports[("envoy", "envoy-admin")] == config.envoy.admin_port
    gateway = container(deployment, "gateway")
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    envoy = container(deployment, "envoy")
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "envoy-admin"}
    # Both stay up while the endpoints drain, and the pod waits for the gateway's grace.
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.server.grace_period_s + 20


def test_the_service_and_budget_select_the_gateway_pods(
    built: dict[str, list[Manifest]],
) -> None:
    manifests = built["overlays/in-cluster-valkey"]
    labels = one(manifests, "Deployment", "aigw")["spec"]["template"]["metadata"]["labels"]
    service = one(manifests, "Service", "aigw")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    budget = one(manifests, "PodDisruptionBudget", "aigw")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one(manifests, "Deployment", "aigw")["spec"]["replicas"] > budget["spec"]["minAvailable"]


def test_in_cluster_valkey_is_persistent_and_is_the_default_store(
    built: dict[str, list[Manifest]],
) -> None:
    manifests = built["overlays/in-cluster-valkey"]
    config = load_config(CONFIG_PATH, environ={})
    statefulset = one(manifests, "StatefulSet", "aigw-valkey")
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
    assert "--appendonly" in statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    service = one(manifests, "Service", "aigw-valkey")
    assert config.store.url == f"redis://aigw-valkey:{service['spec']['ports'][0]['port']}/0"
    gateway = container(one(manifests, "Deployment", "aigw"), "gateway")
    assert "REDIS_URL" not in {e["name"] for e in gateway["env"]}


def test_external_redis_comes_from_a_secret(built: dict[str, list[Manifest]]) -> None:
    manifests = built["overlays/external-redis"]
    assert not [m for m in manifests if m["kind"] == "StatefulSet"]
    gateway = container(one(manifests, "Deployment", "aigw"), "gateway")
    [redis] = [e for e in gateway["env"] if e["name"] == "REDIS_URL"]
    assert redis["valueFrom"]["secretKeyRef"] == {"name": "aigw-redis", "key": "url"}
    assert "${REDIS_URL" in CONFIG_PATH.read_text()


def test_every_secret_referenced_is_documented(built: dict[str, list[Manifest]]) -> None:
    referenced = set()
    for manifests in built.values():
        for manifest in manifests:
            text = yaml.safe_dump(manifest)
            referenced |= {name for name in SECRETS if f"name: {name}" in text}
            referenced |= {name for name in SECRETS if f"secretName: {name}" in text}
    assert referenced == SECRETS
    operations = (ROOT / "docs" / "operations.md").read_text()
    for name in SECRETS:
        assert name in operations, name


@pytest.mark.parametrize("controller", ["envoy-gateway", "kgateway"])
def test_extension_mode_serves_ext_proc_to_the_controllers_envoy(
    built: dict[str, list[Manifest]], controller: str
) -> None:
    manifests = built[f"gateway-api/{controller}"]
    deployment = one(manifests, "Deployment", "aigw")
    names = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert names == ["gateway"]
    gateway = container(deployment, "gateway")
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["EXTPROC_GRPC_ADDRESS"] == f"0.0.0.0:{EXTPROC_PORT}"
    # No response attributes from the controller's Envoy: no lean response path.
    extension = load_config(CONFIG_PATH, {"AIGW_LEAN_RESPONSES": env["AIGW_LEAN_RESPONSES"]})
    assert extension.envoy.lean_responses is False
    assert load_config(CONFIG_PATH, environ={}).envoy.lean_responses is True
    assert {"name": "grpc", "containerPort": EXTPROC_PORT, "protocol": "TCP"} in gateway["ports"]
    service = one(manifests, "Service", "aigw")
    assert [p["port"] for p in service["spec"]["ports"]] == [EXTPROC_PORT]
    if controller == "envoy-gateway":
        policy = one(manifests, "EnvoyExtensionPolicy")
        [ref] = policy["spec"]["extProc"][0]["backendRefs"]
    else:
        ref = one(manifests, "GatewayExtension")["spec"]["extProc"]["grpcService"]["backendRef"]
    assert ref == {"name": service["metadata"]["name"], "port": EXTPROC_PORT}


@pytest.mark.parametrize("controller", ["envoy-gateway", "kgateway"])
def test_gateway_api_references_resolve_inside_the_build(
    built: dict[str, list[Manifest]], controller: str
) -> None:
    manifests = built[f"gateway-api/{controller}"]
    gateway = one(manifests, "Gateway")["metadata"]["name"]
    by_kind = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    for route in (m for m in manifests if m["kind"] == "HTTPRoute"):
        assert [ref["name"] for ref in route["spec"]["parentRefs"]] == [gateway]
        for rule in route["spec"]["rules"]:
            for ref in rule.get("backendRefs", []):
                assert (ref.get("kind", "Service"), ref["name"]) in by_kind
    for policy in (m for m in manifests if "targetRefs" in m.get("spec", {})):
        for target in policy["spec"]["targetRefs"]:
            assert (target["kind"], target["name"]) in by_kind, (policy["kind"], target)


def test_the_pod_monitor_scrapes_ports_the_pods_have(built: dict[str, list[Manifest]]) -> None:
    monitor = one(built["monitoring"], "PodMonitor")
    deployment = one(built["overlays/in-cluster-valkey"], "Deployment", "aigw")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {
        p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]
    }
    endpoints = {(e["port"], e["path"]) for e in monitor["spec"]["podMetricsEndpoints"]}
    assert endpoints == {("metrics", "/metrics"), ("envoy-admin", "/stats/prometheus")}
    assert {port for port, _ in endpoints} <= ports


def test_the_prometheus_rule_carries_the_rule_files(built: dict[str, list[Manifest]]) -> None:
    rule = one(built["monitoring"], "PrometheusRule")
    expected = []
    for path in sorted(RULES.glob("*.yml")):
        expected += yaml.safe_load(path.read_text()).get("groups", [])
    assert expected and rule["spec"]["groups"] == expected
