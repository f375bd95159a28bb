"""A worker started on its supervisor's config reloads only when the file changed since.

Each worker of `serve --workers N` starts on the config the supervisor validated last,
then checks the file in case it changed while the worker started. It used to reload
whatever the file said: every start of the pod logged "config reloaded" once per
worker, added N to `aigw_config_reloads_total{result="success"}` with nothing reloaded,
and built each worker's runtime twice. Now the same config is no reload; a changed or
a broken file is one, said and counted as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from extproc.config.loader import load_config
from extproc.config.model import GatewayConfig
from extproc.config.reload import ConfigReloader
from extproc.config.restart_only import as_started

BASE = """
server: {grace_period_s: 1}
management: {enabled: false}
providers:
  - {name: mock, base_url: "http://127.0.0.1:8089/v1", api_key: provider-key-123}
models:
  - {name: gpt-4o-mini, provider: mock}
"""
ADDED = "  - {name: gpt-4o, provider: mock}\n"


class Worker:
    """What a worker's gateway does with a reload: apply it, count its result."""

    def __init__(self, path: Path) -> None:
        started = load_config(path)
        # As the supervisor hands it over: restart-only settings as it started them.
        self.config: GatewayConfig = as_started(started, started)
        self.applied: list[GatewayConfig] = []
        self.results: list[bool] = []
        self.reloader = ConfigReloader(path, self.apply, self.results.append, poll_interval_s=60)

    async def apply(self, config: GatewayConfig) -> None:
        self.applied.append(config)
        self.config = config


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE)
    return path


async def test_an_unchanged_file_is_no_reload(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="extproc.config.reload")
    worker = Worker(config_file)
    worker.reloader.start()
    try:
        assert await worker.reloader.catch_up(worker.config)
    finally:
        await worker.reloader.stop()
    assert (worker.applied, worker.results) == ([], [])
    assert "config reloaded" not in caplog.text


async def test_a_file_changed_since_is_reloaded_and_counted(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="extproc.config.reload")
    worker = Worker(config_file)
    rewrite(config_file, BASE + ADDED)  # a sibling reloaded it while this one started
    worker.reloader.start()
    try:
        assert await worker.reloader.catch_up(worker.config)
    finally:
        await worker.reloader.stop()
    assert worker.results == [True]
    [applied] = worker.applied
    assert {model.name for model in applied.models} == {"gpt-4o-mini", "gpt-4o"}
    assert "config reloaded" in caplog.text


async def test_a_broken_file_is_a_refused_reload(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(config_file)
    rewrite(config_file, BASE + "  - {name: gpt-4o}\n")
    worker.reloader.start()
    try:
        assert not await worker.reloader.catch_up(worker.config)
    finally:
        await worker.reloader.stop()
    assert (worker.applied, worker.results) == ([], [False])
    assert "config reload rejected, keeping the running config" in caplog.text
