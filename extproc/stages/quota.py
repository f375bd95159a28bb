"""Token quotas and rate limits: reserve before the upstream call, settle after it.

At the request body (the model is known), every limit that applies to the
caller is checked and a token estimate reserved, in one Redis round trip. A
refusal is a 429 naming the subject, the limit and when it resets, with
``retry-after``. Every AI answer carries OpenAI's ``x-ratelimit-*`` headers for
the tightest request and token limits. When the response ends, the token
reservation is corrected with the provider's count (or released when the
request died before any usage was reported), off the response path.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from datetime import UTC, datetime

from extproc.context import PhaseOutput, RequestContext
from extproc.errors import RateLimitError, ServiceUnavailableError
from extproc.quota.estimate import estimate_tokens
from extproc.quota.rules import Limit, tightest
from extproc.quota.store import Denial, Reservation

log = logging.getLogger(__name__)


class QuotaStage:
    def request_body(
        self, ctx: RequestContext, out: PhaseOutput, body: bytes
    ) -> Awaitable[None] | None:
        runtime = ctx.runtime
        store = runtime.services.quota_store
        if not runtime.quota_rules or store is None or ctx.model is None or ctx.body is None:
            return None
        limits = runtime.quota_rules.limits_for(
            ctx.identity, ctx.request_headers, ctx.model, store.now()
        )
        if not limits:
            return None
        cost = estimate_tokens(ctx.body, runtime.config.quotas.default_max_tokens)
        return self._reserve(ctx, limits, cost)

    @staticmethod
    async def _reserve(ctx: RequestContext, limits: list[Limit], cost: int) -> None:
        services = ctx.runtime.services
        store = services.quota_store
        assert store is not None
        timeout = ctx.runtime.config.store.timeout_ms / 1000.0
        try:
            result = await asyncio.wait_for(store.reserve(limits, cost), timeout)
        except Exception as exc:
            services.metrics.store_errors.labels(operation="quota_reserve").inc()
            if all(limit.fail_open for limit in limits):
                log.warning("quota store unavailable, failing open: %s", type(exc).__name__)
                return
            raise ServiceUnavailableError(
                "the quota store is unavailable; try again shortly", code="quota_store_unavailable"
            ) from None
        if isinstance(result, Denial):
            services.metrics.rate_limited.labels(
                rule=result.limit.rule, subject_kind=result.limit.subject_kind
            ).inc()
            raise _refusal(result, store.now())
        ctx.reservation = result

    def response_headers(
        self, ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]
    ) -> None:
        store = ctx.runtime.services.quota_store
        if ctx.reservation is not None and store is not None:
            out.set_headers.update(rate_limit_headers(ctx.reservation, store.now()))

    def done(self, ctx: RequestContext) -> None:
        reservation = ctx.reservation
        store = ctx.runtime.services.quota_store
        if reservation is None or store is None:
            return
        # Without a usage report the estimate stands (a conservative charge), unless
        # the request died before the provider produced anything.
        if ctx.usage_reported:
            store.settle(reservation, ctx.usage.total_tokens)
        elif ctx.aborted and ctx.first_byte_at is None:
            store.settle(reservation, None)


def _reset_text(limit: Limit) -> str:
    end = limit.window.end
    if end is None:
        return "it does not reset"
    return "it resets at " + datetime.fromtimestamp(end, UTC).isoformat(timespec="seconds")


def _refusal(denial: Denial, now: float) -> RateLimitError:
    limit = denial.limit
    kind = limit.subject_kind.replace("header:", "header ")
    message = (
        f"Rate limit reached for {kind} '{limit.subject}' (rule '{limit.rule}'): "
        f"{limit.describe(denial.effective_limit)}, {denial.used} used; {_reset_text(limit)}"
    )
    headers: dict[str, str] = {}
    left = limit.window.seconds_left(now)
    if left is not None:
        headers["retry-after"] = str(max(1, math.ceil(left)))
    unit = "requests" if limit.kind == "r" else "tokens"
    headers[f"x-ratelimit-limit-{unit}"] = str(denial.effective_limit)
    headers[f"x-ratelimit-remaining-{unit}"] = "0"
    if left is not None:
        headers[f"x-ratelimit-reset-{unit}"] = f"{max(0, math.ceil(left))}s"
    code = "insufficient_quota" if limit.is_quota else "rate_limit_exceeded"
    return RateLimitError(message, code=code, headers=headers)


def rate_limit_headers(reservation: Reservation, now: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, unit in (("r", "requests"), ("t", "tokens")):
        index = tightest(reservation.limits, reservation.used, reservation.effective, kind)
        if index is None:
            continue
        limit = reservation.limits[index]
        effective = reservation.effective[index]
        headers[f"x-ratelimit-limit-{unit}"] = str(effective)
        headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, effective - reservation.used[index]))
        left = limit.window.seconds_left(now)
        if left is not None:
            headers[f"x-ratelimit-reset-{unit}"] = f"{max(0, math.ceil(left))}s"
    return headers
