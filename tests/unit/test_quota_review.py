"""Quotas, rate limits and chargeback as an operator runs them, found wrong in review.

Each test is what an operator or a client does and what they must see: a token count
under a spent token budget, a shadow rule while the store is down, a limit written in
the config that the store cannot count, a usage export whose identity holds a carriage
return.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.chargeback.period import Period
from extproc.chargeback.report import render
from extproc.config import ConfigError, parse_config
from extproc.context import Identity
from extproc.processor import Processor
from extproc.quota.store import QuotaStore, Reservation
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.stages.quota import rate_limit_headers
from extproc.store.connection import connect
from extproc.store.embedded import free_port
from extproc.store.usage import UsageRow
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG

OPENAI_AUTH = {"authorization": "Bearer team1-key"}
ANTHROPIC_AUTH = {"x-api-key": "team1-key"}
# Key team1 (user alice, group engineering) in the default config.
TEAM1 = Identity(method="api_key", api_key_id="team1", user_id="alice", group_id="engineering")


def runtime_with(quota_store: QuotaStore, quotas: str) -> Runtime:
    """The default config with ``quotas`` (a ``quotas:`` section) over ``quota_store``."""
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    return Runtime(parse_config(DEFAULT_CONFIG + quotas, "gateway.yaml", {}), services)


def gateway(quota_store: QuotaStore, quotas: str) -> tuple[Processor, MemoryLog]:
    """A processor over ``runtime_with(quota_store, quotas)``, and its access log."""
    runtime = runtime_with(quota_store, quotas)
    log = runtime.services.access_log
    assert isinstance(log, MemoryLog)
    return Processor(lambda: runtime, default_stages()), log


def refusal(answer: ext.ProcessingResponse) -> tuple[int, dict[str, Any]] | None:
    """The gateway's own answer in place of the request (status, body), or None when the
    request went on to the provider."""
    if answer.WhichOneof("response") != "immediate_response":
        return None
    immediate = answer.immediate_response
    return immediate.status.code, orjson.loads(immediate.body)


def chat(content: str = "hi") -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    )


# -- token counts under a spent token budget -------------------------------------------------

TINY_BUDGET = """
quotas:
  rules:
    - {name: tiny-tokens, subject: api_key, match: team1, tokens_per_hour: 10}
"""


async def test_a_token_count_is_not_refused_when_the_token_budget_is_spent(
    quota_store: QuotaStore,
) -> None:
    # docs/providers.md: a count "reserves no quota tokens, so a spent token budget does
    # not refuse it". The key's chat request holds all 10 tokens of its hour.
    processor, _ = gateway(quota_store, TINY_BUDGET)
    spent = await run_stream(
        processor,
        [request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(chat())],
    )
    assert refusal(spent[1]) is None
    body = orjson.dumps(
        {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "count"}]}
    )
    counted = await run_stream(
        processor,
        [
            request_headers("/v1/messages/count_tokens", headers=ANTHROPIC_AUTH),
            request_body(body),
        ],
    )
    assert refusal(counted[1]) is None


# -- shadow rules while the store is down ----------------------------------------------------

SHADOW_ONLY = """
quotas:
  rules:
    - {name: gpt-watch, subject: api_key, tokens_per_day: 200000, mode: shadow}
"""


@pytest.fixture
async def store_down() -> AsyncIterator[QuotaStore]:
    """A quota store whose server is not there (nothing listens on its port)."""
    client = connect(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    store = QuotaStore(client, "down:")
    await store.start()
    yield store
    await store.close()
    await client.aclose()


async def test_a_shadow_rule_never_blocks_traffic_when_the_store_is_down(
    store_down: QuotaStore,
) -> None:
    # docs/quotas.md: a shadow rule is "counted and reported, never blocks". With the
    # default on_store_failure (fail_closed), watching a key made its traffic fail with
    # the store: every request a 503 quota_store_unavailable.
    processor, log = gateway(store_down, SHADOW_ONLY)
    answers = await run_stream(
        processor,
        [request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(chat())],
    )
    assert refusal(answers[1]) is None
    assert log.lines()[-1]["quota_decision"] == "failed_open"


ENFORCED_AND_SHADOW = """
quotas:
  rules:
    - {name: gpt-watch, subject: api_key, tokens_per_day: 200000, mode: shadow}
    - {name: keys-daily, subject: api_key, requests_per_day: 1000}
