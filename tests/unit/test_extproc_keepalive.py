"""Envoy's HTTP/2 keepalive pings to the gateway, and the gateway's permission for them.

Both ends come from ``server.keepalive``: the bootstrap's ext_proc cluster pings
every ``interval_s`` and drops a connection whose ping goes unanswered for
``timeout_s``; the gateway's gRPC server lets pings that often through (gRPC's
defaults would answer them with GOAWAY ENHANCE_YOUR_CALM) and still sends away a
client that pings much faster. Under Envoy Gateway and kgateway, which have no
field for HTTP/2 pings to an ext_proc service, the gateway's cluster gets TCP
keepalive from the same values. The real Envoy and gRPC server meet in
tests/integration/test_extproc_keepalive.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from extproc.config import ConfigError, GatewayConfig, parse_config
from extproc.envoy_bootstrap import render_bootstrap
from extproc.gateway_api import EXTPROC_SERVICE, render_attachments
from extproc.server import grpc_server_options, restart_only_changes

from . import crd_fields

PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
MINIMAL = """
providers: [{name: openai, base_url: "https://api.openai.com/v1"}]
models: [{name: gpt-4o, provider: openai}]
"""


def gateway(keepalive: dict[str, Any] | None = None) -> GatewayConfig:
    server = {} if keepalive is None else {"keepalive": keepalive}
    return GatewayConfig.model_validate(
        {
            "server": server,
            "providers": [{"name": "openai", "base_url": "https://api.openai.com/v1"}],
            "models": [{"name": "gpt-4o", "provider": "openai"}],
        }
    )


def envoy_pings(config: GatewayConfig) -> dict[str, Any]:
    """The keepalive of the bootstrap's cluster for the gateway, as Envoy reads it."""
    [cluster] = [
        found
        for found in render_bootstrap(config)["static_resources"]["clusters"]
        if found["name"] == "extproc"
    ]
    options = cluster["typed_extension_protocol_options"][PROTOCOL_OPTIONS]
    # Field names as Envoy's API spells them: a typo would fail here, not in production.
    json_format.ParseDict(
        {key: value for key, value in options.items() if key != "@type"},
        http_protocol_options_pb2.HttpProtocolOptions(),
    )
    keepalive: dict[str, Any] = options["explicit_http_config"]["http2_protocol_options"][
        "connection_keepalive"
    ]
    return keepalive


def server_options(config: GatewayConfig) -> dict[str, int]:
    return dict(grpc_server_options(config.server))


def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration.removesuffix("s"))


def test_envoy_pings_the_gateway_every_30_s_and_gives_up_after_10_s_by_default() -> None:
    assert envoy_pings(gateway()) == {"interval": "30s", "timeout": "10s"}


def test_an_operator_sets_how_often_envoy_pings_and_how_long_it_waits() -> None:
    pings = envoy_pings(gateway({"interval_s": 45, "timeout_s": 2.5}))
    assert pings == {"interval": "45s", "timeout": "2.5s"}


@pytest.mark.parametrize("interval_s", [1, 30, 45.5, 3600])
def test_the_gateway_permits_envoys_pings_on_idle_and_busy_connections(interval_s: float) -> None:
    config = gateway({"interval_s": interval_s, "timeout_s": 1})
    options = server_options(config)
    # Pings on a connection without calls: gRPC's default answers them with GOAWAY.
    assert options["grpc.keepalive_permit_without_calls"] == 1
    # As often as Envoy sends them (its jitter only adds), with room for the network.
    envoy_interval_ms = seconds(envoy_pings(config)["interval"]) * 1000
    permitted_ms = options["grpc.http2.min_ping_interval_without_data_ms"]
    assert 0 < permitted_ms < envoy_interval_ms
    assert permitted_ms >= envoy_interval_ms / 4


def test_a_client_pinging_much_faster_than_envoy_is_still_sent_away() -> None:
    options = server_options(gateway())
    # Not gRPC's 5 minutes, but not "anything goes" either: pings closer together
    # than half Envoy's interval count as strikes, and the third one ends the
    # connection (0 would tolerate any number).
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 15_000
    assert options["grpc.http2.max_ping_strikes"] == 2


def test_the_servers_other_options_are_kept() -> None:
    options = server_options(gateway())
    assert options["grpc.so_reuseport"] == 0
    # A body of the 64 MiB a limit allows comes in one message with its other fields:
    # at 64 MiB even, gRPC refused it and the client got a 500.
    assert options["grpc.max_receive_message_length"] > 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("keepalive", "problem"),
    [
        ("{interval_s: 0.5}", "server.keepalive.interval_s"),
        ("{timeout_s: 0}", "server.keepalive.timeout_s"),
        ("{interval_s: 5, timeout_s: 10}", "timeout_s must not be longer than interval_s"),
        ("{interval: 30}", "server.keepalive.interval"),
    ],
)
def test_a_keepalive_that_cannot_work_is_refused_naming_the_field(
    keepalive: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"server:\n  keepalive: {keepalive}\n{MINIMAL}", "test.yaml", {})
    assert any(problem in line for line in caught.value.problems), caught.value.problems
    assert any(line.startswith("server.keepalive") for line in caught.value.problems)


def test_a_reload_that_changes_the_keepalive_says_it_needs_a_restart() -> None:
    """The server's permission is fixed when it starts: a reload cannot move it, and an
    Envoy re-rendered with a shorter interval would meet the old permission."""
    running = gateway()
    loaded = gateway({"interval_s": 10, "timeout_s": 5})
    assert restart_only_changes(running, loaded) == ["server.keepalive"]


# --- Gateway API mode: TCP keepalive on the gateway's cluster ----------------------------


def test_envoy_gateway_keeps_the_gateways_connection_alive_with_tcp_keepalive() -> None:
    manifests = render_attachments(gateway({"interval_s": 20, "timeout_s": 4.2}), "envoy-gateway")
    [policy] = [m for m in manifests if m["kind"] == "EnvoyExtensionPolicy"]
    [extproc] = policy["spec"]["extProc"]
    # Whole seconds (the kernel's unit), never shorter than asked.
    assert extproc["backendSettings"]["tcpKeepalive"] == {
        "idleTime": "20s",
        "interval": "5s",
        "probes": 3,
    }
    assert not crd_fields.check(policy), crd_fields.check(policy)


def test_kgateway_keeps_the_gateways_connection_alive_with_tcp_keepalive() -> None:
    manifests = render_attachments(gateway(), "kgateway")
    service = {"group": "", "kind": "Service", "name": EXTPROC_SERVICE}
    [policy] = [
        m
        for m in manifests
        if m["kind"] == "BackendConfigPolicy" and m["spec"]["targetRefs"] == [service]
    ]
    assert policy["spec"]["tcpKeepalive"] == {
        "keepAliveTime": "30s",
        "keepAliveInterval": "10s",
        "keepAliveProbes": 3,
    }
    assert not crd_fields.check(policy), crd_fields.check(policy)
