"""A reset generation written by hand is read one way by every quota script.

The reset script bumps a limit's generation with ``HINCRBY`` and so refused anything but
digits; the reserve script read it with Lua's ``tonumber``. A generation of ``1.5`` (a
person's ``HSET``) admitted requests with generation 1 (Redis truncates the number a
script returns), and their settlements, compared with 1.5, were all dropped: every
request stayed charged its whole estimate (``max_tokens`` whole) and held it for an hour,
while ``extproc quota get`` showed nothing wrong and ``quota reset`` refused. ``007``
passed the reset script's check, then failed its ``HINCRBY`` after the counters before
it were deleted. Now the reserve script, the reset script and ``quota get`` read a
generation as ``HINCRBY`` does, up to 2^53 - 1: one that is no such integer is the same
unreadable key to all three (the subject's requests meet it as a store failure, as an
override that is no integer).

Against a real Valkey, through the processor.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from redis.exceptions import ResponseError

from extproc.config.loader import parse_config
from extproc.management.quotas import QuotaAdmin, UnreadableStateError
from extproc.processor import Processor
from extproc.quota.rules import Limit
from extproc.quota.store import QuotaStore, generation_field
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog

CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8") + (
    """
quotas:
  rules:
    - {name: key-day, subject: api_key, tokens_per_day: 100000}
"""
)
# Estimated at 506 tokens (10 characters, 4 of overhead, max_tokens 500); answered with 10.
BODY = {
    "model": "gpt-4o-mini",
    "max_tokens": 500,
    "messages": [{"role": "user", "content": "x" * 10}],
}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


def _runtime(store: QuotaStore) -> Runtime:
    return Runtime(
        parse_config(CONFIG, "gateway.yaml", {}),
        Services(GatewayMetrics(), MemoryLog(), quota_store=store),
    )


def _limit(runtime: Runtime, store: QuotaStore) -> Limit:
    [limit] = runtime.quota_rules.limits_for_subject("api_key", "team1", store.now())
    return limit


async def _ask(runtime: Runtime) -> int:
    """The status key team1's request gets (200: answered with 10 tokens used)."""
    answers = await run_stream(
        Processor(lambda: runtime, default_stages()),
        [
            request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
            request_body(orjson.dumps(BODY)),
            response_headers(200),
            response_body(orjson.dumps(ANSWER)),
        ],
    )
    last = answers[-1]
    return last.immediate_response.status.code if last.HasField("immediate_response") else 200


async def _used(store: QuotaStore, limit: Limit) -> int:
    await store.flush()
    return int(await store._client.get(limit.key("test:")) or 0)


@pytest.mark.parametrize("spelling", ["1.5", "5e0", " 7 ", "0x7", "007", "-0", "inf", "1e19"])
async def test_a_generation_no_script_can_bump_fails_the_request_instead_of_its_settlement(
    quota_store: QuotaStore, spelling: str
) -> None:
    runtime = _runtime(quota_store)
    limit = _limit(runtime, quota_store)
    client = quota_store._client
    await client.hset(limit.overrides_key("test:"), generation_field(limit), spelling)

    # Before: admitted (200), and with 1.5, inf or 1e19 its settlement dropped by the
    # store: the counter kept the whole estimate (506) of a request that used 10 tokens,
    # and held it. Now a store failure, as an
    # override that is no integer: quotas.on_store_failure (fail_closed here) decides.
    assert await _ask(runtime) == 503
    assert await _used(quota_store, limit) == 0

    # The operator's tools name the same key as unreadable, and reset nothing.
    admin = QuotaAdmin(client, "test:", quota_store)
    with pytest.raises(UnreadableStateError, match="resets' holds no integer"):
        await admin.read([limit])
    await client.set(limit.key("test:"), 42, ex=3600)
    with pytest.raises(ResponseError, match="BADOVERRIDE"):
        await admin.reset([limit])
    assert await _used(quota_store, limit) == 42
    assert await client.hget(limit.overrides_key("test:"), generation_field(limit)) == (
        spelling.encode()
    )


@pytest.mark.parametrize("spelling", ["0", "7", "-3", "9007199254740991"])
async def test_a_generation_hincrby_wrote_is_read_alike_by_every_script(
    quota_store: QuotaStore, spelling: str
) -> None:
    runtime = _runtime(quota_store)
    limit = _limit(runtime, quota_store)
    client = quota_store._client
    await client.hset(limit.overrides_key("test:"), generation_field(limit), spelling)

    assert await _ask(runtime) == 200
    assert await _used(quota_store, limit) == 10  # settled at the provider's count

    admin = QuotaAdmin(client, "test:", quota_store)
    [state] = await admin.read([limit])
    assert state.used == 10
    await admin.reset([limit])
    assert await _used(quota_store, limit) == 0
    bumped = await client.hget(limit.overrides_key("test:"), generation_field(limit))
    assert bumped == str(int(spelling) + 1).encode()
