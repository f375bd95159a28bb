"""The egress proxy under review: what Envoy writes on its CONNECT for each kind of
destination, ``no_proxy`` as operators write ``NO_PROXY``, an IPv6 proxy, and the
proxy's password kept out of every log line when the proxy refuses or is down.

The proxy is ``ForwardProxy`` of test_egress_proxy: it records each target it is asked
for and tunnels to loopback only (403 elsewhere, 407 without its credentials).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import subprocess
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from extproc.config.egress_model import EgressConfig
from extproc.config.guard_model import ModerationConfig
from extproc.config.loader import parse_config
from extproc.config.model import GatewayConfig, GcpConfig, ProviderConfig
from extproc.devstack import free_port
from extproc.envoy_bootstrap import (
    HTTP11_PROXY_ADDRESS,
    proxied_cluster,
    render_bootstrap_yaml,
)
from extproc.guardrails.moderation import ModerationClient, ModerationError
from extproc.guardrails.webhook import SessionHolder, WebhookClient, WebhookError
from extproc.providers.gcp_tokens import GcpTokenSource
from tests.unit.mock_vertex import mock_vertex
from tests.unit.test_egress_proxy import (
    ENVOY,
    PASSWORD,
    ForwardProxy,
    clusters,
    config_text,
    egress,
    gateway,
    jwks_server,
    problems,
    upstream,
    verifier_through,
    webhook_at,
)
from tests.unit.test_envoy_bootstrap import assert_envoy_accepts
from tests.unit.test_jwt_verifier import JwksServer

__all__ = ["jwks_server", "upstream"]  # fixtures shared with test_egress_proxy

# The proxy's credentials as a Proxy-Authorization header carries them.
ENCODED = base64.b64encode(f"gateway:{PASSWORD}".encode()).decode()


def with_local_llm_at(config: GatewayConfig, base_url: str) -> GatewayConfig:
    """``config`` (test_egress_proxy's ``gateway``) with its local provider at ``base_url``."""
    local = ProviderConfig(name="local-llm", base_url=base_url)
    return config.model_copy(update={"providers": (config.providers[0], local)})


def endpoint_of(cluster: dict[str, Any]) -> dict[str, Any]:
    endpoint: dict[str, Any] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    return endpoint


# --- Envoy's CONNECT ----------------------------------------------------------------


def test_an_ipv6_provider_is_connected_to_by_its_address() -> None:
    config = gateway({"proxy_url": "http://10.1.2.3:3128"})
    rendered = clusters(with_local_llm_at(config, "http://[fd00::7]:8000/v1"))
    endpoint = endpoint_of(rendered["provider_local_llm"])["endpoint"]
    # No hostname: Envoy names the address on its CONNECT, bracketed.
    assert "hostname" not in endpoint
    assert endpoint["address"]["socket_address"] == {"address": "fd00::7", "port_value": 8000}
    # A provider named by host still goes by its name.
    assert endpoint_of(rendered["provider_openai"])["endpoint"]["hostname"] == "api.openai.com"


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    server = await ForwardProxy().start()
    yield server
    await server.close()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _router_bootstrap(port: int, routed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An Envoy with one listener routing ``/<name>`` to each of ``routed``'s clusters."""
    routes = [{"match": {"prefix": f"/{name}"}, "route": {"cluster": name}} for name in routed]
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "probe",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": "probe",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": manager}]}
        ],
    }  # fmt: skip
    return {"static_resources": {"listeners": [listener], "clusters": list(routed.values())}}


