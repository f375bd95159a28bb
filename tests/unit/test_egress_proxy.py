"""The egress proxy: a network whose only way out is an HTTP forward proxy.

The config names the proxy (``egress.proxy_url``) and the hosts reached directly
(``egress.no_proxy``); Envoy's provider clusters reach their providers through it with
CONNECT, and the gateway's own calls (JWKS, webhooks, moderation, Google tokens) go
through it too. ``ForwardProxy`` is the proxy of these tests (and of the integration
test): loopback only, it tunnels CONNECT, forwards absolute-form requests, and
records where it was asked to go.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from extproc.auth.jwt_verifier import JwtVerifier
from extproc.config.auth_model import JwtProviderConfig
from extproc.config.egress_model import EgressConfig
from extproc.config.guard_model import ModerationConfig, WebhookConfig
from extproc.config.loader import ConfigError, parse_config
from extproc.config.model import GatewayConfig, GcpConfig
from extproc.egress import EgressProxy
from extproc.envoy_bootstrap import HTTP11_PROXY_ADDRESS, render_bootstrap, render_bootstrap_yaml
from extproc.guardrails.moderation import ModerationClient
from extproc.guardrails.webhook import SessionHolder, WebhookClient
from extproc.providers.gcp_tokens import GcpTokenSource
from tests.unit import test_jwt_verifier as jwt_tests
from tests.unit.mock_vertex import mock_vertex
from tests.unit.test_envoy_bootstrap import ENVOY, assert_envoy_accepts
from tests.unit.test_jwt_verifier import JwksServer, mint, url_provider

# The JWT tests' JWKS server, shared rather than copied.
jwks_server = jwt_tests.jwks_server
PASSWORD = "pr0xy-s3cret"


class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1 that reaches loopback targets only.

    ``targets`` holds the last ``MAX_RECORDED`` ``host:port`` it was asked for (CONNECT
    or an absolute-form request), ``authorizations`` the ``Proxy-Authorization`` each
    carried. With ``credentials`` set, a request without them gets a 407."""

    MAX_RECORDED = 100
    MAX_HEAD_BYTES = 16 * 1024

    def __init__(self, credentials: str | None = None, listen: str = "127.0.0.1") -> None:
        # The loopback address it listens on (``::1``: a proxy named by IPv6 address).
        self.listen = listen
        self.targets: deque[str] = deque(maxlen=self.MAX_RECORDED)
        self.authorizations: deque[str | None] = deque(maxlen=self.MAX_RECORDED)
        self._expected = (
            "Basic " + base64.b64encode(credentials.encode()).decode() if credentials else None
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        host = f"[{self.listen}]" if ":" in self.listen else self.listen
        return f"http://{host}:{self.port}"

    async def start(self, port: int = 0) -> ForwardProxy:
        self._server = await asyncio.start_server(
            self._serve, self.listen, port, limit=self.MAX_HEAD_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        if method == "CONNECT":
            host_port = target
        else:
            host_port = target.removeprefix("http://").partition("/")[0]
        self.targets.append(host_port)
        self.authorizations.append(headers.get("proxy-authorization"))
        if self._expected is not None and headers.get("proxy-authorization") != self._expected:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return
        host, _, port = host_port.rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            # Origin-form to the server, one request per connection: the next request on
            # the client's connection may be for another host.
            path = "/" + target.removeprefix("http://").partition("/")[2]
            kept = [
                line
                for line in header_lines
                if line and line.partition(":")[0].strip().lower() not in _HOP_BY_HOP
            ]
            up_writer.write(
                "\r\n".join(
                    [f"{method} {path} {version}", *kept, "connection: close", "", ""]
                ).encode("latin-1")
            )
        await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))


_HOP_BY_HOP = {"connection", "proxy-connection", "proxy-authorization", "keep-alive"}


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    server = await ForwardProxy().start()
    yield server
    await server.close()


@pytest.fixture
async def authenticating_proxy() -> AsyncIterator[ForwardProxy]:
    server = await ForwardProxy(credentials=f"gateway:{PASSWORD}").start()
    yield server
    await server.close()


def egress(url: str, *no_proxy: str) -> EgressProxy:
    return EgressProxy(EgressConfig.model_validate({"proxy_url": url, "no_proxy": no_proxy}))


