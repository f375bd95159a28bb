"""A burst of SIGHUPs (a deploy tool signalling once per file it wrote, an operator's
loop): the gateway reloads the file as it ends up, not once per signal.

Before, each signal was a reload of its own, run one after the other: twenty signals
in a moment were twenty full loads (each building a runtime, fetching JWKS, minting
tokens), twenty "config reloaded" lines and twenty successes in
`aigw_config_reloads_total`. Now a signal that comes while a reload waits for its
turn joins it; one that comes after a reload has read the file is one more.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from extproc.config.model import GatewayConfig
from extproc.config.reload import ConfigReloader
from tests.unit.test_reload_catch_up import ADDED, BASE, Worker, rewrite


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE)
    return path


def models(config: GatewayConfig) -> list[str]:
    return [model.name for model in config.models]


async def settled(reloader: ConfigReloader) -> None:
    for _ in range(500):
        if not reloader._pending:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the reloads never ended")


async def test_twenty_sighups_at_once_are_one_reload_of_the_last_file(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="extproc.config.reload")
    worker = Worker(config_file)
    worker.reloader.start()
    try:
        rewrite(config_file, BASE + ADDED)
        for _ in range(20):  # the signal handler runs once per signal
            worker.reloader.schedule_reload()
        await settled(worker.reloader)
    finally:
        await worker.reloader.stop()
    assert worker.results == [True]
    assert caplog.text.count("config reloaded") == 1
    assert models(worker.config) == ["gpt-4o-mini", "gpt-4o"]


async def test_a_sighup_while_a_reload_runs_reads_the_file_again(config_file: Path) -> None:
    """The file written after a reload read it must still be served in the end."""
    worker = Worker(config_file)
    reading = asyncio.Event()
    go_on = asyncio.Event()
    applied = worker.apply

    async def slow_apply(config: GatewayConfig) -> None:
        reading.set()
        await go_on.wait()  # the first reload is applying what it read
        await applied(config)

    worker.reloader._apply = slow_apply
    worker.reloader.start()
    try:
        worker.reloader.schedule_reload()
        await reading.wait()
        rewrite(config_file, BASE + ADDED)
        for _ in range(5):
            worker.reloader.schedule_reload()
        go_on.set()
        await settled(worker.reloader)
    finally:
        await worker.reloader.stop()
    assert worker.results == [True, True]
    assert models(worker.config) == ["gpt-4o-mini", "gpt-4o"]
