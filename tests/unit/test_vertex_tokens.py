"""A Vertex provider's access tokens, minted by google-auth from a service account key at
the mock's token endpoint: the first at start, the next before the one in use expires,
and the one in use kept when a refresh fails."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from google.auth.exceptions import RefreshError

from extproc import event_loop
from extproc.config import ConfigError
from extproc.config.model import GcpConfig
from extproc.mock_llm import MockOptions, create_app
from extproc.mock_llm.vertex_auth import write_service_account
from extproc.providers import gcp_tokens
from extproc.providers.gcp_tokens import REFRESH_AHEAD_S, GcpTokenSource
from extproc.store.embedded import free_port
from extproc.testing import serve_mock

# A token that lives less than REFRESH_AHEAD_S is due for a refresh at once.
SHORT_LIFETIME_S = REFRESH_AHEAD_S // 2


async def issued(mock: str) -> int:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{mock}/_mock/gcp/tokens")
    count: int = answer.json()["issued"]
    return count


async def started(mock: str, key_file: Path) -> GcpTokenSource:
    write_service_account(key_file, token_uri=f"{mock}/token")
    source = GcpTokenSource(
        GcpConfig(project="mock-project", region="us-east5", credentials_file=str(key_file)),
        "providers.vertex.gcp",
    )
    await source.start()
    return source


@pytest.fixture
async def short_lived(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    key_file = tmp_path / "key.json"
    options = MockOptions(gcp_service_account=str(key_file), gcp_token_lifetime_s=SHORT_LIFETIME_S)
    async with serve_mock(options) as mock:
        yield mock, key_file


async def test_a_token_near_its_expiry_is_replaced_before_it_expires(
    short_lived: tuple[str, Path],
) -> None:
    mock, key_file = short_lived
    source = await started(mock, key_file)
    first = source.authorization()
    assert first.startswith("Bearer ya29.mock-")

    await source.refresh_if_needed()

    assert source.authorization() != first
    assert await issued(mock) == 2
    await source.close()


async def test_a_token_with_an_hour_left_is_kept(tmp_path: Path) -> None:
    key_file = tmp_path / "key.json"
    async with serve_mock(MockOptions(gcp_service_account=str(key_file))) as mock:
        source = await started(mock, key_file)
        first = source.authorization()
        await source.refresh_if_needed()
        assert source.authorization() == first
        assert await issued(mock) == 1
        await source.close()


async def test_a_failed_refresh_keeps_the_token_in_use(short_lived: tuple[str, Path]) -> None:
    mock, key_file = short_lived
    source = await started(mock, key_file)
    first = source.authorization()
    # The key is replaced by one the token endpoint does not know: Google refuses it.
    write_service_account(tmp_key := key_file.with_name("other.json"), token_uri=f"{mock}/token")
    key_file.write_bytes(tmp_key.read_bytes().replace(b"mock-gateway@", b"someone-else@"))

    with pytest.raises(RefreshError) as failed:
        await source.refresh_if_needed()

    assert "ya29" not in str(failed.value)
    assert source.authorization() == first, "requests keep the token until it expires"
    await source.close()


async def test_a_key_the_token_endpoint_refuses_fails_the_start_by_its_field(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key.json"
    # The mock trusts another key than the one the gateway holds.
    trusted = tmp_path / "trusted.json"
    async with serve_mock(MockOptions(gcp_service_account=str(trusted))) as mock:
        write_service_account(trusted, token_uri=f"{mock}/token")
        write_service_account(key_file, token_uri=f"{mock}/token")
        source = GcpTokenSource(
            GcpConfig(project="p", region="r", credentials_file=str(key_file)),
            "providers.vertex.gcp",
        )
        with pytest.raises(ConfigError) as refused:
            await source.start()
    assert refused.value.problems == [
        "providers.vertex.gcp: cannot obtain a Google Cloud access token: RefreshError "
        "(invalid_grant: Invalid JWT Signature.)"
    ]


async def test_a_token_endpoint_not_up_yet_is_tried_again_at_start(tmp_path: Path) -> None:
    # GKE's metadata server in a pod's first seconds, a proxy sidecar starting beside the
    # gateway: the endpoint refuses connections for a moment, then answers.
    key_file = tmp_path / "key.json"
    port = free_port()
    write_service_account(key_file, token_uri=f"http://127.0.0.1:{port}/token")
    source = GcpTokenSource(
        GcpConfig(project="mock-project", region="us-east5", credentials_file=str(key_file)),
        "providers.vertex.gcp",
    )
    starting = asyncio.ensure_future(source.start())
    await asyncio.sleep(0.6)
    assert not starting.done(), "still trying"
    runner = web.AppRunner(create_app(MockOptions(gcp_service_account=str(key_file))))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.wait_for(starting, timeout=15)
        assert source.authorization().startswith("Bearer ya29.mock-")
    finally:
        await source.close()
        await runner.cleanup()


class SilentTokenEndpoint:
    """Takes the token request's connection and never answers; tells when the client
    has connected and whether it has closed the connection since."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.connected = threading.Event()
        self.closed_by_client = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/token"

    def _serve(self) -> None:
        self.connection, _ = self.listener.accept()
        self.connected.set()
        with self.connection:
            while self.connection.recv(65536):  # the request, then b"" once it is closed
                pass
        self.closed_by_client.set()

    def close(self) -> None:
        """Stop listening and end the connection: the token request fails at once."""
        self.listener.close()
        if self.connected.is_set():
            self.connection.shutdown(socket.SHUT_RDWR)
        self._thread.join()


def test_a_token_request_the_endpoint_never_answers_does_not_hold_the_gateways_stop(
    tmp_path: Path,
) -> None:
    """A pod stopped while Google's token endpoint is silent (its first start, a reload,
    the refresh loop) stops at once. Before, the loop's close waited for the token
    request's thread until google-auth gave up (TOKEN_READ_TIMEOUT_S, tried again)."""
    endpoint = SilentTokenEndpoint()
    key_file = tmp_path / "key.json"
    write_service_account(key_file, token_uri=endpoint.url)
    source = GcpTokenSource(
        GcpConfig(project="mock-project", region="us-east5", credentials_file=str(key_file)),
        "providers.vertex.gcp",
    )

    async def start_then_stop() -> None:
        starting = asyncio.ensure_future(source.start())
        await asyncio.to_thread(endpoint.connected.wait)
        starting.cancel()  # the stop cancels what is running, as serve does
        with contextlib.suppress(asyncio.CancelledError):
            await starting

    # As `extproc serve` runs its loop (closing it waits for the executor's threads), in a
    # thread of its own, apart from the tests' loop.
    stopping = threading.Thread(target=event_loop.run, args=(start_then_stop(), "asyncio"))
    stopping.start()
    stopping.join()
    try:
        assert not endpoint.closed_by_client.is_set(), "the stop waited for the token request"
    finally:
        endpoint.close()
        for thread in threading.enumerate():  # the request, failed, ends in this test
            if thread.name == gcp_tokens.TOKEN_THREAD:
                thread.join()
