"""A Valkey running on a data dir is found by its process, whether it answers or not:
stopped with SIGSTOP it is still there, one on another data dir is not this one's, and
its AOF rewrite (a fork of it, in the same directory, by the same name) is no second
server. The servers are real, launched as the gateway launches them, stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from extproc.store import embedded, server_processes
from tests.unit.test_embedded_store_takeover import freeze

# Each key held that long by the rewrite: it outlives the test's look, then is ended.
SLOW_REWRITE_US = 2_000_000
BOUND_S = 30.0


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[bytes]]]:
    servers: list[subprocess.Popen[bytes]] = []
    yield servers
    for server in servers:
        os.kill(server.pid, signal.SIGCONT)
        server.terminate()
        server.wait(BOUND_S)


def launch(launched: list[subprocess.Popen[bytes]], data_dir: Path) -> tuple[int, int]:
    data_dir.mkdir()
    port = embedded.free_port()
    server = embedded._launch(data_dir, port)
    launched.append(server)
    return server.pid, port


def test_a_stopped_server_is_found_by_its_process(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    pid, port = launch(launched, tmp_path / "ours")
    launch(launched, tmp_path / "another")
    freeze(pid)

    [found] = server_processes.on_data_dir(tmp_path / "ours")

    assert (found.pid, found.state, found.port) == (pid, "T", port)
    assert str(found) == f"pid {pid}, stopped"
    assert server_processes.on_data_dir(tmp_path / "none") == []


def test_a_servers_aof_rewrite_is_not_a_second_server(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    data_dir = tmp_path / "ours"
    pid, port = launch(launched, data_dir)
    with redis.Redis(port=port) as client:
        client.mset({f"aigw:key:{n}": n for n in range(5)})
        client.config_set("rdb-key-save-delay", SLOW_REWRITE_US)
        client.bgrewriteaof()
        try:
            rewrite = wait_for_child(pid)
            assert Path(f"/proc/{rewrite}/cwd").readlink() == data_dir.resolve()

            assert [found.pid for found in server_processes.on_data_dir(data_dir)] == [pid]

            assert rewrite in children(pid), "the rewrite ended before the look"
        finally:
            # Turning the AOF off ends the rewrite at once.
            client.config_set("appendonly", "no")


@pytest.mark.parametrize(
    ("command_line", "port"),
    [
        # Its title, padded with NULs over the arguments it replaced.
        (b"/venv/bin/valkey-server 127.0.0.1:24268" + b"\x00" * 40, 24268),
        (b"/home/a b/valkey-server 127.0.0.1:24268 [cluster]\x00\x00", 24268),
        # Its arguments, in the instant before it sets its title.
        (
            b"/venv/bin/valkey-server\x00--bind\x00127.0.0.1\x00--port\x0024268\x00--dir\x00/d\x00",
            24268,
        ),
        (b"/venv/bin/valkey-server\x00/etc/valkey.conf\x00", None),
    ],
)
def test_where_a_server_listens_is_read_from_its_command_line(
    command_line: bytes, port: int | None
) -> None:
    assert server_processes._port(command_line) == port


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the fourth field of their stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            parent = (entry / "stat").read_text().rpartition(")")[2].split()[1]
        except OSError:
            continue  # not a process, or exited meanwhile
        if entry.name.isdigit() and parent == str(pid):
            found.append(int(entry.name))
    return found


def wait_for_child(pid: int) -> int:
    deadline = time.monotonic() + BOUND_S
    while not (found := children(pid)):
        assert time.monotonic() < deadline, "no rewrite started"
        time.sleep(0.01)
    [child] = found
    return child
