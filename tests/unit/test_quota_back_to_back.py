"""A client sending its requests one after another (a script, an agent loop) against a
token budget its own previous request filled with its reservation.

The previous request's settlement, which gives back what it reserved and did not use, is
batched for a few milliseconds after its answer. A request sent right after that answer
met the budget still full of it: a 429 "held by running requests, try again in 5 seconds"
though nothing of the client's was running, and the SDKs slept 5 s before each retry. Now
a reservation refused only for what running requests hold, of budgets whose holds this
process's own pending settlements take off, sends them at once (one batch) and is tried
once more; a request that truly runs still holds the budget as before.

Against a real Valkey, through the processor. The batch window is stretched
(``SETTLE_BATCH_S``) so that the previous answer's settlement is still pending when the
next request reserves, however slow the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota import store as quota_store_module
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.scripts import script_source
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.conftest import MemoryLog
from tests.unit.test_quota_held import Call, _answer, counted

GATEWAY = Path("config/gateway.yaml").read_text(encoding="utf-8")
GATEWAY = GATEWAY.replace("\nstore:\n", "\nstore:\n  timeout_ms: 4000\n", 1)
BUDGET = 20_000
LONG = 32_000  # Claude Code's max_tokens: one request's estimate fills the budget
ESTIMATE = 6 + LONG


def _rules(budget: int = BUDGET, extra: str = "") -> str:
    """Group engineering's monthly budget (key team1's group), with ``extra`` settings."""
    quota = f"{{limit: {budget}, period: calendar_month}}"
    return f"""
quotas:
  rules:
    - {{name: team-month, subject: group, token_quota: {quota}{extra}}}
"""


@pytest.fixture(autouse=True)
def slow_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settlements wait far longer than the next request takes to reserve."""
    monkeypatch.setattr(quota_store_module, "SETTLE_BATCH_S", 1.0)


def _processor(store: QuotaStore, quotas: str) -> tuple[Processor, Services]:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    runtime = Runtime(parse_config(GATEWAY + quotas, "gateway.yaml", {}), services)
    return Processor(lambda: runtime, default_stages()), services


async def _scripts_run(store: QuotaStore) -> int:
    """How many script calls the store has run (reservations and settlement batches)."""
    stats = await store._client.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


def _error(call: Call) -> dict[str, str]:
    assert call.refusal is not None
    return dict(orjson.loads(call.refusal.body)["error"])


async def test_the_next_request_right_after_an_answer_is_not_held_by_it(
    quota_store: QuotaStore,
) -> None:
    processor, services = _processor(quota_store, _rules())
    first = Call(processor, LONG)
    assert await first.admitted()
    await first.finish(_answer(1000))  # its settlement (31,006 back) is still in its batch

    second = Call(processor, LONG)
    assert await second.admitted(), _error(second)
    # The first request's settlement landed before the second reserved, once.
    assert await counted(quota_store) == (1000 + ESTIMATE, ESTIMATE)
    await second.finish(_answer(2000))
    await quota_store.flush()
    assert await counted(quota_store) == (3000, None)
    decisions = [line["quota_decision"] for line in services.access_log.lines()]
    assert decisions == ["allowed", "allowed"]


async def test_a_hard_capped_budget_its_previous_answer_filled_admits_the_next_request(
    quota_store: QuotaStore,
) -> None:
    """A hard cap reserves what remains, so one request fills the budget to the token."""
    processor, _ = _processor(quota_store, _rules(1000, ", hard_cap: true"))
    first = Call(processor, 2000)
    assert await first.admitted()
    assert await counted(quota_store) == (1000, 1000)
    await first.finish(_answer(100))

    second = Call(processor, 500)
    assert await second.admitted(), _error(second)
    assert await counted(quota_store) == (100 + 506, 506)


async def test_a_hard_capped_budget_left_too_short_for_the_prompt_admits_the_next_request(
    quota_store: QuotaStore,
) -> None:
    """The first request left 4 tokens: the store admits the second, and the hard cap would
    refuse it (6 prompt tokens), though the first one's settlement gives back 896."""
    processor, services = _processor(quota_store, _rules(1000, ", hard_cap: true"))
    first = Call(processor, 990)
    assert await first.admitted()
    await first.finish(_answer(100))

    second = Call(processor, 500)
    assert await second.admitted(), _error(second)
    # The 4 tokens it first got were given back with the settlement it waited for.
    assert await counted(quota_store) == (100 + 506, 506)
    await second.finish(_answer(50))
    await quota_store.flush()
    assert await counted(quota_store) == (150, None)
    assert [line["quota_decision"] for line in services.access_log.lines()] == ["allowed"] * 2


