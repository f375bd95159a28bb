"""The serving process started as an operator starts it, `extproc serve --workers N`,
with the embedded store: the store must never take a port the gateway is about to
listen on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from extproc.devstack import free_port, free_port_block
from tests.integration.conftest import wait_for

CONFIG = """
server:
  grpc_address: 127.0.0.1:{grpc_port}
  http_address: 127.0.0.1:{http_port}
  grace_period_s: 1
store:
  data_dir: {workdir}/valkey
  spool_dir: {workdir}/spool
management:
  enabled: false
providers:
  - {{name: mock, base_url: "http://127.0.0.1:9/v1", api_key: provider-key-123}}
models:
  - {{name: gpt-4o-mini, provider: mock}}
"""


Supervisor = tuple[int, Path, "subprocess.Popen[bytes]"]


@pytest.fixture
def supervisor_whose_store_may_take_its_http_port(tmp_path: Path) -> Iterator[Supervisor]:
    http_port = free_port()
    grpc_port = free_port_block(2, avoid={http_port})
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(grpc_port=grpc_port, http_port=http_port, workdir=tmp_path))
    # The embedded store picks its port from AIGW_FREE_PORTS: here only the HTTP
    # port, free while the store starts, since the supervisor binds it afterwards.
    env = {**os.environ, "AIGW_FREE_PORTS": f"{http_port}-{http_port}"}
    err = tmp_path / "gateway.err"
    with err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "extproc", "serve", "--workers", "2", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            yield http_port, err, process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_supervisors_store_leaves_the_http_port_to_the_supervisor(
    supervisor_whose_store_may_take_its_http_port: Supervisor,
) -> None:
    http_port, err, process = supervisor_whose_store_may_take_its_http_port

    def ready_or_exited() -> bool:
        if process.poll() is not None:
            return True
        try:
            return httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready_or_exited, timeout_s=60.0)
    assert process.poll() is None, err.read_text(errors="replace")[-3000:]
    answer = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=5.0)
    assert answer.status_code == 200, answer.text


def test_a_worker_that_cannot_take_its_port_says_why_without_a_traceback(
    tmp_path: Path,
) -> None:
    """Worker 1's ext_proc port is held by another process. The supervisor must not
    serve on with one worker (and a /readyz that never turns 200): it gives up after
    its restarts and exits 1; each attempt says why in one line, as a single process
    does, not in a traceback."""
    http_port = free_port()
    grpc_port = free_port_block(2, avoid={http_port})
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(grpc_port=grpc_port, http_port=http_port, workdir=tmp_path))
    holder = socket.socket()
    holder.bind(("127.0.0.1", grpc_port + 1))
    holder.listen()
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "extproc", "serve", "--workers", "2", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,
        )
    finally:
        holder.close()
    err = finished.stderr
    assert finished.returncode == 1, err[-3000:]
    reason = f"worker 1 cannot start: ext_proc server cannot listen on 127.0.0.1:{grpc_port + 1}"
    assert reason in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "workers died 5 times" in err, err[-3000:]
    # Worker 0, which could bind, is gone with it: nothing serves on unsupervised.
    # (Connecting, not binding: the port may be the local end of another process's
    # outgoing connection, which makes a bind fail with nothing listening on it.)
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", grpc_port))


def test_a_start_with_workers_is_no_reload_and_a_sighup_is(
    supervisor_whose_store_may_take_its_http_port: Supervisor, tmp_path: Path
) -> None:
    """Each worker checks the file once started, in case it changed meanwhile. Before,
    that check was a reload whatever the file said: every start logged "config
    reloaded" per worker and counted N successful reloads nobody made."""
    http_port, err, process = supervisor_whose_store_may_take_its_http_port

    def reloads() -> float | None:
        try:
            page = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=1.0)
            ready = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1.0)
        except httpx.HTTPError:
            return None
        if ready.status_code != 200:
            return None
        for line in page.text.splitlines():
            if line.startswith('aigw_config_reloads_total{result="success"}'):
                return float(line.rsplit(" ", 1)[1])
        return None

    assert wait_for(lambda: reloads() is not None, timeout_s=60.0), err.read_text()[-3000:]
    assert reloads() == 0
    assert "config reloaded" not in err.read_text()
    # A real reload still counts, once per worker.
    config = tmp_path / "gateway.yaml"
    config.write_text(config.read_text() + "  - {name: gpt-4o, provider: mock}\n")
    process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: reloads() == 2, timeout_s=30.0), err.read_text()[-3000:]
