"""``GET /aigw/v1/limits``: the caller's own quotas, rate limits and budgets, as they stand.

Answered by the gateway, after authentication, from the same counters the quota stage
checks (one round trip to the store): every enforced limit on the caller's requests,
of its key, its user, its group and the header values it sends, with what is used, what
its running requests hold and what is left, and when each window resets. A developer's
script checks its budget before a batch job instead of meeting the 429 half-way; the
answer names no other caller (the subjects are the caller's own) and shows no shadow
rule (an operator's pilot, which never refuses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import orjson

from extproc.config.model import RouteApi
from extproc.config.quota_model import MICRO_USD_PER_USD, LimitRule
from extproc.context import PhaseOutput, RequestContext
from extproc.errors import ServiceUnavailableError
from extproc.management.quotas import LimitState, UnreadableStateError
from extproc.quota.rules import Limit
from extproc.store.connection import STORE_ERRORS

_UNITS = {"r": "requests", "t": "tokens", "c": "usd"}


class LimitsViewStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> Awaitable[None] | None:
        route = ctx.route
        if route is None or route.api is not RouteApi.AIGW_LIMITS:
            return None
        return self._answer(ctx, out)

    async def _answer(self, ctx: RequestContext, out: PhaseOutput) -> None:
        runtime = ctx.runtime
        admin = runtime.services.quota_admin
        entries: list[dict[str, object]] = []
        if admin is not None and runtime.quota_rules:
            found = runtime.quota_rules.caller_limits(
                ctx.identity, ctx.request_headers, admin.now()
            )
            states = await _read(ctx, [limit for limit, _ in found])
            rules = {limit: rule for limit, rule in found}
            entries = [_entry(state, rules[state.limit]) for state in states]
        body = orjson.dumps({"object": "list", "data": entries})
        out.answer = (200, body, {"content-type": "application/json"})


async def _read(ctx: RequestContext, limits: list[Limit]) -> list[LimitState]:
    """The limits' state, one round trip for all of the caller's subjects; a 503 when the
    store does not answer in its timeout, or holds what the gateway cannot read there."""
    admin = ctx.runtime.services.quota_admin
    assert admin is not None
    by_subject: dict[tuple[str, str], list[Limit]] = {}
    for limit in limits:
        by_subject.setdefault((limit.subject_kind, limit.subject), []).append(limit)
    subjects = [(f"{kind}:{subject}", each) for (kind, subject), each in by_subject.items()]
    try:
        async with asyncio.timeout(ctx.runtime.config.store.timeout_ms / 1000.0):
            answers = await admin.read_subjects(subjects)
    except (*STORE_ERRORS, TimeoutError):
        ctx.runtime.services.metrics.store_error("quota_limits_view")
        raise ServiceUnavailableError(
            "the quota store is unavailable; try again shortly", code="quota_store_unavailable"
        ) from None
    states: list[LimitState] = []
    for _, found in answers:
        if isinstance(found, UnreadableStateError):
            # A key under the gateway's prefix written by something else: the quota stage
            # meets it too (the caller's requests fail), and `extproc quota get` names it.
            raise ServiceUnavailableError(
                "the quota state cannot be read (a counter holds what the gateway does not"
                " write); an operator can find it with `extproc quota get`",
                code="quota_store_unavailable",
            )
        states.extend(found)
    order = {limit: index for index, limit in enumerate(limits)}
    return sorted(states, key=lambda state: order[state.limit])


def _entry(state: LimitState, rule: LimitRule) -> dict[str, object]:
    limit = state.limit
    # A budget in dollars counts millionths of one: shown in dollars.
    scale = MICRO_USD_PER_USD if limit.kind == "c" else 1

    def amount(value: int) -> int | float:
        return value / scale if scale != 1 else value

    return {
        "rule": limit.rule,
        "subject_kind": limit.subject_kind,
        "subject": limit.subject,
        "counter": limit.counter,
        "unit": _UNITS[limit.kind],
        "limit": amount(state.in_force),
        "used": amount(state.used),
        "reserved": amount(state.reserved),
        "remaining": amount(state.remaining),
        "resets_at": limit.reset_time(),
        "models": list(rule.models) or None,
    }
