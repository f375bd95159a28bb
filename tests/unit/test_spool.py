"""The spool keeps every whole record it was given until a replay applied it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from extproc.store.spool import Spool
from extproc.worker_endpoints import gather_spools


class Applied:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.ids: list[str] = []
        self._delay_s = delay_s

    async def __call__(self, record: dict[str, Any]) -> None:
        await asyncio.sleep(self._delay_s)  # the store's round trip
        self.ids.append(record["id"])


async def test_a_record_spooled_during_a_replay_waits_for_the_next_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "quota")
    spool.append({"id": "old"})
    apply = Applied(delay_s=0.2)
    replay = asyncio.create_task(spool.replay(apply))
    await asyncio.sleep(0.05)
    # A settlement fails while the replay is applying "old": spooled from a thread.
    await asyncio.to_thread(spool.append, {"id": "new"})
    assert await replay == 1
    assert spool.pending() == 1
    assert await spool.replay(apply) == 1
    assert apply.ids == ["old", "new"] and spool.pending() == 0


async def test_a_line_torn_by_a_crash_costs_only_itself(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "usage")
    spool.append({"id": "a"})
    # Killed while appending "b": half a line, no newline.
    with spool.path.open("ab") as torn:
        torn.write(b'{"id": "b", "tot')
    spool.append({"id": "c"})
    apply = Applied()
    assert await spool.replay(apply) == 3  # the torn line is skipped, and gone
    assert apply.ids == ["a", "c"] and spool.pending() == 0


async def test_gathered_spools_keep_the_records_after_a_torn_tail(tmp_path: Path) -> None:
    (tmp_path / "worker-0").mkdir()
    (tmp_path / "worker-3").mkdir()
    # Worker 0's spool ends in a torn line; worker 3 is beyond the new count of 2.
    (tmp_path / "worker-0" / "usage.jsonl").write_bytes(b'{"id": "a"}\n{"id": "b", "to')
    (tmp_path / "worker-3" / "usage.jsonl").write_bytes(b'{"id": "c"}\n')
    gather_spools(str(tmp_path), 2)
    apply = Applied()
    await Spool(tmp_path / "worker-0", "usage").replay(apply)
    assert apply.ids == ["a", "c"]


async def test_a_record_that_cannot_be_applied_is_set_aside_not_in_the_way(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, "usage")
    spool.append({"id": "a"})
    spool.append({"no": "id"})  # another version's record, say
    spool.append({"id": "c"})
    apply = Applied()
    assert await spool.replay(apply) == 3
    assert apply.ids == ["a", "c"] and spool.pending() == 0
    assert Spool(tmp_path, "usage.rejected").pending() == 1  # kept for a person to look at


async def test_a_store_that_is_not_back_pauses_the_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "quota")
    spool.append({"id": "a"})

    async def down(record: dict[str, Any]) -> None:
        raise ConnectionError("store down")

    assert await spool.replay(down) == 0
    assert spool.pending() == 1


async def test_a_store_error_of_any_kind_pauses_the_replay(tmp_path: Path) -> None:
    class ClusterDownError(Exception):
        """What a cluster client raises when no node answers: not a record's fault."""

    spool = Spool(tmp_path, "quota")
    spool.append({"id": "a"})

    async def cluster_down(record: dict[str, Any]) -> None:
        raise ClusterDownError("Redis Cluster cannot be connected")

    assert await spool.replay(cluster_down) == 0
    assert spool.pending() == 1
    assert Spool(tmp_path, "quota.rejected").pending() == 0
