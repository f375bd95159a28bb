"""A Vertex provider whose token endpoint is out of reach when its config loads: the config
is applied all the same and the source is *pending* (its requests get a 503) until
``obtain()`` mints a token; a token endpoint that answers and refuses the key still
refuses the config at start.

The endpoint is a socket bound and not listening (connections refused, its address held
for the test so no other process can answer there), then the mock's token endpoint served
on that same socket: the URL the key file names never changes."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from extproc.config import ConfigError
from extproc.config.model import GcpConfig
from extproc.errors import ServiceUnavailableError
from extproc.mock_llm import MockOptions, create_app
from extproc.mock_llm.vertex_auth import write_service_account
from extproc.providers import credentials_pending
from extproc.providers.gcp_tokens import GcpTokenSource
from extproc.server import Gateway
from tests.unit.mock_vertex import vertex_provider
from tests.unit.test_aws_credentials_pending import CHAT, status_and_code
from tests.unit.test_credentials_across_reloads import (
    REMOVED_KEY,
    parsed,
    raw_config,
    status_with,
    without_team2,
)

GEMINI = b'{"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}'

WHERE = "providers.vertex.gcp"
LOGGER = "extproc.providers.gcp_tokens"
# Short: each test's start waits this long at a refused endpoint before it returns.
FIRST_TOKEN_TIMEOUT_S = 0.5


@pytest.fixture
def unreachable() -> Iterator[socket.socket]:
    """A port bound and never listening: connections to it are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with sock:
        yield sock


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def token_endpoint_on(sock: socket.socket, trusted_key: Path) -> AsyncIterator[str]:
    """The mock's token endpoint, trusting ``trusted_key``, served on ``sock`` (which
    starts listening): the endpoint that was out of reach comes up at the same URL."""
    runner = web.AppRunner(create_app(MockOptions(gcp_service_account=str(trusted_key))))
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield url_of(sock)
    finally:
        await runner.cleanup()


async def issued(mock: str) -> int:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{mock}/_mock/gcp/tokens")
    count: int = answer.json()["issued"]
    return count


def source_with_key(key_file: Path, sock: socket.socket) -> GcpTokenSource:
    write_service_account(key_file, token_uri=f"{url_of(sock)}/token")
    return GcpTokenSource(
        GcpConfig(
            project="mock-project",
            region="us-east5",
            credentials_file=str(key_file),
            first_token_timeout_s=FIRST_TOKEN_TIMEOUT_S,
        ),
        WHERE,
    )


async def pending_source(key_file: Path, sock: socket.socket) -> GcpTokenSource:
    """A source started while its token endpoint at ``sock`` refuses connections."""
    source = source_with_key(key_file, sock)
    await source.start()
    assert source.pending
    return source


def key_secrets(key_file: Path) -> list[str]:
    """What must never reach a log line: the private key's body and its id."""
    info = json.loads(key_file.read_text(encoding="utf-8"))
    body = info["private_key"].splitlines()[1]
    return [body, info["private_key_id"]]


