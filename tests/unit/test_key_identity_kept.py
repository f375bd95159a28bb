"""A key's identity is made once per key record: shared by its requests, new with a new one."""

from __future__ import annotations

import orjson

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


async def caller_of(config_text: str) -> tuple[str, str]:
    """The user and group the log line of one request with team1's key names."""
    log = MemoryLog()
    processor = processor_for(
        parse_config(config_text, "gateway.yaml", {}), Services(GatewayMetrics(), log)
    )
    headers = {"authorization": "Bearer team1-key"}
    await run_stream(processor, [request_headers("/v1/chat/completions", headers=headers),
                                 request_body(BODY)])  # fmt: skip
    [line] = log.lines()
    return line["user_id"], line["group_id"]


async def test_a_key_moved_to_another_user_names_that_user_from_the_next_config_on() -> None:
    text = DEFAULT_CONFIG.read_text()
    assert await caller_of(text) == ("alice", "engineering")
    assert await caller_of(text) == ("alice", "engineering")
    # The same key id in a reloaded config, now another user's in another group.
    moved = text.replace(
        "user_id: alice\n      group_id: engineering", "user_id: carol\n      group_id: finance", 1
    )
    assert moved != text
    assert await caller_of(moved) == ("carol", "finance")
    assert await caller_of(text) == ("alice", "engineering")
