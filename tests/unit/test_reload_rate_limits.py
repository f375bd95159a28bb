"""A rate limit changed by a reload, with real Valkey and the processor: the counters of
the running window carry over (they are keyed by rule and window, not by the limit),
so a limit lowered from 100 to 3 requests a minute refuses the next request of a key
that already made 3 this minute, and a rule the reload removes stops refusing."""

from __future__ import annotations

import time
from typing import Any

import yaml

from extproc.config import parse_config
from extproc.config.model import GatewayConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.quota.store import QuotaStore
from extproc.server import Gateway
from tests.unit.test_credentials_across_reloads import status_with

KEY = "team1-key"


def with_rpm(limit: int | None) -> GatewayConfig:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    if limit is not None:
        rule = {"name": "per-key-rpm", "subject": "api_key", "requests_per_minute": limit}
        raw["quotas"] = {"rules": [rule]}
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {})


def early_in_the_minute() -> None:
    """Keep the burst below inside one minute's window."""
    into = time.time() % 60
    if into > 55:
        time.sleep(60.5 - into)


async def test_a_lowered_limit_counts_what_the_minute_already_used(
    quota_store: QuotaStore,
) -> None:
    gateway = Gateway(with_rpm(100), None)
    gateway.services.quota_store = quota_store
    early_in_the_minute()
    try:
        for _ in range(3):
            assert await status_with(gateway, KEY) is None  # sent on, under 100/min

        await gateway.apply(with_rpm(3))
        assert await status_with(gateway, KEY) == 429, "3 already made this minute"

        await gateway.apply(with_rpm(None))  # the rule removed: nothing to refuse on
        assert await status_with(gateway, KEY) is None
    finally:
        await gateway.runtime.close()
