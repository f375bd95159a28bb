"""The management API over TLS (``management.tls``), on a real gRPC port and Valkey.

An operator serves the management API on an address other hosts reach: the admin
token and the answers (a new key's secret, usage reports) must not cross the network in
plaintext. The CLI's client trusts the CA it is given and reads the quota; a plaintext
client is refused at the handshake; with ``client_ca_file`` a caller without a
certificate that CA signed is refused too. ``extproc quota`` takes ``--tls-*`` or the
config's ``management.tls.cli``, and a config that serves TLS without saying how the CLI
connects is a clear usage error, not a plaintext call.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import orjson
import pytest

from extproc.config import ConfigError, parse_config
from extproc.config.model import GatewayConfig
from extproc.config.restart_only import as_started
from extproc.config.tls_model import ClientTlsConfig, ManagementTlsConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.client import ManagementError, QuotaClient
from extproc.management.client_tls import TlsFlags, client_tls
from extproc.runtime import Runtime, Services
from extproc.server import Gateway
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.transport_security import server_credentials
from tests.integration.certificates import Authority
from tests.unit.management_server import serving_management

TOKEN = "unit-tls-admin-token-0001"
QUOTAS = """
quotas:
  rules:
    - {name: keys-5-rpm, subject: api_key, requests_per_minute: 5}
"""


def gateway_config(tls: str = "") -> GatewayConfig:
    text = DEFAULT_CONFIG.read_text().replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", TOKEN)
    if tls:
        text = text.replace("\nmanagement:\n", f"\nmanagement:\n  tls: {tls}\n", 1)
    return parse_config(text + QUOTAS, "gateway.yaml", {})


async def serving(
    valkey: EmbeddedValkey, tls: ManagementTlsConfig
) -> AsyncIterator[tuple[str, ManagementTlsConfig]]:
    runtime = Runtime(gateway_config(), Services(GatewayMetrics(), AccessLog(stdout=False)))
    credentials = server_credentials(tls, "management.tls")
    async with serving_management(
        valkey, lambda: runtime, "tls:", credentials=credentials
    ) as served:
        yield served.address, tls


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "management-ca")


@pytest.fixture
async def tls_api(
    valkey: EmbeddedValkey, authority: Authority
) -> AsyncIterator[tuple[str, ManagementTlsConfig]]:
    served = authority.issue("management", ips=("127.0.0.1",))
    tls = ManagementTlsConfig(cert_file=str(served.cert), key_file=str(served.key))
    async for running in serving(valkey, tls):
        yield running


@pytest.fixture
async def mutual_api(
    valkey: EmbeddedValkey, authority: Authority
) -> AsyncIterator[tuple[str, ManagementTlsConfig]]:
    served = authority.issue("management", ips=("127.0.0.1",))
    tls = ManagementTlsConfig(
        cert_file=str(served.cert), key_file=str(served.key), client_ca_file=str(authority.cert)
    )
    async for running in serving(valkey, tls):
        yield running


def read_quota(address: str, tls: ClientTlsConfig | None) -> list[str]:
    """What `extproc quota get` asks, through the CLI's client (a blocking call)."""
    with QuotaClient(address, TOKEN, 5.0, "--token", tls) as client:
        state = client.get("api_key", "team1")
    return [limit.counter for limit in state.limits]


async def test_the_cli_client_trusting_the_ca_reads_the_quota(
    tls_api: tuple[str, ManagementTlsConfig], authority: Authority
) -> None:
    address, _ = tls_api
    trusted = ClientTlsConfig(ca_file=str(authority.cert))
    assert await asyncio.to_thread(read_quota, address, trusted) == ["requests_per_minute"]


