"""A reload refused because a file it names is missing is applied once the file is written.

The operator revokes a key and adds one read from a file that is not there yet (a
Secret mounted after its ConfigMap, a file copied after the config). The refused
config must take effect when the file appears, not whenever the config is next
edited: until then the revoked key is still accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from extproc.config.loader import load_config
from extproc.config.model import GatewayConfig
from extproc.config.reload import ConfigReloader
from extproc.config.watched_files import secret_files
from extproc.runtime import Runtime, Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics

BASE = """
providers:
  - {name: mock, base_url: "http://127.0.0.1:8089/v1", api_key: provider-key-123}
models:
  - {name: gpt-4o-mini, provider: mock}
auth:
  api_keys:
    - {id: team1, key: team1-secret-key}
"""
REVOKED = "    - {id: leaver, key: leaver-secret-key}\n"


class Serving:
    """What the gateway's reload does with a config: a Runtime built from it, swapped in."""

    def __init__(self, config: GatewayConfig) -> None:
        self.services = Services(GatewayMetrics(), AccessLog(stdout=False))
        self.runtime = Runtime(config, self.services)
        self.results: list[bool] = []

    async def apply(self, config: GatewayConfig) -> None:
        self.runtime = Runtime(config, self.services)  # reads the key files it names

    def accepts(self, secret: str) -> bool:
        return self.runtime.api_keys.lookup(secret) is not None

    def reloader(self, path: Path) -> ConfigReloader:
        return ConfigReloader(
            path,
            self.apply,
            self.results.append,
            poll_interval_s=0.02,
            watched=lambda: secret_files(self.runtime.config),
        )


async def test_a_revocation_waiting_for_a_key_file_applies_once_the_file_is_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + REVOKED)
    serving = Serving(load_config(path, {}))
    reloader = serving.reloader(path)
    reloader.start()
    try:
        late = tmp_path / "late-key"
        path.write_text(BASE + f"    - {{id: late, key_file: {late}}}\n")
        await until(lambda: serving.results == [False])
        assert serving.accepts("leaver-secret-key")  # the running config keeps serving
        late.write_text("late-secret-key\n")
        await until(lambda: serving.results == [False, True])
        assert not serving.accepts("leaver-secret-key")
        assert serving.accepts("late-secret-key")
        # Nothing changed since: no further reload.
        await asyncio.sleep(0.1)
        assert serving.results == [False, True]
    finally:
        await reloader.stop()


async def test_a_refused_file_is_not_reloaded_again_until_something_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE)
    serving = Serving(load_config(path, {}))
    reloader = serving.reloader(path)
    reloader.start()
    try:
        path.write_text(BASE + f"    - {{id: late, key_file: {tmp_path / 'absent'}}}\n")
        await until(lambda: serving.results == [False])
        await asyncio.sleep(0.1)
        assert serving.results == [False]
    finally:
        await reloader.stop()


async def until(condition: Callable[[], bool], attempts: int = 250) -> None:
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the reloader did not get there")
