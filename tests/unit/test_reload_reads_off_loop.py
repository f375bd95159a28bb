"""A reload reads the files the config takes secrets from off the event loop.

A key file on a slow network volume (or a Secret directory of thousands of keys)
took a while to read, and the reload read it on the event loop every stream and
health check shares: all of them waited until it was read. Each case here makes
one such file a named pipe the test controls: the reload's read of it blocks
until the test writes the secret, and the gateway's health check must be
answered meanwhile. A fallback writer ends the wait should the read block the
loop, so a failure is an assertion, not a hung test.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from extproc.config.loader import load_config
from extproc.devstack import free_port, free_port_block
from extproc.server import Gateway
from extproc.workers import Supervisor
from tests.unit.test_jwt_verifier import RSA_JWK
from tests.unit.test_reload_edges import async_wait_for, models_of

MODEL = "  - {name: gpt-4o-mini, provider: mock}\n"
SECRET = "fifo-secret-1234567890"
# How long the fallback writer waits for the test before writing itself: only
# reached when the health check could not be answered during the read.
FALLBACK_S = 10.0

BASE = """
server:
  grpc_address: 127.0.0.1:{grpc_port}
  http_address: 127.0.0.1:{http_port}
  grace_period_s: 1
store:
  url: redis://127.0.0.1:{store_port}/0
  timeout_ms: 200
management:
  enabled: false
telemetry:
  log: {{stdout: false}}
providers:
  - {{name: mock, base_url: "http://127.0.0.1:9/v1", api_key: provider-key-123}}
models:
  - {{name: gpt-4o-mini, provider: mock}}
"""

JWKS = json.dumps({"keys": [RSA_JWK]})


def _org_key_file(fifo: Path) -> tuple[str, str]:
    return f"auth:\n  api_keys:\n    - {{id: team1, key_file: {fifo}}}\n", SECRET


def _provider_key_file(fifo: Path) -> tuple[str, str]:
    return (
        "  - {name: filed, base_url: 'http://127.0.0.1:9/v1', type: openai,"
        f" api_key_file: {fifo}}}\n",
        SECRET,
    )


def _jwks_file(fifo: Path) -> tuple[str, str]:
    return (
        "auth:\n  jwt_providers:\n"
        f"    - {{name: idp, issuer: 'https://idp.example', jwks: {{file: {fifo}}}}}\n",
        JWKS,
    )


# Each: the config text naming the pipe, and what the pipe must yield.
CASES: dict[str, Callable[[Path], tuple[str, str]]] = {
    "org key_file": _org_key_file,
    "provider api_key_file": _provider_key_file,
    "jwt_providers jwks.file": _jwks_file,
}


class PipeWriter:
    """Writes the secret into the pipe once the test says so (or after FALLBACK_S)."""

    def __init__(self, fifo: Path, content: str) -> None:
        self.fifo = fifo
        self.content = content
        self.reader_opened = threading.Event()
        self.release = threading.Event()
        self.written = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Opening a pipe for writing blocks until its reader (the reload) opens it.
        with self.fifo.open("w", encoding="utf-8") as pipe:
            # The reload holds the pipe open: a later read of the path (the watch sees
            # the pipe change) finds a plain file with the same secret, not a pipe that
            # nobody writes.
            plain = self.fifo.with_name(".plain")
            plain.write_text(self.content)
            plain.replace(self.fifo)
            self.reader_opened.set()
            self.release.wait(FALLBACK_S)
            pipe.write(self.content)
        self.written.set()

    def join(self) -> None:
        self.release.set()
        self._thread.join(FALLBACK_S)


def _health_during_read(writer: PipeWriter, url: str) -> bool:
    """In a thread of its own: whether /healthz answered while the pipe was unwritten."""
    assert writer.reader_opened.wait(FALLBACK_S), "the reload never opened the pipe"
    answer = httpx.get(url, timeout=FALLBACK_S * 3)
    during = not writer.written.is_set()
    assert answer.status_code == 200
    writer.release.set()
    return during


@pytest.mark.parametrize("case", list(CASES))
async def test_a_reload_reading_a_slow_secret_file_leaves_the_gateway_answering(
    tmp_path: Path, case: str
) -> None:
    http_port = free_port()
    base = BASE.format(
        grpc_port=free_port_block(1, avoid={http_port}),
        http_port=http_port,
        store_port=free_port_block(1, avoid={http_port}),
    )
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(base)
    gateway = Gateway(load_config(config_file), config_file)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    fifo = secrets / "team1"
    os.mkfifo(fifo)
    extra, content = CASES[case](fifo)
    # The edit reloaded: the pipe named, and a model added to see it applied by.
    text = base.replace(MODEL, MODEL + "  - {name: added-by-the-reload, provider: mock}\n")
    if extra.startswith("  - "):
        text = text.replace("models:\n", extra + "models:\n")  # a provider of its own
    else:
        text += extra
    await gateway.start()
    writer = PipeWriter(fifo, content)
    try:
        config_file.write_text(text)
        gateway.reload_config()
        answered = await asyncio.to_thread(
            _health_during_read, writer, f"http://127.0.0.1:{http_port}/healthz"
        )
        assert answered, f"the health check waited for the reload's read of the {case}"
        applied = await async_wait_for(
            lambda: "added-by-the-reload" in models_of(gateway), timeout_s=15.0
        )
        assert applied, "the reload was not applied once the file was read"
    finally:
        writer.join()
        await gateway.stop()


class HungVolume:
    """A file whose ``stat`` blocks, as on a network volume that stopped answering,
    until the test lets it return (or FALLBACK_S passed)."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.released_by_fallback = False
        real_stat = Path.stat

        def stat(path: Path, **kwargs: Any) -> os.stat_result:
            if self.armed and path == self.path:
                self.entered.set()
                if not self.release.wait(FALLBACK_S):
                    self.released_by_fallback = True
            return real_stat(path, **kwargs)

        monkeypatch.setattr(Path, "stat", stat)


