"""``server.tls``: validated at load, rendered into Envoy's ext_proc cluster, and a rotated
certificate picked up by the next handshake."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.config import ConfigError, GatewayConfig, parse_config
from extproc.config.watched_files import secret_files
from extproc.envoy_bootstrap import render_bootstrap
from extproc.transport_security import CertificateFiles
from tests.integration.certificates import Authority

BASE = """
providers: [{name: p, base_url: "http://127.0.0.1:1/v1"}]
models: [{name: m, provider: p}]
"""


def config_with(tls: str) -> GatewayConfig:
    return parse_config("server:\n  tls:\n" + tls + BASE, "test.yaml", {})


MUTUAL = """
    cert_file: /certs/gateway.crt
    key_file: /certs/gateway.key
    client_ca_file: /certs/ca.crt
    envoy: {ca_file: /etc/envoy/ca.crt, cert_file: /etc/envoy/envoy.crt,
            key_file: /etc/envoy/envoy.key, server_name: gateway.internal}
"""


def ext_proc_cluster(config: GatewayConfig) -> dict:  # type: ignore[type-arg]
    clusters = render_bootstrap(config)["static_resources"]["clusters"]
    return next(c for c in clusters if c["name"] == "extproc")  # type: ignore[no-any-return]


def test_mutual_tls_is_rendered_into_envoys_ext_proc_cluster() -> None:
    socket = ext_proc_cluster(config_with(MUTUAL))["transport_socket"]
    context = socket["typed_config"]
    assert context["sni"] == "gateway.internal"
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["validation_context"]["trusted_ca"] == {"filename": "/etc/envoy/ca.crt"}
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "gateway.internal"}}
    ]
    assert common["tls_certificates"][0]["certificate_chain"] == {
        "filename": "/etc/envoy/envoy.crt"
    }


def test_without_a_server_name_envoy_checks_the_ip_it_dials() -> None:
    tls = "    cert_file: a\n    key_file: b\n    envoy: {ca_file: c}\n"
    context = ext_proc_cluster(config_with(tls))["transport_socket"]["typed_config"]
    assert "sni" not in context
    assert context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
    ]
    assert "tls_certificates" not in context["common_tls_context"]


def test_no_tls_renders_plaintext() -> None:
    assert "transport_socket" not in ext_proc_cluster(parse_config(BASE, "t.yaml", {}))


def test_mutual_tls_without_a_certificate_for_envoy_is_refused_at_load() -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(
            "    cert_file: a\n    key_file: b\n    client_ca_file: c\n    envoy: {ca_file: c}\n"
        )
    assert "server.tls" in str(caught.value) and "envoy.cert_file" in str(caught.value)


def test_a_rotated_certificate_is_served_from_the_next_handshake(tmp_path: Path) -> None:
    ca = Authority(tmp_path, "ca")
    first = ca.issue("gateway", ips=("127.0.0.1",))
    tls = config_with(
        f"    cert_file: {first.cert}\n    key_file: {first.key}\n    envoy: {{ca_file: x}}\n"
    ).server.tls
    assert tls is not None
    files = CertificateFiles(tls)
    assert files.fetch() is None  # unchanged: keep serving
    renewed = ca.issue("renewed", ips=("127.0.0.1",))
    renewed.cert.replace(first.cert)
    renewed.key.replace(first.key)
    assert files.fetch() is not None
    assert files.fetch() is None
    first.key.write_text("")  # a half-written rotation keeps the certificate in use
    assert files.fetch() is None


def test_files_holding_secrets_are_watched_for_rotation() -> None:
    config = parse_config(
        BASE.replace("base_url:", "api_key_file: /s/provider, base_url:")
        + "auth: {api_keys: [{id: a, key_file: /s/a}], api_key_directory: /s/keys}\n"
        + "management: {admin_tokens: [{id: ops, token_file: /s/admin}]}\n",
        "t.yaml",
        {},
    )
    assert {str(p) for p in secret_files(config)} == {"/s/provider", "/s/a", "/s/keys", "/s/admin"}
