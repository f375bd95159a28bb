"""Token budgets that running requests hold. Four Claude Code requests (`max_tokens:
32000` each) reserve 128,020 tokens of a group's 100,000-token monthly quota before using
any. The group's next request used to get a 429 saying "128020 used", `retry-after` at the
end of the month and `x-should-retry: false`, so SDKs gave up, though it would pass as soon
as one of the four settled; and `aigw_quota_used` counted the reservations, so the "quota
exhausted" alert could fire while long requests ran. Now the store keeps what running
requests hold beside each counter: such a refusal is a short, retryable wait, a spent budget
still refuses until its window resets, and the gauges tell used from reserved.

Against a real Valkey, through the processor, with the store's own keys read directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from prometheus_client.core import Metric

from extproc.config.loader import parse_config
from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import HELD_RETRY_AFTER_S
from extproc.management.quotas import QuotaAdmin
from extproc.processor import Processor
from extproc.quota.rules import RuleSet
from extproc.quota.store import QuotaStore, Reservation
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.telemetry.quota_gauges import QuotaGauges
from extproc.testing import request_body, request_headers, response_body, response_headers
from tests.unit.conftest import MemoryLog

BUDGET = 100_000
# A store timeout far above a loaded machine's round trip: a reservation that timed out
# would fail closed (503), which is not what these tests are about.
GATEWAY = Path("config/gateway.yaml").read_text(encoding="utf-8")
CONFIG = GATEWAY.replace("\nstore:\n", "\nstore:\n  timeout_ms: 4000\n", 1) + (
    f"""
quotas:
  rules:
    - {{name: team-month, subject: group, token_quota: {{limit: {BUDGET}, period: calendar_month}}}}
    - {{name: key-minute, subject: api_key, requests_per_minute: 100000}}
"""
)
CLAUDE = "claude-3-5-haiku-latest"
# One message of 8 characters: 2 tokens and 4 of overhead, plus the allowance.
PROMPT = [{"role": "user", "content": "refactor"}]
LONG = 32_000
ESTIMATE = 6 + LONG


def _month() -> str:
    return f"cm:{datetime.now(UTC):%Y-%m}@UTC"


def counter_key() -> str:
    return f"test:q:{{group:engineering}}:team-month:t:{_month()}"


def held_key() -> str:
    return counter_key() + ":held"


async def counted(store: QuotaStore) -> tuple[int, int | None]:
    """The group's monthly counter and its held amount (None: no such key)."""
    client = store._client
    counter, held = await client.get(counter_key()), await client.get(held_key())
    return int(counter or 0), None if held is None else int(held)


def _answer(tokens: int) -> list[ext.ProcessingRequest]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [{"type": "text", "text": "done"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 6, "output_tokens": tokens - 6},
    }
    return [response_headers(200), response_body(orjson.dumps(message))]


def _provider_error() -> list[ext.ProcessingRequest]:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    return [response_headers(529), response_body(orjson.dumps(error))]


class Call:
    """One Anthropic Messages request of key team1 (group engineering), left running after
    its body until the test answers it or hangs it up."""

    def __init__(
        self, processor: Processor, max_tokens: int = LONG, text: str = PROMPT[0]["content"]
    ) -> None:
        self.answers: list[ext.ProcessingResponse] = []
        self.decided = asyncio.Event()
        self._next: asyncio.Queue[list[ext.ProcessingRequest] | None] = asyncio.Queue()
        messages = [{"role": "user", "content": text}]
        body = {"model": CLAUDE, "max_tokens": max_tokens, "messages": messages}
        self._task = asyncio.create_task(self._serve(processor, orjson.dumps(body)))

    async def _messages(self, body: bytes) -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers("/v1/messages", headers={"x-api-key": "team1-key"})
        yield request_body(body)
        rest = await self._next.get()
        if rest is None:
            await asyncio.Event().wait()  # the client is gone: nothing more comes
        for message in rest or []:
            yield message

    async def _serve(self, processor: Processor, body: bytes) -> None:
        async for answer in processor.process(self._messages(body)):
            self.answers.append(answer)
            if len(self.answers) == 2 or answer.HasField("immediate_response"):
                self.decided.set()
        self.decided.set()

    async def admitted(self) -> bool:
        await self.decided.wait()
        return not self.refusal

    @property
    def refusal(self) -> ext.ImmediateResponse | None:
        last = self.answers[-1]
        return last.immediate_response if last.HasField("immediate_response") else None

    async def finish(self, messages: list[ext.ProcessingRequest]) -> None:
        self._next.put_nowait(messages)
        await self._task

    async def hang_up(self) -> None:
        """The client leaves while the provider works on its request."""
        self._next.put_nowait(None)
        for _ in range(3):
            await asyncio.sleep(0)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _headers(refusal: ext.ImmediateResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in refusal.headers.set_headers}


