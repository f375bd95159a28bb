"""`serve --workers N` empties `telemetry.metrics.multiprocess_dir` of the workers' metric
files at start, and only of them: the directory stays.

Before, the supervisor removed the whole tree and made it again. Pointed at a volume's
mount point (the natural way to give the files a volume of their own), it deleted
everything on the volume and then failed to start with a traceback (`EBUSY`: a mount
point cannot be removed); pointed at a directory it shares with other files, it
deleted them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.config import GatewayConfig, load_config
from extproc.config.loader import ConfigError
from extproc.devstack import free_port_block
from extproc.store.embedded import free_port
from extproc.workers import Supervisor

# An earlier run's files, as prometheus_client names them (type, gauge mode, pid).
EARLIER_RUN = ("counter_4711.db", "histogram_4711.db", "gauge_livemin_4711.db")


def supervisor_on(directory: Path) -> Supervisor:
    config = load_config("config/gateway.yaml", environ={})
    metrics = config.telemetry.metrics.model_copy(update={"multiprocess_dir": str(directory)})
    telemetry = config.telemetry.model_copy(update={"metrics": metrics})
    started: GatewayConfig = config.model_copy(update={"telemetry": telemetry})
    return Supervisor(started, "gateway.yaml", 2)


def fill(directory: Path) -> None:
    for name in EARLIER_RUN:
        (directory / name).write_bytes(b"\0" * 16)
    (directory / "README").write_text("the operator's notes\n")
    (directory / "lost+found").mkdir()


def test_a_start_removes_the_earlier_runs_files_and_keeps_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    fill(directory)
    inode = directory.stat().st_ino
    supervisor_on(directory)._prepare_multiprocess_dir()
    # The same directory (what a mount point needs), without the earlier counts...
    assert directory.stat().st_ino == inode
    # ...and with what is not the workers' (a volume's lost+found, a person's file).
    assert sorted(p.name for p in directory.iterdir()) == ["README", "lost+found"]
    assert (directory / "README").read_text() == "the operator's notes\n"


def test_a_missing_directory_is_made(tmp_path: Path) -> None:
    directory = tmp_path / "not" / "there"
    supervisor_on(directory)._prepare_multiprocess_dir()
    assert directory.is_dir()


def test_another_db_file_there_refuses_the_start_naming_the_field(tmp_path: Path) -> None:
    """The merged page reads every `*.db` file in the directory: one of another program's
    would break every scrape, and it is not the gateway's to delete."""
    (tmp_path / "inventory.db").write_bytes(b"SQLite format 3\0")
    (tmp_path / "counter_4711.db").write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError) as refused:
        supervisor_on(tmp_path)._prepare_multiprocess_dir()
    assert "telemetry.metrics.multiprocess_dir" in str(refused.value)
    assert "inventory.db" in str(refused.value)
    assert (tmp_path / "inventory.db").exists()
    assert not (tmp_path / "counter_4711.db").exists()


def test_serve_refuses_it_in_one_line_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "inventory.db").write_bytes(b"SQLite format 3\0")
    text = Path("config/gateway.yaml").read_text()
    config = tmp_path / "gateway.yaml"
    metrics = f"telemetry:\n  metrics: {{multiprocess_dir: {tmp_path}}}\n"
    config.write_text(text.replace("telemetry:\n", metrics, 1))
    assert load_config(config, environ={}).telemetry.metrics.multiprocess_dir == str(tmp_path)
    # Nothing of its own to start should the check be missed: a store that is not there,
    # free ports, a spool of its own.
    grpc, http = free_port_block(2), free_port()
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0",
           "EXTPROC_GRPC_ADDRESS": f"127.0.0.1:{grpc}", "EXTPROC_HTTP_ADDRESS": f"127.0.0.1:{http}",
           "EXTPROC_SPOOL_DIR": str(tmp_path / "spool")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "serve", "--config", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert result.returncode == 2, result.stderr
    assert "telemetry.metrics.multiprocess_dir" in result.stderr
    assert "Traceback" not in result.stderr


@contextlib.contextmanager
def mounted(directory: Path) -> Iterator[None]:
    """A small tmpfs on ``directory``, where this process may mount one."""
    directory.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)],
                          capture_output=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip("mounting needs root with CAP_SYS_ADMIN: the inode test above covers it")
    try:
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_mount_point_itself_serves(tmp_path: Path) -> None:
    directory = tmp_path / "volume"
    with mounted(directory):
        fill(directory)
        supervisor_on(directory)._prepare_multiprocess_dir()
        assert sorted(p.name for p in directory.iterdir()) == ["README", "lost+found"]
