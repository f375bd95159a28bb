"""Two gateway processes on one ``store.spool_dir`` (two ``serve`` from one config on
one host, gateways of a dev stack sharing the directory, a new supervisor while the
old one's workers drain): every batch either of them spools is applied, once.

Before, the spool's lock was per process and a replay removed "the first N lines" of
the file once it had applied them: a replay that finished after the other process
had replayed and spooled new batches removed those, unapplied (lost usage, lost
quota settlements); so did a rewrite of the file racing the other's append.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from extproc.store.connection import StoreClient, connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.spool import Spool
from extproc.store.usage import UsageEntry, UsageStore, spool_rows, totals_from_spool, totals_of

T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC).timestamp()
DAY = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=1))


class Applied:
    """The store, as far as these tests need it: which batches it got, in order."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.during: dict[str, Any] = {}

    async def __call__(self, record: dict[str, Any]) -> None:
        self.ids.append(record["id"])
        meanwhile = self.during.pop(record["id"], None)
        if meanwhile is not None:
            await meanwhile()


async def test_a_replay_keeps_what_another_process_spooled_while_it_applied(
    tmp_path: Path,
) -> None:
    first, second = Spool(tmp_path, "usage"), Spool(tmp_path, "usage")
    first.append({"id": "a"})
    first.append({"id": "b"})
    store = Applied()

    async def second_process_meanwhile() -> None:
        # While the first process applies "a", the second replays what it finds and
        # then spools a batch its store write failed.
        await second.replay(store)
        await asyncio.to_thread(second.append, {"id": "c"})

    store.during["a"] = second_process_meanwhile
    await first.replay(store)
    # Whoever replays next finds "c": it was never applied, so it must still be there.
    await first.replay(store)
    assert sorted(set(store.ids)) == ["a", "b", "c"]
    assert first.pending() == 0


async def test_a_replay_of_one_process_is_not_run_again_by_another(tmp_path: Path) -> None:
    first, second = Spool(tmp_path, "quota"), Spool(tmp_path, "quota")
    first.append({"id": "a"})
    store = Applied()

    async def second_process_meanwhile() -> None:
        assert await second.replay(store) == 0

    store.during["a"] = second_process_meanwhile
    assert await first.replay(store) == 1
    assert store.ids == ["a"]


async def test_a_replay_removes_the_lines_it_applied_from_a_file_rewritten_meanwhile(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, "usage")
    spool.append({"id": "a"})
    spool.append({"id": "b"})
    store = Applied()

    async def older_gateway_meanwhile() -> None:
        # A gateway of an earlier version (no replay lock) replays "a" and "b" too
        # (counted once by their ids), drops them, then spools "c" and "d".
        spool.path.write_bytes(b'{"id":"c"}\n{"id":"d"}\n')

    store.during["b"] = older_gateway_meanwhile
    assert await spool.replay(store) == 2
    # Not "the first two lines": those are "c" and "d", never applied.
    assert spool.pending() == 2
    await spool.replay(store)
    assert store.ids == ["a", "b", "c", "d"]


async def test_a_replay_stopped_while_it_takes_the_lock_lets_it_go(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "quota")
    spool.append({"id": "a"})
    store = Applied()
    stopped = asyncio.create_task(spool.replay(store))
    await asyncio.sleep(0)  # it is taking the replay lock, in a thread
    stopped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopped
    # The thread finishes on its own; then the next replay (in any process) runs.
    other = Spool(tmp_path, "quota")
    for _ in range(200):
        if await other.replay(store):
            break
        await asyncio.sleep(0.01)
    assert store.ids == ["a"]


def _spool_and_replay(directory: str, url: str, tag: str, batches: int) -> None:
    """One gateway process: each batch fails to reach the store and is spooled, then
    the replay (as the usage writer's next flush does) sends what the spool holds."""
    asyncio.run(_process(Path(directory), url, tag, batches))


async def _process(directory: Path, url: str, tag: str, batches: int) -> None:
    client = connect(url, 5.0)
    store = UsageStore(client, "test:", retention_days=3)
    spool = Spool(directory, "usage")

    async def apply(record: dict[str, Any]) -> None:
        totals = totals_from_spool(record["totals"])
        await store.record_totals(totals, str(record["id"]), replayed=True)

    entry = UsageEntry(T0, {"route": "chat", "model": "m", "provider": "mock"}, 10, 5)
    rows = spool_rows(totals_of([entry]))
    for number in range(batches):
        await asyncio.to_thread(spool.append, {"id": f"{tag}-{number}", "totals": rows})
        await spool.replay(apply)
    await client.aclose()


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[StoreClient]:
    store_client = connect(valkey.url, 2.0)
    await store_client.flushdb()
    yield store_client
    await store_client.aclose()


async def test_two_processes_on_one_spool_dir_count_every_batch_once(
    client: StoreClient, valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    batches = 400
    spawn = multiprocessing.get_context("spawn")
    processes = [
        spawn.Process(target=_spool_and_replay, args=(str(tmp_path), valkey.url, tag, batches))
        for tag in ("one", "two")
    ]
    for process in processes:
        process.start()
    for process in processes:
        await asyncio.to_thread(process.join, 120)
        assert process.exitcode == 0
    store = UsageStore(client, "test:", retention_days=3)
    spool = Spool(tmp_path, "usage")

    async def apply(record: dict[str, Any]) -> None:
        await store.record_totals(totals_from_spool(record["totals"]), str(record["id"]))

    # What is left (the last batch of the process whose replay was the other's turn).
    await spool.replay(apply)
    assert spool.pending() == 0
    rows = await store.query(*DAY, by=("route",))
    assert [(row.requests, row.prompt_tokens) for row in rows] == [(2 * batches, 20 * batches)]