def _rules() -> RuleSet:
    services = Services(GatewayMetrics(), MemoryLog())
    return Runtime(parse_config(CONFIG, "gateway.yaml", {}), services).quota_rules


def _processor(store: QuotaStore, config: str = CONFIG) -> tuple[Processor, Services]:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    runtime = Runtime(parse_config(config, "gateway.yaml", {}), services)
    return Processor(lambda: runtime, default_stages()), services


async def _running(processor: Processor, count: int, max_tokens: int = LONG) -> list[Call]:
    calls = []
    for _ in range(count):
        call = Call(processor, max_tokens)
        assert await call.admitted()
        calls.append(call)
    return calls


async def test_a_budget_running_requests_hold_asks_the_next_request_to_retry_shortly(
    quota_store: QuotaStore,
) -> None:
    processor, services = _processor(quota_store)
    running = await _running(processor, 4)
    assert await counted(quota_store) == (4 * ESTIMATE, 4 * ESTIMATE)

    fifth = Call(processor)
    assert not await fifth.admitted()
    refusal = fifth.refusal
    assert refusal is not None and refusal.status.code == 429
    # Anthropic's error shape (the client's API): OpenAI clients get rate_limit_exceeded.
    error = orjson.loads(refusal.body)["error"]
    assert error["type"] == "rate_limit_error"
    assert "held by running requests" in error["message"]
    assert "0 used" in error["message"] and f"{4 * ESTIMATE} tokens reserved" in error["message"]
    headers = _headers(refusal)
    # A short wait the SDKs sit out and retry on their own, not the month's end.
    assert 1 <= int(headers["retry-after"]) <= HELD_RETRY_AFTER_S
    assert "x-should-retry" not in headers
    assert headers["x-ratelimit-remaining-tokens"] == "0"

    # One of the four ends, having used 1,000 tokens of its 32,006: the next one passes.
    await running.pop().finish(_answer(1000))
    await quota_store.flush()
    assert await counted(quota_store) == (3 * ESTIMATE + 1000, 3 * ESTIMATE)
    running += await _running(processor, 1)

    for call in running:
        await call.finish(_answer(2000))
    await quota_store.flush()
    # Nothing runs: nothing is held, and the counter is what the answers used.
    assert await counted(quota_store) == (1000 + 4 * 2000, None)
    decisions = [line["quota_decision"] for line in services.access_log.lines()]
    assert decisions.count("rejected") == 1 and decisions.count("allowed") == 5


async def test_a_spent_budget_still_refuses_until_the_period_ends(
    quota_store: QuotaStore,
) -> None:
    """What the settled requests used fills the budget: waiting seconds cannot help, and the
    refusal stays as it was, running requests or not."""
    processor, _ = _processor(quota_store)
    [first] = await _running(processor, 1)
    await first.finish(_answer(BUDGET - 300))
    # Three requests of 106 tokens each (max_tokens 100) admitted while 300 remained.
    ending, *holding = await _running(processor, 3, 100)
    await ending.finish(_answer(400))  # over its estimate: the budget is spent
    await quota_store.flush()
    assert await counted(quota_store) == (BUDGET + 100 + 2 * 106, 2 * 106)

    refused = Call(processor)
    assert not await refused.admitted()
    assert refused.refusal is not None
    error = orjson.loads(refused.refusal.body)["error"]
    assert error["message"].startswith("Rate limit reached for group 'engineering'")
    # Used as `extproc quota get` tells it, and apart what the two still running hold.
    assert (
        f"{BUDGET + 100} used and {2 * 106} held by running requests; it resets at"
        in error["message"]
    )
    headers = _headers(refused.refusal)
    assert int(headers["retry-after"]) > 60 and headers["x-should-retry"] == "false"
    for call in holding:
        await call.finish(_answer(50))
    await quota_store.flush()
    assert await counted(quota_store) == (BUDGET + 200, None)


async def test_the_longest_wait_of_several_refusing_limits_is_named(
    quota_store: QuotaStore,
) -> None:
    """A key's spent daily budget and the group's monthly quota its requests hold: the
    request passes only when both would take it, so the 429 names the day's end."""
    config = CONFIG + "    - {name: key-day, subject: api_key, tokens_per_day: 40000}\n"
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(config, "gateway.yaml", {}), services)
    processor = Processor(lambda: runtime, default_stages())
    [first] = await _running(processor, 1)
    await first.finish(_answer(40_000))  # the day's budget spent
    await quota_store.flush()
    await quota_store._client.set(counter_key(), 40_000 + 3 * ESTIMATE, keepttl=True)
    await quota_store._client.set(held_key(), 3 * ESTIMATE)  # and the month held by others
    refused = Call(processor)
    assert not await refused.admitted()
    assert refused.refusal is not None
    error = orjson.loads(refused.refusal.body)["error"]
    assert "rule 'key-day'" in error["message"]
    assert int(_headers(refused.refusal)["retry-after"]) > HELD_RETRY_AFTER_S


