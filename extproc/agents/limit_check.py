"""Agent request limits at admission: one store round trip for every limit that applies,
and for the owner of a continued task when ``binding`` must ask the store for it.

``limits`` turns rules into the quota store's counters; this checks and counts
them for one admitted call (an MCP tool call, an A2A message) and refuses a call
over a limit with the JSON-RPC error -32029 and ``retry-after``. A store that
cannot answer fails the call closed (HTTP 503) unless every enforced rule says
fail open.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from typing import Any

from extproc.agents import call as outcome
from extproc.agents import jsonrpc
from extproc.agents.binding import OwnerCheck
from extproc.agents.call import AgentCall
from extproc.agents.jsonrpc import RequestId
from extproc.agents.limits import COUNTER_PREFIX, rule_label
from extproc.agents.refusals import refuse
from extproc.context import PhaseOutput, RequestContext
from extproc.credential_cleaner import echoed_credential, holds_credential
from extproc.errors import RateLimitError, ServiceUnavailableError
from extproc.headers import metadata_key
from extproc.quota.rules import Limit
from extproc.quota.store import Denial, Reservation
from extproc.stages.quota import rate_limit_headers
from extproc.stages.subject_credentials import refuse_credential_in_subjects

log = logging.getLogger(__name__)


def check_limits(
    ctx: RequestContext,
    out: PhaseOutput,
    call: AgentCall,
    tool: str | None,
    ids: list[RequestId],
    batch: bool,
    owner_check: OwnerCheck | None = None,
) -> Awaitable[None] | None:
    """Count the call in every limit that applies to it; None when none does. With an
    ``owner_check``, the call's owners are claimed in the same round trip, first: a call
    refused as another caller's counts in no limit."""
    agents = ctx.runtime.agents
    store = ctx.runtime.services.quota_store
    if not agents.limits or store is None:
        return None
    # A tool named with a key is counted, but not under its name (``limits_for``); looked
    # for only here, where a counter could be named after it.
    hidden = tool is not None and holds_credential(tool, echoed_credential(ctx))
    limits = agents.limits.limits_for(
        ctx.identity, ctx.request_headers, call.server.name, tool, store.now(), tool_hidden=hidden
    )
    if not limits:
        return None
    refuse_credential_in_subjects(ctx, limits)
    return _reserve(ctx, out, call, limits, ids, batch, owner_check)


async def _reserve(
    ctx: RequestContext,
    out: PhaseOutput,
    call: AgentCall,
    limits: list[Limit],
    ids: list[RequestId],
    batch: bool,
    owner_check: OwnerCheck | None,
) -> None:
    services = ctx.runtime.services
    store = services.quota_store
    assert store is not None
    timeout_s = ctx.runtime.config.store.timeout_ms / 1000.0
    result: Reservation | Denial | Exception | None
    try:
        if owner_check is None:
            result = await asyncio.wait_for(store.reserve(limits, 0), timeout_s)
        else:
            owners, result = await asyncio.wait_for(
                store.reserve_unless_claimed(limits, 0, owner_check.claims), timeout_s
            )
            # The owners first: a call refused as another caller's counts in no limit.
            if isinstance(owners, Exception):
                if not owner_check.failed(owners):
                    if isinstance(result, Reservation):
                        store.release(result)
                    return
            elif not owner_check.admits(owners):
                return  # another caller's: nothing was reserved
    except Exception as exc:
        if owner_check is not None and not owner_check.failed(exc):
            return
        result = exc
    if isinstance(result, Exception):
        _store_failed(ctx, out, limits, ids, batch, result)
        return
    assert result is not None  # reserved unless another caller's
    if isinstance(result, Denial):
        # aigw_mcp_tool_calls_total{status="rate_limited"} has the tool, within its budget.
        services.metrics.rate_limit(rule_label(result.limit.rule), result.limit.subject_kind)
        ctx.quota_decision = "rejected"
        ctx.quota_rule = result.limit.rule
        error, data = _limit_refusal(result, store.now(), call)
        refuse(ctx, out, ids, batch, jsonrpc.RATE_LIMITED, outcome.RATE_LIMITED, error, data)
        return
    ctx.quota_decision = "allowed"
    ctx.reservation = result
    # Envoy adds OpenAI's x-ratelimit-* headers to the answer from this metadata.
    published = {
        metadata_key(name): value for name, value in rate_limit_headers(result, store.now()).items()
    }
    out.metadata = {**(out.metadata or {}), **published}


def _store_failed(
    ctx: RequestContext,
    out: PhaseOutput,
    limits: list[Limit],
    ids: list[RequestId],
    batch: bool,
    exc: Exception,
) -> None:
    ctx.runtime.services.metrics.store_error("agent_limit")
    # A shadow rule never blocks, as on the LLM path: only enforced rules can fail
    # the call closed (a shadow rule alone turned a store outage into 503s).
    if all(limit.fail_open or not limit.enforce for limit in limits):
        log.warning("quota store unavailable, agent limits fail open: %s", type(exc).__name__)
        ctx.quota_decision = "failed_open"
        return
    ctx.quota_decision = "unavailable"
    down = ServiceUnavailableError(
        "the quota store is unavailable; try again shortly", code="quota_store_unavailable"
    )
    # HTTP 503 as on every route, its JSON-RPC error under the request's id.
    data = {"type": down.error_type, "code": down.code}
    refuse(ctx, out, ids, batch, jsonrpc.INTERNAL_ERROR, outcome.UNAVAILABLE, down, data,
           http_status=down.status)  # fmt: skip


def _limit_refusal(
    denial: Denial, now: float, call: AgentCall
) -> tuple[RateLimitError, dict[str, Any]]:
    limit = denial.limit
    rule = rule_label(limit.rule).removeprefix(COUNTER_PREFIX)
    what = f"tool '{call.tool}'" if call.tool is not None else f"agent '{call.server.name}'"
    left = limit.window.seconds_left(now)
    retry = max(1, math.ceil(left)) if left is not None else None
    reset = limit.reset_time()
    resets = f" it resets at {reset}" if reset is not None else ""
    kind = limit.subject_kind.replace("header:", "header ")
    message = (
        f"Rate limit reached for {what}, {kind} '{limit.subject}' (rule '{rule}'): "
        f"{limit.describe(denial.effective_limit)};{resets}"
    )
    error_headers = {"retry-after": str(retry)} if retry is not None else {}
    error = RateLimitError(message, code="rate_limit_exceeded", headers=error_headers)
    data: dict[str, Any] = {"type": "rate_limit_error", "code": "rate_limit_exceeded", "rule": rule}
    if retry is not None:
        data["retry_after_s"] = retry
    return error, data