async def test_envoy_names_each_destination_on_its_connect_as_a_proxy_can_parse(
    tmp_path: Path, proxy: ForwardProxy
) -> None:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    at_proxy = ("127.0.0.1", proxy.port)
    routed = {
        "named": proxied_cluster("named", ("api.vendor.example", 443, True), at_proxy, 60.0),
        "ipv4": proxied_cluster("ipv4", ("10.9.8.7", 8080, False), at_proxy, 60.0),
        "ipv6": proxied_cluster("ipv6", ("fd00::7", 8443, True), at_proxy, 60.0),
    }
    port = free_port()
    bootstrap = tmp_path / "envoy.json"
    bootstrap.write_text(json.dumps(_router_bootstrap(port, routed)), encoding="utf-8")
    envoy = await asyncio.create_subprocess_exec(
        *(str(ENVOY), "-c", str(bootstrap), "--use-dynamic-base-id", "--log-level", "error"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            if await asyncio.to_thread(_listening, port):
                break
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for name in routed:
                # The proxy refuses these tunnels (403): Envoy answers 503.
                assert (await client.get(f"/{name}")).status_code == 503
    finally:
        envoy.terminate()
        await envoy.wait()
    assert list(proxy.targets) == [
        "api.vendor.example:443",
        "10.9.8.7:8080",
        "[fd00::7]:8443",
    ]


def test_envoy_accepts_ipv6_providers_and_an_ipv6_proxy(tmp_path: Path) -> None:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    config = with_local_llm_at(
        gateway(
            {"proxy_url": "http://[fd00::5]:3128"},
            fallbacks=True,
            agent_url="https://[fd00::8]/mcp",
        ),
        "http://[fd00::7]:8000/v1",
    )
    rendered = clusters(config)
    proxy = endpoint_of(rendered["provider_openai"])["metadata"]["typed_filter_metadata"]
    assert proxy[HTTP11_PROXY_ADDRESS]["socket_address"] == {
        "address": "fd00::5",
        "port_value": 3128,
    }
    assert_envoy_accepts(render_bootstrap_yaml(config), tmp_path)


# --- no_proxy as NO_PROXY is written -------------------------------------------------


def no_proxy(*entries: str) -> tuple[str, ...]:
    return EgressConfig.model_validate(
        {"proxy_url": "http://10.1.2.3:3128", "no_proxy": entries}
    ).no_proxy


def test_a_star_sends_everything_direct() -> None:
    proxy = egress("http://10.1.2.3:3128", "*")
    assert proxy.proxy_for("https://idp.vendor.example/jwks") is None
    assert proxy.proxy_for("http://10.9.8.7:8080/") is None
    assert proxy.proxy_for("http://[fd00::7]:8080/") is None
    # Envoy's side too: no provider cluster goes through the proxy...
    rendered = clusters(gateway({"proxy_url": "http://10.1.2.3:3128", "no_proxy": ["*"]}))
    assert "http_11_proxy" not in json.dumps(rendered)
    # ...so a proxy Envoy could not use is no reason to refuse the config.
    text = config_text("{proxy_url: 'http://gw:pw@proxy.corp.example:3128', no_proxy: ['*']}")
    assert parse_config(text, "gateway.yaml", {}).egress.enabled


def test_bracketed_ipv6_addresses_upper_case_and_trailing_dots_are_read_as_written() -> None:
    assert no_proxy("[::1]", "[FD00::7]", "Corp.Example.", "*.Vendor.Example") == (
        "::1",
        "fd00::7",
        "corp.example",
        "vendor.example",
    )
    proxy = egress("http://10.1.2.3:3128", "[::1]", "Corp.Example.")
    assert proxy.proxy_for("http://[::1]:8080/") is None
    assert proxy.proxy_for("https://IDP.corp.example./jwks") is None
    assert proxy.proxy_for("http://[::2]:8080/") is not None


def test_a_comma_separated_no_proxy_from_the_environment_loads() -> None:
    text = config_text("{proxy_url: 'http://10.1.2.3:3128', no_proxy: '${NO_PROXY_HOSTS}'}")
    environ = {"NO_PROXY_HOSTS": "localhost, .corp.example,10.0.0.0/8,,api.openai.com"}
    config = parse_config(text, "gateway.yaml", environ)
    assert config.egress.no_proxy == ("localhost", "corp.example", "10.0.0.0/8", "api.openai.com")
    unset = config_text("{proxy_url: 'http://10.1.2.3:3128', no_proxy: '${NO_PROXY_HOSTS:-}'}")
    assert parse_config(unset, "gateway.yaml", {}).egress.no_proxy == ()


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("api.vendor.example:443", "takes no port (an entry covers every port of its host): "
         "write 'api.vendor.example'"),
        ("10.0.0.7:8000", "write '10.0.0.7'"),
        ("[::1]:8080", "write '::1'"),
        ("*vendor.example", "a wildcard is '*' alone"),
        ("[idp.vendor.example]", "no IP address inside its brackets"),
    ],
)  # fmt: skip
def test_a_no_proxy_entry_it_would_misread_is_refused_saying_what_to_write(
    entry: str, said: str
) -> None:
    found = problems(config_text(f"{{proxy_url: 'http://10.1.2.3:3128', no_proxy: ['{entry}']}}"))
    assert len(found) == 1
    assert found[0].startswith("egress.no_proxy: ")
    assert said in found[0]


# --- an IPv6 proxy for the gateway's own calls ---------------------------------------


