"""A reload reads its key files off the event loop: requests go on being answered while
a key file takes its time (a Secret on a network disk that stalls, a key directory of
thousands of files), and the new key works once it is read.

The key file here is a FIFO, which a read waits on until this test writes the key:
before, the reload read it on the event loop, and nothing else ran until then (the
request below was never answered, and this test never got to write the key)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import yaml

from extproc.config import parse_config
from extproc.config.model import GatewayConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.server import Gateway
from tests.unit.test_credentials_across_reloads import status_with

SLOW_KEY = "sk-read-from-a-slow-disk-0001"


def config(key_file: Path | None) -> GatewayConfig:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    if key_file is not None:
        raw["auth"]["api_keys"].append({"id": "slow", "key_file": str(key_file)})
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {})


# Should the read block the event loop, this unblocks it (the test then fails rather
# than hangs): far longer than the reload takes to reach the file.
WATCHDOG_S = 20.0


def write_key(path: Path) -> None:
    with path.open("w", encoding="utf-8") as fifo:  # waits for the reader
        fifo.write(SLOW_KEY)


async def reader_waiting(path: Path, reloading: asyncio.Task[None]) -> int:
    """Wait until something reads the FIFO (the reload, at its key file); the write end.

    Opening a FIFO to write without blocking fails while no one has it open to read."""
    while True:
        assert not reloading.done(), "the reload read the key file while nothing else ran"
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            await asyncio.sleep(0.01)


async def test_requests_are_answered_while_a_reload_waits_on_a_key_file(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "slow-key"
    os.mkfifo(key_file)
    gateway = Gateway(config(None), None)
    await gateway.runtime.start()
    watchdog = threading.Timer(WATCHDOG_S, write_key, (key_file,))
    watchdog.daemon = True
    watchdog.start()
    reloading = asyncio.get_running_loop().create_task(gateway.apply(config(key_file)))
    writer: int | None = None
    try:
        # The reload now waits on the key file.
        writer = await reader_waiting(key_file, reloading)
        watchdog.cancel()
        assert await status_with(gateway, "team1-key") is None, "served meanwhile"
        assert await status_with(gateway, SLOW_KEY) == 401, "not a key until read"
        os.write(writer, SLOW_KEY.encode())
        os.close(writer)
        writer = None
        await reloading
        assert await status_with(gateway, SLOW_KEY) is None, "the new key works"
    finally:
        watchdog.cancel()
        if writer is not None:
            os.close(writer)
        if not reloading.done():
            reloading.cancel()
            await asyncio.gather(reloading, return_exceptions=True)
        await gateway.runtime.close()
        for retired in gateway._retired:
            await retired.wait_closed()
