"""How long a client is asked to wait when running requests hold its token budget.

The wait was a constant 5 s. The requests that hold a budget run as long as the work they
do: a chat key's for seconds, an agent group's Claude Code requests for minutes. The
``openai`` and ``anthropic`` SDKs retry such a 429 twice by default, after its
``retry-after``: with 5 s, an agent's client gave up after 10 s while the requests holding
its group's budget ran for minutes more. Now ``quotas.held_retry_after_s`` (default 5) and
a rule's own ``held_retry_after_s`` set it, from 1 to 60 s (past 60 the SDKs no longer
follow it).

Against a real Valkey, through the processor.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from extproc.config.loader import parse_config
from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.conftest import MemoryLog
from tests.unit.test_quota_held import Call

GATEWAY = Path("config/gateway.yaml").read_text(encoding="utf-8")
GATEWAY = GATEWAY.replace("\nstore:\n", "\nstore:\n  timeout_ms: 4000\n", 1)


def _processor(store: QuotaStore, quotas: str) -> Processor:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    runtime = Runtime(parse_config(GATEWAY + quotas, "gateway.yaml", {}), services)
    return Processor(lambda: runtime, default_stages())


async def _held_refusal(processor: Processor, max_tokens: int = 600) -> tuple[str, dict[str, str]]:
    """Two requests of key team1 (group engineering) hold the budget of 1,000 tokens; the
    third's 429: its message and headers."""
    running = [Call(processor, 500) for _ in range(2)]
    for call in running:
        assert await call.admitted()
    refused = Call(processor, max_tokens)
    assert not await refused.admitted()
    assert refused.refusal is not None and refused.refusal.status.code == 429
    headers = {
        h.header.key: h.header.raw_value.decode() for h in refused.refusal.headers.set_headers
    }
    for call in running:
        await call.hang_up()
    return orjson.loads(refused.refusal.body)["error"]["message"], headers


# Lifetime budgets: their window never ends, so the wait is the configured one to the second.
AGENTS = """
quotas:
  held_retry_after_s: 20
  rules:
    - name: agents
      subject: group
      held_retry_after_s: 45
      token_quota: {limit: 1000, period: lifetime}
    - name: chat
      subject: api_key
      token_quota: {limit: 1000, period: lifetime}
"""


async def test_a_rules_own_wait_is_the_retry_after_of_its_held_budget(
    quota_store: QuotaStore,
) -> None:
    processor = _processor(quota_store, AGENTS)
    message, headers = await _held_refusal(processor)
    assert "(rule 'agents') held by running requests" in message
    # Before: retry-after 5, whatever the requests holding the budget are.
    assert headers["retry-after"] == "45"
    # The message says the same wait (before: "in a few seconds", whatever it was).
    assert message.endswith("; try again in 45 seconds, as they finish")
    # A lifetime quota never resets, but its held tokens may be free again by then: a
    # client pacing itself by these headers reads the same wait (before: no header).
    assert headers["x-ratelimit-reset-tokens"] == "45s"
    assert "x-should-retry" not in headers  # the SDKs wait it out and retry on their own


async def test_an_anthropic_client_reads_the_held_wait_by_anthropics_names(
    quota_store: QuotaStore,
) -> None:
    """These requests are Anthropic Messages calls: the anthropic SDKs and Claude Code
    read anthropic-ratelimit-*, whose reset is the time the wait ends (before: absent)."""
    processor = _processor(quota_store, AGENTS)
    _, headers = await _held_refusal(processor)
    assert headers["anthropic-ratelimit-tokens-limit"] == headers["x-ratelimit-limit-tokens"]
    assert headers["anthropic-ratelimit-tokens-remaining"] == "0"
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-tokens-reset"])
    # 45 s after the refusal, on the store's clock (this machine's, give or take).
    assert 40 <= reset.timestamp() - time.time() <= 46


async def test_quotas_held_retry_after_is_every_other_rules_wait(
    quota_store: QuotaStore,
) -> None:
    processor = _processor(quota_store, AGENTS.replace("      held_retry_after_s: 45\n", ""))
    _, headers = await _held_refusal(processor)
    assert headers["retry-after"] == "20"


async def test_a_hard_capped_budget_held_by_running_requests_waits_as_long(
    quota_store: QuotaStore,
) -> None:
    quotas = AGENTS.replace(
        "      held_retry_after_s: 45\n", "      held_retry_after_s: 45\n      hard_cap: true\n"
    )
    processor = _processor(quota_store, quotas)
    # 996 tokens held; this prompt and its least answer fit once they settle.
    message, headers = await _held_refusal(processor, 10)
    assert "held by running requests" in message
    assert headers["retry-after"] == "45"
    assert message.endswith("; try again in 45 seconds, as they finish")


async def test_without_either_the_wait_is_five_seconds(quota_store: QuotaStore) -> None:
    quotas = AGENTS.replace("  held_retry_after_s: 20\n", "").replace(
        "      held_retry_after_s: 45\n", ""
    )
    message, headers = await _held_refusal(_processor(quota_store, quotas))
    assert headers["retry-after"] == "5"
    assert message.endswith("; try again in 5 seconds, as they finish")


@pytest.mark.parametrize("wait", [0, 61])
def test_a_wait_the_sdks_would_not_follow_is_refused_at_load(wait: int) -> None:
    with pytest.raises(ValidationError, match="held_retry_after_s"):
        QuotasConfig(held_retry_after_s=wait)
    with pytest.raises(ValidationError, match="held_retry_after_s"):
        LimitRule(name="r", subject="group", tokens_per_day=10, held_retry_after_s=wait)


def test_a_wait_on_a_rule_without_a_token_budget_is_refused_at_load() -> None:
    """Only a token budget is held by running requests: such a rule's wait never applies."""
    with pytest.raises(ValidationError, match="held_retry_after_s is the wait of a budget"):
        LimitRule(name="r", subject="group", requests_per_minute=10, held_retry_after_s=30)