def records_of_the_source(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


async def test_a_start_while_the_token_endpoint_refuses_connections_leaves_it_pending(
    tmp_path: Path, unreachable: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    key_file = tmp_path / "key.json"
    source = source_with_key(key_file, unreachable)
    assert not source.pending, "not pending before start()"

    await source.start()  # no ConfigError: the gateway starts, its other providers serve

    assert source.pending
    assert source.token is None and source.recent_tokens == ()
    with pytest.raises(ServiceUnavailableError) as unavailable:
        source.request_headers()
    assert unavailable.value.code == credentials_pending.CODE
    assert unavailable.value.code == "provider_credentials_unavailable"
    assert unavailable.value.status == 503
    [warned] = [r for r in records_of_the_source(caplog) if r.levelno == logging.WARNING]
    assert warned.getMessage().startswith(f"{WHERE}: no Google Cloud access token yet")
    assert "503" in warned.getMessage()

    assert await source.obtain() is False, "the endpoint still refuses connections"
    assert source.pending
    await source.close()


async def test_a_pending_source_obtains_its_token_once_the_endpoint_comes_up(
    tmp_path: Path, unreachable: socket.socket
) -> None:
    key_file = tmp_path / "key.json"
    source = await pending_source(key_file, unreachable)

    async with token_endpoint_on(unreachable, key_file) as mock:
        assert await source.obtain() is True
        assert not source.pending
        assert source.request_headers()["authorization"].startswith("Bearer ")
        assert source.recent_tokens == (source.token,)
        assert await issued(mock) == 1
        assert await source.obtain() is True, "not pending: nothing to do"
        assert await issued(mock) == 1
    await source.close()


async def test_a_token_endpoint_refusing_the_key_at_start_still_refuses_the_config(
    tmp_path: Path, unreachable: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    key_file = tmp_path / "key.json"
    source = source_with_key(key_file, unreachable)
    # The endpoint trusts another key than the one the gateway holds: 400 invalid_grant.
    trusted = tmp_path / "trusted.json"
    write_service_account(trusted, token_uri=f"{url_of(unreachable)}/token")

    async with token_endpoint_on(unreachable, trusted):
        with pytest.raises(ConfigError) as refused:
            await source.start()

    assert refused.value.problems == [
        f"{WHERE}: cannot obtain a Google Cloud access token: RefreshError "
        "(invalid_grant: Invalid JWT Signature.)"
    ]
    assert not source.pending, "a refusal is a mistake to fix, not an outage to wait out"
    assert not [r for r in records_of_the_source(caplog) if r.levelno >= logging.WARNING]
    await source.close()


async def test_a_refusal_while_pending_is_logged_without_secrets_and_never_raised(
    tmp_path: Path, unreachable: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "key.json"
    source = await pending_source(key_file, unreachable)
    # Meanwhile the key was deleted at Google: the endpoint comes up trusting another.
    trusted = tmp_path / "trusted.json"
    write_service_account(trusted, token_uri=f"{url_of(unreachable)}/token")
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    async with token_endpoint_on(unreachable, trusted):
        assert await source.obtain() is False

    assert source.pending
    with pytest.raises(ServiceUnavailableError):
        source.authorization()
    [warned] = [r for r in records_of_the_source(caplog) if r.levelno == logging.WARNING]
    message = warned.getMessage()
    assert message.startswith(f"{WHERE}: ")
    assert "RefreshError (invalid_grant: Invalid JWT Signature.)" in message
    logged = "\n".join(r.getMessage() for r in records_of_the_source(caplog))
    for secret in key_secrets(key_file):
        assert secret not in logged
    assert "eyJ" not in logged, "no assertion (a JWT) in the log"
    await source.close()


async def test_refresh_if_needed_leaves_a_pending_source_to_obtain(
    tmp_path: Path, unreachable: socket.socket
) -> None:
    key_file = tmp_path / "key.json"
    source = await pending_source(key_file, unreachable)

    async with token_endpoint_on(unreachable, key_file) as mock:
        await source.refresh_if_needed()
        assert await issued(mock) == 0, "the refresh loop asked the token endpoint"
        assert source.pending
        # The endpoint was up all along: obtain() is what mints the token.
        assert await source.obtain() is True
        assert await issued(mock) == 1
    await source.close()


async def test_before_start_authorization_is_still_a_programming_error(
    tmp_path: Path, unreachable: socket.socket
) -> None:
    source = source_with_key(tmp_path / "key.json", unreachable)
    assert not source.pending
    with pytest.raises(RuntimeError, match="before start"):
        source.authorization()


def with_vertex_at(raw: dict[str, Any], sock: socket.socket, key_file: Path) -> dict[str, Any]:
    """``raw`` with a Vertex provider whose key (written to ``key_file``) names a token
    endpoint at ``sock``, and gemini-2.5-flash served by it."""
    write_service_account(key_file, token_uri=f"{url_of(sock)}/token")
    provider = vertex_provider(url_of(sock), key_file)
    provider["gcp"]["first_token_timeout_s"] = FIRST_TOKEN_TIMEOUT_S
    raw["providers"].append(provider)
    raw["models"].append({"name": "gemini-2.5-flash", "provider": "vertex"})
    return raw


async def test_a_gateway_started_while_the_token_endpoint_is_down_serves_vertex_once_it_is_up(
    tmp_path: Path, unreachable: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(credentials_pending, "FIRST_RETRY_S", 0.05)
    monkeypatch.setattr(credentials_pending, "LAST_RETRY_S", 0.2)
    key_file = tmp_path / "key.json"
    raw = with_vertex_at(raw_config(), unreachable, key_file)
    gateway = Gateway(parsed(raw), None)
    await gateway.runtime.start()  # before: ConfigError, and the gateway did not start
    try:
        assert await status_and_code(gateway, CHAT) == (None, None), "OpenAI serves"
        assert await status_and_code(gateway, GEMINI) == (503, credentials_pending.CODE)
        registry = gateway.services.metrics.registry
        pending = {"provider": "vertex"}
        assert registry.get_sample_value("aigw_provider_credentials_pending", pending) == 1

        async with token_endpoint_on(unreachable, key_file):
            # The gauge falls once the runtime's retry has minted the token.
            for _ in range(600):
                if registry.get_sample_value("aigw_provider_credentials_pending", pending) == 0:
                    break
                await asyncio.sleep(0.05)
            assert registry.get_sample_value("aigw_provider_credentials_pending", pending) == 0
            assert not gateway.runtime.token_sources["vertex"].pending
            assert await status_and_code(gateway, GEMINI) == (None, None), "Vertex serves"
    finally:
        await gateway.runtime.close()


async def test_a_reload_while_vertex_is_pending_is_applied_without_asking_again(
    tmp_path: Path, unreachable: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "key.json"
    raw = with_vertex_at(raw_config(), unreachable, key_file)
    gateway = Gateway(parsed(raw), None)
    await gateway.runtime.start()
    try:
        # The org revokes a key while Google's endpoint is still out of reach: applied
        # without another wait for the endpoint (before: up to first_token_timeout_s).
        await gateway.apply(parsed(without_team2(raw)))
        assert await status_with(gateway, REMOVED_KEY) == 401
        assert gateway.runtime.token_sources["vertex"].pending
        assert await status_and_code(gateway, GEMINI) == (503, credentials_pending.CODE)
        warned = [r for r in records_of_the_source(caplog) if r.levelno == logging.WARNING]
        assert len(warned) == 1, "the reload's source did not ask the endpoint again"
    finally:
        await gateway.runtime.close()
        for retired in gateway._retired:
            await retired.wait_closed()
