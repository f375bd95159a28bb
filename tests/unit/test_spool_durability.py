"""What the spool holds survives a power loss: every file it writes, and every name it
gives a file, is on disk (fsynced, directory included) before the gateway counts on it.

A power cut cannot be staged here; these tests watch what the spool asks the disk for
(fsync, rename, unlink) and check the order a crash-safe write needs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from extproc.store.connection import connect
from extproc.store.embedded import free_port
from extproc.store.spool import Spool
from extproc.store.usage import UsageEntry, UsageStore
from extproc.store.usage_writer import UsageWriter


class DiskLog:
    """The spool's fsyncs, renames and unlinks, in order, with the thread that made them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        self.loop_thread = threading.get_ident()
        self.fsyncs_on_the_loop = 0
        real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

        def fsync(fd: int) -> None:
            self.events.append(("fsync", str(Path(f"/proc/self/fd/{fd}").readlink())))
            if threading.get_ident() == self.loop_thread:
                self.fsyncs_on_the_loop += 1
            real_fsync(fd)

        def replace(source: Any, target: Any, **options: Any) -> None:
            real_replace(source, target, **options)
            self.events.append(("rename", os.path.realpath(target)))

        def unlink(path: Any, **options: Any) -> None:
            real_unlink(path, **options)
            self.events.append(("unlink", os.path.realpath(path)))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "unlink", unlink)

    def clear(self) -> None:
        """Forget what the test's own setup did."""
        self.events.clear()
        self.fsyncs_on_the_loop = 0

    def after(self, event: tuple[str, str]) -> list[tuple[str, str]]:
        assert event in self.events, f"{event} never happened: {self.events}"
        return self.events[self.events.index(event) + 1 :]


def real(path: Path) -> str:
    return os.path.realpath(path)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> DiskLog:
    return DiskLog(monkeypatch)


def test_a_record_spooled_into_a_new_directory_has_its_file_and_directories_on_disk(
    tmp_path: Path, disk: DiskLog
) -> None:
    # A worker's first spooled batch: neither its directory nor the spool root exist yet.
    spool = Spool(tmp_path / "spool" / "worker-0", "usage")
    spool.append({"id": "a"})
    synced = {path for kind, path in disk.events if kind == "fsync"}
    # The record, the file's name in its directory, and each new directory's name in its parent.
    assert real(spool.path) in synced
    assert real(tmp_path / "spool" / "worker-0") in synced
    assert real(tmp_path / "spool") in synced
    assert real(tmp_path) in synced


async def test_a_replay_that_keeps_records_syncs_the_file_before_and_the_directory_after_renaming(
    tmp_path: Path, disk: DiskLog
) -> None:
    spool = Spool(tmp_path, "quota")
    for batch in ("a", "b", "c"):
        spool.append({"id": batch})

    async def store_back_for_one(record: dict[str, Any]) -> None:
        if record["id"] != "a":
            raise ConnectionError("store down again")

    disk.clear()
    assert await spool.replay(store_back_for_one) == 1
    rename = ("rename", real(spool.path))
    before = disk.events[: disk.events.index(rename)] if rename in disk.events else []
    # The rewritten file holds b and c on disk before it takes the spool's name ...
    assert ("fsync", real(spool.path.with_suffix(".tmp"))) in before
    # ... and the name is on disk before the replay returns: a power cut cannot bring
    # back the old file (or lose records appended to the new one after it).
    assert ("fsync", real(tmp_path)) in disk.after(rename)
    assert spool.pending() == 2
    assert disk.fsyncs_on_the_loop == 0


async def test_an_emptied_spool_stays_empty_after_a_power_cut(
    tmp_path: Path, disk: DiskLog
) -> None:
    spool = Spool(tmp_path, "usage")
    spool.append({"id": "a"})

    async def applied(record: dict[str, Any]) -> None:
        return None

    disk.clear()
    assert await spool.replay(applied) == 1
    assert ("fsync", real(tmp_path)) in disk.after(("unlink", real(spool.path)))
    assert disk.fsyncs_on_the_loop == 0


async def test_a_set_aside_record_has_its_file_on_disk(tmp_path: Path, disk: DiskLog) -> None:
    spool = Spool(tmp_path, "usage")
    spool.append({"no": "id"})  # another version's record

    async def apply(record: dict[str, Any]) -> None:
        record["id"]

    disk.clear()
    assert await spool.replay(apply) == 1
    rejected = tmp_path / "usage.rejected.jsonl"
    assert rejected.exists()
    assert ("fsync", real(rejected)) in disk.events
    assert ("fsync", real(tmp_path)) in disk.after(("fsync", real(rejected)))


async def test_usage_spooled_while_the_store_is_down_is_synced_off_the_event_loop(
    tmp_path: Path, disk: DiskLog
) -> None:
    # No store answers on this port: every flush goes to the spool.
    client = connect(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    spool = Spool(tmp_path / "spool", "usage")
    writer = UsageWriter(UsageStore(client, "d:", 3), on_error=lambda: None, spool=spool)
    try:
        dims = {"route": "openai-chat", "model": "gpt-4o", "provider": "mock"}
        writer.add(UsageEntry(1_780_000_000.0, dims, 10, 5))
        assert await writer.flush() is False
    finally:
        await client.aclose()
    assert spool.pending() == 1
    assert ("fsync", real(tmp_path / "spool")) in disk.events
    assert disk.fsyncs_on_the_loop == 0
