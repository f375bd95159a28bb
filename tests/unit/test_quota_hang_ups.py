"""Many requests at once near a group's monthly quota, each client hanging up at another
phase (while its reservation is on its way to the store, while the provider works, after
the answer's status, mid-stream) or getting the provider's error or its whole answer.
Against a real Valkey, through the processor: afterwards the store's counters hold
exactly what the log lines charged, so no reservation leaked and none was given back
twice. The group's budget is overrun by no more than the docs allow: the estimates of
the requests admitted while something remained."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, response_body, response_headers
from tests.unit.conftest import MemoryLog

# Small enough that running requests fill it: a refused reservation first waits for the
# settlements this process has pending (test_quota_back_to_back.py), and with 5,000 the
# ended requests' settlements sometimes made room for every one.
BUDGET = 1500
CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8") + (
    f"""
quotas:
  rules:
    - {{name: team-month, subject: group, token_quota: {{limit: {BUDGET}, period: calendar_month}}}}
    - {{name: alice-day, subject: user, tokens_per_day: 1000000}}
    - {{name: key-minute, subject: api_key, requests_per_minute: 100000}}
"""
)
# 10 + 4 prompt tokens (40 characters, one message) and max_tokens 50: 64 reserved.
ESTIMATE = 64
# Where the client hangs up: after that many of its messages reached the gateway (the
# headers, the body, the answer's status, its first chunk), or never; a number of turns
# of the event loop later (``_client``), so the gateway may still be working on the last.
PHASES = (1, 2, 3, 4, None)


def _chunk(data: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _answer(stream: bool, status: int) -> list[ext.ProcessingRequest]:
    if status != 200:
        return [response_headers(status), response_body(b'{"error": {"message": "busy"}}')]
    usage = {"prompt_tokens": 14, "completion_tokens": 20, "total_tokens": 34}
    if not stream:
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello"},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        return [response_headers(200), response_body(orjson.dumps(answer))]
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    text = {"index": 0, "delta": {"content": "hello " * 8}, "finish_reason": None}
    end = {"index": 0, "delta": {}, "finish_reason": "stop"}
    return [
        response_headers(200, {"content-type": "text/event-stream"}),
        response_body(_chunk({**head, "choices": [text]}), False),
        response_body(_chunk({**head, "choices": [end]}), False),
        response_body(_chunk({**head, "choices": [], "usage": usage}) + b"data: [DONE]\n\n"),
    ]


async def _client(
    processor: Processor, stream: bool, status: int, hang_up: int | None, turns: int
) -> None:
    """One client of key team1 (user alice, group engineering), hanging up ``turns`` turns
    of the event loop after its ``hang_up``-th message reached the gateway."""
    body = {"model": "gpt-4o-mini", "max_tokens": 50, "stream": stream}
    body["messages"] = [{"role": "user", "content": "x" * 40}]
    messages = [
        request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
        request_body(orjson.dumps(body)),
        *_answer(stream, status),
    ]
    reached = asyncio.Event()

    async def envoy() -> AsyncIterator[ext.ProcessingRequest]:
        for sent, message in enumerate(messages):
            if sent == hang_up:
                await asyncio.Event().wait()  # the client is gone: nothing more comes
            if hang_up is not None and sent == hang_up - 1:
                reached.set()  # its last message: the gateway may still be on it
            yield message

    async def serve() -> None:
        async for answer in processor.process(envoy()):
            if answer.HasField("immediate_response"):
                reached.set()  # refused: nothing to hang up on

    task = asyncio.create_task(serve())
    if hang_up is None:
        await task
        return
    waiting = asyncio.create_task(reached.wait())
    await asyncio.wait([task, waiting], return_when="FIRST_COMPLETED")
    waiting.cancel()
    for _ in range(turns):
        # After its body: its reservation queued, on its way, or answered.
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_every_reservation_is_settled_or_given_back_whenever_the_client_leaves(
    quota_store: QuotaStore,
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(CONFIG, "gateway.yaml", {}), services)
    processor = Processor(lambda: runtime, default_stages())
    clients = [
        _client(processor, stream, status, hang_up, turns)
        for turns in (0, 1, 2, 3, 5, 8)
        for hang_up in PHASES
        for status in (200, 500, 200)
        for stream in (False, True)
    ]
    await asyncio.gather(*clients)
    await asyncio.sleep(0.1)  # give-backs of reservations that landed after their client left
    await quota_store.flush()

    lines = services.access_log.lines()
    assert len(lines) == len(clients)
    admitted = [line for line in lines if line.get("quota_decision") == "allowed"]
    refused = [line for line in lines if line.get("quota_decision") == "rejected"]
    assert admitted and refused  # the budget ran out
    charged = sum(line["total_tokens"] for line in admitted)
    month = f"cm:{datetime.now(UTC):%Y-%m}@UTC"
    client = quota_store._client  # the store's own counters, read directly
    group = await client.get(f"test:q:{{group:engineering}}:team-month:t:{month}")
    day = await client.keys("test:q:{user:alice}:alice-day:t:d:*")
    minute = await client.keys("test:q:{api_key:team1}:key-minute:r:m:*")
    assert int(group) == charged
    # Nothing runs any more: every request took off its budgets exactly what it held
    # (settled, given back while queued or abandoned, or charged at its estimate).
    assert await client.keys("test:q:*:held") == []
    assert [int(await client.get(key)) for key in day] == [charged]
    # Each admitted request counted once; one given back while queued or abandoned is not.
    assert sum([int(await client.get(key)) for key in minute]) == len(admitted)
    # Admitted while something remained, each holding its whole estimate.
    assert charged < BUDGET + ESTIMATE