@pytest.mark.parametrize(
    ("ending", "charged"),
    [
        ("answered", 700),
        ("provider error", 0),  # given back: nothing was produced
        ("hang-up", ESTIMATE),  # the provider bills it all the same: the estimate
    ],
)
async def test_every_ending_takes_off_exactly_what_the_request_held(
    quota_store: QuotaStore, ending: str, charged: int
) -> None:
    processor, _ = _processor(quota_store)
    other, call = await _running(processor, 2)
    assert await counted(quota_store) == (2 * ESTIMATE, 2 * ESTIMATE)
    if ending == "answered":
        await call.finish(_answer(700))
    elif ending == "provider error":
        await call.finish(_provider_error())
    else:
        await call.hang_up()
    await quota_store.flush()
    # The other request still holds its own reservation, to the token.
    assert await counted(quota_store) == (ESTIMATE + charged, ESTIMATE)
    await other.finish(_answer(300))
    await quota_store.flush()
    assert await counted(quota_store) == (charged + 300, None)


async def test_many_requests_at_once_leave_nothing_held_once_all_have_ended(
    quota_store: QuotaStore,
) -> None:
    processor, services = _processor(quota_store)
    calls = [Call(processor, 1000) for _ in range(60)]
    admitted = [call for call in calls if await call.admitted()]
    assert len(admitted) == len(calls)  # 60 x 1,006 fits in the budget
    assert await counted(quota_store) == (60 * 1006, 60 * 1006)
    endings = []
    for index, call in enumerate(calls):
        if index % 3 == 0:
            endings.append(call.finish(_answer(100)))
        elif index % 3 == 1:
            endings.append(call.finish(_provider_error()))
        else:
            endings.append(call.hang_up())
    await asyncio.gather(*endings)
    await quota_store.flush()
    charged = sum(line["total_tokens"] for line in services.access_log.lines())
    assert await counted(quota_store) == (charged, None)
    assert charged == 20 * 100 + 20 * 1006


async def test_a_reset_with_requests_running_drops_what_they_held(
    quota_store: QuotaStore,
) -> None:
    processor, _ = _processor(quota_store)
    rules = _rules()
    admin = QuotaAdmin(quota_store._client, "test:", quota_store)
    before = await _running(processor, 3)
    limits = admin.select(admin.limits(rules, "group", "engineering"), "team-month", "")
    await admin.reset(limits)
    assert await counted(quota_store) == (0, None)
    [after] = await _running(processor, 1)
    for call in before:
        await call.finish(_answer(5000))
    await quota_store.flush()
    # Their corrections went with the reset; the request admitted since still holds its own.
    assert await counted(quota_store) == (ESTIMATE, ESTIMATE)
    await after.finish(_answer(5000))
    await quota_store.flush()
    assert await counted(quota_store) == (5000, None)


async def test_a_counter_an_older_gateway_wrote_is_read_as_holding_nothing(
    quota_store: QuotaStore,
) -> None:
    """A counter of a version before held amounts (its reservations and settlements in one
    number, no held key): read as settled usage, as that version read it; a request of this
    version holds only its own, and settles back to it."""
    await quota_store._client.set(counter_key(), BUDGET - 1000, ex=3600)
    processor, _ = _processor(quota_store)
    [call] = await _running(processor, 1)
    assert await counted(quota_store) == (BUDGET - 1000 + ESTIMATE, ESTIMATE)
    refused = Call(processor)
    assert not await refused.admitted()
    assert refused.refusal is not None
    error = orjson.loads(refused.refusal.body)["error"]
    assert "held by running requests" in error["message"]
    await call.finish(_answer(500))
    await quota_store.flush()
    assert await counted(quota_store) == (BUDGET - 500, None)
    # At the limit with nothing held: spent, refused until the month ends.
    await quota_store._client.set(counter_key(), BUDGET, keepttl=True)
    spent = Call(processor)
    assert not await spent.admitted() and spent.refusal is not None
    assert _headers(spent.refusal)["x-should-retry"] == "false"


