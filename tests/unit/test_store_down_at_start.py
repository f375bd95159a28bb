"""A gateway started while its store is down says so, and says when the store answers.

Before, the log had one warning at start ("quota store not reachable at start") and
nothing after: an idle gateway never said the store had come (only ``/readyz``
turned 200), and the store's clock, which quota windows are computed from, was
first read 30 s after that. Now the start's warning says what follows, the upkeep
logs the end of the outage once the store answers, and reads its clock at once.
The store is a real Valkey, started on its port after the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from extproc.quota import store as quota_store_module
from extproc.quota.store import QuotaStore
from extproc.store.connection import connect
from tests.unit.test_auth_freshness_keys import eventually
from tests.unit.test_store_outage_log import Store

LOGGER = "extproc.quota.store"


@pytest.fixture
def late_store(tmp_path: Path) -> Iterator[Store]:
    """A Valkey whose port is known, not started yet."""
    server = Store(tmp_path / "valkey")
    yield server
    server.stop()


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def clock_reads(store: Store) -> int:
    """How many TIME commands the store has served (the quota store's clock sync)."""
    stats = redis.Redis.from_url(store.url).info("commandstats")
    return int(stats.get("cmdstat_time", {}).get("calls", 0))


async def test_a_store_that_comes_after_the_start_is_said_to_answer_and_its_clock_read(
    late_store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quota_store_module, "SPOOL_REPLAY_INTERVAL_S", 0.05)
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = connect(late_store.url, 0.5)
    quotas = QuotaStore(client, "down-at-start:")
    try:
        await quotas.start()
        [warning] = said(caplog)
        assert warning.startswith("quota store not reachable at start (ConnectionError)")
        assert "/readyz answers 503" in warning and "on_store_failure" in warning
        # The upkeep keeps trying meanwhile, and says nothing more (once a minute at most).
        await asyncio.sleep(0.3)
        assert said(caplog) == [warning]

        late_store.start()
        await eventually(lambda: len(said(caplog)) > 1)
        assert said(caplog)[1].startswith(
            "quota store upkeep (clock, spool replay) failed: over, the store answers again"
        )
        # The clock was read as soon as the store answered, not 30 s later.
        assert clock_reads(late_store) >= 1
    finally:
        await quotas.close()
        await client.aclose()


async def test_a_store_that_answers_at_start_says_nothing(
    late_store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quota_store_module, "SPOOL_REPLAY_INTERVAL_S", 0.05)
    caplog.set_level(logging.INFO, logger=LOGGER)
    late_store.start()
    client = connect(late_store.url, 0.5)
    quotas = QuotaStore(client, "down-at-start:")
    try:
        await quotas.start()
        await asyncio.sleep(0.3)
        assert said(caplog) == []
        assert clock_reads(late_store) == 1  # at start; the next one is due in 30 s
    finally:
        await quotas.close()
        await client.aclose()
