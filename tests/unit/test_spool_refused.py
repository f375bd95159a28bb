"""A spooled record the store itself refuses does not hold back the records after it.

A real Valkey: the hour's rollup key of one record is held by a value of another type
(another tool writing under the gateway's prefix, a hand-made key), so every try of
that record is answered WRONGTYPE, a definite answer about that record, not an outage.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.exceptions import ReadOnlyError, ResponseError

from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.spool import Spool
from extproc.store.usage import UsageEntry, UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics

DAY = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
PREFIX = "openai-chat\tgpt-4o\tmock\t\t\t\t"
DIMS = {"route": "openai-chat", "model": "gpt-4o", "provider": "mock"}


async def test_a_record_the_store_refuses_is_set_aside_and_the_rest_land(
    tmp_path: Path, valkey: EmbeddedValkey
) -> None:
    metrics = GatewayMetrics()
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    usage = UsageStore(client, "acc:", 3)
    spool = Spool(tmp_path, "usage", metrics)
    writer = UsageWriter(usage, on_error=lambda: None, spool=spool)
    spool.append({"id": "h10", "totals": [["2026030110", PREFIX, 1, 10, 5]]})
    spool.append({"id": "h11", "totals": [["2026030111", PREFIX, 2, 20, 6]]})
    try:
        # 10:00's rollup key is not a hash: the store answers WRONGTYPE to that record.
        await client.set("acc:usage:2026030110", "not a rollup")
        assert await writer.flush() is True
        await client.delete("acc:usage:2026030110")  # mended, to read the day back
        [row] = await usage.query(*DAY, ("model",))
    finally:
        await client.aclose()
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 20, 6)
    assert spool.pending() == 0
    rejected = (tmp_path / "usage.rejected.jsonl").read_bytes().splitlines()
    assert [line.count(b'"h10"') for line in rejected] == [1]
    labels = {"kind": "usage", "reason": "refused"}
    assert metrics.registry.get_sample_value("aigw_spool_rejected_records_total", labels) == 1


async def test_a_batch_refused_in_one_hour_still_lands_in_the_other(
    tmp_path: Path, valkey: EmbeddedValkey
) -> None:
    """A flush as the hour turns holds two hours; one hour's key is of another type.
    The store refuses that hour alone: the other hour's usage lands, the batch is set
    aside whole, and a person applying it once the key is mended counts each hour once.
    Before, the writer stopped at the refused hour: the other was never written, and
    the batch set aside held it, so the report missed it."""
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    usage = UsageStore(client, "acc:", 3)
    spool = Spool(tmp_path, "usage")
    writer = UsageWriter(usage, on_error=lambda: None, spool=spool)
    entries = [
        UsageEntry(datetime(2026, 3, 1, hour, 59, tzinfo=UTC).timestamp(), DIMS, 10 * hour, 5)
        for hour in (10, 11)
    ]
    try:
        await client.set("acc:usage:2026030110", "not a rollup")
        for each in entries:
            writer.add(each)
        assert await writer.flush() is False
        assert await writer.flush() is True  # the replay sets it aside
        assert spool.pending() == 0
        await client.delete("acc:usage:2026030110")  # mended, to read the day back
        [eleven] = await usage.query(*DAY, ("model",))
        # Hour 11's request alone: hour 10's is set aside, not counted.
        assert (eleven.requests, eleven.prompt_tokens) == (1, 110)

        [line] = (tmp_path / "usage.rejected.jsonl").read_bytes().splitlines()
        spool.append(orjson.loads(line))
        assert await writer.flush() is True
        [both] = await usage.query(*DAY, ("model",))
    finally:
        await client.aclose()
    assert (both.requests, both.prompt_tokens) == (2, 100 + 110)


@pytest.mark.parametrize(
    "error",
    [
        ReadOnlyError("You can't write against a read only replica."),
        ResponseError("LOADING Valkey is loading the dataset in memory"),
        ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
        ResponseError("NOPERM User gateway has no permissions to run the 'evalsha' command"),
        ResponseError("MISCONF Errors writing to the AOF file: No space left on device"),
        ResponseError("CLUSTERDOWN The cluster is down"),
    ],
    ids=lambda error: str(error).split()[0],
)
async def test_a_store_that_cannot_write_now_pauses_the_replay(
    tmp_path: Path, error: Exception
) -> None:
    """A store that answers but cannot write yet (a replica during a failover, loading,
    out of memory, a missing ACL, a full disk): every record would be refused alike, so
    they wait for it rather than being set aside."""
    spool = Spool(tmp_path, "quota")
    spool.append({"id": "a"})

    async def refuse(record: dict[str, Any]) -> None:
        raise error

    assert await spool.replay(refuse) == 0
    assert spool.pending() == 1
    assert not (tmp_path / "quota.rejected.jsonl").exists()


async def test_a_pipelined_answer_is_read_by_its_code(tmp_path: Path) -> None:
    """redis-py names a pipeline's command before the store's answer: a LOADING store
    answering a pipelined settlement still only pauses the replay."""
    spool = Spool(tmp_path, "quota")
    spool.append({"id": "a"})

    async def loading(record: dict[str, Any]) -> None:
        raise ResponseError(
            "Command # 1 (EVALSHA abc 1 k) of pipeline caused error: "
            "('LOADING Valkey is loading the dataset in memory',)"
        )

    assert await spool.replay(loading) == 0
    assert spool.pending() == 1
