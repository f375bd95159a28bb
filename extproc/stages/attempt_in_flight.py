"""Which chain member a failover request whose client hung up before any answer is charged as.

A non-streamed request whose client leaves after it went to its provider is charged the
prompt estimate and the completion allowance, a stream its prompt (``cut_answer``): the
provider received it and bills it. After a failover that provider is the one of the
attempt in flight, which Envoy alone knows: each attempt runs on an ext_proc stream of
its own, and the request's stream hears nothing more once the client is gone. So each
attempt on a fallback names itself in the store as it is sent
(``store.attempts_in_flight``, written by ``stages.attempt``), and this stage reads that
name when the client has hung up, before the ``done`` hooks charge, log, count and settle
the request: the member named serves it, as a member that answered would (its provider
counted, its model's price, the allowance and the tier it was sent). No record names the
primary, whose attempt is the first and writes none.

The read is the request's one store round trip after its stream closed, off the stream
(``processor``: a ``closing`` hook), bounded by the store's timeout. When the store does
not answer, the attempt in flight is unknown: the request is charged at its primary, as
before, and its log line says ``attempt_unknown``. A request pinned to one fallback (a
Responses API request continuing a response that fallback's provider stores) has that
member alone: it is charged as that member without asking the store.

Only a request charged as left unanswered asks (``cut_answer.charged_as_left``): one that
got an answer, or that never reached a provider, costs nothing here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from extproc.context import RequestContext
from extproc.runtime import Upstream
from extproc.stages.cut_answer import charged_as_left
from extproc.stages.response import served_by_member
from extproc.store.attempts_in_flight import AttemptsInFlight
from extproc.store.outage_log import OutageLog

log = logging.getLogger(__name__)


class AttemptInFlightStage:
    def __init__(self) -> None:
        self._not_read = OutageLog(log, "failover attempts in flight not read from the store")

    def closing(self, ctx: RequestContext) -> Awaitable[None] | None:
        if ctx.failover_model is None or not charged_as_left(ctx):
            return None
        pinned = _pinned_member(ctx)
        if pinned is not None:
            _serves(ctx, ctx.provider or "", *pinned)
            return None
        key = ctx.attempts_key
        records = ctx.runtime.services.attempts_in_flight
        if key is None or records is None:
            return None
        return self._read(ctx, records, key)

    async def _read(self, ctx: RequestContext, records: AttemptsInFlight, key: str) -> None:
        runtime = ctx.runtime
        try:
            async with asyncio.timeout(runtime.config.store.timeout_ms / 1000.0):
                provider = await records.last_sent(key)
        except Exception as exc:
            runtime.services.metrics.store_error("attempt_lookup")
            self._not_read.failed(exc)
            ctx.attempt_unknown = True
            return
        self._not_read.answered()
        if provider is None:
            # The primary's attempt: the allowance it was sent, not the chain's largest.
            ctx.attempt_in_flight = ctx.upstream
            return
        member = runtime.failover.get(ctx.failover_model or "", {}).get(provider)
        if member is None:
            # Not a name this request's attempts write (a member of a chain the request
            # was not admitted with): charged at the primary, said so.
            ctx.attempt_unknown = True
            return
        _serves(ctx, provider, *member)


def _pinned_member(ctx: RequestContext) -> tuple[str, Upstream] | None:
    """The fallback a request pinned to one member of its chain went to alone
    (``stages.response_owner``), else None."""
    member = ctx.runtime.failover.get(ctx.failover_model or "", {}).get(ctx.provider or "")
    if member is None or member[0] == ctx.failover_model:
        return None
    return member


def _serves(ctx: RequestContext, provider: str, model: str, upstream: Upstream) -> None:
    served_by_member(ctx, provider, model, upstream.upstream_model)
    ctx.attempt_in_flight = upstream
