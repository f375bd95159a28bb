"""Usage rollup batches that the store and the spool's disk both failed, against a real
Valkey: the batch waits in memory under its id and, should the disk have kept it after
all, its copy in the spool still counts once.

The store fails one write through a wrapper around the redis client; the disk fails
through ``os.fsync`` (after the line was written, as a disk reporting an I/O error
does). The gateway's writer, store and spool run as they do in production.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError

from extproc.store.connection import StoreClient, connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.spool import Spool
from extproc.store.usage import UsageEntry, UsageStore
from extproc.store.usage_writer import UsageWriter

T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC).timestamp()
DAY = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))


class _FailingOnce:
    """The redis client, whose next script call fails before it is sent."""

    def __init__(self, client: StoreClient) -> None:
        self._client = client
        self.fail_next = False

    def register_script(self, source: str) -> AsyncScript:
        return AsyncScript(self, source)  # type: ignore[arg-type]  # calls come back here

    async def evalsha(self, *args: Any) -> Any:
        if self.fail_next:
            self.fail_next = False
            raise RedisConnectionError("the store is down")
        return await self._client.evalsha(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[StoreClient]:
    store_client = connect(valkey.url, 2.0)
    await store_client.flushdb()
    yield store_client
    await store_client.aclose()


def entry(model: str) -> UsageEntry:
    return UsageEntry(T0, {"route": "openai-chat", "model": model, "provider": "mock"}, 10, 5)


async def test_a_batch_the_disk_kept_despite_its_error_counts_once(
    client: StoreClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = _FailingOnce(client)
    usage = UsageStore(flaky, "test:", retention_days=3)
    spool = Spool(tmp_path, "usage")
    writer = UsageWriter(usage, on_error=lambda: None, spool=spool)
    real_fsync = os.fsync
    fsyncs = {"failed": False}

    def fsync_failing_once(fd: int) -> None:
        if not fsyncs["failed"]:
            fsyncs["failed"] = True
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    # The store fails a batch, and the disk reports an error for its spool line, which
    # it wrote all the same: the writer keeps the batch in memory.
    flaky.fail_next = True
    monkeypatch.setattr(os, "fsync", fsync_failing_once)
    writer.add(entry("gpt-4o"))
    assert await writer.flush() is False
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert spool.pending() == 1

    # Back: the batch from memory lands, the next batches land, and the spool's copy
    # is replayed.
    for _ in range(2):
        writer.add(entry("gpt-4o-mini"))
        assert await writer.flush() is True
    assert spool.pending() == 0

    rows = await usage.query(*DAY, ("model",))
    assert {row.dimensions["model"]: row.requests for row in rows} == {
        "gpt-4o": 1,
        "gpt-4o-mini": 2,
    }
