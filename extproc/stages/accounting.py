"""After the response: the log line, the metrics and the usage rollup, once per request.

Runs in the processor's ``done`` step, off the response path. A store failure
is counted and logged and never reaches the client; the log line and metrics
are written first so usage is never lost from them.
"""

from __future__ import annotations

import asyncio
import logging

from extproc.context import RequestContext
from extproc.store.usage import UsageEntry
from extproc.telemetry.access_log import access_record

log = logging.getLogger(__name__)


class AccountingStage:
    async def done(self, ctx: RequestContext) -> None:
        if ctx.route is None:
            return  # not AI traffic: Envoy's own access log covers it
        services = ctx.runtime.services
        services.access_log.write(access_record(ctx))
        self._observe(ctx)
        if ctx.accounted and services.store is not None and ctx.model is not None:
            await self._store(ctx)

    @staticmethod
    def _observe(ctx: RequestContext) -> None:
        metrics = ctx.runtime.services.metrics
        route = ctx.route.name if ctx.route else ""
        provider = ctx.provider or ""
        model = ctx.model or ""
        labels = metrics.bounded(route=route, provider=provider, model=model)
        metrics.requests.labels(
            status_code=str(ctx.response_status) if not ctx.aborted else "aborted", **labels
        ).inc()
        if ctx.accounted:
            metrics.request_duration.labels(**labels).observe(ctx.elapsed_ms() / 1000.0)
        if not ctx.usage_reported:
            return
        identity = metrics.bounded(
            api_key_id="", user_id="", group_id="", model=model, provider=provider
        )
        for token_type, count in (
            ("prompt", ctx.usage.prompt_tokens),
            ("completion", ctx.usage.completion_tokens),
        ):
            if count:
                metrics.tokens_consumed.labels(token_type=token_type, **identity).inc(count)

    @staticmethod
    async def _store(ctx: RequestContext) -> None:
        services = ctx.runtime.services
        assert services.store is not None
        entry = UsageEntry(
            started_at=ctx.started_wall,
            dimensions={
                "route": ctx.route.name if ctx.route else "",
                "model": ctx.model or "",
                "provider": ctx.provider or "",
            },
            prompt_tokens=ctx.usage.prompt_tokens,
            completion_tokens=ctx.usage.completion_tokens,
        )
        timeout = ctx.runtime.config.store.timeout_ms / 1000.0
        try:
            await asyncio.wait_for(services.store.record(entry), timeout)
        except Exception as exc:
            services.metrics.store_errors.labels(operation="usage_record").inc()
            log.warning("usage rollup write failed for %s: %s", ctx.request_id, type(exc).__name__)
