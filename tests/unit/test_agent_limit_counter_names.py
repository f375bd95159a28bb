"""A per-tool limit's counter never takes the name of a tool named with a key.

Bob (key ``team2-key``) calls tools on the MCP server ``tools`` under a per-tool limit.
A client whose settings were swapped sends its key, or another token pasted with it,
as the tool's name. The counter was named after the tool as sent (folded): the key
became a Valkey key name, read by anyone with access to the store (``SCAN``, a
``MONITOR``, a backup) and kept for the limit's window, and the request log's
``quota_rule`` named it on a refusal. Now such a tool is counted under
``[redacted]``; an ordinary tool keeps its counter's name. A tool name holding ``}``
(where a store key's subject ends) no longer makes ``extproc quota list`` show a
subject that is none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from valkey.asyncio import Valkey

from extproc.config import GatewayConfig
from extproc.management.quotas import QuotaAdmin
from extproc.quota.rules import RuleSet
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for
from tests.unit.conftest import MemoryLog
from tests.unit.test_agents_review import immediate, tool_call, with_limits

BOBS_KEY = "team2-key"
# An OpenAI project key's shape (random-looking, well past 32 characters after "sk-").
PASTED_TOKEN = "sk-proj-Zq4vW9x3Lm8Tn2Rb7Yc5Hd1Kf6Gs0Jp3Xw9Qe4Ua8Vt"
PER_TOOL = {"name": "each-tool", "subject": "api_key", "requests_per_day": 2}


@pytest.fixture
async def store_keys(valkey: EmbeddedValkey) -> AsyncIterator[Valkey]:
    client = connect(valkey.url, 2.0)
    yield client
    await client.aclose()


async def counter_names(client: Any) -> list[str]:
    """The names of the store's keys, as anyone with access to the store lists them."""
    return [key.decode() async for key in client.scan_iter(match="test:*")]


async def call(processor: Any, tool: str) -> Any:
    return immediate(await tool_call(processor, {"name": tool, "arguments": {}}))


@pytest.mark.parametrize("tool", [BOBS_KEY, f"lookup {BOBS_KEY}", PASTED_TOKEN])
async def test_a_tool_named_with_a_key_is_counted_but_its_name_is_no_store_key(
    config: GatewayConfig, quota_store: QuotaStore, store_keys: Valkey, tool: str
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    processor = processor_for(with_limits(config, PER_TOOL), services)
    assert await call(processor, tool) is None, "the call went on to the server"
    names = await counter_names(store_keys)
    assert names, "nothing was counted"
    for secret in (BOBS_KEY, PASTED_TOKEN, PASTED_TOKEN.lower()):
        assert not [name for name in names if secret in name]
    assert any(":agent:each-tool:[redacted]:" in name for name in names), names


async def test_tools_named_with_keys_share_one_counter_and_its_refusal_names_no_key(
    config: GatewayConfig, quota_store: QuotaStore
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    processor = processor_for(with_limits(config, PER_TOOL), services)
    assert await call(processor, BOBS_KEY) is None
    assert await call(processor, PASTED_TOKEN) is None
    refusal = await call(processor, f"{BOBS_KEY}2")
    assert refusal is not None and refusal[1]["error"]["code"] == -32029
    line = services.access_log.lines()[-1]  # type: ignore[attr-defined]
    assert line["quota_rule"] == "agent:each-tool:[redacted]"
    written = orjson.dumps(line).decode()
    assert BOBS_KEY not in written and PASTED_TOKEN not in written


async def test_an_ordinary_tool_keeps_its_counter_name(
    config: GatewayConfig, quota_store: QuotaStore, store_keys: Valkey
) -> None:
    # Existing counters keep counting across the upgrade: no new name for plain tools.
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    processor = processor_for(with_limits(config, PER_TOOL), services)
    for tool in ("Echo", "pk_lookup", "task-sk-notes"):
        assert await call(processor, tool) is None
    names = await counter_names(store_keys)
    for folded in ("echo", "pk_lookup", "task-sk-notes"):
        assert any(f":agent:each-tool:{folded}:" in name for name in names), names
    assert not any("[redacted]" in name for name in names)


async def test_a_tool_name_holding_a_brace_makes_no_subject_in_the_quota_listing(
    config: GatewayConfig, quota_store: QuotaStore, store_keys: Valkey
) -> None:
    # An LLM quota rule by key, per day, as the agent limit: a tool named "x}:llm-daily"
    # made its counter read, to `extproc quota list`, as the llm-daily counter of a
    # subject "team2}:agent:each-tool:x".
    limited = with_limits(config, PER_TOOL)
    quotas = limited.quotas.model_validate(
        {
            **limited.quotas.model_dump(mode="json"),
            "rules": [{"name": "llm-daily", "subject": "api_key", "requests_per_day": 100}],
        }
    )
    limited = limited.model_copy(update={"quotas": quotas})
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    processor = processor_for(limited, services)
    for _ in range(2):
        assert await call(processor, "x}:llm-daily") is None
    admin = QuotaAdmin(store_keys, "test:", quota_store)
    assert await admin.subjects(RuleSet(limited.quotas, {}), "api_key") == []
    # Still counted, under one counter of its own.
    names = await counter_names(store_keys)
    counted = [name for name in names if ":agent:each-tool:x%7D:llm-daily:" in name]
    assert len(counted) == 1, names
    assert int(await store_keys.get(counted[0])) == 2