def with_password(proxy: ForwardProxy) -> str:
    return f"http://gateway:{PASSWORD}@127.0.0.1:{proxy.port}"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[str]]]:
    """A webhook and moderation service on loopback: answers a pass, records paths."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path == "/moderations":
            body = await request.json()
            results = [{"categories": {"hate": False}} for _ in body["input"]]
            return web.json_response({"results": results})
        return web.json_response({"action": {"reason": "fine"}})

    app = web.Application()
    app.router.add_post("/{path:.*}", answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


def webhook_at(base_url: str) -> WebhookConfig:
    host, _, port = host_port(base_url).rpartition(":")
    return WebhookConfig(name="w", host=host, port=int(port))


def host_port(url: str) -> str:
    return url.removeprefix("http://").partition("/")[0]


# --- config: validated at load, the password never echoed ---------------------------


def config_text(egress_yaml: str, base_url: str = "https://api.openai.com/v1") -> str:
    return (
        f"providers: [{{name: openai, base_url: '{base_url}'}}]\n"
        "models: [{name: gpt-4o, provider: openai}]\n"
        f"egress: {egress_yaml}\n"
    )


def problems(text: str, **environ: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gateway.yaml", environ)
    assert PASSWORD not in str(caught.value)
    return caught.value.problems


def test_a_proxy_url_from_the_environment_loads() -> None:
    config = parse_config(
        config_text("{proxy_url: '${EGRESS_PROXY}', no_proxy: ['.corp.example', 10.0.0.0/8]}"),
        "gateway.yaml",
        {"EGRESS_PROXY": "http://10.1.2.3:3128"},
    )
    assert config.egress.proxy_url is not None
    assert config.egress.proxy_url.get_secret_value() == "http://10.1.2.3:3128"
    assert config.egress.no_proxy == ("corp.example", "10.0.0.0/8")
    # The default: no proxy at all.
    assert not parse_config(config_text("{}"), "gateway.yaml", {}).egress.enabled


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (f"https://u:{PASSWORD}@10.1.2.3:3128", "scheme must be http://"),
        (f"socks5://u:{PASSWORD}@10.1.2.3:1080", "scheme must be http://"),
        ("http://10.1.2.3", "must name the proxy's port"),
        (f"http://u:{PASSWORD}@10.1.2.3:3128/path", "no path"),
        ("http://10.1.2.3:99999", "between 1 and 65535"),
        (f"10.1.2.3:{PASSWORD}", "must be an http:// URL"),
    ],
)
def test_an_unusable_proxy_url_is_refused_by_its_field(url: str, said: str) -> None:
    found = problems(config_text(f"{{proxy_url: '{url}'}}"))
    assert len(found) == 1
    assert found[0].startswith("egress.proxy_url: ")
    assert said in found[0]


def test_envoy_cannot_send_proxy_credentials_so_they_are_refused_for_providers() -> None:
    found = problems(config_text(f"{{proxy_url: 'http://gw:{PASSWORD}@10.1.2.3:3128'}}"))
    assert found == [
        "egress.proxy_url: Envoy cannot send proxy credentials (Proxy-Authorization) on its "
        "CONNECT, and providers[0] go through the proxy: let the proxy admit the gateway's "
        "address without credentials, or list those hosts in egress.no_proxy"
    ]


def test_envoy_dials_the_proxy_by_ip_so_a_host_name_is_refused_for_providers() -> None:
    found = problems(config_text("{proxy_url: 'http://proxy.corp.example:3128'}"))
    assert len(found) == 1
    assert "Envoy dials the proxy by IP address only" in found[0]
    assert "'proxy.corp.example'" in found[0]


def test_credentials_and_a_host_name_serve_the_gateways_own_calls_when_no_provider_is_proxied() -> (
    None
):
    text = config_text(
        f"{{proxy_url: 'http://gw:{PASSWORD}@proxy.corp.example:3128', no_proxy: [openai.com]}}"
    )
    config = parse_config(text, "gateway.yaml", {})
    assert config.egress.enabled
    assert PASSWORD not in repr(config) and PASSWORD not in str(config.egress)
    assert PASSWORD not in repr(EgressProxy(config.egress))


def test_a_bad_no_proxy_entry_is_refused_by_its_field() -> None:
    found = problems(config_text("{proxy_url: 'http://10.1.2.3:3128', no_proxy: ['a b']}"))
    assert len(found) == 1 and found[0].startswith("egress.no_proxy: ")


# --- Envoy: provider clusters through the proxy --------------------------------------


def gateway(
    egress: dict[str, Any], *, fallbacks: bool = False, agent_url: str | None = None
) -> GatewayConfig:
    models: list[dict[str, Any]] = [{"name": "gpt-4o", "provider": "openai"}]
    if fallbacks:
        models = [
            {"name": "gpt-4o", "provider": "openai", "fallbacks": ["local"]},
            {"name": "local", "provider": "local-llm"},
        ]
    return GatewayConfig.model_validate(
        {
            "providers": [
                {"name": "openai", "base_url": "https://api.openai.com/v1"},
                {"name": "local-llm", "base_url": "http://10.0.0.7:8000/v1"},
            ],
            "models": models,
            "egress": egress,
            "agents": {
                "servers": [{"name": "tools", "protocol": "mcp", "url": agent_url}]
                if agent_url
                else []
            },
        }
    )


def clusters(config: GatewayConfig) -> dict[str, dict[str, Any]]:
    rendered = render_bootstrap(config)["static_resources"]["clusters"]
    return {cluster["name"]: cluster for cluster in rendered}


def test_a_provider_cluster_connects_through_the_proxy_by_the_providers_name() -> None:
    rendered = clusters(gateway({"proxy_url": "http://10.1.2.3:3128", "no_proxy": ["10.0.0.7"]}))
    openai = rendered["provider_openai"]
    socket = openai["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.http_11_proxy"
    # The provider's own TLS goes on inside the tunnel, checked against its name.
    inner = socket["typed_config"]["transport_socket"]
    assert inner["name"] == "envoy.transport_sockets.tls"
    assert inner["typed_config"]["sni"] == "api.openai.com"
    endpoint = openai["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    # CONNECT names the provider (the proxy resolves it), on the provider's port.
    assert endpoint["endpoint"]["hostname"] == "api.openai.com"
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == 443
    assert openai["type"] == "STATIC"
    proxy = endpoint["metadata"]["typed_filter_metadata"][HTTP11_PROXY_ADDRESS]
    assert proxy["socket_address"] == {"address": "10.1.2.3", "port_value": 3128}
    # A provider listed in no_proxy is reached directly.
    assert "transport_socket" not in rendered["provider_local_llm"]


def test_failover_keeps_the_proxy_address_of_a_providers_endpoint() -> None:
    rendered = clusters(gateway({"proxy_url": "http://10.1.2.3:3128"}, fallbacks=True))
    for name in ("provider_openai", "provider_local_llm"):
        metadata = rendered[name]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"]
        assert HTTP11_PROXY_ADDRESS in metadata["typed_filter_metadata"]
        assert metadata["filter_metadata"]  # the failover filter's provider name


def test_an_agent_server_outside_the_network_is_reached_through_the_proxy() -> None:
    egress = {"proxy_url": "http://10.1.2.3:3128", "no_proxy": ["corp.example"]}
    outside = clusters(gateway(egress, agent_url="https://mcp.vendor.example/mcp"))["agent_tools"]
    assert outside["transport_socket"]["name"] == "envoy.transport_sockets.http_11_proxy"
    endpoint = outside["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["hostname"] == "mcp.vendor.example"
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == 443
    inner = outside["transport_socket"]["typed_config"]["transport_socket"]
    assert inner["typed_config"]["sni"] == "mcp.vendor.example"
    assert outside["circuit_breakers"]  # as a direct agent cluster has
    inside = clusters(gateway(egress, agent_url="http://tools.corp.example:8080/mcp"))
    assert "transport_socket" not in inside["agent_tools"]


def test_a_proxy_envoy_cannot_use_is_refused_naming_the_agent_server() -> None:
    text = (
        config_text("{proxy_url: 'http://proxy.corp.example:3128', no_proxy: [api.openai.com]}")
        + "agents: {servers: [{name: tools, protocol: mcp, url: 'https://mcp.vendor.example/mcp'}]}\n"
    )
    found = problems(text)
    assert len(found) == 1
    assert "agents.servers[0] go through it" in found[0]
    assert "providers[0]" not in found[0]


def test_without_a_proxy_the_provider_clusters_are_unchanged() -> None:
    assert clusters(gateway({})) == clusters(gateway({"no_proxy": ["api.openai.com"]}))
    assert "http_11_proxy" not in render_bootstrap_yaml(gateway({}))


@pytest.mark.parametrize("fallbacks", [False, True])
def test_envoy_accepts_a_bootstrap_with_an_egress_proxy(tmp_path: Path, fallbacks: bool) -> None:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    config = gateway(
        {"proxy_url": "http://10.1.2.3:3128"},
        fallbacks=fallbacks,
        agent_url="https://mcp.vendor.example/mcp",
    )
    assert_envoy_accepts(render_bootstrap_yaml(config), tmp_path)


# --- the gateway's own calls ---------------------------------------------------------


async def verifier_through(server: JwksServer, proxy: EgressProxy) -> JwtVerifier:
    config = JwtProviderConfig.model_validate(url_provider(server))
    verifier = JwtVerifier([config], egress=proxy)
    await verifier.start()
    return verifier


async def test_the_jwks_is_fetched_through_the_proxy(
    jwks_server: JwksServer, proxy: ForwardProxy
) -> None:
    verifier = await verifier_through(jwks_server, egress(proxy.url))
    try:
        identity = await verifier.verify(mint())
    finally:
        await verifier.close()
    assert identity.user_id is not None
    assert list(proxy.targets) == [host_port(jwks_server.url)]


async def test_a_no_proxy_identity_provider_is_fetched_directly(
    jwks_server: JwksServer, proxy: ForwardProxy
) -> None:
    verifier = await verifier_through(jwks_server, egress(proxy.url, "127.0.0.1"))
    try:
        await verifier.verify(mint())
    finally:
        await verifier.close()
    assert jwks_server.hits == 1
    assert not proxy.targets


async def test_proxy_credentials_go_as_proxy_authorization_and_never_into_the_log(
    jwks_server: JwksServer,
    authenticating_proxy: ForwardProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = await verifier_through(jwks_server, egress(with_password(authenticating_proxy)))
    await verifier.close()
    assert jwks_server.hits == 1
    expected = "Basic " + base64.b64encode(f"gateway:{PASSWORD}".encode()).decode()
    assert list(authenticating_proxy.authorizations) == [expected]
    # A proxy refusing the credentials: a failed fetch, logged without them.
    wrong = f"http://gateway:{PASSWORD}x@127.0.0.1:{authenticating_proxy.port}"
    verifier = await verifier_through(jwks_server, egress(wrong))
    await verifier.close()
    assert "JWKS fetch failed" in caplog.text
    assert PASSWORD not in caplog.text


async def test_webhook_and_moderation_calls_go_through_the_proxy(
    upstream: tuple[str, list[str]], proxy: ForwardProxy
) -> None:
    base_url, seen = upstream
    session = SessionHolder(egress(proxy.url))
    try:
        webhook = WebhookClient(webhook_at(base_url), session)
        verdict = await webhook.check_request([{"role": "user", "content": "hi"}], {})
        moderation = ModerationClient(ModerationConfig(name="m", base_url=base_url), session)
        assert await moderation.violations(["hi"]) == []
    finally:
        await session.close()
    assert verdict.action == "pass"
    assert seen == ["/request", "/moderations"]
    assert list(proxy.targets) == [host_port(base_url)] * 2


async def test_a_no_proxy_webhook_is_called_directly(
    upstream: tuple[str, list[str]], proxy: ForwardProxy
) -> None:
    base_url, seen = upstream
    session = SessionHolder(egress(proxy.url, "127.0.0.0/8"))
    try:
        webhook = WebhookClient(webhook_at(base_url), session)
        assert (await webhook.check_request([{"role": "user", "content": "hi"}], {})).action == (
            "pass"
        )
    finally:
        await session.close()
    assert seen == ["/request"]
    assert not proxy.targets


async def test_google_access_tokens_are_minted_through_the_proxy(
    tmp_path: Path, proxy: ForwardProxy
) -> None:
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        config = GcpConfig(
            project="mock-project", region="us-east5", credentials_file=str(key_file)
        )
        source = GcpTokenSource(config, "providers.vertex.gcp", egress(proxy.url))
        await source.start()
        await source.close()
        assert list(proxy.targets) == [host_port(mock)]
        # The metadata server is always asked directly: no proxy can reach it.
        direct = GcpTokenSource(config, "providers.vertex.gcp", egress(proxy.url))
        assert direct._http.pool_for("http://169.254.169.254/computeMetadata/v1/") is (
            direct._http.pool_for("http://metadata.google.internal/")
        )
        assert direct._http.pool_for("https://oauth2.googleapis.com/token") is not (
            direct._http.pool_for("http://metadata.google.internal/")
        )


# --- the runtime wires the configured proxy into its own calls -----------------------


async def test_a_configured_proxy_carries_a_routes_webhook_call_through_the_processor(
    upstream: tuple[str, list[str]], proxy: ForwardProxy
) -> None:
    from tests.unit.guard_helpers import config_with
    from tests.unit.test_guard_flow import Gateway, chat

    base_url, seen = upstream
    _, _, port = host_port(base_url).rpartition(":")
    config = config_with(
        {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": int(port)}],
            "policies": [{"name": "hooked", "request": [{"name": "g", "webhook": "hook"}]}],
        },
        {"openai-chat": {"guardrails": "hooked"}},
    )
    # The mock provider on loopback is listed in no_proxy; the webhook is not.
    proxied = config.model_copy(
        update={"egress": EgressConfig(proxy_url=proxy.url, no_proxy=("localhost",))}
    )
    gateway = Gateway(proxied)
    answers = await gateway.send("/v1/chat/completions", chat("hi"))
    assert answers[-1].HasField("request_body")
    assert seen == ["/request"]
    assert list(proxy.targets) == [host_port(base_url)]