async def test_a_plaintext_client_is_refused_at_the_handshake(
    tls_api: tuple[str, ManagementTlsConfig],
) -> None:
    address, _ = tls_api
    with pytest.raises(ManagementError) as refused:
        await asyncio.to_thread(read_quota, address, None)
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_another_ca_is_refused(
    tls_api: tuple[str, ManagementTlsConfig], tmp_path: Path
) -> None:
    address, _ = tls_api
    (tmp_path / "other").mkdir()
    stranger = Authority(tmp_path / "other", "another-ca")
    with pytest.raises(ManagementError) as refused:
        await asyncio.to_thread(read_quota, address, ClientTlsConfig(ca_file=str(stranger.cert)))
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_caller_without_a_certificate_and_serves_one_with(
    mutual_api: tuple[str, ManagementTlsConfig], authority: Authority
) -> None:
    address, _ = mutual_api
    anonymous = ClientTlsConfig(ca_file=str(authority.cert))
    with pytest.raises(ManagementError):
        await asyncio.to_thread(read_quota, address, anonymous)
    issued = authority.issue("operator")
    known = ClientTlsConfig(
        ca_file=str(authority.cert), cert_file=str(issued.cert), key_file=str(issued.key)
    )
    assert await asyncio.to_thread(read_quota, address, known) == ["requests_per_minute"]


async def test_the_quota_command_takes_tls_flags(
    tls_api: tuple[str, ManagementTlsConfig], authority: Authority
) -> None:
    address, _ = tls_api
    argv = [sys.executable, "-m", "extproc", "quota", "get", "--kind", "api_key",
            "--subject", "team1", "--address", address, "--format", "json"]  # fmt: skip
    environment = {"AIGW_ADMIN_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}

    async def run(*flags: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *argv, *flags, env=environment, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await run("--tls-ca", str(authority.cert))
    assert code == 0, err
    assert orjson.loads(out)["limits"][0]["counter"] == "requests_per_minute"
    code, _, err = await run("--tls-cert", str(authority.cert))
    assert code == 2 and "need --tls-ca" in err
    code, _, err = await run("--tls-ca", str(authority.folder / "missing.crt"))
    assert code == 2 and "cannot read the TLS CA file" in err and "Traceback" not in err
    code, _, err = await run("--tls-ca", " ")
    assert code == 2 and "--tls-ca is empty" in err
    # A config given beside --address says how to reach it (its management.tls.cli).
    config = authority.folder / "gateway.yaml"
    cli = f"{{cert_file: /n/a.crt, key_file: /n/a.key, cli: {{ca_file: {authority.cert}}}}}"
    text = DEFAULT_CONFIG.read_text().replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", TOKEN)
    config.write_text(text.replace("\nmanagement:\n", f"\nmanagement:\n  tls: {cli}\n", 1))
    code, out, err = await run("--config", str(config))
    assert code == 0, err


def test_a_config_serving_tls_tells_the_cli_how_to_connect() -> None:
    served = gateway_config("{cert_file: /tls/tls.crt, key_file: /tls/tls.key}")
    with pytest.raises(ManagementError, match="pass --tls-ca"):
        client_tls(TlsFlags(), served)
    said = gateway_config(
        "{cert_file: /tls/tls.crt, key_file: /tls/tls.key, cli: {ca_file: /tls/ca.crt}}"
    )
    found = client_tls(TlsFlags(), said)
    assert found is not None and found.ca_file == "/tls/ca.crt"
    # The flags win over the config.
    flagged = client_tls(TlsFlags(ca="/elsewhere/ca.crt"), said)
    assert flagged is not None and flagged.ca_file == "/elsewhere/ca.crt"
    assert client_tls(TlsFlags(), gateway_config()) is None  # plaintext, as before


def test_mutual_tls_needs_the_clis_certificate() -> None:
    with pytest.raises(ConfigError, match="client_ca_file makes the management API require"):
        gateway_config(
            "{cert_file: /t.crt, key_file: /t.key, client_ca_file: /ca.crt,"
            " cli: {ca_file: /ca.crt}}"
        )


async def test_a_reload_that_adds_tls_warns_and_keeps_the_started_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The management listener is made at start: a reload cannot turn TLS on, and said
    # nothing before (the API went on in plaintext while the file, which the CLI reads,
    # said TLS).
    started = gateway_config()
    gateway = Gateway(started, None)
    served = gateway_config("{cert_file: /tls/tls.crt, key_file: /tls/tls.key}")
    try:
        await gateway.apply(served)
        assert "management.tls change only on restart" in caplog.text
    finally:
        await gateway.runtime.close()
    assert as_started(started, served).management.tls is None