async def test_the_next_request_after_the_answer_that_spent_the_budget_is_told_so(
    quota_store: QuotaStore,
) -> None:
    """The previous answer used the whole budget: the next request is refused as spent
    until the month ends, not told to retry in 5 seconds only to meet that refusal then."""
    processor, _ = _processor(quota_store, _rules())
    first = Call(processor, LONG)
    assert await first.admitted()
    await first.finish(_answer(BUDGET))

    refused = Call(processor, LONG)
    assert not await refused.admitted()
    error = _error(refused)
    assert error["message"].startswith("Rate limit reached for group 'engineering'")
    assert f"{BUDGET} used; it resets at" in error["message"]
    assert refused.refusal is not None
    headers = {
        h.header.key: h.header.raw_value.decode() for h in refused.refusal.headers.set_headers
    }
    assert headers["x-should-retry"] == "false"
    assert await counted(quota_store) == (BUDGET, None)


async def test_a_request_still_running_holds_the_budget_as_before(
    quota_store: QuotaStore,
) -> None:
    """Nothing of this process is settling: the refusal costs its one round trip, as ever."""
    processor, _ = _processor(quota_store, _rules())
    running = Call(processor, LONG)
    assert await running.admitted()

    before = await _scripts_run(quota_store)
    refused = Call(processor, LONG)
    assert not await refused.admitted()
    assert await _scripts_run(quota_store) == before + 1
    assert "held by running requests" in _error(refused)["message"]
    assert await counted(quota_store) == (ESTIMATE, ESTIMATE)
    await running.hang_up()


async def test_a_finished_request_does_not_free_what_a_running_one_holds(
    quota_store: QuotaStore,
) -> None:
    """One request ended, another runs and fills the budget by itself: the ended one's
    settlement goes out at once, the reservation is tried once more, and refused."""
    processor, services = _processor(quota_store, _rules())
    ended = Call(processor, 1000)
    running = Call(processor, LONG)
    assert await ended.admitted() and await running.admitted()
    await ended.finish(_answer(500))

    before = await _scripts_run(quota_store)
    refused = Call(processor, LONG)
    assert not await refused.admitted()
    # Its reservation, the settlement batch, and its one retry.
    assert await _scripts_run(quota_store) == before + 3
    error = _error(refused)
    assert "held by running requests" in error["message"]
    assert (
        f"500 used, and requests still running hold the rest ({ESTIMATE} tokens"
        in (error["message"])
    )
    assert await counted(quota_store) == (500 + ESTIMATE, ESTIMATE)
    await running.hang_up()
    decisions = [line["quota_decision"] for line in services.access_log.lines()]
    assert decisions.count("rejected") == 1


