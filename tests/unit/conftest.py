"""Shared fixtures for unit tests: the default config and a processor over it."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, tzinfo
from typing import Any

import aiohttp
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import envoy_messages
from extproc.chargeback import retention
from extproc.config import GatewayConfig, load_config
from extproc.guardrails.webhook import SessionHolder
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for

# The mock provider's fixtures, registered here so every unit test module can ask for them.
from tests.unit.mock_helpers import anthropic_client, http, mock_url, openai_client

__all__ = ["anthropic_client", "http", "mock_url", "openai_client"]


@pytest.fixture(autouse=True)
def shared_answers_stay_unchanged() -> Iterator[None]:
    """The processor answers "continue" with one message per phase, built once and shared
    by every request. A test reading it must not change it (indexing a protobuf map
    inserts the key: ``answer.dynamic_metadata.fields[ns]``), else every later answer
    of that process carries the change."""
    yield
    changed = []
    for phase in envoy_messages.ANSWERED_PHASES:
        shared = envoy_messages.continue_response(phase)
        expected = ext.ProcessingResponse()
        getattr(expected, phase).SetInParent()
        if shared != expected:
            changed.append(phase)
            shared.CopyFrom(expected)  # put back, so that only this test fails
    assert not changed, f"this test changed the shared continue answers of {changed}"


# The moment the usage-report tests' fixed dates (February to December 2026) are read at.
# By the real clock, their rollups count as expired store.usage_retention_days (400)
# after those dates, and every such report would say so and exit 1: the tests would start
# failing about a year after they were written, with no change to the code.
FIXED_DATES_READ_AT = datetime(2026, 12, 7, tzinfo=UTC)


class _ClockOfTheFixedDates(datetime):
    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
        return FIXED_DATES_READ_AT.astimezone(tz).replace(tzinfo=tz)


@pytest.fixture
def rollups_kept_at_fixed_dates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports, from the CLI or the management API, tell which hours have expired by the
    clock of the tests' fixed dates, not by the day the tests run. Only for tests whose
    usage is written at fixed dates: a test that writes at the real clock keeps it."""
    monkeypatch.setattr(retention, "datetime", _ClockOfTheFixedDates)


@pytest.fixture(autouse=True)
async def guard_sessions_closed(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Close the webhook and moderation sessions the test's runtimes opened. Most tests
    never close their runtime: the garbage collector found their sessions later, and its
    "Unclosed client session" error landed in the log records of whatever test ran then
    (one CI run failed on it). A closed holder opens a new session if used again."""
    opened: dict[SessionHolder, None] = {}
    get = SessionHolder.get

    def recording(holder: SessionHolder) -> aiohttp.ClientSession:
        opened[holder] = None
        return get(holder)

    monkeypatch.setattr(SessionHolder, "get", recording)
    yield
    for holder in opened:
        await holder.close()


class MemoryLog(AccessLog):
    """The access log, kept in memory so tests read the lines it wrote."""

    def __init__(self) -> None:
        super().__init__(stdout=False)
        self.buffer = io.BytesIO()

    def emit(self, line: bytes) -> None:
        self.buffer.write(line)

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.buffer.getvalue().splitlines()]


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """One real Valkey for the unit tests that need a store; each test flushes it first."""
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


# A test's few calls take well under this; one that starts closer to a minute's turn
# waits it out, so that its per-minute windows do not start afresh half-way through (a
# limit it filled would be empty again for its last call).
MINUTE_TURN_MARGIN_S = 3.0


async def _clear_of_a_minute_turn(store: QuotaStore) -> None:
    left = 60.0 - store.now() % 60.0
    if left < MINUTE_TURN_MARGIN_S:
        await asyncio.sleep(left + 0.05)


@pytest.fixture
async def quota_store(valkey: EmbeddedValkey) -> AsyncIterator[QuotaStore]:
    """A quota store on the shared Valkey, emptied first."""
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    store = QuotaStore(client, "test:")
    await store.start()
    await _clear_of_a_minute_turn(store)
    yield store
    await store.close()
    await client.aclose()


@pytest.fixture
def config() -> GatewayConfig:
    return load_config("config/gateway.yaml", environ={})


@pytest.fixture
def services() -> Services:
    return Services(metrics=GatewayMetrics(), access_log=MemoryLog())


@pytest.fixture
def processor(config: GatewayConfig, services: Services) -> Processor:
    return processor_for(config, services)
