"""Quota and rate-limit edges found wrong in review (s39): each test is what a client or an
operator does and what the gateway answers, on the real embedded Valkey."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from extproc.config import GatewayConfig
from extproc.config.quota_model import MAX_LIMIT
from extproc.quota.rules import Limit
from extproc.quota.store import Denial, QuotaStore
from extproc.quota.windows import WindowKind, window_for
from extproc.runtime import Services
from extproc.stages.quota import _refusal
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for
from tests.unit.conftest import MemoryLog
from tests.unit.test_agents_review import dead_store, immediate, tool_call, with_limits

# The store-down fixture of the agents review.
__all__ = ["dead_store"]

# --- agent request limits: the refusal names the limit that holds longest -------------------


async def test_an_agent_refusal_names_the_limit_that_holds_longest(
    config: GatewayConfig, quota_store: QuotaStore
) -> None:
    # One call a minute and one a day: after the first call both are used up. The refusal
    # must name the day's (as an LLM request's does, docs/quotas.md "Several limits used
    # up at once"): naming the minute's told the client to come back within a minute, to
    # be refused again until the day ends.
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    rule = {"name": "echo-limits", "subject": "api_key", "tools": ["echo"],
            "requests_per_minute": 1, "requests_per_day": 1}  # fmt: skip
    processor = processor_for(with_limits(config, rule), services)
    echo = {"name": "echo", "arguments": {}}
    assert immediate(await tool_call(processor, echo)) is None
    now = quota_store.now()
    refusal = immediate(await tool_call(processor, echo))
    assert refusal is not None and refusal[1]["error"]["code"] == -32029
    # In the last minute of a UTC day both reset together, and either may be named.
    together = window_for(WindowKind.MINUTE, now).end == window_for(WindowKind.DAY, now).end
    assert together or "1 requests per day" in refusal[1]["error"]["message"]


# --- agent request limits: a shadow rule never blocks, the store down or not ----------------


async def test_a_shadow_agent_limit_lets_calls_through_when_the_store_is_down(
    config: GatewayConfig, dead_store: QuotaStore
) -> None:
    # A shadow rule counts and reports, never refuses (docs/agents.md, docs/quotas.md
    # "Store trouble": shadow rules never block, whatever their on_store_failure). With
    # the store down, a tool call under a shadow rule alone got the 503 of a fail_closed
    # enforced rule.
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=dead_store)
    rule = {"name": "watch", "subject": "api_key", "requests_per_minute": 5, "mode": "shadow",
            "on_store_failure": "fail_closed"}  # fmt: skip
    processor = processor_for(with_limits(config, rule), services)
    assert immediate(await tool_call(processor, {"name": "echo", "arguments": {}})) is None
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["quota_decision"] == "failed_open"


# --- agent request limits: what quotas.rules refuse at load, agent rules refuse too ---------


@pytest.mark.parametrize("limit", ["requests_per_second", "requests_per_day"])
def test_an_agent_limit_past_what_the_store_counts_is_refused_at_load(
    config: GatewayConfig, limit: str
) -> None:
    # "Unlimited" written as int64's largest value loaded, and the store's Lua (which
    # counts in doubles) handed it back as -2**63: every admitted tool call said
    # x-ratelimit-limit-requests: -9223372036854775808 and remaining 0. quotas.rules
    # refuse such a limit at load (test_quota_review); agent rules must too.
    rule = {"name": "unlimited", "subject": "group", limit: 2**63 - 1}
    with pytest.raises(ValidationError, match=limit):
        with_limits(config, rule)
    largest = {"name": "largest", "subject": "group", limit: MAX_LIMIT}
    assert with_limits(config, largest).agents.limits[0].model_dump()[limit] == MAX_LIMIT


@pytest.mark.parametrize("match", [[], ["*"], ""], ids=["empty-list", "star-in-list", "empty"])
def test_an_agent_rule_that_selects_no_subject_is_refused_at_load(
    config: GatewayConfig, match: Any
) -> None:
    # match: ["*"] (meant as every key) or an empty list loaded as a rule that applied to
    # no one: the limit an operator wrote for every caller limited none. quotas.rules
    # refuse both at load, naming the field (docs/quotas.md); agent rules must too.
    rule = {"name": "everyone", "subject": "api_key", "match": match, "requests_per_minute": 1}
    with pytest.raises(ValidationError, match="match"):
        with_limits(config, rule)


# --- a refusal whose window ended while the store was asked ----------------------------------


def test_a_refusal_whose_window_just_ended_says_one_second_in_both_headers() -> None:
    # The store refused within the minute; by the time the answer is built the minute has
    # ended. retry-after said 1 while x-ratelimit-reset-requests said 0s: clients that
    # read the OpenAI header retried at once, into the same refusal's race.
    minute = window_for(WindowKind.MINUTE, 1_800_000_000.0)
    assert minute.end is not None
    limit = Limit("per-key", "api_key", "team1", "requests_per_minute", "r", 1, minute,
                  enforce=True, fail_open=False, time_zone="UTC")  # fmt: skip
    error = _refusal(Denial(limit, used=1, effective_limit=1), now=minute.end + 0.3)
    assert error.headers["retry-after"] == "1"
    assert error.headers["x-ratelimit-reset-requests"] == "1s"