class SettlementCutter:
    """A TCP relay in front of the store that goes down as the first settlement batch is
    sent to it: that connection is cut, and no connection is taken after it."""

    def __init__(self, target_port: int, settle_sha: str) -> None:
        self._target_port = target_port
        self._settle_sha = settle_sha.encode()
        self._server: asyncio.Server | None = None
        self._ends: list[asyncio.StreamWriter] = []
        self._relays: set[asyncio.Task[None]] = set()
        self.down = False

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for end in self._ends:
            end.close()
        await asyncio.gather(*self._relays, return_exceptions=True)
        if self._server is not None and self._server.is_serving():
            self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        store_reader, store_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._ends += [writer, store_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, asks: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if asks and self._settle_sha in data:
                        self._go_down()
                        break
                    dst.write(data)
                    await dst.drain()
            for end in (writer, store_writer):
                end.close()

        await asyncio.gather(pipe(reader, store_writer, True), pipe(store_reader, writer, False))

    def _go_down(self) -> None:
        self.down = True
        if self._server is not None:
            self._server.close()  # new connections are refused from now on
        for end in self._ends:
            end.close()


@pytest.fixture
async def cut_store(valkey: EmbeddedValkey) -> AsyncIterator[tuple[QuotaStore, SettlementCutter]]:
    direct = connect(valkey.url, 2.0)
    await direct.flushdb()
    await direct.aclose()
    # What EVALSHA names the settlement script by.
    settle = hashlib.sha1(script_source("quota_settle").encode(), usedforsecurity=False)
    cutter = SettlementCutter(int(valkey.url.rsplit(":", 1)[1].split("/")[0]), settle.hexdigest())
    client = connect(f"redis://127.0.0.1:{await cutter.start()}/0", 2.0)
    store = QuotaStore(client, "test:")
    await store.start()
    yield store, cutter
    await cutter.close()
    await store.close()
    await client.aclose()


@pytest.mark.parametrize(
    ("on_store_failure", "status"), [("fail_closed", 503), ("fail_open", None)]
)
async def test_the_store_going_down_as_the_settlement_goes_out_fails_as_the_rule_says(
    cut_store: tuple[QuotaStore, SettlementCutter], on_store_failure: str, status: int | None
) -> None:
    store, cutter = cut_store
    extra = f", on_store_failure: {on_store_failure}"
    processor, services = _processor(store, _rules(extra=extra))
    first = Call(processor, LONG)
    assert await first.admitted()
    await first.finish(_answer(1000))

    second = Call(processor, LONG)
    admitted = await second.admitted()
    assert cutter.down
    if status is None:
        assert admitted  # let through uncounted, as any request meeting the outage
        await second.finish(_answer(10))
    else:
        assert second.refusal is not None and second.refusal.status.code == status
        # In the client's API's shape (Anthropic's: no OpenAI `code`).
        assert "quota store is unavailable" in _error(second)["message"]
        await second.finish([])
    decisions = [line["quota_decision"] for line in services.access_log.lines()]
    assert decisions[-1] == ("failed_open" if status is None else "unavailable")


async def test_requests_refused_at_once_wait_for_one_batch_that_counts_once(
    quota_store: QuotaStore,
) -> None:
    """Two requests meet the previous answer's settlement pending: one batch goes out, both
    wait for it, and it is counted once."""
    processor, services = _processor(quota_store, _rules())
    first = Call(processor, LONG)
    assert await first.admitted()
    await first.finish(_answer(1000))

    before = await _scripts_run(quota_store)
    both = [Call(processor, 5000), Call(processor, 5000)]
    assert [await call.admitted() for call in both] == [True, True]
    # Two refused reservations, one settlement batch, two retries.
    assert await _scripts_run(quota_store) == before + 5
    assert await counted(quota_store) == (1000 + 2 * 5006, 2 * 5006)
    for call in both:
        await call.finish(_answer(300))
    await quota_store.flush()
    assert await counted(quota_store) == (1600, None)
    decisions = [line["quota_decision"] for line in services.access_log.lines()]
    assert decisions == ["allowed"] * 3


async def test_the_next_request_served_by_another_worker_is_not_held_either(
    quota_store: QuotaStore, valkey: EmbeddedValkey
) -> None:
    """With `serve --workers N` (or replicas) the client's next request usually reaches
    another process, which has nothing of the previous answer's settlement to send: that
    settlement, its reservation having left the budget too short for another request like
    it, goes out at once rather than with its batch."""
    processor, _ = _processor(quota_store, _rules())
    client = connect(valkey.url, 2.0)
    other_store = QuotaStore(client, "test:")
    await other_store.start()
    try:
        other, _ = _processor(other_store, _rules())
        first = Call(processor, LONG)
        assert await first.admitted()
        await first.finish(_answer(1000))

        second = Call(other, LONG)
        assert await second.admitted(), _error(second)
        assert await counted(quota_store) == (1000 + ESTIMATE, ESTIMATE)
        await second.hang_up()
    finally:
        await other_store.close()
        await client.aclose()


async def test_closing_sends_the_queued_settlement_without_waiting_out_its_batch(
    valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway stopping with an answer's settlement queued writes it at once: before,
    the stop waited out the batch's timer (20 ms in production, here an hour)."""
    monkeypatch.setattr(quota_store_module, "SETTLE_BATCH_S", 3600.0)
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    store = QuotaStore(client, "test:")
    await store.start()
    try:
        processor, _ = _processor(store, _rules())
        call = Call(processor, LONG)
        assert await call.admitted()
        await call.finish(_answer(1000))
        assert await counted(store) == (ESTIMATE, ESTIMATE), "the control: still queued"
        # A bound for a hang, not a speed: the batch's timer would hold close() an hour.
        await asyncio.wait_for(store.close(), 60)
        assert await counted(store) == (1000, None)
    finally:
        await client.aclose()
