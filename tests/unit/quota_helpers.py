"""The default config under one hard-capped daily token budget per API key, as the tests
of each client API's hard cap use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore, Reservation
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog

# The default config with a store timeout no busy test machine reaches: these helpers'
# tests are of what quotas count and refuse, and a reservation the shared Valkey answered
# after the default 500 ms (the whole suite on two processes) refused the request as
# quota_store_unavailable. (Below envoy.message_timeout_ms, as the config requires; a
# store that is down still fails at once: its connection is refused.)
DEFAULT_CONFIG = (
    Path("config/gateway.yaml")
    .read_text(encoding="utf-8")
    .replace("store:\n", "store:\n  timeout_ms: 4000\n", 1)
)
HARD_CAP = """
quotas:
  default_max_tokens: 1000
  rules:
    - {name: team-cap, subject: api_key, tokens_per_day: %d, hard_cap: true}
"""


def capped_runtime(quota_store: QuotaStore, budget: int) -> tuple[Runtime, Services]:
    """The default config whose keys each have ``budget`` tokens a day, hard-capped."""
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    return Runtime(parse_config(DEFAULT_CONFIG + HARD_CAP % budget, "t", {}), services), services


def capped(quota_store: QuotaStore, budget: int) -> tuple[Processor, Services]:
    runtime, services = capped_runtime(quota_store, budget)
    return Processor(lambda: runtime, default_stages()), services


async def used_tokens(quota_store: QuotaStore, budget: int) -> int:
    """The tokens key team1's budget has used today (a zero reservation reads it)."""
    runtime, _ = capped_runtime(quota_store, budget)
    limits = runtime.quota_rules.limits_for_subject("api_key", "team1", quota_store.now())
    reservation = await quota_store.reserve(limits, 0)
    assert isinstance(reservation, Reservation)
    return reservation.used[0]


async def capped_request(
    quota_store: QuotaStore,
    budget: int,
    path: str,
    body: dict[str, Any] | bytes,
    content_type: str | None = None,
) -> ext.ProcessingResponse:
    """The gateway's answer to a request of key team1 on ``path``, whose hard-capped
    daily budget is ``budget`` tokens (quotas.default_max_tokens: 1000). ``body``: a
    JSON body, or the bytes of one of ``content_type`` (an image edit's form)."""
    sent_headers = {"authorization": "Bearer team1-key"}
    if content_type is not None:
        sent_headers["content-type"] = content_type
    runtime, _ = capped_runtime(quota_store, budget)
    await runtime.start()
    try:
        answers = await run_stream(
            Processor(lambda: runtime, default_stages()),
            [
                request_headers(path, headers=sent_headers),
                request_body(body if isinstance(body, bytes) else orjson.dumps(body)),
            ],
        )
    finally:
        await runtime.close()
    return answers[-1]