"""


async def test_an_enforced_rule_still_fails_closed_beside_a_shadow_one(
    store_down: QuotaStore,
) -> None:
    processor, _ = gateway(store_down, ENFORCED_AND_SHADOW)
    answers = await run_stream(
        processor,
        [request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(chat())],
    )
    refused = refusal(answers[1])
    assert refused is not None
    status, body = refused
    assert (status, body["error"]["code"]) == (503, "quota_store_unavailable")


# -- limits the store counts exactly ---------------------------------------------------------

EXACT = 2**53 - 1


async def test_the_largest_exact_limit_in_the_config_is_shown_as_written(
    quota_store: QuotaStore,
) -> None:
    quotas = f"""
quotas:
  rules:
    - {{name: huge, subject: group, requests_per_day: {EXACT}, tokens_per_day: {EXACT}}}
"""
    runtime = runtime_with(quota_store, quotas)
    limits = runtime.quota_rules.limits_for(TEAM1, {}, "gpt-4o-mini", quota_store.now())
    reservation = await quota_store.reserve(limits, 50)
    assert isinstance(reservation, Reservation)
    headers = rate_limit_headers(reservation, quota_store.now())
    assert headers["x-ratelimit-limit-requests"] == str(EXACT)
    assert headers["x-ratelimit-remaining-requests"] == str(EXACT - 1)
    assert headers["x-ratelimit-remaining-tokens"] == str(EXACT - 50)


@pytest.mark.parametrize("limit", ["requests_per_day", "tokens_per_hour"])
def test_a_config_limit_past_what_the_store_counts_is_refused_at_load(limit: str) -> None:
    # "Unlimited" written as int64's largest value: the store's Lua counts in doubles
    # and handed it back as -2**63, so every answer of the group said
    # `x-ratelimit-limit-requests: -9223372036854775808` and `remaining: 0` (and a hard
    # cap refused every prompt). The management API refuses such a limit; so must the
    # config, naming the field.
    quotas = f"""
quotas:
  rules:
    - {{name: unlimited, subject: group, {limit}: {2**63 - 1}}}
"""
    with pytest.raises(ConfigError, match=limit):
        parse_config(DEFAULT_CONFIG + quotas, "gateway.yaml", {})


def test_a_token_quota_past_what_the_store_counts_is_refused_at_load() -> None:
    quotas = f"""
quotas:
  rules:
    - name: unlimited
      subject: group
      token_quota: {{limit: {2**63 - 1}, period: calendar_month}}
"""
    with pytest.raises(ConfigError, match="token_quota"):
        parse_config(DEFAULT_CONFIG + quotas, "gateway.yaml", {})


# -- usage exports -------------------------------------------------------------------------

FEBRUARY = Period(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))


@pytest.mark.parametrize("user", ["alice\rsmith", "carriage return at the end\r"])
def test_a_csv_export_gives_back_a_user_id_holding_a_carriage_return(user: str) -> None:
    # A JWT claim (or an API key's user_id) is any string; docs/chargeback.md: "a value
    # holding a comma, a quote or a line break is quoted, so any CSV reader gets it back
    # as it was". A bare carriage return was written unquoted: Python's csv refused the
    # file ("new-line character seen in unquoted field"), others split the row there.
    rows = [UsageRow({"user_id": user}, requests=2, prompt_tokens=10), UsageRow({"user_id": "bob"})]
    text = render(rows, ("user_id",), FEBRUARY, "csv")
    read = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [row["user_id"] for row in read] == [user, "bob"]
    assert read[0]["requests"] == "2"
