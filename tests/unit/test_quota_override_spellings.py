"""A run-time override written by hand is read the same way by every reader of it.

The reserve script reads an override with Lua's ``tonumber``, so ``5e3``, ``5000.0``,
`` 5000 `` and ``0x1388`` are 5000 to it. The quota gauges read it with ``int()``: they
left out the counter of such an override, though requests were checked against 5000,
and logged the counter's key as unreadable, not the overrides hash that held it. And
``extproc quota get`` took ``5_000`` (a Python spelling) as 5000, where the script
refuses it. Now the gauges, ``quota get`` and the script share one parse: each spelling
is the same limit to all three, or unreadable to all three.

An override past what the scripts count exactly (``inf``, ``1e19``) let every request
through as if there were no limit, and came back as -2^63 in ``x-ratelimit-limit-*``;
the script now refuses it as it refuses any override that is no integer, and so do the
gauges and ``quota get``.

Against a real Valkey: the script through ``QuotaStore.reserve``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.management.quotas import QuotaAdmin, UnreadableStateError
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.store import Denial, QuotaStore
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.quota_gauges import QuotaGauges

PREFIX = "t:"
RULES = RuleSet(
    QuotasConfig(
        rules=(
            LimitRule(name="marketing-rpm", subject="group", match="marketing",
                      requests_per_minute=10),
        ),
    )
)  # fmt: skip
# How a person may write 5000 by hand, each read as 5000 by the reserve script.
READ_AS_5000 = ["5e3", "5E3", "5000.0", " 5000 ", "5000\n", "+5000", ".5e4", "0x1388"]
# What the script refuses as "an override that is no integer".
REFUSED = ["5_000", "5 000", "5000.5", "lots", "nan", "0x", "1e"]
# Past what the scripts count exactly (2^53 - 1, the config's bound too): the script
# admitted every request under them, as if unlimited, and answered the limit as
# -2^63 (Lua's infinity as a Redis integer), which went out in x-ratelimit-limit-*.
PAST_EXACT = ["inf", "-inf", "1e300", "1e19", "9007199254740992"]


@pytest.fixture
async def store(valkey: EmbeddedValkey) -> AsyncIterator[tuple[QuotaStore, Any]]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota_store = QuotaStore(client, PREFIX)
    await quota_store.start()
    yield quota_store, client
    await quota_store.close()
    await client.aclose()


async def _script_reads(quota_store: QuotaStore, limit: Limit) -> int | None:
    """The limit the reserve script checks against (None: it refuses the override)."""
    try:
        found = await quota_store.reserve([limit], 0)
    except Exception:
        return None
    return found.effective_limit if isinstance(found, Denial) else found.effective[0]


async def _gauge_reads(quota_store: QuotaStore, client: Any) -> int | None:
    gauges = QuotaGauges(client, PREFIX, lambda: RULES, quota_store.now, QuotaGaugesConfig())
    await gauges.refresh()
    for family in gauges.collect():
        if family.name == "aigw_quota_limit":
            return next((int(sample.value) for sample in family.samples), None)
    raise AssertionError("no aigw_quota_limit family")


async def _quota_get_reads(quota_store: QuotaStore, client: Any, limit: Limit) -> int | None:
    try:
        [state] = await QuotaAdmin(client, PREFIX, quota_store).read([limit])
    except UnreadableStateError:
        return None
    return state.in_force


@pytest.mark.parametrize("written", READ_AS_5000 + REFUSED + PAST_EXACT)
async def test_an_override_is_the_same_limit_to_the_script_the_gauges_and_quota_get(
    store: tuple[QuotaStore, Any], written: str
) -> None:
    quota_store, client = store
    [limit] = RULES.limits_for_subject("group", "marketing", quota_store.now())
    await client.hset(limit.overrides_key(PREFIX), limit.override_field, written)

    script = await _script_reads(quota_store, limit)

    assert script == (5000 if written in READ_AS_5000 else None)
    assert await _gauge_reads(quota_store, client) == script
    assert await _quota_get_reads(quota_store, client, limit) == script


async def test_the_gauges_log_the_overrides_hash_of_an_unreadable_override(
    store: tuple[QuotaStore, Any], caplog: pytest.LogCaptureFixture
) -> None:
    quota_store, client = store
    [limit] = RULES.limits_for_subject("group", "marketing", quota_store.now())
    await client.hset(limit.overrides_key(PREFIX), limit.override_field, "lots")

    with caplog.at_level(logging.WARNING, logger="extproc.telemetry.quota_gauges"):
        assert await _gauge_reads(quota_store, client) is None

    [warning] = [
        record.getMessage()
        for record in caplog.records
        if record.name == "extproc.telemetry.quota_gauges"
    ]
    # The key a person must put right; before, the counter's (which held nothing wrong).
    assert limit.overrides_key(PREFIX) in warning
    assert limit.key(PREFIX) not in warning