async def test_an_older_gateways_spooled_settlement_leaves_the_held_amount_alone(
    quota_store: QuotaStore,
) -> None:
    """A settlement an older version spooled (its reservation held nothing) and replayed by
    this one corrects the counter and takes nothing off what running requests hold; one
    this version spooled does, and an older version's replay of it reads what it knows."""
    processor, _ = _processor(quota_store)
    [running] = await _running(processor, 1)
    await quota_store._client.incrby(counter_key(), 40_000)  # the older gateway's reservation
    rules = _rules()
    [limit] = [
        limit
        for limit in rules.limits_for_subject("group", "engineering", quota_store.now())
        if limit.kind == "t"
    ]
    old = [
        limit.subject_tag,
        counter_key(),
        -39_000,
        3600,
        limit.overrides_key("test:"),
        f"{limit.override_field}:resets",
        0,
    ]
    await quota_store._apply_spooled({"id": "older-batch", "changes": [old]})
    assert await counted(quota_store) == (ESTIMATE + 1000, ESTIMATE)
    await running.finish(_answer(2000))
    await quota_store.flush()
    assert await counted(quota_store) == (3000, None)


async def test_a_lost_answers_give_back_ends_its_hold(quota_store: QuotaStore) -> None:
    """A reservation whose answer never came back is given back by its id: its counter and
    its held amount, once, beside a request still running."""
    processor, _ = _processor(quota_store)
    [running] = await _running(processor, 1)
    rules = _rules()
    limits = rules.limits_for_subject("group", "engineering", quota_store.now())
    call = quota_store._reserve_call(limits, 5000, "lost-call")
    [answer] = await quota_store._run_reserve([call])
    assert int(answer[0]) == 1
    assert await counted(quota_store) == (ESTIMATE + 5000, ESTIMATE + 5000)
    quota_store._queue_undos([call])
    quota_store._queue_undos([call])  # sent twice: given back once
    await quota_store.flush()
    assert await counted(quota_store) == (ESTIMATE, ESTIMATE)
    await running.finish(_answer(10))
    await quota_store.flush()
    assert await counted(quota_store) == (10, None)


def _gauge(metrics: list[Metric], name: str) -> float:
    [value] = [
        sample.value
        for metric in metrics
        for sample in metric.samples
        if sample.name == name and sample.labels["rule"] == "team-month"
    ]
    return value


async def test_the_gauges_tell_used_from_reserved(quota_store: QuotaStore) -> None:
    processor, _ = _processor(quota_store)
    running = await _running(processor, 4)
    rules = _rules()
    await quota_store._client.zadd("test:qa", {"group\x1fengineering": quota_store.now()})
    gauges = QuotaGauges(
        quota_store._client,
        "test:",
        lambda: rules,
        quota_store.now,
        QuotaGaugesConfig(),
    )
    await gauges.refresh()
    found = list(gauges.collect())
    # Nothing spent yet: the alert on aigw_quota_used stays quiet while they run.
    assert _gauge(found, "aigw_quota_used") == 0
    assert _gauge(found, "aigw_quota_reserved") == 4 * ESTIMATE
    assert _gauge(found, "aigw_quota_remaining") == 0
    for call in running:
        await call.finish(_answer(20_000))
    await quota_store.flush()
    await gauges.refresh()
    found = list(gauges.collect())
    assert _gauge(found, "aigw_quota_used") == 80_000
    assert _gauge(found, "aigw_quota_reserved") == 0
    assert _gauge(found, "aigw_quota_remaining") == 20_000


async def test_a_spooled_settlement_replayed_later_ends_its_hold_once(
    quota_store: QuotaStore,
) -> None:
    """A settlement the store could not take goes to the spool as JSON, what its request
    held last in each change (where a version before held amounts reads none), and,
    replayed twice, takes the hold off once."""
    processor, _ = _processor(quota_store)
    [other] = await _running(processor, 1)
    limits = _rules().limits_for_subject("group", "engineering", quota_store.now())
    reservation = await quota_store.reserve(limits, 5000)
    assert isinstance(reservation, Reservation)
    [(limit, generation, holding)] = [
        (limit, generation, holding)
        for limit, generation, holding in zip(
            limits, reservation.generations, reservation.holding, strict=True
        )
        if limit.kind == "t"
    ]
    assert holding == 5000
    changes = quota_store._raw([(limit, 700 - holding, generation, holding)])
    record = orjson.loads(orjson.dumps({"id": "spooled-batch", "changes": changes}))
    assert len(record["changes"][0]) == 8  # the seven fields as before, then the hold
    await quota_store._apply_spooled(record)
    await quota_store._apply_spooled(record)
    assert await counted(quota_store) == (ESTIMATE + 700, ESTIMATE)
    await other.finish(_answer(300))
    await quota_store.flush()
    assert await counted(quota_store) == (1000, None)
