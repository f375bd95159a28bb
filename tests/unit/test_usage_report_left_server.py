"""``extproc usage report`` on the data dir of a gateway that was killed outright.

The gateway's embedded Valkey runs on after a SIGKILL (a session of its own), until the
next gateway start takes it over. A report run meanwhile (the operator looking at what
the crash cost) reads the rollups from that server, as from a live gateway's: it does not
take the server over, stop it or start a second one beside it, and it does not wait.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from extproc.chargeback.period import Period
from extproc.config import load_config
from extproc.store.connection import connect
from extproc.store.usage import UsageEntry, UsageStore
from extproc.usage_report import query_store
from tests.unit.test_embedded_store_takeover import Owner, owners, running, start_owner

__all__ = ["owners"]


async def test_a_report_reads_the_server_a_killed_gateway_left_and_leaves_it_running(
    tmp_path: Path, owners: list[Owner]
) -> None:
    data_dir = tmp_path / "valkey"
    owner = start_owner(owners, data_dir)
    config = load_config("config/gateway.yaml", environ={"EXTPROC_DATA_DIR": str(data_dir)})
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    client = connect(owner.url, 2.0)
    store = UsageStore(client, config.store.key_prefix, config.store.usage_retention_days)
    # What the gateway recorded before it was killed.
    await store.record(UsageEntry(hour.timestamp() + 60, {"model": "gpt-4o-mini"}, 120, 30))
    await client.aclose()
    owner.kill()  # SIGKILL: its server runs on, its lock is free
    assert running(owner.server_pid)

    found = await query_store(config, Period(hour, hour + timedelta(hours=1)), ("model",))

    [row] = found.rows
    assert (row.dimensions["model"], row.prompt_tokens, row.completion_tokens) == (
        "gpt-4o-mini",
        120,
        30,
    )
    # The same server, still serving: not stopped, nothing started beside it.
    assert running(owner.server_pid)
    with redis.Redis.from_url(owner.url) as left:
        assert int(left.info("server")["process_id"]) == owner.server_pid
    assert (data_dir / "endpoint").read_text().strip() == owner.url
