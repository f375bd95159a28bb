"""The embedded Valkey is the gateway's to keep running: one killed behind its back
(the OOM killer, a crash) is started again on its port, with its data, and the
gateway's clients reach it at the URL they already have."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG, Ports
from extproc.server import Gateway
from extproc.store import embedded
from extproc.store.embedded import EmbeddedValkey

# Far beyond a restart (the binary starts in well under a second): only a bound, so
# that a gateway that never gets its store back fails the test instead of hanging it.
BACK_WITHIN_S = 30.0


Ping = Callable[[], Awaitable[object]]


async def answers(ping: Ping) -> bool:
    try:
        await ping()
    except Exception:
        return False
    return True


async def until_it_answers(ping: Ping) -> bool:
    deadline = asyncio.get_running_loop().time() + BACK_WITHIN_S
    while asyncio.get_running_loop().time() < deadline:
        if await answers(ping):
            return True
        await asyncio.sleep(0.1)
    return False


async def until_said(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    """The embedded store's log lines, once one holds ``words`` (or the wait is over)."""
    deadline = asyncio.get_running_loop().time() + BACK_WITHIN_S
    while True:
        said = [r.getMessage() for r in caplog.records if r.name == embedded.__name__]
        if any(words in line for line in said) or asyncio.get_running_loop().time() > deadline:
            return said
        await asyncio.sleep(0.05)


async def kill_server(client: Any) -> None:
    """SIGKILL the server ``client`` talks to, as the OOM killer would, and wait
    until it is gone (its pid asked from the server itself)."""
    info = await client.info("server")
    os.kill(int(info["process_id"]), signal.SIGKILL)
    for _ in range(int(BACK_WITHIN_S / 0.02)):
        if not await answers(client.ping):
            return
        await asyncio.sleep(0.02)


async def test_a_killed_embedded_store_is_started_again_with_its_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ports = Ports.free()
    environ = {
        "EXTPROC_GRPC_ADDRESS": f"127.0.0.1:{ports.grpc}",
        "EXTPROC_HTTP_ADDRESS": f"127.0.0.1:{ports.http}",
        "EXTPROC_MANAGEMENT_ADDRESS": f"127.0.0.1:{ports.management}",
        # No store URL: the gateway starts and owns an embedded Valkey.
        "EXTPROC_DATA_DIR": str(tmp_path / "valkey"),
        "EXTPROC_SPOOL_DIR": str(tmp_path / "spool"),
    }
    config = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", environ)
    gateway = Gateway(config, None)
    await gateway.start()
    try:
        client = gateway._store_client
        await client.set("aigw:test:kept", b"before the kill")
        endpoint = (tmp_path / "valkey" / embedded.ENDPOINT_FILE).read_text()
        caplog.set_level(logging.INFO, logger=embedded.__name__)
        await kill_server(client)

        # The same client, at the same URL: the store is back, with what it held.
        assert await until_it_answers(client.ping)
        assert await client.get("aigw:test:kept") == b"before the kill"
        assert (tmp_path / "valkey" / embedded.ENDPOINT_FILE).read_text() == endpoint
        # The line comes once the restart's thread returns to the loop, which may be
        # just after the server first answers the client.
        said = await until_said(caplog, "answers again")
        assert any("embedded Valkey exited" in line for line in said), said
        assert any("answers again" in line for line in said), said
    finally:
        await gateway.stop()
    # Stopped for good: nothing restarts it once the gateway has stopped it.
    assert not (tmp_path / "valkey" / embedded.ENDPOINT_FILE).exists()
    assert not await answers(gateway._store_client.ping)


async def test_a_store_that_cannot_start_again_is_said_once_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EmbeddedValkey(tmp_path / "valkey")
    url = await asyncio.to_thread(store.start)
    client = redis.asyncio.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    launch = embedded._launch
    tries: list[int] = []

    def refuse_three_times(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
        # As a port taken meanwhile, or an AOF it cannot read, would refuse it.
        tries.append(port)
        if len(tries) <= 3:
            raise embedded.EmbeddedStartError("the embedded Valkey exited with 1 while starting")
        return launch(data_dir, port)

    monkeypatch.setattr(embedded, "_launch", refuse_three_times)
    keeper = asyncio.create_task(store.keep_running(interval_s=0.01))
    try:
        caplog.set_level(logging.INFO, logger=embedded.__name__)
        await kill_server(client)
        assert await until_it_answers(client.ping)
        assert len(tries) == 4
        assert set(tries) == {int(url.rsplit(":", 1)[1].split("/")[0])}
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        # One line when it went, one when it would not start: not one per try.
        assert len(errors) == 2, errors
        assert "exited (status -9)" in errors[0]
        assert "trying again" in errors[1]
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await client.aclose()
        await asyncio.to_thread(store.stop)