async def test_the_gateways_calls_go_through_a_proxy_named_by_ipv6_address(
    upstream: tuple[str, list[str]],
) -> None:
    try:
        ipv6 = await ForwardProxy(listen="::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    base_url, seen = upstream
    session = SessionHolder(egress(ipv6.url))
    try:
        webhook = WebhookClient(webhook_at(base_url), session)
        verdict = await webhook.check_request([{"role": "user", "content": "hi"}], {})
    finally:
        await session.close()
        await ipv6.close()
    assert verdict.action == "pass"
    assert seen == ["/request"]
    assert list(ipv6.targets) == [base_url.removeprefix("http://")]


# --- the password when the proxy refuses or is down ----------------------------------


@pytest.fixture
async def refusing_proxy() -> AsyncIterator[str]:
    """A proxy that wants other credentials than the gateway has: every call gets a 407."""
    server = await ForwardProxy(credentials="gateway:another-password").start()
    yield f"http://gateway:{PASSWORD}@127.0.0.1:{server.port}"
    await server.close()


def _down_proxy() -> str:
    return f"http://gateway:{PASSWORD}@127.0.0.1:{free_port()}"


def _leaks(text: str) -> bool:
    return PASSWORD in text or ENCODED in text


async def _failed_calls(proxy_url: str, upstream_url: str, jwks: JwksServer) -> list[str]:
    """Each of the gateway's own calls through ``proxy_url``, all failing: what each
    failure says (its message and traceback)."""
    said: list[str] = []
    proxy = egress(proxy_url)
    verifier = await verifier_through(jwks, proxy)
    await verifier.close()
    session = SessionHolder(proxy)
    try:
        webhook = WebhookClient(webhook_at(upstream_url), session)
        # https: the proxy is asked for a CONNECT tunnel, and refuses it.
        moderation = ModerationClient(
            ModerationConfig(name="m", base_url="https://127.0.0.1:9/v1"), session
        )
        for call in (
            webhook.check_request([{"role": "user", "content": "hi"}], {}),
            moderation.violations(["hi"]),
        ):
            with pytest.raises((WebhookError, ModerationError)) as caught:
                await call
            # As a log line with the error's traceback would show it.
            said.append("".join(traceback.format_exception(caught.value)))
    finally:
        await session.close()
    return said


async def test_a_proxy_refusing_the_credentials_never_gets_them_into_a_log_line(
    refusing_proxy: str,
    upstream: tuple[str, list[str]],
    jwks_server: JwksServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    said = await _failed_calls(refusing_proxy, upstream[0], jwks_server)
    assert "JWKS fetch failed" in caplog.text
    assert jwks_server.hits == 0 and upstream[1] == []
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as _mock:
        config = GcpConfig(
            project="mock-project", region="us-east5", credentials_file=str(key_file)
        )
        source = GcpTokenSource(config, "providers.vertex.gcp", egress(refusing_proxy))
        with pytest.raises(Exception) as caught:
            await source.start()
        await source.close()
    said.append("".join(traceback.format_exception(caught.value)))
    assert "cannot obtain a Google Cloud access token" in str(caught.value)
    assert not any(_leaks(text) for text in said), said
    assert not _leaks(caplog.text)


async def test_a_proxy_that_is_down_never_gets_the_password_into_a_log_line(
    upstream: tuple[str, list[str]],
    jwks_server: JwksServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    said = await _failed_calls(_down_proxy(), upstream[0], jwks_server)
    assert "JWKS fetch failed" in caplog.text
    assert any("unreachable" in text for text in said)
    assert not any(_leaks(text) for text in said), said
    assert not _leaks(caplog.text)


# --- Gateway API attachments carry no proxy -------------------------------------------


def test_gateway_api_rendering_refuses_a_provider_the_proxy_would_carry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from extproc.cli import main

    config = tmp_path / "gateway.yaml"
    base = (
        "providers: [{name: openai, base_url: 'https://api.openai.com/v1'}]\n"
        "models: [{name: gpt-4o, provider: openai}]\n"
    )
    argv = ["render-gateway-api", "--config", str(config), "--controller", "envoy-gateway"]
    config.write_text(base + "egress: {proxy_url: 'http://10.1.2.3:3128'}\n")
    assert main(argv) == 2
    said = capsys.readouterr().err
    assert "cannot render the Gateway API attachments" in said
    assert "openai would go through it" in said and "Traceback" not in said
    # Listed in no_proxy, the provider goes direct, as the attachments send it.
    config.write_text(
        base + "egress: {proxy_url: 'http://10.1.2.3:3128', no_proxy: [api.openai.com]}\n"
    )
    assert main(argv) == 0
    assert "kind: HTTPRoute" in capsys.readouterr().out