def _health_during_stat(volume: HungVolume, url: str) -> bool:
    """In a thread of its own: whether /healthz answered while the stat hung."""
    assert volume.entered.wait(FALLBACK_S), "the config watch never looked at the file"
    answer = httpx.get(url, timeout=FALLBACK_S * 3)
    during = not volume.released_by_fallback
    assert answer.status_code == 200
    volume.release.set()
    return during


async def test_the_config_watch_on_a_hung_volume_leaves_the_gateway_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch stats every secret file once a second: that stat, on a volume that
    stopped answering, held every stream and health check until it answered."""
    http_port = free_port()
    key_file = tmp_path / "team1"
    key_file.write_text(SECRET)
    text = BASE.format(
        grpc_port=free_port_block(1, avoid={http_port}),
        http_port=http_port,
        store_port=free_port_block(1, avoid={http_port}),
    )
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(text + _org_key_file(key_file)[0])
    gateway = Gateway(load_config(config_file), config_file)
    volume = HungVolume(key_file, monkeypatch)
    await gateway.start()
    try:
        volume.armed = True
        answered = await asyncio.to_thread(
            _health_during_stat, volume, f"http://127.0.0.1:{http_port}/healthz"
        )
        assert answered, "the health check waited for the config watch's stat of a key file"
    finally:
        volume.release.set()
        await gateway.stop()


async def test_the_supervisors_check_of_a_reloaded_config_leaves_its_loop_free(
    tmp_path: Path,
) -> None:
    """``serve --workers N``: the supervisor reads every file a reloaded config names
    before a restarted worker may start on it; its loop answers /healthz and /metrics
    meanwhile."""
    config_file = tmp_path / "gateway.yaml"
    base = BASE.format(grpc_port=free_port(), http_port=free_port(), store_port=free_port())
    config_file.write_text(base)
    supervisor = Supervisor(load_config(config_file), str(config_file), 2)
    fifo = tmp_path / "team1"
    os.mkfifo(fifo)
    config_file.write_text(base + _org_key_file(fifo)[0])
    writer = PipeWriter(fifo, SECRET)
    try:
        applying = asyncio.create_task(supervisor._apply(load_config(config_file)))
        await asyncio.to_thread(writer.reader_opened.wait, FALLBACK_S)
        # Run by the loop: before the pipe is written only if the loop was free.
        free = not writer.written.is_set()
        writer.release.set()
        await applying
        assert free, "the supervisor's loop waited for the read of the key file"
    finally:
        writer.join()
